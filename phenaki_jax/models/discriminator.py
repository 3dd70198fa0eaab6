"""StyleGAN-style video discriminator for C-ViViT's adversarial loss (paper §4.1).

Residual (2+1)-D conv blocks with leaky ReLU, average-pool downsampling (space by 2 each level,
time by 2 while more than one frame is left), a minibatch-stddev feature, then dense layers
to one logit per video. Input: video [B, F, H, W, 3] in [-1, 1].
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from phenaki_jax.models import conv as conv_lib

Array = jax.Array


def _downsample(x: Array) -> Array:
  """Average-pool [B, T, H, W, C] by 2 in space, and in time when T > 1."""
  t = 2 if x.shape[1] > 1 else 1
  return nn.avg_pool(x, (t, 2, 2), strides=(t, 2, 2), padding="SAME")


def conv3d(features: int, dtype, x: Array) -> Array:
  """A (2+1)-D 3×3×3 convolution: 1×3×3 in space, then 3×1×1 in time (far cheaper than a full
  3-D kernel on CPUs, same receptive field). The temporal conv runs for any frame count (on one
  frame only its middle tap acts), so one set of parameters scores images and videos alike."""
  # conv_lib.Conv: nn.Conv (the same parameters), minus XLA:CPU's slow path on maps 2 wide.
  x = conv_lib.Conv(features, (1, 3, 3), dtype=dtype)(x)
  return conv_lib.Conv(features, (3, 1, 1), dtype=dtype)(x)


class ResBlock(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.leaky_relu(conv3d(x.shape[-1], self.dtype, x), 0.2)
    h = nn.leaky_relu(conv3d(self.features, self.dtype, h), 0.2)
    h = _downsample(h)
    skip = nn.Conv(self.features, (1, 1, 1), use_bias=False, dtype=self.dtype)(_downsample(x))
    return (h + skip) / jnp.sqrt(2.0)


def minibatch_stddev(x: Array, group_size: int = 4) -> Array:
  """Appends the (group-wise) std of features across the batch as one channel."""
  b = x.shape[0]
  g = min(group_size, b)
  while b % g:
    g -= 1
  y = x.reshape((g, b // g) + x.shape[1:])
  std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [B/g, ...]
  std = jnp.mean(std, axis=tuple(range(1, std.ndim)), keepdims=True)
  std = jnp.tile(std, (g,) + (1,) * (std.ndim - 1)).reshape((b,) + (1,) * (x.ndim - 1))
  return jnp.concatenate([x, jnp.broadcast_to(std, x.shape[:-1] + (1,))], axis=-1)


class VideoDiscriminator(nn.Module):
  channels: Sequence[int] = (32, 64, 128)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, video: Array) -> Array:
    x = nn.leaky_relu(
      nn.Conv(self.channels[0], (1, 1, 1), dtype=self.dtype)(video.astype(self.dtype)), 0.2
    )
    for features in self.channels:
      x = ResBlock(features, self.dtype)(x)
    x = minibatch_stddev(x)
    x = nn.leaky_relu(conv3d(self.channels[-1], self.dtype, x), 0.2)
    x = jnp.mean(x, axis=1)  # pool time
    x = x.reshape((x.shape[0], -1))
    x = nn.leaky_relu(nn.Dense(self.channels[-1], dtype=self.dtype)(x), 0.2)
    return nn.Dense(1, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)  # [B]
