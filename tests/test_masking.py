"""Tests of the MaskGIT training mask and masked loss (paper §4.2)."""

import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax import masking
from phenaki_jax.models import layers

sample_mask = jax.jit(masking.sample_training_mask)


def test_cosine_mask_ratio():
  np.testing.assert_allclose(
    masking.cosine_mask_ratio(jnp.array([0.0, 2 / 3, 1.0])), [1.0, 0.5, 0.0], atol=1e-6
  )


def test_mask_ratio_follows_cosine_schedule():
  batch, n = 4096, 256
  mask = sample_mask(jax.random.key(0), jnp.ones((batch, n), bool))
  frac = np.asarray(mask).sum(-1) / n  # ⌈r·n⌉/n, r = cos(π/2·u)
  assert abs(frac.mean() - 2 / np.pi) < 0.02, frac.mean()
  # CDF of r: P(r <= x) = 1 - (2/π)·arccos(x).
  for x in (0.25, 0.5, 0.9):
    expected = 1 - 2 / np.pi * np.arccos(x)
    assert abs((frac <= x).mean() - expected) < 0.03, (x, (frac <= x).mean(), expected)
  assert frac.min() >= 1 / n


def test_mask_respects_validity():
  batch, n = 512, 48
  rng = np.random.default_rng(0)
  num_valid = rng.integers(0, n + 1, batch)
  num_valid[:8] = [0, 1, 1, 1, 2, 16, 16, n]
  valid = np.zeros((batch, n), bool)
  for b, k in enumerate(num_valid):  # valid positions scattered, not only a prefix
    valid[b, rng.permutation(n)[:k]] = True
  mask = np.asarray(sample_mask(jax.random.key(1), jnp.asarray(valid)))
  count = mask.sum(-1)
  assert not (mask & ~valid).any()
  assert (count >= np.minimum(num_valid, 1)).all() and (count <= num_valid).all()
  assert (count[num_valid == 0] == 0).all() and (count[num_valid == 1] == 1).all()
  # Image examples (first time step valid) via valid_from_time_steps.
  # Image examples (first time step valid) and videos (all 3) via valid_from_time_steps.
  steps = np.where(np.arange(batch) % 2 == 0, 1, 3)
  image = np.asarray(masking.valid_from_time_steps(jnp.asarray(steps), (3, 4, 4)))
  assert image.shape == (batch, n) and (image.sum(-1) == 16 * steps).all()
  assert image[0, :16].all() and not image[0, 16:].any()
  m = np.asarray(sample_mask(jax.random.key(2), jnp.asarray(image)))
  assert not m[0::2, 16:].any() and (m.sum(-1) >= 1).all()


def test_mask_is_deterministic_per_rng():
  valid = jnp.ones((512, 48), bool)
  a = sample_mask(jax.random.key(3), valid)
  b = sample_mask(jax.random.key(3), valid)
  c = sample_mask(jax.random.key(4), valid)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_prefix_given_is_whole_first_time_steps_of_videos():
  grid = (5, 2, 3)
  is_image = jnp.array([False] * 300 + [True] * 100)
  given = np.asarray(masking.sample_prefix_given(jax.random.PRNGKey(0), is_image, 0.5, grid))
  per_step = given.reshape(400, 5, 6)
  assert (per_step.all(-1) == per_step.any(-1)).all()  # whole time steps only
  steps = per_step.any(-1).sum(-1)  # s per example
  # A prefix: the given time steps are the first s.
  np.testing.assert_array_equal(per_step.any(-1), np.arange(5)[None] < steps[:, None])
  assert (steps[300:] == 0).all()  # images: never
  video = steps[:300]
  assert video.max() == 4  # always something to predict
  assert abs((video > 0).mean() - 0.5) < 0.1  # the rate
  assert set(video[video > 0]) == {1, 2, 3, 4}  # s uniform over 1..t-1
  none = masking.sample_prefix_given(jax.random.PRNGKey(0), is_image, 0.0, grid)
  assert not np.asarray(none).any()
  single = masking.sample_prefix_given(jax.random.PRNGKey(0), is_image, 1.0, (1, 2, 3))
  assert not np.asarray(single).any()


def test_apply_mask():
  tokens = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
  mask = jnp.array([[True, False, False], [False, False, True]])
  out = masking.apply_mask(tokens, mask, 16)
  np.testing.assert_array_equal(out, [[16, 1, 2], [3, 4, 16]])
  assert out.dtype == jnp.int32


def test_masked_cross_entropy_value_and_zero_gradient_off_mask():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 10, 7)) * 3, jnp.float32)  # [B, N, K]
  targets = jnp.asarray(rng.integers(0, 7, (3, 10)), jnp.int32)
  mask = jnp.asarray(rng.random((3, 10)) < 0.4)
  loss, metrics = jax.jit(masking.masked_cross_entropy)(logits, targets, mask)
  x = np.asarray(logits, np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  m = np.asarray(mask)
  np.testing.assert_allclose(float(loss), nll[m].mean(), rtol=1e-5)
  assert int(metrics["num_masked"]) == m.sum()
  correct = (np.asarray(logits).argmax(-1) == np.asarray(targets))[m]
  np.testing.assert_allclose(float(metrics["accuracy"]), correct.mean(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(metrics["token_nll"]), nll, rtol=1e-5)
  # The loss of a subset from the per-token values, normalised the same way.
  half = m & (np.arange(10) < 5)
  np.testing.assert_allclose(
    float(layers.masked_mean(metrics["token_nll"], jnp.asarray(half))), nll[half].mean(), rtol=1e-5
  )
  assert float(layers.masked_mean(metrics["token_nll"], jnp.zeros((3, 10), bool))) == 0.0
  for smoothing in (0.0, 0.1):
    grads = jax.jit(
      jax.grad(
        lambda x: masking.masked_cross_entropy(x, targets, mask, label_smoothing=smoothing)[0]
      )
    )(logits)
    g = np.asarray(grads)
    assert (g[~m] == 0).all()  # exactly zero, not merely small
    assert (np.abs(g[m]).sum(-1) > 0).all()


def test_masked_cross_entropy_with_nothing_masked():
  logits = jnp.zeros((2, 4, 5))
  loss, metrics = jax.jit(masking.masked_cross_entropy)(
    logits, jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4), bool)
  )
  assert float(loss) == 0.0 and int(metrics["num_masked"]) == 0
  assert float(metrics["accuracy"]) == 0.0
