"""models/conv.Conv: nn.Conv's parameters and values, with tiny maps as one matrix multiply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import conv, discriminator, vgg

CASES = [
  # (input shape, kernel, padding, takes the matrix-multiply path)
  ((3, 2, 2, 8), (3, 3), ((1, 1), (1, 1)), True),
  ((3, 1, 1, 8), (3, 3), "SAME", True),
  ((3, 5, 2, 2, 8), (1, 3, 3), "SAME", True),
  ((3, 2, 4, 4, 8), (3, 1, 1), "SAME", True),
  ((3, 1, 4, 4, 8), (3, 1, 1), "SAME", True),
  ((3, 5, 4, 4, 8), (1, 3, 3), "SAME", False),
  ((3, 8, 8, 8), (3, 3), ((1, 1), (1, 1)), False),
  ((3, 2, 2, 8), (1, 1), "SAME", False),
]


@pytest.mark.parametrize("shape,kernel,padding,matmul", CASES)
def test_same_parameters_and_values_as_nn_conv(shape, kernel, padding, matmul):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref, ours = nn.Conv(6, kernel, padding=padding), conv.Conv(6, kernel, padding=padding)
  p_ref, p_ours = ref.init(jax.random.PRNGKey(1), x), ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_ours)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_ours)):
    np.testing.assert_array_equal(a, b)
  assert conv.uses_matmul(shape[1:-1], kernel) == matmul
  want, got = ref.apply(p_ref, x), ours.apply(p_ref, x)
  if matmul:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  else:  # nn.Conv itself: bit for bit
    np.testing.assert_array_equal(got, want)


def test_matmul_path_is_not_a_convolution():
  x = jnp.ones((2, 2, 2, 4))
  model = conv.Conv(4, (3, 3))
  params = model.init(jax.random.PRNGKey(0), x)
  hlo = jax.jit(model.apply).lower(params, x).as_text()
  assert "convolution" not in hlo and "dot_general" in hlo
  wide = jnp.ones((2, 4, 4, 4))
  assert "convolution" in jax.jit(model.apply).lower(params, wide).as_text()


def test_strided_or_valid_convs_stay_nn_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 2, 4))
  for kw in (dict(padding="VALID"), dict(strides=2)):
    ref, ours = nn.Conv(3, (3, 3), **kw), conv.Conv(3, (3, 3), **kw)
    p = ref.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(ours.apply(p, x), ref.apply(p, x))


def test_models_keep_their_parameter_trees():
  video = jnp.zeros((4, 9, 32, 32, 3))
  disc = discriminator.VideoDiscriminator((16, 32, 64, 128))
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(disc.init, jax.random.PRNGKey(0), video))
  names = sorted(shapes["params"]["ResBlock_3"])
  assert names == ["Conv_0", "Conv_1", "Conv_2", "Conv_3", "Conv_4"]
  trunk = vgg.VGG16Features()
  p = jax.eval_shape(trunk.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  expected = vgg.expected_shapes()
  assert sorted(p) == sorted(vgg.CONV_NAMES)
  for name in vgg.CONV_NAMES:
    for leaf in ("kernel", "bias"):
      assert p[name][leaf].shape == expected[("features", name, leaf)]


@pytest.mark.parametrize(
  "shape,kernel,taps",
  [((3, 1, 4, 4, 8), (3, 1, 1), 1), ((3, 1, 1, 8), (3, 3), 1), ((3, 2, 2, 8), (3, 3), 9)],
)
def test_taps_wholly_in_the_padding_are_left_out(shape, kernel, taps):
  """Over a 1-wide axis a 3-tap kernel adds zeros at its outer taps: the matrix multiply reads
  only the taps whose window meets the map (a 2-wide map meets all three)."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  model = conv.Conv(6, kernel)
  params = model.init(jax.random.PRNGKey(1), x)
  jaxpr = jax.make_jaxpr(model.apply)(params, x)
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 1 and dots[0].invars[0].aval.shape[-1] == taps * shape[-1]
  kernel_grad = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)["params"]["kernel"]
  assert int(np.sum(np.any(kernel_grad != 0, axis=(-2, -1)))) == taps  # unused taps: no gradient
