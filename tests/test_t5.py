"""T5 v1.1 encoder: parity with transformers' PyTorch T5EncoderModel (random weights, tiny
size), every checkpoint layout we read (HF safetensors single/sharded, T5X msgpack +
TensorStore, T5X Orbax), mask handling, clear errors, SentencePiece tokenisation."""

import functools
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax
import jax
import numpy as np
import pytest
import torch  # the [torch] extra, which `make test` installs
import transformers

from phenaki_jax.models import t5

TOL = 1e-4
DEPTH = t5.SIZES["tiny"]["depth"]


@pytest.fixture(scope="module")
def reference():
  """A random tiny T5EncoderModel whose sizes equal t5.SIZES['tiny']."""
  s = t5.SIZES["tiny"]
  cfg = transformers.T5Config(
    vocab_size=t5.VOCAB_SIZE,
    d_model=s["width"],
    d_kv=s["head_dim"],
    d_ff=s["mlp_dim"],
    num_layers=s["depth"],
    num_heads=s["num_heads"],
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  return transformers.T5EncoderModel(cfg).eval()


@pytest.fixture(scope="module")
def batch():
  """Token ids with padding: lengths 12, 5 and 1 out of 12."""
  rng = np.random.RandomState(0)
  mask = np.arange(12)[None, :] < np.array([12, 5, 1])[:, None]
  ids = np.where(mask, rng.randint(3, 2000, size=mask.shape), 0).astype(np.int32)
  return ids, mask


def torch_hidden(reference, ids, mask):
  with torch.no_grad():
    out = reference(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    )
  return out.last_hidden_state.numpy()


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(model.apply)


def apply(model, params, ids, mask) -> np.ndarray:
  return np.asarray(jitted_apply(model)({"params": params}, ids, mask))


def assert_parity(params, reference, batch):
  ids, mask = batch
  got = apply(t5.get_model("tiny"), params, ids, mask)
  want = torch_hidden(reference, ids, mask)
  err = np.abs(got - want).max()  # padded positions included
  assert err <= TOL, f"max |ours - transformers| = {err:.2e} > {TOL}"


def hf_to_t5x_target(reference) -> dict:
  """The `target` tree that T5X's t5_1_1 network holds for these weights (plus a decoder)."""
  sd = {k: v.numpy() for k, v in reference.state_dict().items()}
  e = "encoder.block.{}.layer."
  encoder = {
    "relpos_bias": {
      "rel_embedding": sd[e.format(0) + "0.SelfAttention.relative_attention_bias.weight"].T
    },  # [heads, buckets]
    "encoder_norm": {"scale": sd["encoder.final_layer_norm.weight"]},
  }
  for i in range(DEPTH):
    b = e.format(i)
    encoder[f"layers_{i}"] = {
      "pre_attention_layer_norm": {"scale": sd[b + "0.layer_norm.weight"]},
      "attention": {
        n: {"kernel": sd[f"{b}0.SelfAttention.{m}.weight"].T}
        for n, m in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
      },
      "pre_mlp_layer_norm": {"scale": sd[b + "1.layer_norm.weight"]},
      "mlp": {
        w: {"kernel": sd[f"{b}1.DenseReluDense.{w}.weight"].T} for w in ("wi_0", "wi_1", "wo")
      },
    }
  return {
    "token_embedder": {"embedding": sd["shared.weight"]},
    "encoder": encoder,
    "decoder": {"decoder_norm": {"scale": np.ones(4, np.float32)}},
  }


def write_t5x_msgpack(model_dir: pathlib.Path, target: dict, step: int) -> pathlib.Path:
  """Writes a checkpoint the way T5X's Checkpointer does: partitioned (here: matrix) params as
  zarr arrays through TensorStore with relative paths in their spec, the rest inline, all under
  {'version': 3, 'optimizer': {'target', 'state'}} in the msgpack file `checkpoint`."""
  import tensorstore as ts

  ckpt = model_dir / f"checkpoint_{step}"
  ckpt.mkdir(parents=True)

  def leaf(path, arr):
    if arr.ndim < 2:
      return arr
    rel = ".".join(("target",) + path)
    metadata = {
      "compressor": {"id": "gzip"},
      "shape": list(arr.shape),
      "chunks": np.array(arr.shape),
    }
    spec = {
      "driver": "zarr",
      "dtype": arr.dtype.name,
      "kvstore": {"driver": "file", "path": rel},
      "metadata": metadata,
    }
    ts.open(
      {
        **spec,
        "kvstore": {"driver": "file", "path": str(ckpt / rel)},
        "metadata": {**metadata, "chunks": list(arr.shape)},
      },
      create=True,
      delete_existing=True,
    ).result().write(arr).result()
    return spec

  flat = flax.traverse_util.flatten_dict(target)
  written = flax.traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()})
  state = {"version": 3, "optimizer": {"target": written, "state": {"step": np.int32(step)}}}
  (ckpt / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(state))
  return ckpt


def test_relative_position_buckets_match_transformers():
  length = 300  # beyond max_distance: exercises the log buckets and the clipping
  offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  attention_cls = transformers.models.t5.modeling_t5.T5Attention
  want = attention_cls._relative_position_bucket(offset, True, 32, 128).numpy()
  np.testing.assert_array_equal(t5.relative_position_buckets(length, 32, 128), want)


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_hf_safetensors_parity(reference, batch, tmp_path, shard):
  kwargs = {} if shard is None else {"max_shard_size": shard}
  reference.save_pretrained(tmp_path, **kwargs)
  if shard:
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    path = tmp_path / "model.safetensors.index.json"
  else:
    path = tmp_path / "model.safetensors"
  assert_parity(t5.load(str(path), t5.get_model("tiny")), reference, batch)
  assert_parity(t5.load(str(tmp_path), t5.get_model("tiny")), reference, batch)


def test_hf_bfloat16_safetensors_load(reference, tmp_path):
  from safetensors.torch import save_file

  state = {
    k: v.to(torch.bfloat16).contiguous()
    for k, v in reference.state_dict().items()
    if k != "encoder.embed_tokens.weight"
  }  # tied to shared.weight
  save_file(state, str(tmp_path / "model.safetensors"))
  params = t5.load(str(tmp_path), t5.get_model("tiny"))
  got = params["layers_1"]["mlp"]["wo"]["kernel"]
  assert got.dtype == np.dtype("bfloat16")
  want = state["encoder.block.1.layer.1.DenseReluDense.wo.weight"].float().numpy().T
  np.testing.assert_array_equal(got.astype(np.float32), want)


def test_t5x_msgpack_tensorstore_parity(reference, batch, tmp_path):
  target = hf_to_t5x_target(reference)
  write_t5x_msgpack(tmp_path, target, step=5)
  ckpt = write_t5x_msgpack(tmp_path, target, step=12)
  assert any(p.is_dir() and p.name.startswith("target.encoder.") for p in ckpt.iterdir())
  for path in (tmp_path, ckpt, ckpt / "checkpoint"):  # model dir, step dir, msgpack file
    assert_parity(t5.load(str(path), t5.get_model("tiny")), reference, batch)


@pytest.mark.parametrize("use_ocdbt", [False, True])
def test_t5x_orbax_parity(reference, batch, tmp_path, use_ocdbt):
  import orbax.checkpoint as ocp

  state = {"target": hf_to_t5x_target(reference), "state": {"step": np.int32(3)}}
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt))
  checkpointer.save(tmp_path / "checkpoint_3" / "state", args=ocp.args.PyTreeSave(state))
  assert (tmp_path / "checkpoint_3" / "state" / "_METADATA").exists()
  for path in (tmp_path, tmp_path / "checkpoint_3"):
    assert_parity(t5.load(str(path), t5.get_model("tiny")), reference, batch)


def test_padding_does_not_change_real_tokens(reference, batch, tmp_path):
  reference.save_pretrained(tmp_path)
  model = t5.get_model("tiny")
  params = t5.load(str(tmp_path), model)
  ids, mask = batch  # row 1: 5 real tokens, padded to 12
  out = apply(model, params, ids, mask)
  longer = np.zeros((3, 20), np.int32)  # more padding and other batch-mates
  longer[0, :12] = ids[1]
  longer[1, :] = np.arange(100, 120)
  longer[2, :3] = [5, 6, 7]
  out_longer = apply(model, params, longer, longer > 0)
  np.testing.assert_allclose(out_longer[0, :5], out[1, :5], atol=1e-5)


def test_bfloat16_close_to_float32(reference, batch, tmp_path):
  reference.save_pretrained(tmp_path)
  ids, mask = batch
  params = t5.load(str(tmp_path), t5.get_model("tiny"))
  f32 = apply(t5.get_model("tiny"), params, ids, mask)
  p16 = jax.tree.map(lambda x: x.astype("bfloat16"), params)
  b16 = apply(t5.get_model("tiny", "bfloat16"), p16, ids, mask)
  assert b16.dtype == np.dtype("bfloat16")
  err = np.abs(np.asarray(b16, np.float32) - f32)[mask].max()
  assert err < 0.1 * np.abs(f32).max(), err


def test_wrong_checkpoint_names_the_tensor(reference, tmp_path):
  reference.save_pretrained(tmp_path)
  with pytest.raises(
    ValueError,
    match=r"'small'[\s\S]*encoder\.block\.0\.layer\.0\.SelfAttention"
    r"\.q\.weight' has shape \(32, 32\), expected \(384, 512\)",
  ):
    t5.load(str(tmp_path), t5.get_model("small"))
  from safetensors.numpy import load_file, save_file

  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  save_file(tensors, tmp_path / "model.safetensors")
  missing = r"missing tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight' "
  with pytest.raises(ValueError, match=missing + r"\(expected shape \(32, 64\)\)"):
    t5.load(str(tmp_path), t5.get_model("tiny"))
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match="never unpickle"):
    t5.load(str(pickled), t5.get_model("tiny"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    t5.load(str(tmp_path / "nowhere"), t5.get_model("tiny"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="not a T5X checkpoint"):
    t5.load(str(tmp_path / "empty"), t5.get_model("tiny"))


def test_sentencepiece_tokenizer(tmp_path):
  import sentencepiece as spm

  lines = [
    f"a {c} {s} moves {d}"
    for c in ("red", "green", "blue", "yellow", "orange")
    for s in ("circle", "square", "triangle")
    for d in ("left", "right", "up", "down")
  ]
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_prefix=str(tmp_path / "sp"),
    vocab_size=40,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    hard_vocab_limit=False,
  )
  tok = t5.Tokenizer(str(tmp_path / "sp.model"), max_length=6)
  ids, mask = tok(["a red circle moves left", "", "red " * 20])
  assert ids.shape == mask.shape == (3, 6) and ids.dtype == np.int32 and mask.dtype == bool
  pieces = tok.sp.encode("a red circle moves left")
  n = min(len(pieces), 5)
  np.testing.assert_array_equal(ids[0, :n], pieces[:n])
  assert ids[0, n] == t5.EOS_ID and mask[0].sum() == n + 1
  np.testing.assert_array_equal(ids[1], [t5.EOS_ID, 0, 0, 0, 0, 0])  # empty caption: EOS only
  np.testing.assert_array_equal(mask[1], [True] + [False] * 5)
  assert ids[2, -1] == t5.EOS_ID and mask[2].all()  # truncated, EOS kept
  assert (ids[~mask] == t5.PAD_ID).all()
