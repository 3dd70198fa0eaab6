"""Text-conditioned bidirectional MaskGIT transformer over C-ViViT video tokens (paper §4.2).

The video is tokenised by the frozen C-ViViT into a grid of codes [t, h, w] (t = 1 + T/t_p time
steps, t = 1 for an image), flattened time-major to N = t·h·w tokens. A masked subset of the
tokens is replaced by [MASK] (id `codebook_size`); the transformer sees every token (it is
bidirectional), attends to the text embeddings by cross-attention in every block, and predicts
logits over the codebook at every position. Training (cosine mask ratio, loss on masked tokens
only) lives in `phenaki_jax.masking`; sampling (parallel decoding, classifier-free guidance) in
`phenaki_jax.decode`.

Design choices:
  * Positional embeddings are factorised over (t, h, w): the sum of three learned tables
    [max_t, D], [h, D], [w, D]. Any t <= max_t works by slicing the time table, so an image
    (t = 1) and a shorter clip need no padding.
  * `token_valid` [B, N] marks real positions. Invalid positions (e.g. the padded later time steps
    of an image example in a joint image/video batch) are masked out as attention keys for every
    query, so nothing they hold can reach a valid position (attention is the only op that mixes
    positions). Their own outputs are meaningless and must be ignored by the loss.
  * Text embeddings [B, L, D_text] have their padding zeroed (`text_mask` False) and are either
    projected once to the model width by a Dense (`project_text=True`, the default; cheaper for
    small models) or fed directly to every block's cross-attention key/value projections
    (`project_text=False`). The paper's 1.8B count is only reached the second way (per-block
    K/V projections from the 4096-d T5-XXL embeddings); a shared projection gives ~1.65B.
  * Output head: the Transformer's final LayerNorm followed by an untied Dense to K logits,
    computed in float32.
  * `group` g > 1 (a CPU-scale option, not the paper's): the transformer runs over g×g groups of
    neighbouring tokens instead of single tokens. A group's input is its g² token embeddings
    concatenated and projected to the width; its output is projected to g² sets of K logits,
    one per token. Inputs, outputs, masking and decoding stay per token (a group may hold masked
    and given tokens at once), so nothing outside the model changes, but attention costs ~g⁴
    less (the tiny Shapes grid 5×8×8 = 320 tokens becomes 80 positions).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from phenaki_jax.models import layers

Array = jax.Array

# Paper configuration (appendix B): 8192 codes, 11 frames of 128x128 -> 6x16x16 = 1536 tokens.
PAPER_CODEBOOK_SIZE = 8192
PAPER_GRID = (6, 16, 16)

SIZES = {
  "tiny": dict(width=128, depth=3, num_heads=4, mlp_dim=384),
  "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
  "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
  # The paper's model (§4.2 / appendix B): 24 layers, width 2048, MLP 8192, 32 heads, 1.8B
  # parameters with T5-XXL (4096-d) text attended directly by each block.
  "1.8B": dict(width=2048, depth=24, num_heads=32, mlp_dim=8192, project_text=False),
}


def mask_token_id(codebook_size: int) -> int:
  """The [MASK] token id for a codebook of `codebook_size` codes (ids 0..K-1 are codes)."""
  return codebook_size


HEADS = ("dense", "tied")  # see MaskGIT.head


class MaskGIT(nn.Module):
  """Bidirectional transformer: video tokens [B, N] + text [B, L, D_text] -> logits [B, N, K]."""

  codebook_size: int
  grid: tuple[int, int, int]  # (max_time_steps, h, w) of the token grid
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  project_text: bool = True
  # "dense": an untied Dense head; "tied": MaskGIT's head, logits = Dense+GELU+LayerNorm(x) · the
  # token embeddings of the K codes + a per-code bias, so codes with alike embeddings (e.g. from
  # token_embed_init="codebook") get alike logits from the start.
  head: str = "dense"
  # Tokens per side of the square groups the transformer runs over (1: one position per token).
  group: int = 1
  scan: bool = False
  remat: bool = False
  dtype: Any = jnp.float32

  @property
  def mask_token_id(self) -> int:
    return mask_token_id(self.codebook_size)

  def num_time_steps(self, num_tokens: int) -> int:
    """Time steps t of a flattened token sequence of length N = t·h·w (validated)."""
    max_t, h, w = self.grid
    if num_tokens % (h * w) or not 1 <= num_tokens // (h * w) <= max_t:
      raise ValueError(
        f"{num_tokens} tokens is not t*h*w with 1 <= t <= {max_t} for grid {self.grid}"
      )
    return num_tokens // (h * w)

  def group_order(self, x: Array) -> Array:
    """[B, N, ...] in token (time-major raster) order -> the order of the logits that
    `__call__(..., token_order=False)` returns: each g×g group's tokens together, groups in
    raster order (the identity for group 1)."""
    if self.group == 1:
      return x
    b, n = x.shape[:2]
    _, h, w = self.grid
    t = self.num_time_steps(n)
    flat = x.reshape(b, n, -1)
    return _to_groups(flat, t, h, w, self.group).reshape(x.shape)

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    text: Array,
    text_mask: Array,
    token_valid: Optional[Array] = None,
    *,
    train: bool = False,
    token_order: bool = True,
  ) -> Array:
    """Logits [B, N, K] for every token, in token order; with `token_order=False` (training:
    the loss does not care about order) in `group_order`, which skips transposing the logits
    and their gradient (with the trainer's other savings ~12% of the tiny train step)."""
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, N], got shape {tokens.shape}")
    batch, num_tokens = tokens.shape
    if text.ndim != 3 or text.shape[0] != batch:
      raise ValueError(f"text must be [B={batch}, L, D_text], got shape {text.shape}")
    if text_mask.shape != text.shape[:2]:
      raise ValueError(f"text_mask must be {text.shape[:2]}, got {text_mask.shape}")
    if token_valid is not None and token_valid.shape != tokens.shape:
      raise ValueError(f"token_valid must be {tokens.shape}, got {token_valid.shape}")
    t = self.num_time_steps(num_tokens)
    max_t, h, w = self.grid
    g = self.group
    deterministic = not train
    init = nn.initializers.normal(stddev=0.02)

    # Token + factorised (t, h, w) positional embeddings.
    if self.head not in HEADS:
      raise ValueError(f"head={self.head!r}: use one of {HEADS}")
    check_group(g, (h, w), self.head)
    token_embed = nn.Embed(
      self.codebook_size + 1,
      self.width,
      dtype=self.dtype,
      name="token_embed",
      embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
    )
    x = token_embed(tokens)  # [B, N, D]
    if g > 1:
      # [B, t·h·w, D] -> [B, t·(h/g)·(w/g), g·g·D] -> [B, N/g², D]
      x = _to_groups(x, t, h, w, g)
      x = layers.dense(self.width, (None, "embed"), dtype=self.dtype, name="group_in")(x)
      if token_valid is not None:
        token_valid = _to_groups(token_valid[..., None], t, h, w, g).any(axis=-1)
      h, w, num_tokens = h // g, w // g, num_tokens // (g * g)
    pos_t = self.param(
      "pos_t", nn.with_logical_partitioning(init, (None, "embed")), (max_t, self.width)
    )  # [max_t, D]
    pos_h = self.param(
      "pos_h", nn.with_logical_partitioning(init, (None, "embed")), (h, self.width)
    )  # [h, D]
    pos_w = self.param(
      "pos_w", nn.with_logical_partitioning(init, (None, "embed")), (w, self.width)
    )  # [w, D]
    pos = pos_t[:t, None, None] + pos_h[None, :, None] + pos_w[None, None, :]  # [t, h, w, D]
    x = (x + pos.reshape(num_tokens, self.width)[None]).astype(self.dtype)  # [B, N, D]
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)

    # Text: zero the padding (so even an all-padding row is independent of its values), project.
    text_mask = text_mask.astype(bool)
    text = jnp.where(text_mask[..., None], text, 0).astype(self.dtype)  # [B, L, D_text]
    if self.project_text:
      text = layers.dense(self.width, (None, "embed"), dtype=self.dtype, name="text_proj")(
        text
      )  # [B, L, D]

    self_mask = None if token_valid is None else token_valid.astype(bool)[:, None, None, :]
    cross_mask = text_mask[:, None, None, :]  # [B, 1, 1, L]
    x = layers.Transformer(
      depth=self.depth,
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      dropout=self.dropout,
      cross_attention=True,
      scan=self.scan,
      remat=self.remat,
      dtype=self.dtype,
      name="transformer",
    )(x, self_mask, text, cross_mask, deterministic=deterministic)
    # The Transformer ends in a LayerNorm; the head runs in float32.
    if self.head == "dense":
      logits = layers.dense(
        g * g * self.codebook_size, ("embed", "vocab"), dtype=jnp.float32, name="head"
      )(x.astype(jnp.float32))  # [B, N/g², g²·K]
      if g == 1:
        return logits  # [B, N, K]
      if not token_order:
        return logits.reshape(batch, -1, self.codebook_size)  # [B, N, K], group order
      return _from_groups(logits, t, h, w, g)  # [B, N, K]
    h = layers.dense(self.width, ("embed", None), dtype=jnp.float32, name="head_transform")(
      x.astype(jnp.float32)
    )
    h = layers.layer_norm(jnp.float32, name="head_ln")(nn.gelu(h))  # [B, N, D]
    table = token_embed.embedding[: self.codebook_size].astype(jnp.float32)  # [K, D], no [MASK]
    bias = self.param(
      "head_bias",
      nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
      (self.codebook_size,),
    )
    return jnp.einsum("bnd,kd->bnk", h, table) + bias  # [B, N, K]


def check_group(group, grid_hw: tuple[int, int], head: str, prefix: str = "") -> None:
  """Raises ValueError unless `group` is an int >= 1 dividing the token grid (h, w) and, when
  > 1, the head is "dense" (a tied head scores single tokens). `prefix` names the setting."""
  h, w = grid_hw
  if not isinstance(group, int) or group < 1 or h % group or w % group:
    raise ValueError(f"{prefix}group={group!r} must be >= 1 and divide the token grid's {h}x{w}")
  if group > 1 and head != "dense":
    raise ValueError(
      f"{prefix}group={group} needs {prefix}head='dense' (a tied head scores single tokens)"
    )


def _to_groups(x: Array, t: int, h: int, w: int, g: int) -> Array:
  """[B, t·h·w, C] (time-major) -> [B, t·(h/g)·(w/g), g·g·C]: each g×g group's tokens, in order."""
  b, _, c = x.shape
  x = x.reshape(b, t, h // g, g, w // g, g, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t * (h // g) * (w // g), g * g * c)


def _from_groups(x: Array, t: int, hg: int, wg: int, g: int) -> Array:
  """Inverse of `_to_groups` for a group grid (t, hg, wg): [B, t·hg·wg, g·g·C] -> [B, N, C]."""
  b = x.shape[0]
  c = x.shape[-1] // (g * g)
  x = x.reshape(b, t, hg, wg, g, g, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t * hg * g * wg * g, c)


def get_model(size: str, **overrides) -> MaskGIT:
  """A MaskGIT of a named size; `codebook_size`/`grid` default to the paper's (8192, (6,16,16)),
  and `dtype` may be a name."""
  if size not in SIZES:
    raise ValueError(f"unknown MaskGIT size {size!r}; choose from {sorted(SIZES)}")
  kwargs = dict(codebook_size=PAPER_CODEBOOK_SIZE, grid=PAPER_GRID)
  kwargs.update(SIZES[size])
  kwargs.update(overrides)
  if "dtype" in kwargs:
    kwargs["dtype"] = layers.compute_dtype(kwargs["dtype"])
  return MaskGIT(**kwargs)


def count_params(model: MaskGIT, text_dim: int, text_len: int = 1) -> int:
  """Number of parameters, from `jax.eval_shape` of init (nothing is allocated)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(model, text_dim, text_len))
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes["params"]))


def init_inputs(model: MaskGIT, text_dim: int, text_len: int = 1) -> tuple:
  """ShapeDtypeStructs (tokens [1, N], text [1, L, D_text], text_mask [1, L]) to trace
  `model.init` with: the parameters' shapes depend on the grid and the text width only."""
  max_t, h, w = model.grid
  return (
    jax.ShapeDtypeStruct((1, max_t * h * w), jnp.int32),
    jax.ShapeDtypeStruct((1, text_len, text_dim), jnp.float32),
    jax.ShapeDtypeStruct((1, text_len), jnp.bool_),
  )
