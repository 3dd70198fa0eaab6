"""`flax.linen.Conv` without XLA:CPU's slow path on tiny feature maps.

XLA's CPU convolution falls far off its usual rate when a spatial axis that the kernel spans is
at most 2 wide (the padding then outweighs the data): a 3×3, 512→512 conv over 36 maps of 2×2
took ~1 s where the same sum as one matrix multiply of the patches (im2col) took ~4 ms, and
1×1-wide maps lose ~5×; at 4×4 and wider the two run at one rate (docs/experiments.md,
"Convolutions on 2×2 maps"). VGG16's last stage meets such maps on 32² frames (LPIPS), and so
does the video discriminator's last conv.

`Conv` is `nn.Conv` (a subclass: the same parameters, names, initialisers and auto-names, so
checkpoints and weight files load unchanged) that runs `nn.Conv` itself except on such maps
with stride 1 and "same" padding, where it computes the same sum as patches @ kernel (equal up
to the order of float rounding).
"""

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# A spatial axis at most this wide, under a kernel wider than 1, takes the matrix-multiply path.
TINY = 2


def uses_matmul(spatial: Sequence[int], kernel_size: Sequence[int]) -> bool:
  return any(k > 1 and s <= TINY for s, k in zip(spatial, kernel_size))


def patches_matmul(x: Array, kernel: Array, precision=None) -> Array:
  """Stride-1 convolution with "same" padding (odd kernel sizes) as patches @ kernel:
  x [B, *spatial, C_in], kernel [*k, C_in, C_out] → [B, *spatial, C_out]."""
  ks = kernel.shape[:-2]
  spatial = x.shape[1:-1]
  # Kernel offsets whose window lies wholly in the padding add only zeros: left out (a 3-tap
  # kernel over a 1-wide axis keeps its middle tap alone).
  offsets = [
    offset
    for offset in itertools.product(*(range(k) for k in ks))
    if all(k // 2 - s < o < k // 2 + s for o, k, s in zip(offset, ks, spatial))
  ]  # in the kernel's row-major order
  xp = jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
  cols = [
    xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(offset, spatial))]
    for offset in offsets
  ]  # each [B, *spatial, C_in]
  patches = jnp.concatenate(cols, axis=-1)  # [B, *spatial, len(offsets)·C_in]
  taps = jnp.stack([kernel[offset] for offset in offsets])  # [len(offsets), C_in, C_out]
  return jnp.dot(patches, taps.reshape(-1, kernel.shape[-1]), precision=precision)


def _same_padding(padding, kernel_size) -> bool:
  if isinstance(padding, str):
    return padding.upper() == "SAME"
  if isinstance(padding, int):
    return all(padding == k // 2 for k in kernel_size)
  pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  return len(pairs) == len(kernel_size) and all(
    p == (k // 2, k // 2) for p, k in zip(pairs, kernel_size)
  )


class Conv(nn.Conv):
  """`nn.Conv`; on tiny maps (`uses_matmul`) with stride 1, no dilation or groups, odd
  kernels and "same" padding, computed as one matrix multiply of the patches."""

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    ks = tuple(self.kernel_size)
    spatial = inputs.shape[1:-1]
    plain = (
      len(spatial) != len(ks)
      or not uses_matmul(spatial, ks)
      or any(k % 2 == 0 for k in ks)
      or self.strides not in (None, 1, (1,) * len(ks))
      or self.input_dilation not in (None, 1, (1,) * len(ks))
      or self.kernel_dilation not in (None, 1, (1,) * len(ks))
      or self.feature_group_count != 1
      or not _same_padding(self.padding, ks)
      or self.mask is not None
    )
    if plain:
      return super().__call__(inputs)
    kernel = self.param(
      "kernel", self.kernel_init, ks + (inputs.shape[-1], self.features), self.param_dtype
    )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = patches_matmul(x, kernel, self.precision)
    return y if bias is None else y + bias
