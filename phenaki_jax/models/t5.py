"""T5 v1.1 encoder (the frozen text encoder of Phenaki, paper §4.2: T5-XXL token embeddings).

T5 v1.1 (= the T5X `t5_1_1` network): RMSNorm before each sub-block, gated-GELU MLP, no biases,
bidirectional bucketed relative position biases computed once and shared by all layers, token
embeddings not scaled. Returns the last hidden state [B, L, D] (after the final norm).

The parameter tree mirrors T5X's encoder, so T5X checkpoints load without renaming:

  token_embedder/embedding     [vocab, D]
  relpos_bias/rel_embedding    [heads, buckets]
  layers_{i}/pre_attention_layer_norm/scale          [D]
  layers_{i}/attention/{query,key,value}/kernel      [D, heads * head_dim]
  layers_{i}/attention/out/kernel                    [heads * head_dim, D]
  layers_{i}/pre_mlp_layer_norm/scale                [D]
  layers_{i}/mlp/{wi_0,wi_1}/kernel [D, mlp]; mlp/wo/kernel [mlp, D]
  encoder_norm/scale           [D]

Loaders (`load`, which detects the format):
  * Hugging Face safetensors (`google/t5-v1_1-*` names, `T5EncoderModel` or the full
    `T5ForConditionalGeneration`), a single file or a sharded `*.safetensors.index.json`;
  * T5X checkpoints: the msgpack `checkpoint` file with TensorStore (zarr) arrays, and the newer
    Orbax layout (`checkpoint_<step>/state/_METADATA`). Scanned (`scalable_t5`) checkpoints are
    not supported.
A missing tensor or a shape mismatch raises ValueError naming the tensor, the shape found and
the shape this size expects. Pickled PyTorch files (`pytorch_model.bin`) are refused.

Tokenisation: SentencePiece with the T5 conventions (pad 0, EOS 1 appended, truncated so that
EOS always fits).
"""

import functools
import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io

Array = jax.Array

# T5 v1.1 sizes (Raffel et al. 2020; the t5x `t5_1_1` gin files). `tiny` is for tests only.
SIZES = {
  "tiny": dict(width=32, depth=2, num_heads=4, head_dim=8, mlp_dim=64),
  "small": dict(width=512, depth=8, num_heads=6, head_dim=64, mlp_dim=1024),
  "base": dict(width=768, depth=12, num_heads=12, head_dim=64, mlp_dim=2048),
  "large": dict(width=1024, depth=24, num_heads=16, head_dim=64, mlp_dim=2816),
  "xl": dict(width=2048, depth=24, num_heads=32, head_dim=64, mlp_dim=5120),
  "xxl": dict(width=4096, depth=24, num_heads=64, head_dim=64, mlp_dim=10240),
}
VOCAB_SIZE = 32128  # 32000 SentencePiece pieces + 100 sentinels, padded to a multiple of 128.
PAD_ID, EOS_ID = 0, 1


def get_model(size: str, dtype: str = "float32") -> "T5Encoder":
  """The T5 v1.1 encoder of a named size (`SIZES`)."""
  if size not in SIZES:
    raise ValueError(f"unknown T5 size {size!r}; expected one of {sorted(SIZES)}")
  return T5Encoder(**SIZES[size], dtype=dtype)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of (key - query) offsets: int32 [length, length].

  Half of the buckets hold positive offsets; in each half, offsets below `num_buckets // 4` get
  one bucket each and larger ones share logarithmically wider buckets up to `max_distance`.
  Computed in float32 as the reference implementations do, so bucket edges agree with them.
  """
  offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query
  half = num_buckets // 2
  buckets = (offset > 0).astype(np.int32) * half
  distance = np.abs(offset)
  max_exact = half // 2
  safe = np.maximum(distance, max_exact).astype(np.float32)  # log(0) never evaluated
  large = max_exact + (
    np.log(safe / np.float32(max_exact))
    / np.float32(math.log(max_distance / max_exact))
    * np.float32(half - max_exact)
  ).astype(np.int32)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction; statistics in float32."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (x.shape[-1],),
      jnp.float32,
    )
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * jnp.asarray(scale, jnp.float32)).astype(self.dtype)


def _dense(features: int, axes: tuple, dtype, name: str) -> nn.Dense:
  return nn.Dense(
    features,
    use_bias=False,
    dtype=dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
  )


class SelfAttention(nn.Module):
  """Multi-head attention with an additive position bias; T5 does not scale the logits."""

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
    # x [B, L, D]; bias [H, L, L] float32; mask [B, L] bool (True = real token).
    b, l, d = x.shape
    inner = self.num_heads * self.head_dim
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)  # [B, L, H, Dh]
    q = split(_dense(inner, ("embed", "heads"), self.dtype, "query")(x))
    k = split(_dense(inner, ("embed", "heads"), self.dtype, "key")(x))
    v = split(_dense(inner, ("embed", "heads"), self.dtype, "value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits + bias[None]  # [B, H, L, L]
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, inner)
    return _dense(d, ("heads", "embed"), self.dtype, "out")(out)


class GatedGeluMlp(nn.Module):
  """gelu(x W0) * (x W1) then W_out; GELU with the tanh approximation (HF `gelu_new`)."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    gate = nn.gelu(_dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "wi_0")(x), approximate=True)
    linear = _dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "wi_1")(x)
    return _dense(x.shape[-1], ("mlp", "embed"), self.dtype, "wo")(gate * linear)


class EncoderLayer(nn.Module):
  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
    y = RMSNorm(dtype=self.dtype, name="pre_attention_layer_norm")(x)
    attention = SelfAttention(self.num_heads, self.head_dim, self.dtype, name="attention")
    x = x + attention(y, bias, mask)
    y = RMSNorm(dtype=self.dtype, name="pre_mlp_layer_norm")(x)
    return x + GatedGeluMlp(self.mlp_dim, self.dtype, name="mlp")(y)


class T5Encoder(nn.Module):
  """T5 v1.1 encoder stack: tokens int32 [B, L] + mask bool [B, L] -> hidden [B, L, width]."""

  width: int = 512
  depth: int = 8
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  vocab_size: int = VOCAB_SIZE
  num_buckets: int = 32
  max_distance: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, mask: Array) -> Array:
    x = nn.Embed(
      self.vocab_size,
      self.width,
      dtype=self.dtype,
      name="token_embedder",
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
    )(tokens)  # [B, L, D]
    rel = RelativePositionBias(self.num_heads, self.num_buckets, name="relpos_bias")
    bias = rel(tokens.shape[1], self.max_distance)  # [H, L, L], shared by all layers
    mask = mask.astype(bool)
    for i in range(self.depth):
      x = EncoderLayer(self.num_heads, self.head_dim, self.mlp_dim, self.dtype, name=f"layers_{i}")(
        x, bias, mask
      )
    return RMSNorm(dtype=self.dtype, name="encoder_norm")(x)


class RelativePositionBias(nn.Module):
  num_heads: int
  num_buckets: int

  @nn.compact
  def __call__(self, length: int, max_distance: int) -> Array:
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", None)),
      (self.num_heads, self.num_buckets),
      jnp.float32,
    )
    buckets = relative_position_buckets(length, self.num_buckets, max_distance)  # static
    return jnp.asarray(table, jnp.float32)[:, buckets]  # [H, L, L]


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def _size_name(model: T5Encoder) -> str:
  """The `SIZES` name of `model`'s shape, or 'custom'."""
  sizes = [
    n
    for n, s in SIZES.items()
    if all(
      s[k] == getattr(model, k) for k in ("width", "depth", "num_heads", "head_dim", "mlp_dim")
    )
  ]
  return sizes[0] if sizes else "custom"


def assemble(model: T5Encoder, sources: Mapping[tuple, checkpoint_io.Source], where: str) -> dict:
  """Builds the params tree from `sources` {param path: Source}; `where` names the checkpoint.

  Shapes are checked in the source's own layout, so errors quote the file's tensor shapes.
  """
  return checkpoint_io.assemble(
    model, sources, f"T5 checkpoint {where} does not fit T5 v1.1 size {_size_name(model)!r}"
  )


def _hf_sources(keys: Sequence[str], read: Callable[[str], np.ndarray], depth: int) -> dict:
  """Maps our param paths to Hugging Face T5 tensor names (torch Linear is [out, in])."""
  anchor = [k for k in keys if k.endswith("encoder.final_layer_norm.weight")]
  prefix = anchor[0][: -len("encoder.final_layer_norm.weight")] if anchor else ""
  e = prefix + "encoder."
  t = functools.partial(checkpoint_io.source, read, transposed=True)
  same = functools.partial(checkpoint_io.source, read)
  embed = prefix + "shared.weight"
  if embed not in keys and e + "embed_tokens.weight" in keys:
    embed = e + "embed_tokens.weight"
  sources = {
    ("token_embedder", "embedding"): same(embed),
    ("relpos_bias", "rel_embedding"): t(
      e + "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ),
    ("encoder_norm", "scale"): same(e + "final_layer_norm.weight"),
  }
  for i in range(depth):
    b, layer = f"{e}block.{i}.layer.", f"layers_{i}"
    sources[(layer, "pre_attention_layer_norm", "scale")] = same(b + "0.layer_norm.weight")
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      sources[(layer, "attention", ours, "kernel")] = t(f"{b}0.SelfAttention.{theirs}.weight")
    sources[(layer, "pre_mlp_layer_norm", "scale")] = same(b + "1.layer_norm.weight")
    for w in ("wi_0", "wi_1", "wo"):
      sources[(layer, "mlp", w, "kernel")] = t(f"{b}1.DenseReluDense.{w}.weight")
  return sources


def hf_safetensors_files(path: str) -> list[pathlib.Path]:
  """The safetensors file(s) of a HF checkpoint: a file, an index json, or a directory."""
  p = pathlib.Path(path)
  if p.is_dir():
    index = sorted(p.glob("*.safetensors.index.json"))
    if index:
      p = index[0]
    else:
      files = sorted(p.glob("*.safetensors"))
      if not files:
        if (p / "pytorch_model.bin").exists() or list(p.glob("pytorch_model*.bin")):
          raise ValueError(
            f"{p} holds only pickled PyTorch weights (pytorch_model*.bin), which "
            "we never unpickle; convert them to safetensors first."
          )
        raise FileNotFoundError(f"no *.safetensors or *.safetensors.index.json in {p}")
      return files
  if p.name.endswith(".index.json"):
    weight_map = json.loads(p.read_text())["weight_map"]
    return [p.parent / f for f in sorted(set(weight_map.values()))]
  if p.suffix == ".safetensors":
    return [p]
  raise ValueError(f"{p} is not a safetensors file, index or directory")


def load_hf_safetensors(path: str, model: T5Encoder) -> dict:
  """Loads encoder params from HF T5 safetensors (single file, sharded index or directory)."""
  keys, read = checkpoint_io.open_safetensors(hf_safetensors_files(path))
  return assemble(model, _hf_sources(keys, read, model.depth), path)


def _t5x_location(path: str) -> tuple[str, pathlib.Path]:
  """('orbax' | 'msgpack', directory) of a T5X checkpoint given any of its usual paths."""
  p = pathlib.Path(path)
  if p.is_file() and p.name == "checkpoint":
    return "msgpack", p.parent
  if not p.is_dir():
    raise FileNotFoundError(f"T5X checkpoint {p} does not exist")
  if (p / "state" / "_METADATA").exists():
    return "orbax", p / "state"
  if (p / "_METADATA").exists():
    return "orbax", p
  if (p / "checkpoint").is_file():
    return "msgpack", p
  steps = [
    (int(m.group(1)), c)
    for c in p.iterdir()
    if (m := re.fullmatch(r"checkpoint_(\d+)", c.name)) and c.is_dir()
  ]
  if steps:
    return _t5x_location(str(max(steps)[1]))
  raise ValueError(
    f"{p} is not a T5X checkpoint: no `checkpoint` msgpack file, no Orbax "
    "`_METADATA`, no checkpoint_<step> sub-directory"
  )


def _read_tensorstore(spec: dict, ckpt_dir: pathlib.Path) -> np.ndarray:
  """Reads one array that T5X wrote with TensorStore; its spec holds a relative path."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  spec = dict(spec)
  kvstore = dict(spec.get("kvstore", {}))
  rel = kvstore.get("path", spec.pop("path", None))
  if rel is None:
    raise ValueError(f"TensorStore spec without a path: {spec}")
  spec["kvstore"] = {"driver": "file", "path": str(ckpt_dir / rel)}
  metadata = {
    k: v for k, v in dict(spec.get("metadata", {})).items() if k not in ("chunks", "compressor")
  }
  spec["metadata"] = {
    k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metadata.items()
  }
  spec.pop("bucket", None)
  return np.asarray(ts.open(spec, open=True).result().read().result())


def _t5x_sources(read: Callable[[tuple], np.ndarray], depth: int) -> dict:
  """Maps our param paths to T5X `target` paths (same names, encoder/ and token_embedder/)."""
  sources = {("token_embedder", "embedding"): "target/token_embedder/embedding"}
  names = [("relpos_bias", "rel_embedding"), ("encoder_norm", "scale")]
  for i in range(depth):
    layer = f"layers_{i}"
    names += [(layer, "pre_attention_layer_norm", "scale"), (layer, "pre_mlp_layer_norm", "scale")]
    names += [(layer, "attention", w, "kernel") for w in ("query", "key", "value", "out")]
    names += [(layer, "mlp", w, "kernel") for w in ("wi_0", "wi_1", "wo")]
  sources.update({n: "target/encoder/" + "/".join(n) for n in names})
  read_name = lambda name: read(tuple(name.split("/")))
  return {ours: checkpoint_io.source(read_name, theirs) for ours, theirs in sources.items()}


def load_t5x(path: str, model: T5Encoder) -> dict:
  """Loads encoder params from a T5X checkpoint (msgpack + TensorStore, or Orbax)."""
  kind, ckpt_dir = _t5x_location(path)
  if kind == "msgpack":
    contents = flax.serialization.msgpack_restore((ckpt_dir / "checkpoint").read_bytes())
    state = contents["optimizer"] if "optimizer" in contents else contents  # version 0: no wrapper

    def read(name: tuple) -> np.ndarray:
      node = state
      for part in name:
        node = node[part]  # KeyError = missing tensor
      if isinstance(node, Mapping) and "driver" in node:
        return _read_tensorstore(node, ckpt_dir)
      return np.asarray(node)

    return assemble(model, _t5x_sources(read, model.depth), str(ckpt_dir))

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(ckpt_dir).item_metadata.tree
  wanted = {
    "target": {
      k: v for k, v in tree.get("target", {}).items() if k in ("encoder", "token_embedder")
    }
  }
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(
    ckpt_dir,
    args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
  )

  def read_restored(name: tuple) -> np.ndarray:
    node = restored
    for part in name:
      node = node[part]
    return np.asarray(node)

  return assemble(model, _t5x_sources(read_restored, model.depth), str(ckpt_dir))


def load(path: str, model: T5Encoder) -> dict:
  """Loads encoder params from HF safetensors or a T5X checkpoint, detecting which."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"T5 checkpoint {p} does not exist")
  is_hf = (p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".index.json"))) or (
    p.is_dir()
    and (
      any(p.glob("*.safetensors"))
      or any(p.glob("*.safetensors.index.json"))
      or any(p.glob("pytorch_model*.bin"))
    )
  )
  if p.is_file() and p.suffix == ".bin":
    raise ValueError(
      f"{p} is a pickled PyTorch file, which we never unpickle; convert it to safetensors first."
    )
  return load_hf_safetensors(path, model) if is_hf else load_t5x(path, model)


def random_params(model: T5Encoder, seed: int = 0) -> dict:
  """Random float32 params for tests and benchmarks: N(0, 1) embeddings and position biases,
  N(0, 1/fan_in) kernels, unit norm scales. Drawn with numpy: nothing to compile."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in checkpoint_io.expected_shapes(model).items():
    if path[-1] == "scale":
      flat[path] = np.ones(shape, np.float32)
    elif path[-1] == "kernel":
      flat[path] = (rng.standard_normal(shape, np.float32) / np.sqrt(shape[0])).astype(np.float32)
    else:
      flat[path] = rng.standard_normal(shape, np.float32)
  return flax.traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------
# Tokenisation.
# ------------------------------------------------------------------------------------------
def find_vocab(checkpoint: str) -> Optional[str]:
  """The SentencePiece model shipped beside a HF checkpoint (`spiece.model`), if any."""
  if not checkpoint:
    return None
  p = pathlib.Path(checkpoint)
  for d in (p, p.parent):
    for name in ("spiece.model", "sentencepiece.model"):
      if d.is_dir() and (d / name).is_file():
        return str(d / name)
  return None


class Tokenizer:
  """SentencePiece tokeniser with T5 conventions: pieces + EOS, padded with 0 to max_length."""

  def __init__(self, vocab_path: str, max_length: int):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"SentencePiece model {vocab_path} does not exist")
    self.sp = spm.SentencePieceProcessor(model_file=vocab_path)
    self.max_length = max_length
    if self.sp.pad_id() not in (PAD_ID, -1) or self.sp.eos_id() != EOS_ID:
      raise ValueError(
        f"{vocab_path} is not a T5 vocabulary: pad id {self.sp.pad_id()}, "
        f"eos id {self.sp.eos_id()} (T5 uses pad 0, eos 1)"
      )

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [B, max_length], mask bool [B, max_length])."""
    ids = np.full((len(texts), self.max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for row, pieces in enumerate(self.sp.encode(list(texts))):
      pieces = pieces[: self.max_length - 1] + [EOS_ID]
      ids[row, : len(pieces)] = pieces
      mask[row, : len(pieces)] = True
    return ids, mask
