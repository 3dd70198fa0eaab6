"""Factorised, ℓ2-normalised vector quantiser (Phenaki §4.1, after ViT-VQGAN).

Encoder outputs are linearly projected to a low-dimensional space (32-d in the paper), ℓ2
normalised, and matched to an ℓ2-normalised codebook by cosine similarity. The loss is the
paper's  L_VQ = ||sg(z) − e||² + β·||z − sg(e)||²  with a straight-through estimator.

Dead codes are handled outside the module, in the train step (`restart_dead_codes`): a code
whose usage (an exponential moving average of its assignment counts) falls below a threshold is
moved onto a random encoder output of the current batch (VideoGPT-style restarts). With all
usages starting at zero, the first restart initialises the codebook from encoder outputs.
"""

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from phenaki_jax.models import layers

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class QuantizerOutput(NamedTuple):
  quantized: Array  # [..., code_dim] straight-through: forward = codebook row, grad → z
  codes: Array  # [...] int32
  loss: Array  # scalar L_VQ (codebook + β·commitment)
  z: Array  # [..., code_dim] ℓ2-normalised encoder output (before quantisation)
  counts: Array  # [K] assignments of each code in this call


class VectorQuantizer(nn.Module):
  codebook_size: int
  code_dim: int = 32
  commitment_cost: float = 0.25

  def setup(self):
    self.codebook = self.param(
      "codebook",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", None)),
      (self.codebook_size, self.code_dim),
    )

  def normalized_codebook(self) -> Array:
    return l2_normalize(self.codebook)  # [K, C]

  def lookup(self, codes: Array) -> Array:
    """Codes [...] int → ℓ2-normalised code vectors [..., C]."""
    return jnp.take(self.normalized_codebook(), codes, axis=0)

  def __call__(self, z: Array) -> QuantizerOutput:
    z = l2_normalize(z.astype(jnp.float32))  # [..., C]
    codebook = self.normalized_codebook()  # [K, C]
    similarity = jnp.einsum("...c,kc->...k", z, codebook)  # [..., K]
    codes = jnp.argmax(similarity, axis=-1).astype(jnp.int32)  # [...]
    e = jnp.take(codebook, codes, axis=0)  # [..., C]
    loss = vq_loss(z, e, self.commitment_cost)
    quantized = z + jax.lax.stop_gradient(e - z)
    counts = code_counts(codes, self.codebook_size)
    return QuantizerOutput(quantized, codes, loss, z, counts)


def vq_loss(z: Array, e: Array, commitment_cost: float, mask: Optional[Array] = None) -> Array:
  """L_VQ = ||sg(z) − e||² + β·||z − sg(e)||² of encoder outputs z and their code vectors e
  ([..., C]), averaged over the positions [...] — only where `mask` [...] is True when given
  (e.g. not on the padding frames of an image in a video batch)."""
  codebook_sq = jnp.sum((jax.lax.stop_gradient(z) - e) ** 2, axis=-1)
  commitment_sq = jnp.sum((z - jax.lax.stop_gradient(e)) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(codebook_sq) + commitment_cost * jnp.mean(commitment_sq)
  return layers.masked_mean(codebook_sq, mask) + commitment_cost * layers.masked_mean(
    commitment_sq, mask
  )


def code_counts(codes: Array, codebook_size: int, mask: Optional[Array] = None) -> Array:
  """[K] assignments of each code among `codes` [...] (only where `mask` is True, when given)."""
  ones = 1.0 if mask is None else mask.reshape(-1).astype(jnp.float32)
  return jnp.zeros((codebook_size,), jnp.float32).at[codes.reshape(-1)].add(ones)


def codebook_metrics(counts: Array) -> dict:
  """Usage (fraction of codes used at least once) and perplexity of the assignment histogram."""
  total = jnp.maximum(jnp.sum(counts), 1.0)
  p = counts / total
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"codebook_usage": jnp.mean(counts > 0), "codebook_perplexity": jnp.exp(entropy)}


def restart_dead_codes(
  codebook: Array, usage: Array, z: Array, rng: Array, threshold: float
) -> Array:
  """Moves codes with usage < threshold onto random rows of z (encoder outputs).

  codebook [K, C], usage [K], z [M, C] (any M ≥ 1). Pure and jittable; a small noise keeps
  codes restarted on the same vector apart.
  """
  num_codes, dim = codebook.shape
  pick_rng, noise_rng = jax.random.split(rng)
  rows = jax.random.randint(pick_rng, (num_codes,), 0, z.shape[0])
  candidates = z[rows] + 0.01 * jax.random.normal(noise_rng, (num_codes, dim), z.dtype)
  dead = (usage < threshold)[:, None]
  return jnp.where(dead, candidates.astype(codebook.dtype), codebook)
