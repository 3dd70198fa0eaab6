"""The attention kernel shared by C-ViViT and MaskGIT against `jax.nn.dot_product_attention`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import layers


def _qkv(seed=0, b=2, q=5, k=7, h=3, d=4):
  rng = np.random.default_rng(seed)
  return tuple(
    jnp.asarray(rng.normal(0, 2, shape), jnp.float32)
    for shape in ((b, q, h, d), (b, k, h, d), (b, k, h, d))
  )


@pytest.mark.parametrize("masked", ["none", "random", "causal", "empty_rows"])
def test_matches_jax_dot_product_attention_values_and_gradients(masked):
  q, k, v = _qkv()
  rng = np.random.default_rng(1)
  mask = {
    "none": None,
    "random": jnp.asarray(rng.uniform(size=(2, 1, 5, 7)) < 0.6),
    "causal": jnp.tril(jnp.ones((5, 7), bool))[None, None],
    # queries 0 and 3 may attend nowhere: both kernels then average all values uniformly
    "empty_rows": jnp.asarray(np.arange(5)[:, None] % 3 != 0)[None, None]
    & jnp.ones((1, 3, 1, 7), bool),
  }[masked]
  full = None if mask is None else jnp.broadcast_to(mask, (2, 3, 5, 7))

  def ours(q, k, v):
    return layers.dot_product_attention(q, k, v, mask)

  def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=full)

  np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.float32)
  g_ours = jax.grad(lambda *a: jnp.sum(ours(*a) * cot), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: jnp.sum(reference(*a) * cot), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_one_key_gives_its_value_like_the_reference(masked):
  """A single key (the C-ViViT's radius-0 spatial layers): every query gets that key's value,
  masked or not, as `jax.nn.dot_product_attention` gives; no gradient reaches q or k."""
  q, k, v = _qkv(seed=3, q=4, k=1)
  mask = jnp.zeros((2, 1, 4, 1), bool) if masked else None
  full = None if mask is None else jnp.broadcast_to(mask, (2, 3, 4, 1))
  out = layers.dot_product_attention(q, k, v, mask)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, mask=full), rtol=1e-6)
  np.testing.assert_array_equal(out, jnp.broadcast_to(v, out.shape))
  gq, gk, gv = jax.grad(
    lambda *a: jnp.sum(layers.dot_product_attention(*a, mask) ** 2), argnums=(0, 1, 2)
  )(q, k, v)
  assert not np.asarray(gq).any() and not np.asarray(gk).any() and np.asarray(gv).any()


def test_large_scores_do_not_overflow_and_bfloat16_keeps_its_dtype():
  q, k, v = _qkv(seed=2)
  out = layers.dot_product_attention(q * 100.0, k * 100.0, v)
  assert np.isfinite(np.asarray(out)).all()
  ref = jax.nn.dot_product_attention(q * 100.0, k * 100.0, v)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  low = layers.dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(low, np.float32), jax.nn.dot_product_attention(q, k, v), atol=0.1
  )
