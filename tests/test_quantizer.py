"""Tests of the ℓ2-normalised vector quantiser (Phenaki §4.1, after ViT-VQGAN).

Outputs are rows of the normalised codebook; codes are the argmax of cosine similarity; the
straight-through estimator passes gradients to the encoder as the identity would; the loss is
L_VQ = ||sg(z) − e||² + β·||z − sg(e)||² (means over positions), with the gradients that implies;
codebook metrics and dead-code restarts do what they say.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import quantizer as quantizer_lib

K, C, BETA = 8, 4, 0.25
Z_SHAPE = (2, 3, 5, C)  # any leading shape: [B, t, h·w..., C]
N = int(np.prod(Z_SHAPE[:-1]))  # positions the means run over


@pytest.fixture(scope="module")
def vq():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(K, C)).astype(np.float32) * rng.uniform(0.5, 3.0, (K, 1))
  z = rng.normal(size=Z_SHAPE).astype(np.float32) * 2.0  # raw (unnormalised) encoder output
  module = quantizer_lib.VectorQuantizer(K, C, BETA)
  apply = jax.jit(lambda cb, z: module.apply({"params": {"codebook": cb}}, z))
  return module, apply, codebook, z


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_outputs_are_normalised_codebook_rows(vq):
  module, apply, codebook, z = vq
  out = apply(codebook, z)
  unit_codebook = _unit(codebook)
  assert out.codes.shape == Z_SHAPE[:-1] and out.codes.dtype == jnp.int32
  assert out.quantized.shape == Z_SHAPE
  np.testing.assert_allclose(out.quantized, unit_codebook[np.asarray(out.codes)], atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out.quantized, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(out.z, _unit(z), atol=1e-6)
  # lookup (what decode uses) gives the same rows.
  looked_up = module.apply(
    {"params": {"codebook": codebook}}, out.codes, method=quantizer_lib.VectorQuantizer.lookup
  )
  np.testing.assert_allclose(looked_up, out.quantized, atol=1e-6)


def test_codes_are_argmax_cosine(vq):
  _, apply, codebook, z = vq
  out = apply(codebook, z)
  cosine = np.einsum("...c,kc->...k", _unit(z), _unit(codebook))
  np.testing.assert_array_equal(out.codes, np.argmax(cosine, axis=-1))
  # Not the argmin of the Euclidean distance to the *raw* rows (the norms must not matter).
  scaled = codebook * np.arange(1, K + 1, dtype=np.float32)[:, None] ** 3
  np.testing.assert_array_equal(apply(scaled, z).codes, out.codes)
  counts = np.bincount(np.asarray(out.codes).ravel(), minlength=K)
  np.testing.assert_array_equal(out.counts, counts)
  assert out.counts.sum() == N


def test_loss_is_codebook_plus_beta_commitment(vq):
  _, apply, codebook, z = vq
  out = apply(codebook, z)
  e = _unit(codebook)[np.asarray(out.codes)]
  per_position = np.sum((_unit(z) - e) ** 2, axis=-1)
  expected = np.mean(per_position) + BETA * np.mean(per_position)
  np.testing.assert_allclose(out.loss, expected, rtol=1e-5)


def _normalize_vjp(x, g):
  """Pullback of g through x ↦ x/|x| (row-wise): (g − u(u·g)) / |x|."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  u = x / norm
  return (g - u * np.sum(u * g, axis=-1, keepdims=True)) / norm


def test_commitment_gradient_reaches_z(vq):
  """∂L/∂z = β·2(ẑ − e)/N pulled back through the ℓ2 normalisation (the codebook term has
  sg(z), so it contributes nothing to z)."""
  module, _, codebook, z = vq
  out_codes = np.asarray(
    jax.jit(lambda cb, z: module.apply({"params": {"codebook": cb}}, z).codes)(codebook, z)
  )
  grad = jax.jit(jax.grad(lambda z: module.apply({"params": {"codebook": codebook}}, z).loss))(z)
  e = _unit(codebook)[out_codes]
  expected = _normalize_vjp(z, 2.0 * BETA * (_unit(z) - e) / N)
  np.testing.assert_allclose(grad, expected, atol=1e-6, rtol=1e-4)
  assert np.abs(expected).max() > 1e-3


def test_codebook_gradient_only_on_used_rows(vq):
  """∂L/∂e_k = 2·Σ_{i: code_i = k}(e_k − ẑ_i)/N (the commitment term has sg(e)), pulled back
  through the codebook's normalisation; unused rows get exactly zero."""
  module, apply, codebook, z = vq
  codes = np.asarray(apply(codebook, z).codes).ravel()
  grad = jax.jit(jax.grad(lambda cb: module.apply({"params": {"codebook": cb}}, z).loss))(codebook)
  unit_z = _unit(z).reshape(-1, C)
  e = _unit(codebook)
  g = np.zeros((K, C), np.float32)
  for i, k in enumerate(codes):
    g[k] += 2.0 * (e[k] - unit_z[i]) / N
  expected = _normalize_vjp(codebook, g)
  np.testing.assert_allclose(grad, expected, atol=1e-6, rtol=1e-4)
  unused = np.setdiff1d(np.arange(K), codes)
  np.testing.assert_array_equal(np.asarray(grad)[unused], 0.0)


def test_straight_through_is_the_identity(vq):
  """Forward: the codebook row. Backward: d quantized / d ẑ = I, so the gradient reaching the
  encoder output equals the one an un-quantised ẑ would get."""
  module, _, codebook, z = vq
  w = np.random.default_rng(1).normal(size=Z_SHAPE).astype(np.float32)
  params = {"params": {"codebook": codebook}}
  through = jax.jit(jax.grad(lambda z: jnp.sum(module.apply(params, z).quantized * w)))(z)
  identity = jax.jit(jax.grad(lambda z: jnp.sum(quantizer_lib.l2_normalize(z) * w)))(z)
  np.testing.assert_allclose(through, identity, atol=1e-6)
  assert np.abs(np.asarray(through)).max() > 1e-3
  np.testing.assert_allclose(through, _normalize_vjp(z, w), atol=1e-5)
  # ... and none of it reaches the codebook.
  to_codebook = jax.jit(
    jax.grad(lambda cb: jnp.sum(module.apply({"params": {"codebook": cb}}, z).quantized * w))
  )(codebook)
  np.testing.assert_array_equal(to_codebook, 0.0)


@pytest.mark.parametrize(
  "counts, usage, perplexity",
  [
    ([2, 2, 0, 0], 0.5, 2.0),
    ([1, 1, 1, 1], 1.0, 4.0),
    ([5, 0, 0, 0], 0.25, 1.0),
    ([3, 1, 0, 0], 0.5, np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))),
    ([0, 0, 0, 0], 0.0, 1.0),
  ],
)
def test_codebook_metrics(counts, usage, perplexity):
  m = quantizer_lib.codebook_metrics(jnp.asarray(counts, jnp.float32))
  np.testing.assert_allclose(m["codebook_usage"], usage, rtol=1e-6)
  np.testing.assert_allclose(m["codebook_perplexity"], perplexity, rtol=1e-5)


def test_restart_dead_codes_replaces_exactly_the_dead_rows():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(K, C)).astype(np.float32)
  usage = np.array([0.5, 0.0, 0.2, 0.01, 1.0, 0.02, 0.1, 0.0], np.float32)
  threshold = 0.03
  z = (10.0 * np.eye(C, dtype=np.float32))[[0, 1, 2, 3, 1]]  # 5 far-apart encoder outputs
  restart = jax.jit(quantizer_lib.restart_dead_codes, static_argnums=4)
  out = np.asarray(restart(codebook, usage, z, jax.random.key(3), threshold))
  dead = usage < threshold
  assert dead.sum() == 4
  np.testing.assert_array_equal(out[~dead], codebook[~dead])
  distance = np.linalg.norm(out[dead][:, None] - z[None], axis=-1).min(axis=1)
  assert (distance < 0.1).all(), distance  # on a z row, up to the small noise
  assert (distance > 0).all()  # the noise keeps duplicates apart
  assert len({tuple(np.round(r, 6)) for r in out[dead]}) == dead.sum()
  # Another key draws other rows or noise; nothing dead → nothing changes.
  other = np.asarray(restart(codebook, usage, z, jax.random.key(4), threshold))
  assert not np.array_equal(other[dead], out[dead])
  np.testing.assert_array_equal(
    restart(codebook, np.ones(K, np.float32), z, jax.random.key(3), threshold), codebook
  )
