"""Reconstruction metrics: PSNR and SSIM (Gaussian window 11, σ 1.5) on videos in [0, 1]."""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def psnr(a: Array, b: Array, axis=None) -> Array:
  """Peak signal-to-noise ratio in dB for arrays in [0, 1]; mean over `axis` before the log."""
  mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=axis)
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def ssim(a: Array, b: Array) -> Array:
  """Mean SSIM over frames [..., H, W, C] in [0, 1] (per channel, 'valid' Gaussian filter)."""
  a = a.astype(jnp.float32).reshape((-1,) + a.shape[-3:])
  b = b.astype(jnp.float32).reshape((-1,) + b.shape[-3:])
  g = jnp.asarray(_gaussian_window())
  c1, c2 = 0.01**2, 0.03**2

  def blur(x):  # separable 'valid' filtering over H and W, channel by channel
    x = jnp.moveaxis(x, -1, 1)  # [N, C, H, W]
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, -1, 1), (1, 1), "VALID")
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, -1), (1, 1), "VALID")
    return x

  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return jnp.mean(s)
