"""Transformer building blocks shared by C-ViViT (paper §4.1) and MaskGIT (§4.2).

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so that
`phenaki_jax.sharding` can map them onto a ('data', 'fsdp', 'model') mesh with a short rules
table. Logical names used here:
  embed   model width            mlp    MLP hidden width
  heads   attention heads        kv     per-head width
  vocab   codebook / vocabulary  layers the scanned layer axis
Activations are constrained at block boundaries as ('batch', 'length', 'embed').
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

default_kernel_init = nn.initializers.xavier_uniform()

DTYPES = ("float32", "bfloat16")


def compute_dtype(dtype) -> jnp.dtype:
  """A model's computation dtype from its name in a config ("float32" or "bfloat16") or a dtype."""
  if isinstance(dtype, str) and dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  return jnp.dtype(dtype)


def constrain(x: Array, axes: tuple) -> Array:
  """Activation sharding constraint by logical names (no-op outside a mesh context)."""
  return nn.with_logical_constraint(x, axes)


def dense(
  features: int,
  axes: tuple,
  *,
  use_bias: bool = True,
  dtype=jnp.float32,
  kernel_init=default_kernel_init,
  name: Optional[str] = None,
) -> nn.Dense:
  """A Dense layer whose kernel is annotated with logical axes `axes` = (in, out)."""
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(kernel_init, axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
  )


def layer_norm(dtype=jnp.float32, name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
    dtype=dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
  )


def masked_mean(values: Array, mask: Array) -> Array:
  """Mean of `values` where `mask` is True (0 if nothing is): `masked_cross_entropy`'s
  normalisation, e.g. the loss of a subset from its per-token `token_nll`."""
  mask = mask.astype(bool)
  return jnp.where(mask, values, 0.0).sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32)


def dot_product_attention(q: Array, k: Array, v: Array, mask: Optional[Array] = None) -> Array:
  """softmax(q·kᵀ/√d)·v for q [B, Q, H, Dh], k and v [B, K, H, Dh] → [B, Q, H, Dh].

  `mask` is boolean, broadcastable to [B, H, Q, K]; True = may attend. A query with no allowed
  key attends uniformly (as `jax.nn.dot_product_attention` does). The exponentials are
  normalised after the value matmul, on [B, Q, H] instead of [B, H, Q, K]: the same result as
  `jax.nn.dot_product_attention` to float rounding, and half its time (forward + backward) for
  the tiny MaskGIT on a 2-core CPU, where the elementwise passes over the [B, H, Q, K] scores,
  not the matmuls, are the cost (docs/experiments.md, "Attention kernel"). Scores and their exponentials are float32.
  """
  if k.shape[1] == 1:
    # One key (e.g. the tiny C-ViViT's patch-local spatial layers): its weight is 1 whatever the
    # score or mask, so the output is its value (exactly what the general path computes) and the
    # query and key get no gradient; this skips the batched 1×1 matmuls.
    return jnp.broadcast_to(v, q.shape[:3] + v.shape[3:]).astype(v.dtype)
  scale = 1.0 / np.sqrt(q.shape[-1])
  scores = (
    jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  )  # [B, H, Q, K]
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  scores = scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
  weights = jnp.exp(scores)  # [B, H, Q, K], max 1
  out = jnp.einsum(
    "bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
  )  # [B, Q, H, Dh]
  total = jnp.einsum("bhqk->bqh", weights)[..., None]  # [B, Q, H, 1], >= 1
  return (out / total).astype(v.dtype)


class Attention(nn.Module):
  """Multi-head dot-product attention (self- or cross-).

  `mask` is boolean, broadcastable to [B, heads, Q, K]; True = may attend.
  """

  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, context: Optional[Array] = None, mask: Optional[Array] = None
  ) -> Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    context = x if context is None else context

    # Explicit 3-D kernels (DenseGeneral would initialise them flat, which breaks the logical
    # axis annotations).
    in_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    out_init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)

    def proj(name, inputs):
      kernel = self.param(
        name,
        nn.with_logical_partitioning(in_init, ("embed", "heads", "kv")),
        (inputs.shape[-1], self.num_heads, head_dim),
      )
      bias = self.param(
        f"{name}_bias",
        nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
        (self.num_heads, head_dim),
      )
      return jnp.einsum(
        "bld,dhk->blhk", inputs.astype(self.dtype), kernel.astype(self.dtype)
      ) + bias.astype(self.dtype)

    q = proj("query", x)  # [B, Q, H, Dh]
    k = proj("key", context)  # [B, K, H, Dh]
    v = proj("value", context)  # [B, K, H, Dh]
    out = dot_product_attention(q, k, v, mask)  # [B, Q, H, Dh]
    out_kernel = self.param(
      "out",
      nn.with_logical_partitioning(out_init, ("heads", "kv", "embed")),
      (self.num_heads, head_dim, width),
    )
    out_bias = self.param(
      "out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (width,)
    )
    return jnp.einsum("blhk,hkd->bld", out, out_kernel.astype(self.dtype)) + out_bias.astype(
      self.dtype
    )


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    width = x.shape[-1]
    h = dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = nn.gelu(h)
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP.

  Call signature is scan-friendly: `(x, broadcast args) -> (x, None)`; `deterministic` is a
  field so that scan/remat see only arrays.
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  cross_attention: bool = False
  deterministic: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: Array,
    mask: Optional[Array] = None,
    context: Optional[Array] = None,
    context_mask: Optional[Array] = None,
  ):
    deterministic = self.deterministic
    x = constrain(x, ("batch", "length", "embed"))
    h = layer_norm(self.dtype, name="ln_self")(x)
    h = Attention(self.num_heads, self.dtype, name="self_attention")(h, mask=mask)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    if self.cross_attention:
      h = layer_norm(self.dtype, name="ln_cross")(x)
      h = Attention(self.num_heads, self.dtype, name="cross_attention")(
        h, context=context, mask=context_mask
      )
      x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = layer_norm(self.dtype, name="ln_mlp")(x)
    h = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(h, deterministic)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return constrain(x, ("batch", "length", "embed")), None


class Transformer(nn.Module):
  """`depth` Blocks, optionally as one `nn.scan` (fast compile) and/or `nn.remat`."""

  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  cross_attention: bool = False
  scan: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: Array,
    mask: Optional[Array] = None,
    context: Optional[Array] = None,
    context_mask: Optional[Array] = None,
    deterministic: bool = True,
  ) -> Array:
    block_cls = nn.remat(Block) if self.remat else Block
    kwargs = dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      dropout=self.dropout,
      cross_attention=self.cross_attention,
      deterministic=deterministic,
      dtype=self.dtype,
    )
    if self.scan:
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=self.depth,  # x is the carry
        metadata_params={nn.PARTITION_NAME: "layers"},
      )(**kwargs, name="layers")
      x, _ = stack(x, mask, context, context_mask)
    else:
      for i in range(self.depth):
        x, _ = block_cls(**kwargs, name=f"block_{i}")(x, mask, context, context_mask)
    return layer_norm(self.dtype, name="ln_final")(x)
