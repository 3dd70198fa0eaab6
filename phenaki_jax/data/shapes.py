"""Procedural Shapes: the embedded text-video benchmark (docs/design.md, "The Shapes benchmark").

One anti-aliased object (circle, square or triangle) in one of eight palette colours moves left,
right, up or down at a constant speed over a black background, and never leaves the canvas.
Captions read ``"a {color} {shape} moves {direction}"``; an image's caption is
``"a {color} {shape}"``. Some (color, shape, direction) triples are held out of the video data and
some colours (``orange`` by default) appear only in image data; this reproduces at small scale the
paper's claim (Phenaki §3.3, Table 2) that joint image+video training teaches concepts the videos
lack.

Every example is a pure function of ``(spec, seed, index, split)``, rendered with numpy only, so
any training step's batch can be recomputed exactly (see ``data/pipeline.py``).

Conventions:
  * Positions are float ``(x, y)`` pixel coordinates of the object's *area centroid*; pixel
    ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``. Image ``y`` grows downward, so ``up``
    decreases ``y``.
  * Sizes and speeds in ``ShapesSpec`` are fractions of the canvas side, so they scale with
    ``resolution`` (at 32x32 the defaults give a 12-px object moving 1.28 px per frame).
  * A clip of ``F`` frames moves ``F - 1`` steps. A story's segments share one trajectory: every
    frame after the first moves one step in the direction of the segment it belongs to, so the
    object continues from where it was (one step of motion across each boundary).
  * Story trajectories are never reflected: the start point is drawn uniformly from the starts
    whose whole trajectory stays inside the canvas; a story whose net motion cannot fit raises
    ``ValueError``. ``random_story_prompts`` and ``turning_story_prompts`` draw only stories that
    fit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence, Union

import numpy as np

PALETTE = {
  "red": (230, 30, 30),
  "green": (30, 200, 30),
  "blue": (40, 60, 230),
  "yellow": (230, 220, 30),
  "magenta": (220, 40, 220),
  "cyan": (30, 210, 210),
  "white": (235, 235, 235),
  "orange": (245, 140, 20),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
# Unit motion per direction as (dx, dy) in image coordinates (y grows downward).
DIRECTION_VECTORS = {
  "left": (-1.0, 0.0),
  "right": (1.0, 0.0),
  "up": (0.0, -1.0),
  "down": (0.0, 1.0),
}
SPLITS = ("train", "eval", "heldout", "image_only")

# Distinct seed streams: an example is drawn from np.random.default_rng([seed, stream, index]).
_STREAM = {
  "train": 0,
  "eval": 1,
  "heldout": 2,
  "image_only": 3,
  "image": 4,
  "story": 5,
  "story_prompts": 6,
  "turn": 7,
  "turning_story_prompts": 8,
}

# Extents of the shapes around their area centroid, in units of the object size s (the side of
# the square, the diameter of the circle, the side of the equilateral, apex-up triangle):
# the triangle reaches 2h/3 = s/sqrt(3) above its centroid and h/3 below (h = s*sqrt(3)/2).
_TRIANGLE_H = math.sqrt(3.0) / 2.0
_EXTENT_LEFT = _EXTENT_RIGHT = 0.5
_EXTENT_UP = max(0.5, 2.0 * _TRIANGLE_H / 3.0)  # 0.577 (triangle apex)
_EXTENT_DOWN = 0.5  # circle/square; the triangle base is at 0.289

Triple = tuple  # (color, shape, direction)


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
  """What the Shapes data looks like. Sizes and speeds are fractions of ``resolution``.

  Attributes:
    resolution: canvas side in pixels (square canvas).
    num_frames: frames per video clip; a C-ViViT needs ``1 + k * t_p`` (checked by the caller).
    heldout_triples: (color, shape, direction) triples never shown as training video.
    image_only_colors: colours that appear only in image data, never in training video.
    object_size: object size / resolution (0.375 -> 12 px at 32x32).
    speed: motion per frame / resolution (0.04 -> 1.28 px per frame at 32x32).
    margin: empty border the object never enters / resolution (1/32 -> 1 px at 32x32; never
      less than 1 px, so the outermost pixels are always black).
    supersample: anti-aliasing: each pixel averages supersample**2 samples (an N-rooks
      pattern: supersample**2 distinct offsets along each axis).
  """

  resolution: int = 32
  num_frames: int = 9
  heldout_triples: tuple = (
    ("red", "circle", "left"),
    ("green", "square", "up"),
    ("blue", "triangle", "right"),
    ("yellow", "triangle", "down"),
    ("magenta", "circle", "up"),
    ("cyan", "square", "right"),
  )
  image_only_colors: tuple = ("orange",)
  object_size: float = 0.375
  speed: float = 0.04
  margin: float = 1.0 / 32.0
  supersample: int = 4

  def __post_init__(self):
    if int(self.resolution) != self.resolution or self.resolution < 8:
      raise ValueError(f"ShapesSpec.resolution must be an int >= 8, got {self.resolution!r}.")
    if int(self.num_frames) != self.num_frames or self.num_frames < 1:
      raise ValueError(f"ShapesSpec.num_frames must be an int >= 1, got {self.num_frames!r}.")
    if not 0.0 < self.object_size < 0.8:
      raise ValueError(
        f"ShapesSpec.object_size is a fraction of the canvas in (0, 0.8), got {self.object_size!r}."
      )
    if not 0.0 < self.speed < 1.0:
      raise ValueError(
        f"ShapesSpec.speed is a fraction of the canvas per frame in (0, 1), got {self.speed!r}."
      )
    if not 0.0 <= self.margin < 0.25:
      raise ValueError(f"ShapesSpec.margin must be in [0, 0.25), got {self.margin!r}.")
    if int(self.supersample) != self.supersample or self.supersample < 1:
      raise ValueError(f"ShapesSpec.supersample must be an int >= 1, got {self.supersample!r}.")
    # Normalise lists (e.g. from a JSON/ml_collections config) to hashable tuples.
    object.__setattr__(self, "heldout_triples", tuple(tuple(t) for t in self.heldout_triples))
    object.__setattr__(self, "image_only_colors", tuple(self.image_only_colors))
    for color in self.image_only_colors:
      _check_word(color, COLORS, "image_only_colors colour")
    for triple in self.heldout_triples:
      if len(triple) != 3:
        raise ValueError(
          f"ShapesSpec.heldout_triples entries are (color, shape, direction), got {triple!r}."
        )
      _check_triple(triple)
      if triple[0] in self.image_only_colors:
        raise ValueError(
          f"Held-out triple {triple} uses the image-only colour {triple[0]!r}; "
          f"image-only colours are never in video data, so holding them out "
          f"means nothing. Remove it from heldout_triples."
        )
    if not train_triples(self):
      raise ValueError(
        "ShapesSpec leaves no training triples: too many held-out triples or image-only colours."
      )
    clip_motion = self.speed_px * (self.num_frames - 1)
    if clip_motion > self.max_travel_px + 1e-9:
      max_frames = 1 + int(self.max_travel_px / self.speed_px)
      raise ValueError(
        f"ShapesSpec: {self.num_frames} frames at {self.speed_px:.2f} px/frame move the object "
        f"{clip_motion:.1f} px, but only {self.max_travel_px:.1f} px fit inside the canvas. "
        f"Use num_frames <= {max_frames}, or lower speed or object_size."
      )

  @property
  def size_px(self) -> float:
    return self.object_size * self.resolution

  @property
  def speed_px(self) -> float:
    return self.speed * self.resolution

  @property
  def margin_px(self) -> float:
    return max(1.0, self.margin * self.resolution)  # at least one black pixel all round

  @property
  def centroid_bounds(self) -> tuple:
    """((x_min, x_max), (y_min, y_max)): where the centroid may be with any shape inside."""
    s, m, r = self.size_px, self.margin_px, self.resolution
    return (
      (m + _EXTENT_LEFT * s, r - m - _EXTENT_RIGHT * s),
      (m + _EXTENT_UP * s, r - m - _EXTENT_DOWN * s),
    )

  @property
  def max_travel_px(self) -> float:
    """The longest straight motion (px) that fits inside the canvas along either axis."""
    (x0, x1), (y0, y1) = self.centroid_bounds
    return min(x1 - x0, y1 - y0)


# ----------------------------------------------------------------------------------------------
# Captions and triples.
# ----------------------------------------------------------------------------------------------
def spec_from_config(config) -> ShapesSpec:
  """The Shapes clips of a run config (its `data.resolution` and `data.num_frames`)."""
  return ShapesSpec(resolution=config.data.resolution, num_frames=config.data.num_frames)


def caption(color: str, shape: str, direction: Optional[str] = None) -> str:
  """The caption of a video (with direction) or of an image (direction None)."""
  if direction is None:
    return f"a {color} {shape}"
  return f"a {color} {shape} moves {direction}"


def parse_caption(text: str) -> tuple:
  """``"a red circle moves left"`` -> ('red', 'circle', 'left'); ``"a red circle"`` -> (.., None).

  Raises:
    ValueError: the caption does not follow the Shapes grammar or uses an unknown word.
  """
  words = str(text).strip().lower().split()
  grammar = '"a {color} {shape}" or "a {color} {shape} moves {direction}"'
  if (
    len(words) not in (3, 5)
    or words[0] not in ("a", "an")
    or (len(words) == 5 and words[3] != "moves")
  ):
    raise ValueError(f"Caption {text!r} does not follow the Shapes grammar {grammar}.")
  color = _check_word(words[1], COLORS, "colour", text)
  shape = _check_word(words[2], SHAPES, "shape", text)
  direction = _check_word(words[4], DIRECTIONS, "direction", text) if len(words) == 5 else None
  return color, shape, direction


def _check_word(word, choices, what, text=None):
  if word not in choices:
    where = f" in caption {text!r}" if text is not None else ""
    raise ValueError(f"Unknown Shapes {what} {word!r}{where}; expected one of {list(choices)}.")
  return word


def _check_triple(triple):
  color, shape, direction = triple
  _check_word(color, COLORS, "colour")
  _check_word(shape, SHAPES, "shape")
  _check_word(direction, DIRECTIONS, "direction")
  return tuple(triple)


def all_triples() -> tuple:
  """Every (color, shape, direction) triple, 8 x 3 x 4 = 96, in a fixed order."""
  return tuple((c, s, d) for c in COLORS for s in SHAPES for d in DIRECTIONS)


def train_triples(spec: ShapesSpec) -> tuple:
  """Triples that training videos draw from: not held out, colour not image-only."""
  heldout = set(spec.heldout_triples)
  return tuple(t for t in all_triples() if t not in heldout and t[0] not in spec.image_only_colors)


def image_only_triples(spec: ShapesSpec) -> tuple:
  """Video triples whose colour is image-only (for evaluation: never seen moving)."""
  return tuple(t for t in all_triples() if t[0] in spec.image_only_colors)


@functools.lru_cache(maxsize=256)
def split_triples(spec: ShapesSpec, split: str) -> tuple:
  """The triples a video split draws from ('train' and 'eval' share the seen triples)."""
  if split in ("train", "eval"):
    return train_triples(spec)
  if split == "heldout":
    return tuple(spec.heldout_triples)
  if split == "image_only":
    return image_only_triples(spec)
  raise ValueError(f"Unknown Shapes split {split!r}; expected one of {list(SPLITS)}.")


def image_pairs() -> tuple:
  """Every (color, shape) pair, images use all colours (image-only ones included)."""
  return tuple((c, s) for c in COLORS for s in SHAPES)


# ----------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------
# Area of each shape in units of size**2.
SHAPE_AREA = {"circle": math.pi / 4.0, "square": 1.0, "triangle": math.sqrt(3.0) / 4.0}


def inside_shape(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
  """Whether offsets (dx, dy) from the area centroid fall inside the shape (broadcasting)."""
  half = 0.5 * size
  if shape == "circle":
    return dx * dx + dy * dy <= half * half
  if shape == "square":
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  if shape == "triangle":
    # Equilateral, apex up: apex at dy = -2h/3, base at dy = +h/3; half-width grows linearly.
    h = size * _TRIANGLE_H
    from_apex = dy + 2.0 * h / 3.0  # 0 at the apex, h at the base
    return (from_apex >= 0.0) & (from_apex <= h) & (np.abs(dx) <= from_apex * (half / h))
  raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")


@functools.lru_cache(maxsize=None)
def _sample_offsets(supersample: int) -> tuple:
  """supersample**2 sub-pixel sample offsets (x, y) in [0, 1), an N-rooks pattern.

  Every sample has its own x and its own y offset (y = a permutation of x), so horizontal and
  vertical edges, which dominate Shapes, get supersample**2 coverage levels instead of
  supersample: positions are resolved to 1/16 px at the default supersample=4.
  """
  n = supersample * supersample
  k = np.arange(n)
  step = next(s for s in (5, 7, 3, 1) if math.gcd(s, n) == 1 and (s < n or n == 1))
  return (k + 0.5) / n, ((k * step) % n + 0.5) / n


def render_trajectory(
  spec: ShapesSpec, positions, shapes: Sequence[str], colors: Sequence[str]
) -> np.ndarray:
  """Renders one object per frame at float centroid ``positions`` [T, 2] (x, y).

  Args:
    spec: sizes and resolution.
    positions: [T, 2] float (x, y) pixel coordinates of the area centroid per frame.
    shapes: T shape names (may change over time, e.g. in a story).
    colors: T colour names.

  Returns:
    uint8 [T, H, W, 3] video, anti-aliased with ``spec.supersample**2`` samples per pixel.
  """
  positions = np.asarray(positions, np.float64).reshape(-1, 2)  # [T, 2]
  num_frames = positions.shape[0]
  if len(shapes) != num_frames or len(colors) != num_frames:
    raise ValueError(
      f"render_trajectory needs one shape and colour per frame: "
      f"{num_frames} positions, {len(shapes)} shapes, {len(colors)} colours."
    )
  if not np.all(np.isfinite(positions)):
    raise ValueError(f"render_trajectory got non-finite positions: {positions.tolist()}.")
  for color in set(colors):
    _check_word(color, COLORS, "colour")
  res, size = spec.resolution, spec.size_px
  offset_x, offset_y = _sample_offsets(spec.supersample)  # [S], [S]
  # A square window around the object, large enough for every shape, pasted into a padded
  # canvas so that windows near the border need no clipping.
  win = int(math.ceil(2.0 * _EXTENT_UP * size)) + 3
  pad = win
  canvas = np.zeros((num_frames, res + 2 * pad, res + 2 * pad, 3), np.float32)  # [T, H', W', 3]
  origin = np.floor(positions).astype(np.int64) - win // 2  # [T, 2]
  cells = np.arange(win, dtype=np.float64)
  dx = (
    origin[:, 0:1, None] - positions[:, 0:1, None] + cells[None, :, None] + offset_x[None, None, :]
  )  # [T, win, S]
  dy = (
    origin[:, 1:2, None] - positions[:, 1:2, None] + cells[None, :, None] + offset_y[None, None, :]
  )  # [T, win, S]
  coverage = np.empty((num_frames, win, win), np.float32)  # [T, win, win]
  shapes = list(shapes)
  for shape in set(shapes):
    idx = np.array([t for t in range(num_frames) if shapes[t] == shape])
    inside = inside_shape(shape, dx[idx, None, :, :], dy[idx, :, None, :], size)  # [t, y, x, S]
    coverage[idx] = inside.mean(axis=-1)
  rgb = np.array([PALETTE[c] for c in colors], np.float32)  # [T, 3]
  side = res + 2 * pad
  for t in range(num_frames):
    x0, y0 = origin[t] + pad
    # Clip the window to the padded canvas (only objects far outside the canvas need it).
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + win, side), min(y0 + win, side)
    if cx1 > cx0 and cy1 > cy0:
      canvas[t, cy0:cy1, cx0:cx1] = (
        coverage[t, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None] * rgb[t]
      )
  video = canvas[:, pad : pad + res, pad : pad + res]  # [T, H, W, 3]
  return np.rint(video).astype(np.uint8)


def trajectory(spec: ShapesSpec, start, directions: Sequence[str]) -> np.ndarray:
  """Centroids [T, 2] of a constant-speed path: frame t > 0 moves one step in directions[t]."""
  steps = np.array([DIRECTION_VECTORS[d] for d in directions], np.float64) * spec.speed_px
  steps[0] = 0.0  # the first frame is the start
  return np.asarray(start, np.float64)[None, :] + np.cumsum(steps, axis=0)  # [T, 2]


def _fitting_start(spec: ShapesSpec, rng: np.random.Generator, directions: Sequence[str]):
  """A uniformly random start whose whole path stays inside the canvas, or None."""
  offsets = trajectory(spec, (0.0, 0.0), directions)  # [T, 2]
  lo, hi = offsets.min(axis=0), offsets.max(axis=0)  # [2]
  (x0, x1), (y0, y1) = spec.centroid_bounds
  low = np.array([x0, y0]) - lo
  high = np.array([x1, y1]) - hi
  if np.any(high < low - 1e-9):
    return None
  return low + rng.random(2) * np.maximum(high - low, 0.0)


def render_video(
  spec: ShapesSpec, color: str, shape: str, direction: str, start, num_frames: Optional[int] = None
) -> np.ndarray:
  """A clip of one object starting at centroid ``start`` (x, y). Returns uint8 [T, H, W, 3]."""
  _check_triple((color, shape, direction))
  num_frames = spec.num_frames if num_frames is None else int(num_frames)
  positions = trajectory(spec, start, [direction] * num_frames)
  return render_trajectory(spec, positions, [shape] * num_frames, [color] * num_frames)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
  if int(seed) < 0 or int(index) < 0:
    raise ValueError(f"Shapes seed and index must be >= 0, got seed={seed}, index={index}.")
  return np.random.default_rng([int(seed), _STREAM[stream], int(index)])


def video_example(
  spec: ShapesSpec, seed: int, index: int, split: str = "train", num_frames: Optional[int] = None
) -> dict:
  """Video ``index`` of ``split``: a pure function of (spec, seed, index, split).

  Splits: 'train' = seen triples (not held out, colour not image-only); 'eval' = the same
  triples from a disjoint random stream (never a training clip); 'heldout' = the held-out
  triples; 'image_only' = videos whose colour appears only in images (evaluation only).
  The triple is ``split_triples(spec, split)[index % n]`` (so any n consecutive indices are
  balanced over triples); the start position is random within the canvas.

  Returns:
    dict(video=uint8 [F, H, W, 3], caption=str, color=str, shape=str, direction=str).
  """
  triples = split_triples(spec, split)
  color, shape, direction = triples[int(index) % len(triples)]
  num_frames = spec.num_frames if num_frames is None else int(num_frames)
  rng = _rng(seed, split, index)
  start = _fitting_start(spec, rng, [direction] * num_frames)
  if start is None:
    raise ValueError(
      f"{num_frames} frames at {spec.speed_px:.2f} px/frame do not fit inside "
      f"the {spec.resolution}px canvas; use fewer frames or a lower speed."
    )
  video = render_video(spec, color, shape, direction, start, num_frames)
  return dict(
    video=video,
    caption=caption(color, shape, direction),
    color=color,
    shape=shape,
    direction=direction,
  )


def turn_example(
  spec: ShapesSpec, seed: int, index: int, context_frames: int, num_frames: Optional[int] = None
) -> dict:
  """Turn clip ``index``: a story-mode training example (a pure function of its arguments).

  The object moves in a first direction over frames ``1 .. context_frames - 1`` and in the
  caption's direction from frame ``context_frames`` on, continuing from where it was: the
  window a story continuation samples in, whose first ``context_frames`` frames are the
  previous segment's end. The caption's triple is ``train_triples(spec)[index % n]``; the first
  direction is drawn from the other three among those whose triple is a training triple too
  (held-out motion never appears). The path stays inside the canvas.

  Returns:
    dict(video=uint8 [F, H, W, 3], caption=str (the turn's triple), color, shape, direction,
    first_direction=str, context_frames=int).
  """
  num_frames = spec.num_frames if num_frames is None else int(num_frames)
  if not 1 <= int(context_frames) < num_frames:
    raise ValueError(
      f"context_frames must be in [1, {num_frames}) for {num_frames}-frame "
      f"turn clips, got {context_frames!r}."
    )
  triples = train_triples(spec)
  color, shape, direction = triples[int(index) % len(triples)]
  firsts = [d for d in DIRECTIONS if d != direction and (color, shape, d) in triples]
  if not firsts:
    raise ValueError(
      f"No training triple ({color}, {shape}, ·) moves in a direction other "
      f"than {direction!r}; hold out fewer triples to train turns."
    )
  rng = _rng(seed, "turn", index)
  first = firsts[int(rng.integers(len(firsts)))]
  directions = [first] * int(context_frames) + [direction] * (num_frames - int(context_frames))
  start = _fitting_start(spec, rng, directions)
  if start is None:
    raise ValueError(
      f"A {num_frames}-frame turn clip at {spec.speed_px:.2f} px/frame does not "
      f"fit inside the {spec.resolution}px canvas; use fewer frames."
    )
  positions = trajectory(spec, start, directions)  # [F, 2]
  video = render_trajectory(spec, positions, [shape] * num_frames, [color] * num_frames)
  return dict(
    video=video,
    caption=caption(color, shape, direction),
    color=color,
    shape=shape,
    direction=direction,
    first_direction=first,
    context_frames=int(context_frames),
  )


def image_example(spec: ShapesSpec, seed: int, index: int) -> dict:
  """Image ``index``: any colour (image-only ones included), shape ``image_pairs()[index % 24]``.

  Returns:
    dict(video=uint8 [1, H, W, 3], caption=str, color=str, shape=str).
  """
  pairs = image_pairs()
  color, shape = pairs[int(index) % len(pairs)]
  rng = _rng(seed, "image", index)
  (x0, x1), (y0, y1) = spec.centroid_bounds
  start = (x0 + rng.random() * (x1 - x0), y0 + rng.random() * (y1 - y0))
  video = render_trajectory(spec, [start], [shape], [color])
  return dict(video=video, caption=caption(color, shape), color=color, shape=shape)


def _segment_lengths(frames_per_segment, num_segments: int) -> list:
  if isinstance(frames_per_segment, (int, np.integer)):
    lengths = [int(frames_per_segment)] * num_segments
  else:
    lengths = [int(n) for n in frames_per_segment]
  if len(lengths) != num_segments or any(n < 1 for n in lengths):
    raise ValueError(
      f"frames_per_segment must be a positive int or one positive int per prompt "
      f"({num_segments} prompts), got {frames_per_segment!r}."
    )
  return lengths


def _as_triple(prompt) -> tuple:
  if isinstance(prompt, str):
    triple = parse_caption(prompt)
    if triple[2] is None:
      raise ValueError(f'Story prompt {prompt!r} has no direction; write "... moves {{dir}}".')
    return triple
  return _check_triple(tuple(prompt))


def story_example(
  spec: ShapesSpec,
  seed: int,
  index: int,
  prompts: Sequence[Union[str, tuple]],
  frames_per_segment: Union[int, Sequence[int]],
) -> dict:
  """Ground-truth story: one object follows each prompt in turn, continuing where it was.

  Segment k covers ``frames_per_segment[k]`` frames; every frame after the first moves one step
  (``spec.speed_px``) in the direction of its segment, and the shape/colour are those of its
  segment's prompt. The start is uniform over the starts whose whole path fits in the canvas.

  Args:
    prompts: captions (``"a red circle moves left"``) or (color, shape, direction) triples.
    frames_per_segment: one int for all segments, or one int per segment.

  Returns:
    dict(video=uint8 [sum(frames), H, W, 3], prompts=list[str], triples=list[tuple],
    segment_starts=list[int] (first frame of each segment), centroids=float [T, 2] (x, y)).

  Raises:
    ValueError: the path cannot fit inside the canvas (e.g. too many frames in one direction).
  """
  triples = [_as_triple(p) for p in prompts]
  if not triples:
    raise ValueError("story_example needs at least one prompt.")
  lengths = _segment_lengths(frames_per_segment, len(triples))
  per_frame = [triples[k] for k, n in enumerate(lengths) for _ in range(n)]
  directions = [t[2] for t in per_frame]
  rng = _rng(seed, "story", index)
  start = _fitting_start(spec, rng, directions)
  if start is None:
    raise ValueError(
      f"Story {[caption(*t) for t in triples]} with segments of {lengths} frames "
      f"moves the object further than the {spec.resolution}px canvas allows; "
      f"use fewer frames or directions that turn back "
      f"(random_story_prompts draws only stories that fit)."
    )
  positions = trajectory(spec, start, directions)  # [T, 2]
  video = render_trajectory(spec, positions, [t[1] for t in per_frame], [t[0] for t in per_frame])
  return dict(
    video=video,
    prompts=[caption(*t) for t in triples],
    triples=triples,
    segment_starts=[int(s) for s in np.cumsum([0] + lengths[:-1])],
    centroids=positions,
  )


def story_fits(spec: ShapesSpec, prompts, frames_per_segment) -> bool:
  """Whether some start lets the story's whole path stay inside the canvas."""
  triples = [_as_triple(p) for p in prompts]
  lengths = _segment_lengths(frames_per_segment, len(triples))
  directions = [triples[k][2] for k, n in enumerate(lengths) for _ in range(n)]
  return _fitting_start(spec, np.random.default_rng(0), directions) is not None


def random_story_prompts(
  spec: ShapesSpec,
  seed: int,
  index: int,
  num_segments: int,
  frames_per_segment: Union[int, Sequence[int]],
  split: str = "train",
  vary_appearance: bool = False,
  max_tries: int = 1000,
) -> list:
  """Prompts of a story whose path fits the canvas (a pure function of seed and index).

  The first prompt is triple ``index % n`` of ``split``; later prompts keep its colour and shape
  (the same object, ``vary_appearance=False``; for 'heldout' in any direction, otherwise only in
  directions of ``split``) or draw whole triples from ``split``; they are redrawn until the path
  fits.
  """
  triples = split_triples(spec, split)
  rng = _rng(seed, "story_prompts", index)
  first = triples[int(index) % len(triples)]
  for _ in range(max_tries):
    story = [first]
    for _ in range(num_segments - 1):
      if vary_appearance:
        story.append(triples[rng.integers(len(triples))])
      else:
        candidates = [first[:2] + (d,) for d in _object_directions(first, triples, split)]
        story.append(candidates[rng.integers(len(candidates))])
    if story_fits(spec, story, frames_per_segment):
      return [caption(*t) for t in story]
  raise _no_story("story", num_segments, frames_per_segment, max_tries)


def _object_directions(first: tuple, triples: tuple, split: str) -> tuple:
  """The directions a story's object (``first``'s colour and shape) may take in later segments:
  any for 'heldout' (a held-out object may move every way), otherwise those of its triples in
  ``triples``, in ``DIRECTIONS`` order."""
  if split == "heldout":
    return DIRECTIONS
  return tuple(d for d in DIRECTIONS if first[:2] + (d,) in triples)


def _no_story(kind: str, num_segments: int, frames_per_segment, tries: int) -> ValueError:
  return ValueError(
    f"No {kind} of {num_segments} segments x {frames_per_segment} frames fits the "
    f"canvas after {tries} tries; use fewer frames per segment."
  )


def turning_story_prompts(
  spec: ShapesSpec,
  seed: int,
  index: int,
  num_segments: int,
  frames_per_segment: Union[int, Sequence[int]],
  split: str = "train",
  max_tries: int = 100,
) -> list:
  """Prompts of a story of one object that turns at every boundary and fits the canvas (a pure
  function of its arguments; evaluation stories, never training data).

  The first prompt is triple ``index % n`` of ``split``; every later segment keeps its colour and
  shape and moves in a direction other than the previous segment's, drawn uniformly among those
  that leave the path so far inside the canvas from some start (for 'heldout' any direction, as
  in ``random_story_prompts``; otherwise only directions whose triple is in ``split``). Drawn one
  segment at a time, so long stories fit where whole random stories almost never do; a draw that
  leaves no direction to turn to starts over.
  """
  triples = split_triples(spec, split)
  first = triples[int(index) % len(triples)]
  lengths = _segment_lengths(frames_per_segment, num_segments)
  allowed = _object_directions(first, triples, split)
  rng = _rng(seed, "turning_story_prompts", index)
  anywhere = np.random.default_rng(0)  # _fitting_start draws a start; only its existence counts
  for _ in range(max_tries):
    directions, path = [first[2]], [first[2]] * lengths[0]
    for n in lengths[1:]:
      options = [
        d
        for d in allowed
        if d != directions[-1] and _fitting_start(spec, anywhere, path + [d] * n) is not None
      ]
      if not options:
        break
      directions.append(options[int(rng.integers(len(options)))])
      path += [directions[-1]] * n
    else:
      return [caption(first[0], first[1], d) for d in directions]
  raise _no_story("turning story", num_segments, frames_per_segment, max_tries)
