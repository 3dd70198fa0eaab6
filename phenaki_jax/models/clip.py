"""CLIP image and text towers (Radford et al. 2021, arXiv 2103.00020, §2.4) for CLIP score.

CLIP score (Hessel et al. 2021, arXiv 2104.08718) rates how well an image fits a caption by the
cosine of their CLIP embeddings; video papers average it over frames. This module reads the
public Hugging Face checkpoints (`openai/clip-vit-base-patch32` by default: `config.json`,
`model.safetensors`, `tokenizer.json`) from a local directory; nothing is downloaded.

Architecture (OpenAI CLIP, as `transformers.CLIPModel` names it):
  image: PxP patches (conv, no bias; P = 32 in B/32) + [CLS] + learned positions -> LayerNorm
    ("pre_layrnorm") -> pre-LN transformer -> LayerNorm of the [CLS] token -> linear
    projection (no bias);
  text: token + learned positions (77) -> pre-LN transformer with a causal mask -> final
    LayerNorm -> the hidden state at the end-of-text token -> linear projection (no bias).
  Blocks: x + attn(LN(x)); x + fc2(act(fc1(LN(x)))); act is QuickGELU, x * sigmoid(1.702 x), in
  the OpenAI checkpoints (`hidden_act: quick_gelu`); LayerNorm eps 1e-5.
The end-of-text position follows transformers: the first `eos_token_id` in each row, or, for
configs that carry the outdated `eos_token_id: 2` (the OpenAI ones), the argmax of the token ids
(OpenAI's rule: <|endoftext|> has the largest id). With padding by <|endoftext|>, as the
tokenizer does here, both give the first <|endoftext|>.

Protocol (`PROTOCOL`, the preprocessing of `CLIPImageProcessor` in its PIL form and of
torchmetrics' CLIPScore): resize the shortest side to 224 with PIL's bicubic filter
(antialiased when shrinking) on the uint8 image, long side int(224 * long / short); centre crop
224x224 at top = (h - 224) // 2; x / 255; (x - mean) / std per channel. Captions: lower-cased
byte-level BPE, <|startoftext|> ... <|endoftext|>, truncated to 77 tokens, padded with
<|endoftext|>. The score of a pair is 100 * max(cos(image, text), 0).

Parameter tree (`load_clip` maps the Hugging Face names onto it):
  vision/{patch_embed/kernel, class_embedding, position_embedding, pre_norm, post_norm,
    projection/kernel}, vision/layers_{i}/{norm1, attn/{query,key,value,out}, norm2, fc1, fc2}
  text/{token_embedding/embedding, position_embedding, final_norm, projection/kernel},
    text/layers_{i}/... as in vision; logit_scale
"""

import functools
import json
import pathlib
from typing import Any, Callable, Optional, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io

Array = jax.Array

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PROTOCOL = {
  "model": "openai/clip-vit-base-patch32 (Hugging Face checkpoint)",
  "resize": "shortest side 224, PIL bicubic on uint8 (antialiased when shrinking)",
  "crop": "centre 224x224, top-left at ((h - 224) // 2, (w - 224) // 2)",
  "value_range": "x / 255, then (x - mean) / std per RGB channel",
  "mean": IMAGE_MEAN,
  "std": IMAGE_STD,
  "text": "BPE tokenizer.json, <|startoftext|> ... <|endoftext|>, 77 tokens, <|endoftext|> pad",
  "feature": "projected embeddings: image [CLS] after post-LN, text end-of-text token",
  "score": "100 * max(cos(image, text), 0) per pair, averaged over pairs",
}

# OpenAI CLIP sizes (the Hugging Face configs openai/clip-vit-{base-patch32,base-patch16,
# large-patch14}).
SIZES = {
  "B/32": dict(patch_size=32),
  "B/16": dict(patch_size=16),
  "L/14": dict(
    patch_size=14,
    vision_width=1024,
    vision_depth=24,
    vision_heads=16,
    vision_mlp_dim=4096,
    text_width=768,
    text_heads=12,
    text_mlp_dim=3072,
    embed_dim=768,
  ),
}

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls on every backend: scores reproduce


def quick_gelu(x: Array) -> Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": functools.partial(nn.gelu, approximate=False)}


class Attention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array]) -> Array:
    # x [B, L, D]; mask [L, L] bool (True = may attend) or None.
    b, l, d = x.shape
    head_dim = d // self.num_heads
    dense = lambda name: nn.Dense(d, precision=HIGHEST, name=name)
    split = lambda t: t.reshape(b, l, self.num_heads, head_dim)  # [B, L, H, Dh]
    q = split(dense("query")(x)) * head_dim**-0.5
    k, v = split(dense("key")(x)), split(dense("value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=HIGHEST).reshape(b, l, d)
    return dense("out")(out)


class Block(nn.Module):
  """Pre-LN transformer block."""

  num_heads: int
  mlp_dim: int
  act: str
  eps: float

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array]) -> Array:
    norm = lambda name: nn.LayerNorm(self.eps, use_fast_variance=False, name=name)
    x = x + Attention(self.num_heads, name="attn")(norm("norm1")(x), mask)
    y = nn.Dense(self.mlp_dim, precision=HIGHEST, name="fc1")(norm("norm2")(x))
    y = nn.Dense(x.shape[-1], precision=HIGHEST, name="fc2")(ACTIVATIONS[self.act](y))
    return x + y


class VisionTower(nn.Module):
  """Normalised pixels [N, S, S, 3] -> image embeddings [N, embed_dim]."""

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  act: str
  eps: float

  @nn.compact
  def __call__(self, pixels: Array) -> Array:
    if pixels.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(
        f"CLIP takes [N, {self.image_size}, {self.image_size}, 3], got {pixels.shape}"
      )
    p, grid = self.patch_size, self.image_size // self.patch_size
    x = nn.Conv(
      self.width, (p, p), (p, p), "VALID", use_bias=False, precision=HIGHEST, name="patch_embed"
    )(pixels)  # [N, g, g, D]
    x = x.reshape(x.shape[0], grid * grid, self.width)
    init = nn.initializers.normal(0.02)
    cls = self.param("class_embedding", init, (self.width,))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
    x = x + self.param("position_embedding", init, (grid * grid + 1, self.width))[None]
    norm = lambda name: nn.LayerNorm(self.eps, use_fast_variance=False, name=name)
    x = norm("pre_norm")(x)  # [N, 1 + g*g, D]
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.act, self.eps, name=f"layers_{i}")(x, None)
    pooled = norm("post_norm")(x[:, 0])  # [N, D]
    return nn.Dense(self.embed_dim, use_bias=False, precision=HIGHEST, name="projection")(pooled)


class TextTower(nn.Module):
  """Token ids int32 [N, L] (L <= context_length) -> text embeddings [N, embed_dim]."""

  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  act: str
  eps: float
  eos_token_id: Optional[int]  # None: the end of text is the row's largest id

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    n, length = ids.shape
    if length > self.context_length:
      raise ValueError(f"CLIP takes at most {self.context_length} tokens, got {length}")
    init = nn.initializers.normal(0.02)
    x = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="token_embedding")(ids)
    x = x + self.param("position_embedding", init, (self.context_length, self.width))[None, :length]
    causal = jnp.tril(jnp.ones((length, length), bool))  # [L, L]
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.act, self.eps, name=f"layers_{i}")(x, causal)
    x = nn.LayerNorm(self.eps, use_fast_variance=False, name="final_norm")(x)  # [N, L, D]
    if self.eos_token_id is None:
      end = jnp.argmax(ids, axis=-1)
    else:
      end = jnp.argmax(ids == self.eos_token_id, axis=-1)  # the first end-of-text token
    pooled = x[jnp.arange(n), end]  # [N, D]
    return nn.Dense(self.embed_dim, use_bias=False, precision=HIGHEST, name="projection")(pooled)


class CLIP(nn.Module):
  """Both towers and the logit scale; `encode_image`, `encode_text` (apply with `method=`)."""

  image_size: int = 224
  patch_size: int = 32
  vision_width: int = 768
  vision_depth: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 3072
  vocab_size: int = 49408
  context_length: int = 77
  text_width: int = 512
  text_depth: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 2048
  embed_dim: int = 512
  act: str = "quick_gelu"
  eps: float = 1e-5
  eos_token_id: Optional[int] = None

  def setup(self):
    if self.act not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.act!r}; expected one of {sorted(ACTIVATIONS)}")
    common = dict(embed_dim=self.embed_dim, act=self.act, eps=self.eps)
    self.vision = VisionTower(
      self.image_size,
      self.patch_size,
      self.vision_width,
      self.vision_depth,
      self.vision_heads,
      self.vision_mlp_dim,
      **common,
    )
    self.text = TextTower(
      self.vocab_size,
      self.context_length,
      self.text_width,
      self.text_depth,
      self.text_heads,
      self.text_mlp_dim,
      eos_token_id=self.eos_token_id,
      **common,
    )
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

  def encode_image(self, pixels: Array) -> Array:
    return self.vision(pixels)

  def encode_text(self, ids: Array) -> Array:
    return self.text(ids)

  def __call__(self, pixels: Array, ids: Array) -> tuple[Array, Array, Array]:
    return self.encode_image(pixels), self.encode_text(ids), self.logit_scale


def get_model(size: str = "B/32") -> CLIP:
  """The OpenAI CLIP of a named size (`SIZES`)."""
  if size not in SIZES:
    raise ValueError(f"unknown CLIP size {size!r}; expected one of {sorted(SIZES)}")
  return CLIP(**SIZES[size])


def model_from_hf_config(config: dict) -> CLIP:
  """The CLIP that a Hugging Face `CLIPConfig` dict (config.json) describes.

  Values the file leaves out take transformers' defaults (those of openai/clip-vit-base-patch32).
  """
  text = {**config.get("text_config", {}), **config.get("text_config_dict", {})}
  vision = {**config.get("vision_config", {}), **config.get("vision_config_dict", {})}
  act = text.get("hidden_act", "quick_gelu")
  if vision.get("hidden_act", "quick_gelu") != act:
    raise ValueError(f"the towers use different activations: {act}, {vision['hidden_act']}")
  eps = text.get("layer_norm_eps", 1e-5)
  if vision.get("layer_norm_eps", 1e-5) != eps:
    raise ValueError("the towers use different LayerNorm epsilons")
  eos = text.get("eos_token_id", 49407)
  return CLIP(
    image_size=vision.get("image_size", 224),
    patch_size=vision.get("patch_size", 32),
    vision_width=vision.get("hidden_size", 768),
    vision_depth=vision.get("num_hidden_layers", 12),
    vision_heads=vision.get("num_attention_heads", 12),
    vision_mlp_dim=vision.get("intermediate_size", 3072),
    vocab_size=text.get("vocab_size", 49408),
    context_length=text.get("max_position_embeddings", 77),
    text_width=text.get("hidden_size", 512),
    text_depth=text.get("num_hidden_layers", 12),
    text_heads=text.get("num_attention_heads", 8),
    text_mlp_dim=text.get("intermediate_size", 2048),
    embed_dim=config.get("projection_dim", 512),
    act=act,
    eps=eps,
    eos_token_id=None if eos == 2 else eos,  # 2: transformers' legacy marker for argmax
  )


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
# How a checkpoint array becomes a param: as is, a torch Linear weight ([out, in] -> [in, out]),
# or a torch conv weight ([out, in, kh, kw] -> [kh, kw, in, out]).
_TO_OURS = {"same": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(2, 3, 1, 0)}
_FILE_SHAPE = {
  "same": lambda s: s,
  "linear": lambda s: s[::-1],
  "conv": lambda s: (s[3], s[2], s[0], s[1]),
}


def _hf_names(depth: dict) -> dict:
  """{param path: (checkpoint name, layout)} for transformers' CLIPModel."""
  names = {
    ("logit_scale",): ("logit_scale", "same"),
    ("vision", "patch_embed", "kernel"): ("vision_model.embeddings.patch_embedding.weight", "conv"),
    ("vision", "class_embedding"): ("vision_model.embeddings.class_embedding", "same"),
    ("vision", "position_embedding"): (
      "vision_model.embeddings.position_embedding.weight",
      "same",
    ),
    ("vision", "projection", "kernel"): ("visual_projection.weight", "linear"),
    ("text", "token_embedding", "embedding"): (
      "text_model.embeddings.token_embedding.weight",
      "same",
    ),
    ("text", "position_embedding"): ("text_model.embeddings.position_embedding.weight", "same"),
    ("text", "projection", "kernel"): ("text_projection.weight", "linear"),
  }
  norms = {
    "vision": {"pre_norm": "pre_layrnorm", "post_norm": "post_layernorm"},
    "text": {"final_norm": "final_layer_norm"},
  }
  for tower, prefix in (("vision", "vision_model."), ("text", "text_model.")):
    for ours, theirs in norms[tower].items():
      names[(tower, ours, "scale")] = (f"{prefix}{theirs}.weight", "same")
      names[(tower, ours, "bias")] = (f"{prefix}{theirs}.bias", "same")
    for i in range(depth[tower]):
      ours_layer, theirs_layer = (tower, f"layers_{i}"), f"{prefix}encoder.layers.{i}."
      modules = {
        ("attn", "query"): "self_attn.q_proj",
        ("attn", "key"): "self_attn.k_proj",
        ("attn", "value"): "self_attn.v_proj",
        ("attn", "out"): "self_attn.out_proj",
        ("fc1",): "mlp.fc1",
        ("fc2",): "mlp.fc2",
      }
      for ours, theirs in modules.items():
        names[ours_layer + ours + ("kernel",)] = (f"{theirs_layer}{theirs}.weight", "linear")
        names[ours_layer + ours + ("bias",)] = (f"{theirs_layer}{theirs}.bias", "same")
      for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
        names[ours_layer + (ours, "scale")] = (f"{theirs_layer}{theirs}.weight", "same")
        names[ours_layer + (ours, "bias")] = (f"{theirs_layer}{theirs}.bias", "same")
  return names


def expected_shapes(model: CLIP) -> dict:
  """{param path: shape} of `model`, without allocating it."""
  pixels = jnp.zeros((1, model.image_size, model.image_size, 3))
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), pixels, jnp.zeros((1, 2), jnp.int32))
  flat = flax.traverse_util.flatten_dict(abstract["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def params_from_hf(
  model: CLIP, read: Callable[[str], np.ndarray], where: str, max_problems: int = 20
) -> dict:
  """The params tree of `model` from a reader of transformers' CLIPModel names.

  Raises:
    ValueError: naming every tensor that is missing or has another shape than `model`'s
      (in the file's layout).
  """
  names = _hf_names({"vision": model.vision_depth, "text": model.text_depth})
  problems, flat = [], {}
  for path, shape in expected_shapes(model).items():
    name, layout = names[path]
    want = _FILE_SHAPE[layout](shape)
    try:
      value = np.asarray(read(name), np.float32)
    except KeyError:
      problems.append(f"missing tensor {name!r} (expected shape {want})")
      continue
    if value.shape != want:
      problems.append(f"tensor {name!r} has shape {value.shape}, expected {want}")
      continue
    flat[path] = _TO_OURS[layout](value)
  if problems:
    more = len(problems) - max_problems
    raise ValueError(
      f"{where} does not fit this CLIP (vision depth {model.vision_depth}, text depth "
      f"{model.text_depth}):\n  "
      + "\n  ".join(problems[:max_problems])
      + (f"\n  ... and {more} more" if more > 0 else "")
    )
  return flax.traverse_util.unflatten_dict(flat)


def load_clip(path: str, model: Optional[CLIP] = None) -> tuple[CLIP, dict]:
  """(model, params) from a Hugging Face CLIP directory (config.json + model.safetensors).

  The model is built from config.json unless given. Pickled weights (pytorch_model.bin) are
  never opened.
  """
  root = pathlib.Path(path)
  weights = root / "model.safetensors" if root.is_dir() else root
  if weights.suffix != ".safetensors" or not weights.is_file():
    raise FileNotFoundError(f"CLIP checkpoint: no model.safetensors at {root}")
  if model is None:
    config = weights.parent / "config.json"
    if not config.is_file():
      raise FileNotFoundError(f"CLIP checkpoint: {config} does not exist (or pass `model`)")
    model = model_from_hf_config(json.loads(config.read_text()))
  _, read = checkpoint_io.open_safetensors([weights])
  return model, params_from_hf(model, read, str(weights))


# ------------------------------------------------------------------------------------------
# Preprocessing, tokenisation, features, score.
# ------------------------------------------------------------------------------------------
def clip_preprocess(images: Union[np.ndarray, Sequence[np.ndarray]], size: int = 224) -> np.ndarray:
  """uint8 RGB images [N, H, W, 3] (or a list of [H, W, 3]) -> float32 [N, size, size, 3].

  On the host with Pillow, exactly as `PROTOCOL` says (transformers' CLIPImageProcessor).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  mean, std = np.asarray(IMAGE_MEAN, np.float32), np.asarray(IMAGE_STD, np.float32)
  out = np.empty((len(images), size, size, 3), np.float32)
  for i, image in enumerate(images):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected uint8 RGB images [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if h > w else (size, new_long)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    out[i] = ((crop.astype(np.float64) * (1 / 255)).astype(np.float32) - mean) / std
  return out


class Tokenizer:
  """CLIP's BPE (`tokenizers`, from tokenizer.json) -> ids int32 [B, context_length]."""

  def __init__(self, path: str, context_length: int = 77):
    from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=g-import-not-at-top

    p = pathlib.Path(path)
    p = p / "tokenizer.json" if p.is_dir() else p
    if not p.is_file():
      raise FileNotFoundError(f"CLIP tokenizer: {p} does not exist")
    self.tok = HFTokenizer.from_file(str(p))
    self.eos_id = self.tok.token_to_id("<|endoftext|>")
    if self.eos_id is None:
      raise ValueError(f"{p} has no <|endoftext|> token: not a CLIP tokenizer")
    self.tok.enable_truncation(context_length)
    self.tok.enable_padding(length=context_length, pad_id=self.eos_id, pad_token="<|endoftext|>")
    self.context_length = context_length

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    encodings = self.tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), self.context_length)
    # Truncation cuts before the post-processor adds its tokens, so rows still end in eos.
    return ids


@functools.lru_cache(maxsize=8)
def _jitted(model: CLIP, method: str) -> Callable:
  return jax.jit(lambda params, x: model.apply({"params": params}, x, method=method))


def clip_image_features(
  model: CLIP, params: dict, images: Union[np.ndarray, Sequence[np.ndarray]]
) -> np.ndarray:
  """Image embeddings (projected, not normalised) of uint8 RGB images -> float32 [N, E]."""
  pixels = clip_preprocess(images, model.image_size)
  return np.asarray(_jitted(model, "encode_image")(params, pixels))


def clip_text_features(model: CLIP, params: dict, ids: Union[np.ndarray, Array]) -> np.ndarray:
  """Text embeddings (projected, not normalised) of token ids [N, L] (`Tokenizer`) -> [N, E]."""
  return np.asarray(_jitted(model, "encode_text")(params, jnp.asarray(ids, jnp.int32)))


def clip_score(image_features: Any, text_features: Any) -> np.ndarray:
  """100 * max(cos(image_i, text_i), 0) for each pair i: [N, E] x [N, E] -> [N].

  The CLIP score of a set is the mean of these. (torchmetrics' CLIPScore documents this
  per-pair clamp; its code clamps the mean instead, which differs only when some cosines are
  negative, rare for real images and captions.)
  """
  a = np.asarray(image_features, np.float64)
  b = np.asarray(text_features, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"expected two [N, E] arrays of one shape, got {a.shape} and {b.shape}")
  cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return 100.0 * np.maximum(cos, 0.0)
