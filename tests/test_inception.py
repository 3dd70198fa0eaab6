"""FID Inception: pool3 parity with a PyTorch FID Inception (random weights) read through the
conversion command, the preprocessing against pytorch-fid's (PyTorch bilinear resize, [-1, 1]),
and the loader's errors.

The PyTorch reference is written here from the published architecture (torchvision is not a
dependency): BasicConv2d units under the state-dict names of pt_inception-2015-12-05, the
TensorFlow-style average pools (padding not counted) and Mixed_7c's max pool.
"""

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch  # the [torch] extra, which `make test` installs
import torch.nn.functional as F
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from phenaki_jax import convert_weights
from phenaki_jax.models import inception

import conftest

TOL = 1e-4


# ------------------------------------------------------------------------------------------
# The PyTorch reference.
# ------------------------------------------------------------------------------------------
class TorchConv(torch.nn.Module):
  def __init__(self, cin, cout, kernel=1, stride=1, padding=0):
    super().__init__()
    self.conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
    self.bn = torch.nn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def tf_average(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def max_same(x):
  return F.max_pool2d(x, 3, stride=1, padding=1)


def max_reduce(x):
  return F.max_pool2d(x, 3, stride=2)


class TorchMixed(torch.nn.Module):
  """Branches concatenated on channels; a branch is (pool, chain of convs, parallel pair)."""

  def __init__(self, branches):
    super().__init__()
    self.branches = []
    for pool, chain, pair in branches:
      for name, *args in chain + pair:
        self.add_module(name, TorchConv(*args))
      self.branches.append((pool, [c[0] for c in chain], [p[0] for p in pair]))

  def forward(self, x):
    outputs = []
    for pool, chain, pair in self.branches:
      y = pool(x) if pool else x
      for name in chain:
        y = getattr(self, name)(y)
      outputs += [getattr(self, name)(y) for name in pair] if pair else [y]
    return torch.cat(outputs, 1)


def mixed_a(cin, pool_features):
  return TorchMixed(
    [
      (None, [("branch1x1", cin, 64)], []),
      (None, [("branch5x5_1", cin, 48), ("branch5x5_2", 48, 64, 5, 1, 2)], []),
      (
        None,
        [
          ("branch3x3dbl_1", cin, 64),
          ("branch3x3dbl_2", 64, 96, 3, 1, 1),
          ("branch3x3dbl_3", 96, 96, 3, 1, 1),
        ],
        [],
      ),
      (tf_average, [("branch_pool", cin, pool_features)], []),
    ]
  )


def mixed_b(cin):
  return TorchMixed(
    [
      (None, [("branch3x3", cin, 384, 3, 2)], []),
      (
        None,
        [
          ("branch3x3dbl_1", cin, 64),
          ("branch3x3dbl_2", 64, 96, 3, 1, 1),
          ("branch3x3dbl_3", 96, 96, 3, 2),
        ],
        [],
      ),
      (max_reduce, [], []),
    ]
  )


def mixed_c(c7):
  row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
  return TorchMixed(
    [
      (None, [("branch1x1", 768, 192)], []),
      (
        None,
        [("branch7x7_1", 768, c7), ("branch7x7_2", c7, c7, *row), ("branch7x7_3", c7, 192, *col)],
        [],
      ),
      (
        None,
        [
          ("branch7x7dbl_1", 768, c7),
          ("branch7x7dbl_2", c7, c7, *col),
          ("branch7x7dbl_3", c7, c7, *row),
          ("branch7x7dbl_4", c7, c7, *col),
          ("branch7x7dbl_5", c7, 192, *row),
        ],
        [],
      ),
      (tf_average, [("branch_pool", 768, 192)], []),
    ]
  )


def mixed_d():
  return TorchMixed(
    [
      (None, [("branch3x3_1", 768, 192), ("branch3x3_2", 192, 320, 3, 2)], []),
      (
        None,
        [
          ("branch7x7x3_1", 768, 192),
          ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
          ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
          ("branch7x7x3_4", 192, 192, 3, 2),
        ],
        [],
      ),
      (max_reduce, [], []),
    ]
  )


def mixed_e(cin, pool):
  row, col = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
  return TorchMixed(
    [
      (None, [("branch1x1", cin, 320)], []),
      (
        None,
        [("branch3x3_1", cin, 384)],
        [("branch3x3_2a", 384, 384, *row), ("branch3x3_2b", 384, 384, *col)],
      ),
      (
        None,
        [("branch3x3dbl_1", cin, 448), ("branch3x3dbl_2", 448, 384, 3, 1, 1)],
        [("branch3x3dbl_3a", 384, 384, *row), ("branch3x3dbl_3b", 384, 384, *col)],
      ),
      (pool, [("branch_pool", cin, 192)], []),
    ]
  )


class TorchFIDInception(torch.nn.Module):
  """pool3 of images [N, 3, H, W] in [-1, 1]; `fc` only so the state dict has it too."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TorchConv(3, 32, 3, 2)
    self.Conv2d_2a_3x3 = TorchConv(32, 32, 3)
    self.Conv2d_2b_3x3 = TorchConv(32, 64, 3, 1, 1)
    self.Conv2d_3b_1x1 = TorchConv(64, 80)
    self.Conv2d_4a_3x3 = TorchConv(80, 192, 3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
      mixed_a(192, 32),
      mixed_a(256, 64),
      mixed_a(288, 64),
    )
    self.Mixed_6a = mixed_b(288)
    self.Mixed_6b, self.Mixed_6c = mixed_c(128), mixed_c(160)
    self.Mixed_6d, self.Mixed_6e = mixed_c(160), mixed_c(192)
    self.Mixed_7a = mixed_d()
    self.Mixed_7b, self.Mixed_7c = mixed_e(1280, tf_average), mixed_e(2048, max_same)
    self.fc = torch.nn.Linear(2048, 1008)

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_reduce(x)))
    x = max_reduce(x)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return x.mean((2, 3))


def pytorch_fid_input(images: np.ndarray) -> torch.Tensor:
  """What pytorch-fid feeds its network: [0, 1], bilinear to 299 (align_corners=False), 2x - 1."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  return 2 * x - 1


def random_images(shape, seed) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def calibrate_batch_norm(model, x, mean_fraction=0.2):
  """Sets each BatchNorm's statistics from its own input in one eval-mode pass (in order, so
  every layer sees what the calibrated layers before it give): running_mean a fraction of the
  channel mean, running_var the spread about it. Every layer then sees unit-scale inputs, as
  with trained weights. Full mean subtraction would make this random network chaotic (BN-ReLU
  stacks amplify perturbations about 1.2x per layer), so that float32 rounding alone moved its
  pool3 by ~1e-4; with a fifth of the mean it stays near 3e-5."""

  def set_statistics(bn, inputs):
    v = inputs[0]  # [N, C, H, W]
    mean = mean_fraction * v.mean((0, 2, 3))
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(((v - mean[None, :, None, None]) ** 2).mean((0, 2, 3)))

  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  hooks = [bn.register_forward_pre_hook(set_statistics) for bn in bns]
  with torch.no_grad():
    model(x)
  for h in hooks:
    h.remove()


@pytest.fixture(scope="module")
def reference():
  """Random weights, BatchNorm affine randomised, statistics calibrated (float32, eval mode)."""
  torch.manual_seed(0)
  model = TorchFIDInception().eval()
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      torch.nn.init.uniform_(m.weight, 0.5, 1.5)
      torch.nn.init.normal_(m.bias, 0.0, 0.2)
  calibrate_batch_norm(model, pytorch_fid_input(random_images((2, 56, 72, 3), seed=1)))
  return model


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
  """The reference's state dict as a .pth and converted by the conversion command's function."""
  d = tmp_path_factory.mktemp("inception")
  torch.save(reference.state_dict(), d / "pt_inception.pth")
  summary = convert_weights.convert_inception(
    str(d / "pt_inception.pth"), str(d / "inc.safetensors")
  )
  return d, summary


def test_pool3_parity_with_pytorch(reference, checkpoint):
  d, summary = checkpoint
  assert summary["ignored"] == ["fc.bias", "fc.weight"]  # every other tensor is used
  used = {
    k: v for k, v in reference.state_dict().items() if "fc." not in k and v.is_floating_point()
  }
  assert summary["tensors"] == len(used)
  assert summary["parameters"] == sum(v.numel() for v in used.values())
  params = inception.load_inception_params(str(d / "inc.safetensors"))
  images = random_images((2, 61, 47, 3), seed=2)  # upsampled to 299, not square
  with torch.no_grad():
    want = reference(pytorch_fid_input(images)).numpy()
    exact = copy.deepcopy(reference).double()(pytorch_fid_input(images).double()).numpy()
  got = inception.inception_features(params, images)
  assert got.shape == (2, inception.FEATURES) and got.dtype == np.float32
  err, err64 = np.abs(got - want).max(), np.abs(got - exact).max()
  assert err <= TOL, f"pool3: max |ours - torch| = {err:.2e}"
  assert err64 <= TOL, f"pool3: max |ours - torch float64| = {err64:.2e}"
  assert want.std() > 0.1 and (want > 0).mean() > 0.9  # live units, unit-scale features


@pytest.mark.parametrize("shape", [(2, 61, 47), (1, 400, 350), (1, 299, 299), (1, 150, 600)])
def test_preprocessing_matches_pytorch_fid(shape):
  images = random_images(shape + (3,), seed=3)
  want = pytorch_fid_input(images).permute(0, 2, 3, 1).numpy()
  got = np.asarray(inception.preprocess(images))
  assert got.shape == (shape[0], 299, 299, 3)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert got.min() >= -1.0 - 1e-6 and got.max() <= 1.0 + 1e-6


def test_command_writes_npz_that_loads_the_same(checkpoint):
  d, _ = checkpoint
  proc = conftest.run_module(
    "phenaki_jax.convert_weights",
    "inception",
    f"--src={d / 'pt_inception.pth'}",
    f"--out={d / 'inc.npz'}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "warning" in proc.stdout and "not be comparable" in proc.stdout  # not pytorch-fid's file
  summary = json.loads(proc.stdout[proc.stdout.index("{") :])
  assert summary["ignored"] == ["fc.bias", "fc.weight"]
  npz = flatten_dict(inception.load_inception_params(str(d / "inc.npz")))
  safetensors = flatten_dict(inception.load_inception_params(str(d / "inc.safetensors")))
  assert npz.keys() == safetensors.keys() and len(npz) == summary["tensors"]
  for path, value in npz.items():
    np.testing.assert_array_equal(value, safetensors[path], err_msg=str(path))


def test_errors_name_the_tensor(checkpoint, tmp_path):
  d, _ = checkpoint
  arrays = load_file(str(d / "inc.safetensors"))
  del arrays["Mixed_7c.branch_pool.bn.running_var"]
  arrays["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  save_file(arrays, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError) as e:
    inception.load_inception_params(str(tmp_path / "bad.safetensors"))
  assert "missing tensor 'Mixed_7c.branch_pool.bn.running_var' (expected shape (192,))" in str(
    e.value
  )
  assert (
    "tensor 'Mixed_5b.branch1x1.conv.weight' has shape (64, 192, 3, 3), expected (64, 192, 1, 1)"
    in str(e.value)
  )
  with pytest.raises(ValueError, match="convert_weights inception"):
    inception.load_inception_params(str(d / "pt_inception.pth"))  # never unpickled here
  with pytest.raises(FileNotFoundError):
    inception.load_inception_params(str(tmp_path / "absent.safetensors"))
  with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
    convert_weights.convert_inception(str(d / "pt_inception.pth"), str(tmp_path / "x.pth"))
  with pytest.raises(ValueError, match="uint8"):
    inception.inception_features({}, np.zeros((1, 80, 80, 3), np.float32))
  assert not (tmp_path / "x.pth").exists()


def test_fid_of_shapes_sets_from_the_cli(checkpoint, tmp_path):
  """`python -m phenaki_jax.evaluate fid` with the converted (random) weights: a set against
  itself is 0 up to rounding, against another split it is not, and the protocol is printed."""
  d, _ = checkpoint
  common = [
    "--num_videos=3",
    "--num_frames=2",
    "--resolution=32",
    f"--inception_checkpoint={d / 'inc.safetensors'}",
    f"--real_stats={tmp_path / 'train.npz'}",
    "--real=shapes:train",
  ]
  results = {}
  for fake in ("shapes:train", "shapes:heldout"):
    proc = conftest.run_module("phenaki_jax.evaluate", "fid", f"--fake={fake}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results[fake] = json.loads(proc.stdout[proc.stdout.index("{") :])
  assert abs(results["shapes:train"]["fid"]) < 1e-3
  assert results["shapes:heldout"]["fid"] > 1e-2
  assert results["shapes:heldout"]["num_real_frames"] == 6
  assert results["shapes:heldout"]["protocol"] == inception.PROTOCOL
  assert os.path.exists(tmp_path / "train.npz")
