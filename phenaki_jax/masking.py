"""Masked-token training utilities for the MaskGIT stage (paper §4.2, following MaskGIT §3.2).

Per example a mask ratio r = cos(π/2 · u), u ~ U(0, 1), is drawn (MaskGIT's cosine schedule, mean
2/π ≈ 0.637); ⌈r · n_valid⌉ of the example's valid tokens (at least one) are replaced by [MASK],
chosen uniformly at random; the cross-entropy is taken on the masked tokens only. Everything has
static shapes and is jittable; invalid positions (the padded later time steps of an image in a
joint image/video batch) are never masked and never enter the loss.
"""

import jax
import jax.numpy as jnp

from phenaki_jax.models import layers

Array = jax.Array


def cosine_mask_ratio(u: Array) -> Array:
  """MaskGIT's cosine schedule: the fraction of tokens masked at progress u ∈ [0, 1]."""
  return jnp.cos(jnp.pi / 2 * u)


def valid_from_time_steps(num_valid_steps: Array, grid: tuple[int, int, int]) -> Array:
  """Token validity bool [B, t·h·w] of examples whose first `num_valid_steps[b]` time steps are
  real (1 for an image), for a (t, h, w) token grid flattened time-major."""
  t, h, w = grid
  step = jnp.repeat(jnp.arange(t), h * w)  # [N]
  return step[None, :] < jnp.asarray(num_valid_steps)[:, None]  # [B, N]


def sample_prefix_given(
  rng: Array, is_image: Array, rate: float, grid: tuple[int, int, int]
) -> Array:
  """Frame-prediction examples: bool [B, t·h·w], True at the positions given as context.

  With probability `rate` a video example (not an image) keeps its first s time steps given,
  s uniform in 1..t-1 (at least one time step is left to predict); other examples get nothing.
  """
  t = grid[0]
  batch = is_image.shape[0]
  if t < 2:  # a single time step: nothing can be given and something still predicted
    return jnp.zeros((batch, t * grid[1] * grid[2]), bool)
  pick_rng, s_rng = jax.random.split(rng)
  prefix = jax.random.bernoulli(pick_rng, rate, (batch,)) & ~is_image.astype(bool)
  given_steps = jnp.where(prefix, jax.random.randint(s_rng, (batch,), 1, t), 0)
  return valid_from_time_steps(given_steps, grid)


def _rank(scores: Array) -> Array:
  """Rank (0 = smallest) of every entry along the last axis; ties broken by position."""
  order = jnp.argsort(scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def sample_training_mask(rng: Array, valid: Array) -> Array:
  """Which tokens to mask: bool [B, N], ⌈r·n_valid⌉ valid positions per example (≥ 1 if any).

  Args:
    rng: PRNG key.
    valid: bool [B, N]; invalid positions are never masked.
  """
  if valid.ndim != 2:
    raise ValueError(f"valid must be [B, N], got shape {valid.shape}")
  valid = valid.astype(bool)
  batch, _ = valid.shape
  rng_ratio, rng_pos = jax.random.split(rng)
  ratio = cosine_mask_ratio(jax.random.uniform(rng_ratio, (batch,)))  # [B] in (0, 1]
  num_valid = valid.sum(-1)  # [B]
  count = jnp.ceil(ratio * num_valid).astype(jnp.int32)
  count = jnp.clip(count, jnp.minimum(num_valid, 1), num_valid)  # [B]
  # Random scores; invalid positions rank after every valid one, so they are never chosen.
  scores = jnp.where(valid, jax.random.uniform(rng_pos, valid.shape), 2.0)  # [B, N]
  return (_rank(scores) < count[:, None]) & valid  # [B, N]


def apply_mask(tokens: Array, mask: Array, mask_token_id: int) -> Array:
  """tokens int32 [B, N] with the positions where `mask` is True replaced by [MASK]."""
  return jnp.where(mask, jnp.asarray(mask_token_id, tokens.dtype), tokens)


def masked_cross_entropy(
  logits: Array, targets: Array, mask: Array, *, label_smoothing: float = 0.0
) -> tuple[Array, dict]:
  """Cross-entropy on masked tokens only.

  Normalisation: the mean over all masked tokens in the batch (token-weighted, so an example
  with more masked tokens weighs more, as in MaskGIT); 0 if nothing is masked. Unmasked positions
  receive exactly zero gradient.

  Args:
    logits: [B, N, K].
    targets: int [B, N], the true codes.
    mask: bool [B, N], True where the input token was masked (loss positions).
    label_smoothing: mass spread uniformly over the K codes (0 = none).
  Returns:
    (loss scalar f32, dict(accuracy=masked-token accuracy, num_masked=int32 count,
    token_nll=f32 [B, N] per-token negative log-likelihood, smoothed like the loss)).
  """
  if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
    raise ValueError(
      f"shapes disagree: logits {logits.shape}, targets {targets.shape}, mask {mask.shape}"
    )
  mask = mask.astype(bool)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, N, K]
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)  # [B, N]
  loss = layers.masked_mean(nll, mask)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = dict(
    accuracy=layers.masked_mean(correct, mask),
    num_masked=mask.sum().astype(jnp.int32),
    token_nll=nll,
  )
  return loss, metrics
