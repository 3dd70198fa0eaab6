"""The FID Inception network: InceptionV3 up to pool3 (2048-d), as FID defines it.

FID (Heusel et al. 2017, arXiv 1706.08500) compares Gaussians fitted to the pool3 features of
the InceptionV3 graph `inception-2015-12-05` that the original TensorFlow implementation (TTUR)
ships. Its PyTorch port, `pt_inception-2015-12-05-6726825d.pth` (released with pytorch-fid),
is the checkpoint that almost every published video/image FID uses; this module reproduces the
network those weights belong to and reads them once converted by
`python -m phenaki_jax.convert_weights inception`. No weights ship with the package.

Architecture (Szegedy et al. 2016, arXiv 1512.00567, fig. 5-7): every convolution is
conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU. Stem: 3x3/2 (32), 3x3
(32), 3x3 pad 1 (64), max 3x3/2, 1x1 (80), 3x3 (192), max 3x3/2. Then Mixed_5b-5d (InceptionA),
6a (grid reduction B), 6b-6e (InceptionC, 7x7 factorised), 7a (grid reduction D), 7b-7c
(InceptionE), global average pool: pool3. The FID graph differs from torchvision's InceptionV3
in its pooling branches, which is why the two give different features:
  * Mixed_5b-5d, 6b-6e and 7b average-pool 3x3/1 pad 1 *without counting the padding*
    (TensorFlow's SAME average pool; torchvision counts the zeros);
  * Mixed_7c max-pools 3x3/1 pad 1 in its pool branch (torchvision: average pool).
The 1008-way classifier (`fc.*`) is not part of pool3 and is ignored.

Preprocessing (`PROTOCOL`): uint8 RGB -> [0, 1] -> bilinear resize to 299x299 with half-pixel
centres and no antialiasing (PyTorch `F.interpolate(mode="bilinear", align_corners=False)`,
what pytorch-fid does) -> [-1, 1] as 2x - 1. The TensorFlow graph resizes inside itself with
TF1's legacy `ResizeBilinear` (no half-pixel centres) and maps [0, 255] by (x - 128) / 128, so
its features differ slightly from these (pytorch-fid reports about 1e-3 relative FID). Images
already 299x299 are not resampled at all (the resize is then the identity).

Parameter tree: the PyTorch module names with '.' as '/', e.g. Mixed_5b/branch1x1/{kernel,
scale, bias, mean, var}; the kernel is [kh, kw, in, out], the rest are the BatchNorm's weight,
bias, running_mean and running_var.
"""

import pathlib
from typing import Callable, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io

Array = jax.Array

PROTOCOL = {
  "network": "FID Inception (TF inception-2015-12-05 as ported by pytorch-fid)",
  "weights": "pt_inception-2015-12-05-6726825d.pth",
  "input": "uint8 RGB [N, H, W, 3]",
  "resize": "299x299 bilinear, half-pixel centres (align_corners=False), no antialias",
  "value_range": "[-1, 1] = 2 * (x / 255) - 1, after the resize",
  "feature": "pool3: global average of Mixed_7c, 2048-d",
}
SIZE = 299  # input side of the protocol
MIN_SIZE = 75  # smallest side the network accepts
FEATURES = 2048
BN_EPS = 1e-3

# Checkpoint name suffix of each leaf of a conv unit (a torchvision-style BasicConv2d).
_TORCH_SUFFIX = {
  "kernel": "conv.weight",
  "scale": "bn.weight",
  "bias": "bn.bias",
  "mean": "bn.running_mean",
  "var": "bn.running_var",
}


class ConvBN(nn.Module):
  """conv (no bias) -> BatchNorm with running statistics -> ReLU."""

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # x [N, H, W, C_in] -> [N, H', W', features]
    kh, kw = self.kernel_size
    shape = (self.features,)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], shape[0]))
    scale = self.param("scale", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    mean = self.param("mean", nn.initializers.zeros, shape)
    var = self.param("var", nn.initializers.ones, shape)
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(self.stride, self.stride),
      padding=((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
    y = (y - mean) / jnp.sqrt(var + BN_EPS) * scale + bias
    return nn.relu(y)


def _avg_pool_3x3(x: Array) -> Array:
  """3x3/1 SAME average that ignores the padding (TensorFlow's, not torchvision's)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: Array, stride: int = 1) -> Array:
  """3x3 max pool: SAME at stride 1, VALID at stride 2."""
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b-5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1."""

  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = ConvBN(64, name="branch1x1")(x)
    b5 = ConvBN(48, name="branch5x5_1")(x)
    b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = ConvBN(64, name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 grid reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max 3x3/2."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = ConvBN(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = ConvBN(64, name="branch3x3dbl_1")(x)
    bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b-6e), 7x7 factorised into 1x7 and 7x1."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    row = dict(kernel_size=(1, 7), padding=(0, 3))
    col = dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = ConvBN(192, name="branch1x1")(x)
    b7 = ConvBN(c7, name="branch7x7_1")(x)
    b7 = ConvBN(c7, **row, name="branch7x7_2")(b7)
    b7 = ConvBN(192, **col, name="branch7x7_3")(b7)
    bd = ConvBN(c7, name="branch7x7dbl_1")(x)
    bd = ConvBN(c7, **col, name="branch7x7dbl_2")(bd)
    bd = ConvBN(c7, **row, name="branch7x7dbl_3")(bd)
    bd = ConvBN(c7, **col, name="branch7x7dbl_4")(bd)
    bd = ConvBN(192, **row, name="branch7x7dbl_5")(bd)
    bp = ConvBN(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 grid reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max 3x3/2."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = ConvBN(192, name="branch3x3_1")(x)
    b3 = ConvBN(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = ConvBN(192, name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b, 7c): 3x3s split into parallel 1x3 and 3x1; `pool` 'avg' or 'max'."""

  pool: str

  @nn.compact
  def __call__(self, x: Array) -> Array:
    row = dict(kernel_size=(1, 3), padding=(0, 1))
    col = dict(kernel_size=(3, 1), padding=(1, 0))
    b1 = ConvBN(320, name="branch1x1")(x)
    b3 = ConvBN(384, name="branch3x3_1")(x)
    b3 = [ConvBN(384, **row, name="branch3x3_2a")(b3), ConvBN(384, **col, name="branch3x3_2b")(b3)]
    bd = ConvBN(448, name="branch3x3dbl_1")(x)
    bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = [
      ConvBN(384, **row, name="branch3x3dbl_3a")(bd),
      ConvBN(384, **col, name="branch3x3dbl_3b")(bd),
    ]
    pooled = _max_pool_3x3(x) if self.pool == "max" else _avg_pool_3x3(x)
    bp = ConvBN(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Preprocessed images [N, H, W, 3] in [-1, 1] (H, W >= 75; 299 in FID) -> pool3 [N, 2048]."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"the Inception network needs sides >= {MIN_SIZE}, got {x.shape[1:3]}")
    x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)  # [N, 149, 149, 32] at 299
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [N, 147, 147, 32]
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # [N, 147, 147, 64]
    x = _max_pool_3x3(x, stride=2)  # [N, 73, 73, 64]
    x = ConvBN(80, name="Conv2d_3b_1x1")(x)  # [N, 73, 73, 80]
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [N, 71, 71, 192]
    x = _max_pool_3x3(x, stride=2)  # [N, 35, 35, 192]
    x = InceptionA(32, name="Mixed_5b")(x)  # [N, 35, 35, 256]
    x = InceptionA(64, name="Mixed_5c")(x)  # [N, 35, 35, 288]
    x = InceptionA(64, name="Mixed_5d")(x)  # [N, 35, 35, 288]
    x = InceptionB(name="Mixed_6a")(x)  # [N, 17, 17, 768]
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)  # [N, 17, 17, 768]
    x = InceptionD(name="Mixed_7a")(x)  # [N, 8, 8, 1280]
    x = InceptionE("avg", name="Mixed_7b")(x)  # [N, 8, 8, 2048]
    x = InceptionE("max", name="Mixed_7c")(x)  # [N, 8, 8, 2048]
    return jnp.mean(x, axis=(1, 2))  # pool3 [N, 2048]


# ------------------------------------------------------------------------------------------
# Features.
# ------------------------------------------------------------------------------------------
@jax.jit
def preprocess(images: Array) -> Array:
  """uint8 [N, H, W, 3] -> float32 [N, 299, 299, 3] in [-1, 1] (`PROTOCOL`)."""
  x = images.astype(jnp.float32) / 255.0
  if x.shape[1:3] != (SIZE, SIZE):
    # antialias=False: plain bilinear sampling at half-pixel centres, edge samples clamped,
    # as PyTorch's interpolate(align_corners=False) does when shrinking or enlarging.
    x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, 3), "bilinear", antialias=False)
  return 2.0 * x - 1.0


@jax.jit
def _pool3(params: dict, x: Array) -> Array:
  return FIDInceptionV3().apply({"params": params}, x)


def inception_features(params: dict, images: Union[np.ndarray, Array]) -> np.ndarray:
  """FID pool3 features of uint8 RGB images [N, H, W, 3] -> float32 [N, 2048] (`PROTOCOL`).

  `params` from `load_inception_params`. The whole batch is one call: split large sets into
  batches of a fixed size to compile once.
  """
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
  return np.asarray(_pool3(params, preprocess(images)))


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def expected_shapes() -> dict:
  """{param path: shape} of the network, without allocating it."""
  abstract = jax.eval_shape(
    FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3))
  )
  flat = flax.traverse_util.flatten_dict(abstract["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def torch_name(path: tuple) -> str:
  """The PyTorch state-dict name of a param path, e.g. Mixed_5b.branch1x1.conv.weight."""
  return ".".join(path[:-1]) + "." + _TORCH_SUFFIX[path[-1]]


def params_from_torch(
  read: Callable[[str], np.ndarray], where: str, max_problems: int = 20
) -> dict:
  """The params tree from a reader of PyTorch state-dict names (KeyError when absent).

  Raises:
    ValueError: naming every tensor that is missing or has another shape than the network's.
  """
  problems, flat = [], {}
  for path, shape in expected_shapes().items():
    name = torch_name(path)
    want = (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else shape
    try:
      value = np.asarray(read(name), np.float32)
    except KeyError:
      problems.append(f"missing tensor {name!r} (expected shape {want})")
      continue
    if value.shape != want:
      problems.append(f"tensor {name!r} has shape {value.shape}, expected {want}")
      continue
    flat[path] = value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value  # OIHW -> HWIO
  if problems:
    more = len(problems) - max_problems
    raise ValueError(
      f"{where} does not hold the FID Inception weights:\n  "
      + "\n  ".join(problems[:max_problems])
      + (f"\n  ... and {more} more" if more > 0 else "")
    )
  return flax.traverse_util.unflatten_dict(flat)


def load_inception_params(path: str) -> dict:
  """Params from a .safetensors or .npz file of the PyTorch state-dict names.

  Make the file once with `python -m phenaki_jax.convert_weights inception --src=... --out=...`
  from `pt_inception-2015-12-05-6726825d.pth`; pickled .pth files are never opened here.
  Tensors the network does not use (`fc.*`, `num_batches_tracked`) are ignored.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"Inception weights: {p} does not exist")
  if p.suffix == ".safetensors":
    _, read = checkpoint_io.open_safetensors([p])
    return params_from_torch(read, str(p))
  if p.suffix == ".npz":
    with np.load(p, allow_pickle=False) as arrays:
      return params_from_torch(lambda name: arrays[name], str(p))
  raise ValueError(
    f"{p}: expected a .safetensors or .npz file; convert the PyTorch checkpoint first with "
    "`python -m phenaki_jax.convert_weights inception --src=... --out=inception.safetensors`"
  )
