"""The analytic Shapes prompt-following evaluator (docs/design.md, "The Shapes benchmark").

No learned weights: a generated video is read back with the Shapes rules themselves.

Per frame:
  * object pixels: brightness (max over RGB) >= max(``min_brightness``, 0.5 * the frame's peak);
    the background is black. Only the largest 8-connected component is kept, so stray specks of
    a generated frame do not move the bounding box or the centroid.
  * colour votes: each object pixel goes to the palette colour nearest to it after fitting the
    colour's brightness (residual of ``p - a*c`` with ``a`` clipped to [0.5, 1.2]), so darker
    anti-aliased or slightly dim generated pixels still vote for their hue.
  * coverage: brightness over the object's core level (median of the object pixels), clipped to
    [0, 1], on the component grown by two pixels (the anti-aliased or blurred rim).
  * centroid: the coverage-weighted mean, i.e. the area centroid to sub-pixel accuracy.
  * shape, by analysis-by-synthesis: each of circle, square and apex-up triangle is rendered
    anti-aliased with the object's area (sum of coverage) at its centroid, and the one with the
    highest soft IoU (sum of min / sum of max) wins. This uses what the bounding-box fill ratio
    uses (square ~1, circle ~pi/4, triangle ~1/2) and also where the mass is (corners, narrow top
    vs. wide bottom), and it does not hinge on which rim pixels pass a threshold, which keeps
    small, blurry or generated objects apart much better than the fill ratio alone.

Per clip: colour = majority of all pixel votes; shape = majority of frame shapes (ties by summed
IoU); direction = the dominant axis of the centroid velocity (least-squares slope over the frames
with an object, in px/frame; image y grows downward, so 'up' is decreasing row), or None when the
object moves slower than ``min_speed`` canvas sides per frame (0.32 px/frame at 32x32; the data
moves 1.28) or is in fewer than two frames.

Stories: every segment is scored as a clip against its own prompt (its direction also uses the
previous segment's last frame, the step into the segment); the boundary jump is the raw
distance (px) between the centroids of a segment's last frame and the next segment's first frame.
It therefore includes one frame of intended motion (``ShapesSpec.speed_px``, 1.28 px at 32x32 for
the ground truth); a missing object at a boundary counts as a jump of the canvas diagonal.
For scale, the same distance between consecutive frames inside the segments (the steps) is
reported too: a boundary can only be as smooth as the generator's own frame-to-frame motion.
A segment whose colour and shape are both right keeps the object (``color_shape_kept``, the
direction aside): over a long story of one object, its fall measures the drift of appearance.

Story feasibility (diagnostic, when a ``ShapesSpec`` is given): the Shapes data never lets the
object leave the canvas, so a later segment whose prompt asks for more motion than the canvas has
left, from where the previous segment ended, cannot be followed without a jump. Such a segment is
marked infeasible (its path's end is more than half a frame of motion outside the centroid
bounds of ``ShapesSpec.centroid_bounds``); the first segment is always feasible (the model picks
its start). The segment accuracy still counts every segment; the feasible-only accuracy is
reported beside it.

Fidelity (how clean the object is drawn, apart from what it is; ground truth gives ~0.99, 0 and
~0.2% at 32x32, see ``analyze_video``):
  * template IoU: the soft IoU of the frame's coverage with the best-fitting anti-aliased
    template of the clip's shape (the shape read for the clip, or for a story segment). The
    template starts at the object's area and centroid and is refined by a coordinate search over
    its position and size (``_fit_template``); it is rendered with the data's own N-rooks samples.
    Bites, bumps, smeared edges and attached blocks lower it; a frame without an object is 0.
  * stray components: connected components of the thresholded object mask (the same mask as
    above) other than the largest, of at least ``MIN_STRAY_PIXELS`` pixels. Anti-aliasing never
    makes one on the Shapes data (every split, 16 to 64 px), so any counts.
  * area change: the mean over consecutive frame pairs of |area_t - area_{t-1}| (the coverage
    sums; a frame without an object has area 0), over the clip's mean area. Stories use the pairs
    inside a segment only, each over its segment's mean area.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from phenaki_jax.data import shapes as shapes_lib

_PALETTE_NAMES = shapes_lib.COLORS
_PALETTE = np.array([shapes_lib.PALETTE[c] for c in _PALETTE_NAMES], np.float32)  # [8, 3]
_EIGHT_CONNECTED = np.ones((3, 3), bool)

# Defaults, exposed so callers can tune them for very blurry models.
MIN_BRIGHTNESS = 48.0  # a frame whose peak brightness is below this has no object
MIN_SPEED = 0.01  # slower than this (canvas sides per frame) counts as not moving
MIN_STRAY_PIXELS = 1  # a stray component this large or larger counts (real clips have none)

# The template fit's coordinate search: first steps in px (position) and in relative size, halved
# after a round without improvement, at most this many halvings.
_FIT_STEP_PX = 0.5
_FIT_STEP_SIZE = 0.04
_FIT_HALVINGS = 3


def _check_video(video) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim == 3:
    video = video[None]
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(
      f"Expected a video [T, H, W, 3] (or a frame [H, W, 3]), got shape {video.shape}."
    )
  if np.issubdtype(video.dtype, np.floating):
    raise ValueError(
      f"Expected uint8 frames in [0, 255], got {video.dtype}. Convert [0, 1] "
      f"floats with np.clip(video * 255, 0, 255).round().astype(np.uint8)."
    )
  if video.dtype != np.uint8:
    video = np.clip(video, 0, 255).astype(np.uint8)
  return video


def _soft_template(
  shape: str,
  area: float,
  centroid,
  top: int,
  left: int,
  height: int,
  width: int,
  supersample: int = 4,
) -> np.ndarray:
  """Coverage [height, width] of ``shape`` with the given area and area centroid (x, y)."""
  size = float(np.sqrt(area / shapes_lib.SHAPE_AREA[shape]))
  sub_y = (np.arange(height * supersample) + 0.5) / supersample + top - centroid[1]
  sub_x = (np.arange(width * supersample) + 0.5) / supersample + left - centroid[0]
  inside = shapes_lib.inside_shape(shape, sub_x[None, :], sub_y[:, None], size)
  return inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


def _soft_iou(observed: np.ndarray, template: np.ndarray) -> float:
  return float(np.minimum(observed, template).sum() / np.maximum(observed, template).sum())


def _rooks_template(shape: str, size: float, centroid, top: int, left: int, observed_shape):
  """Coverage [h, w] of ``shape`` (side ``size`` px) at ``centroid`` (x, y), sampled with the
  data's N-rooks pattern (``shapes.render_trajectory``, supersample 4)."""
  height, width = observed_shape
  offset_x, offset_y = shapes_lib._sample_offsets(4)  # pylint: disable=protected-access
  dx = (np.arange(width) + left - centroid[0])[:, None] + offset_x[None, :]  # [w, S]
  dy = (np.arange(height) + top - centroid[1])[:, None] + offset_y[None, :]  # [h, S]
  return shapes_lib.inside_shape(shape, dx[None], dy[:, None], size).mean(axis=-1)


def _fit_template(window: tuple, shape: str) -> float:
  """The best soft IoU of a frame's coverage window with a ``shape`` template.

  Starts at the object's area and centroid and moves the template's x, y (px) and size
  (relative) one step at a time to the best of the six neighbours while that improves the IoU;
  a round without improvement halves the steps (``_FIT_HALVINGS`` times).
  """
  observed, top, left, area, centroid = window
  params = np.array([centroid[0], centroid[1], np.sqrt(area / shapes_lib.SHAPE_AREA[shape])])
  cache = {}

  def iou(p):
    key = tuple(np.round(p, 6))
    if key not in cache:
      template = _rooks_template(shape, p[2], p[:2], top, left, observed.shape)
      cache[key] = _soft_iou(observed, template)
    return cache[key]

  best = iou(params)
  steps = np.array([_FIT_STEP_PX, _FIT_STEP_PX, _FIT_STEP_SIZE * params[2]])
  for _ in range(_FIT_HALVINGS + 1):
    while True:
      moves = [params + sign * steps[i] * np.eye(3)[i] for i in range(3) for sign in (-1, 1)]
      scores = [iou(m) for m in moves]
      k = int(np.argmax(scores))
      if scores[k] <= best:
        break
      params, best = moves[k], scores[k]
    steps = steps / 2
  return best


def _stray_components(labels: np.ndarray, num: int, min_pixels: int) -> int:
  """Components of the labelled object mask other than the largest, of >= ``min_pixels``."""
  if num < 2:
    return 0
  sizes = np.sort(np.bincount(labels.ravel())[1:])[:-1]  # all but the largest
  return int(np.sum(sizes >= min_pixels))


def analyze_frame(
  frame, min_brightness: float = MIN_BRIGHTNESS, min_stray_pixels: int = MIN_STRAY_PIXELS
) -> dict:
  """Reads one frame [H, W, 3] uint8.

  Returns:
    dict(present=bool, centroid=float [2] (x, y) or NaNs, shape=str or None,
    shape_iou={shape: soft IoU with the fitted template}, color_votes=int [8] (palette order),
    area=float (pixels of coverage), bbox=(r0, r1, c0, c1) of the thresholded object or None,
    template_iou=float (the refined template fit of the frame's own shape; 0.0 without an
    object), stray_components=int (see the module docstring), window=the coverage window the
    template fit reads, or None).
  """
  frame = _check_video(frame)[0]
  height, width = frame.shape[:2]
  brightness = frame.max(axis=-1).astype(np.float32)  # [H, W]
  peak = float(brightness.max())
  empty = dict(
    present=False,
    centroid=np.full(2, np.nan),
    shape=None,
    shape_iou={},
    color_votes=np.zeros(len(_PALETTE_NAMES), np.int64),
    area=0.0,
    bbox=None,
    template_iou=0.0,
    stray_components=0,
    window=None,
  )
  if peak < min_brightness:
    return empty
  mask = brightness >= max(min_brightness, 0.5 * peak)  # [H, W]
  labels, num = ndimage.label(mask, structure=_EIGHT_CONNECTED)
  stray = _stray_components(labels, num, min_stray_pixels)
  if num > 1:
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == (1 + int(np.argmax(sizes)))
  rows, cols = np.nonzero(mask)
  r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()

  # Colour: scale-fitted nearest palette colour per pixel.
  pixels = frame[mask].astype(np.float32)  # [N, 3]
  dots = pixels @ _PALETTE.T  # [N, 8]
  scale = np.clip(dots / np.sum(_PALETTE**2, axis=1), 0.5, 1.2)  # [N, 8]
  residual = np.sum((pixels[:, None, :] - scale[..., None] * _PALETTE[None]) ** 2, axis=-1)
  votes = np.bincount(np.argmin(residual, axis=1), minlength=len(_PALETTE_NAMES))

  # Soft coverage [H, W] of the object: brightness over its core level, on the component grown
  # by two pixels (the anti-aliased or blurred rim), zero elsewhere.
  grown = ndimage.binary_dilation(mask, structure=_EIGHT_CONNECTED, iterations=2)
  full = float(np.median(brightness[mask]))
  coverage = np.where(grown, np.clip(brightness / full, 0.0, 1.0), 0.0)
  area = float(coverage.sum())
  ys, xs = np.indices(coverage.shape, dtype=np.float64)
  centroid = np.array([(coverage * (xs + 0.5)).sum() / area, (coverage * (ys + 0.5)).sum() / area])

  # Shape: analysis by synthesis. Render each shape with the object's area at its centroid and
  # compare the coverages (soft IoU) inside a window that holds both.
  pad = int(np.ceil(0.6 * np.sqrt(area))) + 2
  top, bottom = max(0, r0 - pad), min(height, r1 + pad + 1)
  left, right = max(0, c0 - pad), min(width, c1 + pad + 1)
  observed = coverage[top:bottom, left:right]  # [h, w]
  ious = {}
  for name in shapes_lib.SHAPES:
    template = _soft_template(name, area, centroid, top, left, bottom - top, right - left)
    ious[name] = float(np.minimum(observed, template).sum() / np.maximum(observed, template).sum())
  shape = max(ious, key=ious.get)
  window = (observed, top, left, area, centroid)
  return dict(
    present=True,
    centroid=centroid,
    shape=shape,
    shape_iou=ious,
    color_votes=votes,
    area=area,
    bbox=(int(r0), int(r1), int(c0), int(c1)),
    template_iou=_fit_template(window, shape),
    stray_components=stray,
    window=window,
  )


def _direction(centroids: np.ndarray, min_speed_px: float):
  """Dominant-axis direction of the least-squares centroid velocity, or None."""
  valid = ~np.isnan(centroids[:, 0])
  t = np.nonzero(valid)[0].astype(np.float64)
  if t.size < 2:
    return None, np.zeros(2), np.zeros(2)
  c = centroids[valid]  # [n, 2]
  tc = t - t.mean()
  velocity = (tc[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (tc**2).sum()  # [2] px/frame
  displacement = c[-1] - c[0]
  if np.abs(velocity).max() < min_speed_px:
    return None, velocity, displacement
  vx, vy = velocity
  if abs(vx) >= abs(vy):
    return ("right" if vx > 0 else "left"), velocity, displacement
  return ("down" if vy > 0 else "up"), velocity, displacement


def _fidelity(frames: Sequence[dict], shape: Optional[str]) -> dict:
  """Template IoU (with ``shape``), stray components and area changes of a clip's frames."""
  ious = [
    0.0
    if not f["present"] or shape is None
    else (f["template_iou"] if f["shape"] == shape else _fit_template(f["window"], shape))
    for f in frames
  ]
  areas = np.array([f["area"] for f in frames], np.float64)
  mean_area = float(areas.mean()) if areas.size else 0.0
  changes = (np.abs(np.diff(areas)) / mean_area).tolist() if mean_area > 0 else []
  return dict(
    template_iou=float(np.mean(ious)) if ious else float("nan"),
    frame_template_iou=ious,
    stray_components=[int(f["stray_components"]) for f in frames],
    area_change=float(np.mean(changes)) if changes else float("nan"),
    area_changes=changes,
  )


def _summarize(
  frames: Sequence[dict],
  width: int,
  min_speed: float,
  motion_frames: Optional[Sequence[dict]] = None,
) -> dict:
  """Clip-level reading from per-frame readings (direction from ``motion_frames``)."""
  centroids = np.stack([f["centroid"] for f in frames])  # [T, 2]
  votes = np.sum([f["color_votes"] for f in frames], axis=0)  # [8]
  color = _PALETTE_NAMES[int(np.argmax(votes))] if votes.sum() else None
  frame_shapes = [f["shape"] for f in frames]
  shape = None
  present = [s for s in frame_shapes if s is not None]
  if present:
    counts = {s: present.count(s) for s in set(present)}
    iou_sum = {s: sum(f["shape_iou"].get(s, 0.0) for f in frames) for s in counts}
    shape = max(counts, key=lambda s: (counts[s], iou_sum[s]))
  motion = centroids if motion_frames is None else np.stack([f["centroid"] for f in motion_frames])
  direction, velocity, displacement = _direction(motion, min_speed * width)
  return dict(
    color=color,
    shape=shape,
    direction=direction,
    centroids=centroids,
    velocity=velocity,
    displacement=displacement,
    frame_shapes=frame_shapes,
    color_votes={c: int(v) for c, v in zip(_PALETTE_NAMES, votes)},
    present=np.array([f["present"] for f in frames]),
    areas=np.array([f["area"] for f in frames], np.float64),
    **_fidelity(frames, shape),
  )


def analyze_video(
  video,
  min_brightness: float = MIN_BRIGHTNESS,
  min_speed: float = MIN_SPEED,
  min_stray_pixels: int = MIN_STRAY_PIXELS,
) -> dict:
  """Reads a Shapes video [T, H, W, 3] uint8 (a single frame [H, W, 3] is a 1-frame video).

  Returns:
    dict(color=str or None, shape=str or None, direction=str or None (None for one frame, a
    static or missing object), centroids=float [T, 2] (x, y; NaN where no object),
    velocity=float [2] (least-squares px/frame), displacement=float [2] (last minus first
    centroid, px), frame_shapes=list[str or None], color_votes={color: pixel count},
    present=bool [T], areas=float [T] (coverage sums, px), and the fidelity measures (module
    docstring): template_iou=float (mean over the frames), frame_template_iou=list[float] [T]
    (template of the clip's shape), stray_components=list[int] [T], area_change=float (NaN for
    one frame or no object), area_changes=list[float] [T - 1]).
  """
  video = _check_video(video)
  frames = [analyze_frame(f, min_brightness, min_stray_pixels) for f in video]
  return _summarize(frames, video.shape[2], min_speed)


_FIDELITY_KEYS = (
  "template_iou",
  "frame_template_iou",
  "stray_components",
  "area_change",
  "area_changes",
)


def _score_analysis(analysis: dict, caption: str) -> dict:
  color, shape, direction = shapes_lib.parse_caption(caption)
  color_ok = analysis["color"] == color
  shape_ok = analysis["shape"] == shape
  direction_ok = None if direction is None else analysis["direction"] == direction
  all_ok = color_ok and shape_ok and direction_ok is not False
  return dict(
    color_ok=bool(color_ok),
    shape_ok=bool(shape_ok),
    direction_ok=direction_ok,
    all_ok=bool(all_ok),
    caption=caption,
    pred_color=analysis["color"],
    pred_shape=analysis["shape"],
    pred_direction=analysis["direction"],
    **{key: analysis[key] for key in _FIDELITY_KEYS},
  )


def score(video, caption: str, **analyze_kwargs) -> dict:
  """Scores a video [T, H, W, 3] (or an image) against its caption.

  Returns:
    dict(color_ok, shape_ok, direction_ok (None for an image caption), all_ok, caption,
    pred_color, pred_shape, pred_direction, and the fidelity measures of ``analyze_video``:
    template_iou, frame_template_iou, stray_components, area_change, area_changes).
  """
  return _score_analysis(analyze_video(video, **analyze_kwargs), caption)


def _segment_starts(
  num_frames: int, num_segments: int, frames_per_segment=None, segment_starts=None
) -> list:
  if (frames_per_segment is None) == (segment_starts is None):
    raise ValueError(
      "score_story needs exactly one of frames_per_segment (int or list) or "
      "segment_starts (first frame of each segment)."
    )
  if segment_starts is None:
    if isinstance(frames_per_segment, (int, np.integer)):
      lengths = [int(frames_per_segment)] * num_segments
    else:
      lengths = [int(n) for n in frames_per_segment]
    segment_starts = list(np.cumsum([0] + lengths[:-1]))
    if sum(lengths) != num_frames:
      raise ValueError(
        f"Segments of {lengths} frames cover {sum(lengths)} frames, but the video has {num_frames}."
      )
  starts = [int(s) for s in segment_starts]
  if (
    len(starts) != num_segments
    or starts[0] != 0
    or any(b <= a for a, b in zip(starts, starts[1:]))
    or starts[-1] >= num_frames
  ):
    raise ValueError(
      f"Bad story segmentation {starts} for {num_segments} prompts and "
      f"{num_frames} frames: need increasing starts from 0, one per prompt."
    )
  return starts


def segment_feasible(
  spec: shapes_lib.ShapesSpec, start_centroid, direction: str, num_frames: int
) -> bool:
  """Whether ``num_frames`` steps of ``spec.speed_px`` in ``direction`` from ``start_centroid``
  (x, y; the previous segment's last frame) keep the centroid inside the canvas's centroid
  bounds, to within half a step. An unknown start (NaN: no object) counts as feasible."""
  start = np.asarray(start_centroid, np.float64)
  if not np.all(np.isfinite(start)):
    return True
  end = start + num_frames * spec.speed_px * np.asarray(shapes_lib.DIRECTION_VECTORS[direction])
  tolerance = 0.5 * spec.speed_px
  return all(
    lo - tolerance <= v <= hi + tolerance for v, (lo, hi) in zip(end, spec.centroid_bounds)
  )


def score_story(
  video,
  prompts: Sequence[str],
  frames_per_segment: Optional[Union[int, Sequence[int]]] = None,
  segment_starts: Optional[Sequence[int]] = None,
  min_brightness: float = MIN_BRIGHTNESS,
  min_speed: float = MIN_SPEED,
  spec: Optional[shapes_lib.ShapesSpec] = None,
  min_stray_pixels: int = MIN_STRAY_PIXELS,
) -> dict:
  """Scores a story video [T, H, W, 3] whose segments follow ``prompts`` in turn.

  Give either ``frames_per_segment`` (int, or one int per prompt, summing to T) or
  ``segment_starts`` (the first frame of each segment; the last runs to the end). Colour and
  shape of a segment are read from its own frames; its direction from its frames plus the
  previous segment's last frame (the step into the segment is the segment's first motion).
  With ``spec`` (the data's canvas and speed), each segment is also marked feasible or not (see
  the module docstring).

  Returns:
    dict(segments=list of score() dicts, segment_ok=list[bool] (all three attributes right),
    segment_accuracy=float, segment_color_shape_ok=list[bool] (colour and shape right, direction
    aside: the object is kept), color_shape_kept=float (their fraction), jumps=list[float] (px,
    one per boundary), mean_jump=float,
    max_jump=float (0.0 for one segment), steps=list[float] (px, between consecutive frames
    inside a segment; a missing object counts as the canvas diagonal, as for jumps),
    num_segments=int, the fidelity measures over the whole story (template_iou and
    frame_template_iou with each segment's own shape, stray_components per frame, area_change
    and area_changes over the pairs inside the segments), and with ``spec``
    segment_feasible=list[bool]).
  """
  video = _check_video(video)
  num_frames, height, width = video.shape[:3]
  starts = _segment_starts(num_frames, len(prompts), frames_per_segment, segment_starts)
  ends = starts[1:] + [num_frames]
  frames = [analyze_frame(f, min_brightness, min_stray_pixels) for f in video]
  segments = []
  for start, end, prompt in zip(starts, ends, prompts):
    analysis = _summarize(
      frames[start:end], width, min_speed, motion_frames=frames[max(0, start - 1) : end]
    )
    segments.append(_score_analysis(analysis, prompt))
  centroids = np.array([f["centroid"] for f in frames], np.float64)  # [T, 2]
  moves = np.linalg.norm(np.diff(centroids, axis=0), axis=1)  # move t: frame t → t+1
  moves = np.where(np.isfinite(moves), moves, np.hypot(height, width)).tolist()
  jumps = [moves[boundary - 1] for boundary in starts[1:]]
  steps = [m for t, m in enumerate(moves) if t + 1 not in starts]
  segment_ok = [s["all_ok"] for s in segments]
  color_shape_ok = [s["color_ok"] and s["shape_ok"] for s in segments]
  out = dict(
    segments=segments,
    segment_ok=segment_ok,
    segment_accuracy=float(np.mean(segment_ok)),
    segment_color_shape_ok=color_shape_ok,
    color_shape_kept=float(np.mean(color_shape_ok)),
    jumps=jumps,
    mean_jump=float(np.mean(jumps)) if jumps else 0.0,
    max_jump=float(np.max(jumps)) if jumps else 0.0,
    steps=steps,
    num_segments=len(prompts),
  )
  for key in ("frame_template_iou", "stray_components", "area_changes"):
    out[key] = [v for s in segments for v in s[key]]
  out["template_iou"] = float(np.mean(out["frame_template_iou"]))
  changes = out["area_changes"]
  out["area_change"] = float(np.mean(changes)) if changes else float("nan")
  if spec is not None:
    feasible = [True]
    for start, end, prompt in zip(starts[1:], ends[1:], prompts[1:]):
      direction = shapes_lib.parse_caption(prompt)[2]
      feasible.append(
        direction is None
        or segment_feasible(spec, frames[start - 1]["centroid"], direction, end - start)
      )
    out["segment_feasible"] = feasible
  return out


def aggregate(scores: Sequence[dict], jump_limit: Optional[float] = None) -> dict:
  """Accuracies over many ``score`` dicts and/or ``score_story`` dicts (plain floats, for JSON).

  Returns (keys present when the inputs have them):
    clips: color_accuracy, shape_accuracy, direction_accuracy (over captions with a direction),
      all_accuracy, num_clips.
    stories: segment_accuracy (over all segments), color_shape_kept (the fraction of segments
      whose colour and shape are right, direction aside), mean_jump (over all boundaries), max_jump,
      mean_step / max_step (frame-to-frame moves inside the segments), num_stories,
      num_segments; with ``jump_limit`` (px) also jumps_over_limit / steps_over_limit (the
      fraction of boundaries / of in-segment steps that move farther than it); with
      feasibility marks (``score_story(..., spec=)``) also
      feasible_fraction (of all segments), feasible_segment_accuracy (over feasible ones) and
      feasible_mean_jump / feasible_max_jump (over the boundaries into feasible segments).
    fidelity, pooled over every clip and story given: template_iou (mean over the frames),
      stray_components (mean per frame), stray_frame_fraction (the fraction of frames with at
      least one), area_change (mean over the consecutive frame pairs; NaN when there are none),
      num_frames.
  """
  out = {}
  clips = [s for s in scores if "all_ok" in s]
  stories = [s for s in scores if "segment_ok" in s]
  if clips:
    for key in ("color", "shape", "direction", "all"):
      values = [s[f"{key}_ok"] for s in clips if s[f"{key}_ok"] is not None]
      out[f"{key}_accuracy"] = float(np.mean(values)) if values else float("nan")
    out["num_clips"] = len(clips)
  if stories:
    segment_ok = [ok for s in stories for ok in s["segment_ok"]]
    jumps = [j for s in stories for j in s["jumps"]]
    out["segment_accuracy"] = float(np.mean(segment_ok))
    object_kept = [ok for s in stories for ok in s["segment_color_shape_ok"]]
    out["color_shape_kept"] = float(np.mean(object_kept))
    out["mean_jump"] = float(np.mean(jumps)) if jumps else 0.0
    out["max_jump"] = float(np.max(jumps)) if jumps else 0.0
    steps = [m for s in stories for m in s.get("steps", [])]
    if steps:
      out["mean_step"] = float(np.mean(steps))
      out["max_step"] = float(np.max(steps))
    if jump_limit is not None:
      out["jumps_over_limit"] = float(np.mean(np.array(jumps) > jump_limit)) if jumps else 0.0
      if steps:
        out["steps_over_limit"] = float(np.mean(np.array(steps) > jump_limit))
    out["num_stories"] = len(stories)
    out["num_segments"] = len(segment_ok)
    if all("segment_feasible" in s for s in stories):
      feasible = [f for s in stories for f in s["segment_feasible"]]
      kept = [ok for ok, f in zip(segment_ok, feasible) if f]
      out["feasible_fraction"] = float(np.mean(feasible))
      out["feasible_segment_accuracy"] = float(np.mean(kept)) if kept else float("nan")
      # Boundary b leads into segment b + 1: its jump counts when that segment is feasible.
      kept_jumps = [j for s in stories for j, f in zip(s["jumps"], s["segment_feasible"][1:]) if f]
      out["feasible_mean_jump"] = float(np.mean(kept_jumps)) if kept_jumps else float("nan")
      out["feasible_max_jump"] = float(np.max(kept_jumps)) if kept_jumps else float("nan")
  fidelity = [s for s in scores if "frame_template_iou" in s]
  if fidelity:
    ious = [v for s in fidelity for v in s["frame_template_iou"]]
    stray = np.array([v for s in fidelity for v in s["stray_components"]])
    changes = [v for s in fidelity for v in s["area_changes"]]
    out["template_iou"] = float(np.mean(ious))
    out["stray_components"] = float(np.mean(stray))
    out["stray_frame_fraction"] = float(np.mean(stray > 0))
    out["area_change"] = float(np.mean(changes)) if changes else float("nan")
    out["num_frames"] = len(ious)
  return out
