"""Decoding real videos and images into training clips: uint8 [F, R, R, 3] at a fixed frame rate.

The real-data sources (webdataset shards, CSV/parquet indexes over video folders, TFDS) decode
every example through this module, and so does anything else that takes frames of any size: the
public API fits them to the model's square resolution with `fit_frames`.

Time sampling. A clip of F frames at `fps` covers the window [t0, t0 + (F - 1) / fps] seconds
from the start of the video stream, and frame j is the source frame on screen at
t0 + j / fps: the last decoded frame whose timestamp is <= that time. A 25 fps video sampled at
8 fps thus yields source frames floor((t0 + j / 8) * 25). The window must fit inside the video
(else `SkipExample('too_short')`); t0 is uniform at random over the positions where it fits
(training, `rng` given) or the window is centred in the video (evaluation, `rng=None`). Only the
frames needed are decoded: the decoder seeks to the keyframe before t0 and stops after the
window, so a long video costs about as much as a short one.

Cropping. Frames are resized (antialiased: PIL bicubic with a reducing gap) so that their short
side is R, every frame with the same geometry, then an R x R square is cut: centred without
`rng`, at an offset drawn from `rng` otherwise (one draw per axis, after t0's). Frames already
R x R come back unchanged.

Failures are data, not bugs: a file the pipeline cannot use raises `SkipExample` with a short
`reason` that the sources count, and no PyAV or PIL exception escapes as anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import numbers
import os
import unicodedata
from typing import Iterator, List, Optional, Tuple

import numpy as np

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "mpg", "mpeg")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Timestamps within this many seconds after a sampling time count as "at" it (float rounding).
_TIME_EPS = 1e-6
# Seek this far before t0, then (when the first frame decoded still shows after t0, as seeks in
# MPEG-TS may land) further back, then decode a fresh container from the start.
_SEEK_MARGINS_S = (0.25, 2.0, 10.0)
# A window may end at most this many frame intervals after the last decoded frame.
_END_SLACK_FRAMES = 2.0
# PIL resampling for fit_frames: bicubic after a box reduction while the image is > 2x too big
# (as Image.thumbnail does: close to fair resampling and about 2.5x faster on 720p frames).
_REDUCING_GAP = 2.0


class SkipExample(Exception):
  """An example the pipeline cannot use; it is skipped and counted by `reason`, not fatal.

  Attributes:
    reason: a short snake_case key: 'corrupt_video', 'corrupt_image', 'too_short',
      'empty_caption', 'missing_file', 'no_video_stream', 'unreadable_shard' (others allowed).
    path: the file (or tar member, 'shard.tar:key.mp4') it came from.
    detail: the error text.
  """

  def __init__(self, reason: str, path: str = "", detail: str = ""):
    super().__init__(reason, path, detail)  # args: picklable across worker processes
    self.reason = reason
    self.path = path
    self.detail = detail

  def __str__(self) -> str:
    return f"{self.reason}: {self.path}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What `decode_video` returns: `num_frames` frames at `fps`, `resolution` x `resolution`."""

  num_frames: int  # frames to return, >= 1
  fps: float = 8.0  # target frame rate (the paper's: 8); frames are resampled to it
  resolution: int = 128  # output frames are resolution x resolution

  def __post_init__(self):
    if not _is_int(self.num_frames) or self.num_frames < 1:
      raise ValueError(f"ClipSpec.num_frames must be an integer >= 1, got {self.num_frames!r}.")
    if (
      isinstance(self.fps, bool)
      or not isinstance(self.fps, numbers.Real)
      or not math.isfinite(self.fps)
      or self.fps <= 0
    ):
      raise ValueError(f"ClipSpec.fps must be a finite number > 0, got {self.fps!r}.")
    if not _is_int(self.resolution) or self.resolution < 1:
      raise ValueError(f"ClipSpec.resolution must be an integer >= 1, got {self.resolution!r}.")

  @property
  def span(self) -> float:
    """Seconds from the first frame's time to the last one's: (num_frames - 1) / fps."""
    return (self.num_frames - 1) / self.fps


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _describe(e: BaseException) -> str:
  text = str(e)
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ------------------------------------------------------------------------------------------------
# Spatial fitting.
# ------------------------------------------------------------------------------------------------


def _fit_geometry(
  height: int, width: int, resolution: int, rng: Optional[np.random.Generator]
) -> Tuple[int, int, int, int]:
  """(resized height, resized width, crop top, crop left): short side -> resolution."""
  if height <= width:
    new_h, new_w = resolution, max(resolution, int(math.floor(width * resolution / height + 0.5)))
  else:
    new_h, new_w = max(resolution, int(math.floor(height * resolution / width + 0.5))), resolution
  if rng is None:
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
  else:
    top, left = (int(v) for v in rng.integers(0, [new_h - resolution + 1, new_w - resolution + 1]))
  return new_h, new_w, top, left


def _fit_one(frame: np.ndarray, resolution: int, geometry: Tuple[int, int, int, int]) -> np.ndarray:
  """One uint8 [H, W, 3] frame -> [R, R, 3] by `geometry` (from `_fit_geometry`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  new_h, new_w, top, left = geometry
  if frame.shape[:2] != (new_h, new_w):
    image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    frame = np.asarray(
      image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)
    )  # [new_h, new_w, 3]
  return frame[top : top + resolution, left : left + resolution]


def fit_frames(frames, resolution: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """Resizes and crops frames of any size to resolution x resolution.

  The short side is resized to `resolution` (antialiased PIL bicubic, one geometry for every
  frame), then a square is cropped: centred when `rng` is None, else at an offset drawn from
  `rng` (one integer per axis, drawn even when an axis has no room).

  Args:
    frames: uint8 [..., H, W, 3].
    resolution: R, the output side.
    rng: a numpy Generator for a random crop, or None for the centre crop.

  Returns:
    uint8 [..., R, R, 3]; `frames` itself when they are already R x R.

  Raises:
    ValueError: frames not uint8, of rank < 3, with a last axis other than 3 or an empty image.
  """
  frames = np.asarray(frames)
  if not _is_int(resolution) or resolution < 1:
    raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}.")
  if frames.dtype != np.uint8:
    raise ValueError(f"fit_frames needs uint8 frames, got {frames.dtype}.")
  if frames.ndim < 3 or frames.shape[-1] != 3:
    raise ValueError(f"fit_frames needs frames [..., H, W, 3], got shape {frames.shape}.")
  height, width = frames.shape[-3:-1]
  if height < 1 or width < 1:
    raise ValueError(f"fit_frames got empty frames of shape {frames.shape}.")
  geometry = _fit_geometry(height, width, resolution, rng)
  if (height, width) == (resolution, resolution):
    return frames
  lead = frames.shape[:-3]
  flat = frames.reshape((-1, height, width, 3))  # [N, H, W, 3]
  out = np.empty((flat.shape[0], resolution, resolution, 3), np.uint8)  # [N, R, R, 3]
  for i, frame in enumerate(flat):
    out[i] = _fit_one(frame, resolution, geometry)
  return out.reshape(lead + (resolution, resolution, 3))


# ------------------------------------------------------------------------------------------------
# Videos.
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_video(data, path: str) -> Iterator[Tuple[object, object, str]]:
  """Yields (container, first video stream, path for messages); closes the container."""
  import av  # pylint: disable=g-import-not-at-top

  if isinstance(data, (str, os.PathLike)):
    filename = os.fspath(data)
    path = path or filename
    if not os.path.isfile(filename):
      raise SkipExample("missing_file", path, "no such file")
    if os.path.getsize(filename) == 0:
      raise SkipExample("corrupt_video", path, "empty file (0 bytes)")
    source = filename
  elif isinstance(data, (bytes, bytearray, memoryview)):
    if len(data) == 0:
      raise SkipExample("corrupt_video", path, "empty data (0 bytes)")
    source = io.BytesIO(data)
  else:
    raise TypeError(f"video data must be a path or bytes, got {type(data).__name__}.")
  try:
    container = av.open(source, mode="r", metadata_errors="ignore")
  except FileNotFoundError as e:
    raise SkipExample("missing_file", path, _describe(e)) from e
  except Exception as e:  # pylint: disable=broad-except  # any PyAV error: not a video
    raise SkipExample("corrupt_video", path, _describe(e)) from e
  try:
    streams = [s for s in container.streams if s.type == "video"]
    if not streams:
      raise SkipExample("no_video_stream", path, f"{len(container.streams)} other stream(s)")
    with contextlib.suppress(Exception):  # frame and slice threads: ~25% faster on 2 cores
      streams[0].codec_context.thread_type = "AUTO"
    yield container, streams[0], path
  finally:
    try:
      container.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _frame_interval(stream) -> float:
  """Seconds per frame from the stream's rate, or 0 when it has none."""
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate and rate > 0:
      return float(1 / rate)
  return 0.0


def _metadata_duration(container, stream) -> Optional[float]:
  """Seconds of video from the stream's or the container's metadata, None when neither has it."""
  import av  # pylint: disable=g-import-not-at-top

  if stream.duration and stream.time_base and stream.duration > 0:
    return float(stream.duration * stream.time_base)
  if container.duration and container.duration > 0:
    seconds = container.duration / av.time_base
    if container.start_time is not None and stream.start_time is not None and stream.time_base:
      # The container's span starts at its earliest stream; ours may start later.
      offset = float(stream.start_time * stream.time_base) - container.start_time / av.time_base
      seconds -= max(0.0, offset)
    if seconds > 0:
      return seconds
  return None


def _scanned_duration(container, stream) -> float:
  """Seconds of video by reading its packets to the end (not decoding them).

  The span of the packets' timestamps plus the last one's duration; without timestamps (raw
  streams), the number of packets (one frame each) times the frame interval.
  """
  tb, interval = stream.time_base, _frame_interval(stream)
  count, first, last, last_duration, timed = 0, None, None, 0, True
  for packet in container.demux(stream):
    if packet.size == 0:
      continue
    count += 1
    if packet.pts is None:
      timed = False
    elif timed:
      first = packet.pts if first is None else min(first, packet.pts)
      if last is None or packet.pts >= last:
        last, last_duration = packet.pts, packet.duration or 0
  if timed and last is not None:
    begin = first if stream.start_time is None else stream.start_time
    return float((last - begin) * tb) + (float(last_duration * tb) or interval)
  return count * interval


def _duration(container, stream) -> Tuple[Optional[float], bool]:
  """(seconds of video or None, whether the file was read to the end to find them)."""
  seconds = _metadata_duration(container, stream)
  scanned = seconds is None
  if scanned:
    seconds = _scanned_duration(container, stream)
  return (seconds if seconds and seconds > 0 else None), scanned


def video_duration(data, path: str = "") -> float:
  """Seconds of video in a file: stream or container metadata, else its packets read to the end.

  Args:
    data: a path (str or os.PathLike) or the file's bytes.
    path: the name used in `SkipExample`s (defaults to `data` when it is a path).

  Returns:
    The duration in seconds (> 0).

  Raises:
    SkipExample: 'missing_file', 'corrupt_video' or 'no_video_stream', as `decode_video`.
  """
  with _open_video(data, path) as (container, stream, path):
    try:
      seconds, _ = _duration(container, stream)
    except SkipExample:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any PyAV error
      raise SkipExample("corrupt_video", path, _describe(e)) from e
  if seconds is None:
    raise SkipExample("corrupt_video", path, "no frames")
  return seconds


class _Reseek(Exception):
  """The seek landed after the first sampling time: decode again from the start."""


def _rgb(frame, size: Optional[Tuple[int, int]]) -> np.ndarray:
  """uint8 [H, W, 3] of a decoded frame, scaled to `size` (width, height) if given, upright."""
  if size is None or (frame.width, frame.height) == size:
    rgb = frame.to_ndarray(format="rgb24")
  else:  # the stream changed size mid-way: keep the first frame's geometry
    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
  turns = 0
  with contextlib.suppress(Exception):
    turns = int(round((frame.rotation or 0) / 90.0)) % 4
  return np.rot90(rgb, turns) if turns else rgb


def _sample_frames(container, stream, times: np.ndarray, seeked: bool, path: str, fit):
  """Decodes from the current position; `fit(rgb)` of the frame shown at each time in `times`.

  Times are seconds from the stream's start. Raises _Reseek when `seeked` and the first frame
  decoded is later than times[0].
  """
  tb = stream.time_base
  start = stream.start_time or 0
  interval = _frame_interval(stream)
  out: List[Optional[np.ndarray]] = [None] * len(times)
  j = 0
  prev = prev_ts = prev_fit = None  # the last frame with timestamp <= times[j]
  size = None
  last_interval = interval

  def take(frame):
    nonlocal size, prev_fit
    if prev_fit is None:
      rgb = _rgb(frame, size)
      if size is None:
        size = (frame.width, frame.height)
      prev_fit = fit(rgb)
    return prev_fit

  for packet in container.demux(stream):
    for frame in packet.decode():
      if frame.pts is not None:
        ts = float((frame.pts - start) * tb)
      else:
        ts = 0.0 if prev_ts is None else prev_ts + (interval or 1.0 / 25)
      if prev is None and ts > times[0] + _TIME_EPS:
        if seeked:
          raise _Reseek()
        ts = float(times[0])  # the video's first frame shows from its start
      while j < len(times) and ts > times[j] + _TIME_EPS:
        out[j] = take(prev)
        j += 1
      if j == len(times):
        return out
      if prev_ts is not None and ts > prev_ts:
        last_interval = ts - prev_ts
      if frame.duration and frame.time_base:
        last_interval = float(frame.duration * frame.time_base) or last_interval
      prev, prev_ts, prev_fit = frame, ts, None
  if prev is None:
    raise SkipExample("corrupt_video", path, "no frames decoded")
  ends = prev_ts + max(last_interval, interval, 1e-3) * _END_SLACK_FRAMES
  if times[-1] > ends + _TIME_EPS:
    raise SkipExample(
      "corrupt_video",
      path,
      f"frames end at {prev_ts:.3f} s, before the window end {times[-1]:.3f} s (truncated?)",
    )
  while j < len(times):
    out[j] = take(prev)
    j += 1
  return out


def decode_video(
  data, spec: ClipSpec, rng: Optional[np.random.Generator] = None, path: str = ""
) -> np.ndarray:
  """A clip of `spec.num_frames` frames at `spec.fps`, fitted to `spec.resolution`.

  Frame j is the source frame shown at t0 + j / fps. t0 is drawn uniformly from `rng` over the
  positions where the window [t0, t0 + (num_frames - 1) / fps] fits in the video, or the window
  is centred when `rng` is None; the crop then draws from the same `rng` (see `fit_frames`).
  Only the window is decoded (a seek to the keyframe before it; decoding stops after it). The
  timestamps are the container's: in MPEG-PS (.mpg) files they may be one frame late after a
  seek (FFmpeg's MPEG-1/2 decoding), which no check here can see.

  Args:
    data: a path (str or os.PathLike) or the file's bytes.
    spec: frames, frame rate and resolution.
    rng: a numpy Generator (training: random window and crop), or None (centred, evaluation).
    path: the name used in `SkipExample`s (defaults to `data` when it is a path).

  Returns:
    uint8 [spec.num_frames, spec.resolution, spec.resolution, 3].

  Raises:
    SkipExample: 'missing_file'; 'no_video_stream'; 'too_short' (the window does not fit);
      'corrupt_video' (undecodable, truncated or not a video). No PyAV exception escapes.
  """
  if not isinstance(spec, ClipSpec):
    raise TypeError(f"spec must be a ClipSpec, got {type(spec).__name__}.")
  with _open_video(data, path) as (container, stream, path):
    try:
      duration, scanned = _duration(container, stream)
    except SkipExample:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any PyAV error
      raise SkipExample("corrupt_video", path, _describe(e)) from e
    if duration is None:
      raise SkipExample("corrupt_video", path, "no frames")
    if spec.span > duration + _TIME_EPS:
      raise SkipExample(
        "too_short",
        path,
        f"{duration:.3f} s of video, {spec.num_frames} frames at {spec.fps:g} fps "
        f"need {spec.span:.3f} s",
      )
    room = max(0.0, duration - spec.span)
    t0 = float(rng.uniform(0.0, room)) if rng is not None else room / 2
    times = t0 + np.arange(spec.num_frames) / spec.fps  # [F] seconds from the stream start
    geometry = []

    def fit(rgb: np.ndarray) -> np.ndarray:  # [H, W, 3] -> [R, R, 3]; geometry drawn once
      if not geometry:
        geometry.append(_fit_geometry(rgb.shape[0], rgb.shape[1], spec.resolution, rng))
      if rgb.shape[:2] == (spec.resolution, spec.resolution):
        return rgb
      return _fit_one(rgb, spec.resolution, geometry[0])

    frames = None
    try:
      for margin in _SEEK_MARGINS_S:
        if t0 - margin <= 0:
          break
        target = int(math.floor((t0 - margin) / stream.time_base)) + (stream.start_time or 0)
        try:
          container.seek(target, stream=stream, backward=True)
        except Exception:  # pylint: disable=broad-except  # not seekable: from the start below
          break
        try:
          frames = _sample_frames(container, stream, times, True, path, fit)
          break
        except _Reseek:
          continue
      if frames is None and t0 - _SEEK_MARGINS_S[0] <= 0 and not scanned:  # still at the start
        frames = _sample_frames(container, stream, times, False, path, fit)
    except SkipExample:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any PyAV error
      raise SkipExample("corrupt_video", path, _describe(e)) from e
  if frames is None:  # every seek landed after t0: decode from the start, in a fresh container
    with _open_video(data, path) as (container, stream, path):
      try:
        frames = _sample_frames(container, stream, times, False, path, fit)
      except SkipExample:
        raise
      except Exception as e:  # pylint: disable=broad-except  # any PyAV error
        raise SkipExample("corrupt_video", path, _describe(e)) from e
  return np.stack(frames)  # [F, R, R, 3]


# ------------------------------------------------------------------------------------------------
# Images.
# ------------------------------------------------------------------------------------------------


def _to_rgb(image) -> np.ndarray:
  """uint8 [H, W, 3] from a PIL image of any mode; transparency is composited onto white."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  mode = image.mode
  if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: scale, do not clip
    grey = np.asarray(image).astype(np.int64)  # [H, W]
    grey = np.clip((grey * 255 + 32767) // 65535, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode == "F":
    grey = np.asarray(image, np.float64)  # [H, W], assumed in [0, 1] when no value exceeds 1
    scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
    grey = np.clip(np.nan_to_num(grey * scale), 0, 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
    mode in ("P", "L", "RGB") and "transparency" in image.info
  )
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
  return np.asarray(image.convert("RGB"))


def decode_image(
  data, resolution: int, rng: Optional[np.random.Generator] = None, path: str = ""
) -> np.ndarray:
  """A 1-frame clip from an image file: uint8 [1, R, R, 3], fitted with `fit_frames`.

  Any mode is converted to RGB: grey and palette images are expanded, 16-bit ones scaled to 8
  bits, transparent pixels composited onto white; EXIF orientation is applied. Animated images
  give their first frame.

  Args:
    data: a path (str or os.PathLike) or the file's bytes (jpg, png, webp, or any PIL format).
    resolution: R.
    rng: a numpy Generator for a random crop, or None for the centre crop.
    path: the name used in `SkipExample`s (defaults to `data` when it is a path).

  Raises:
    SkipExample: 'missing_file'; 'corrupt_image' (corrupt, truncated, not an image, or larger
      than PIL's decompression-bomb limit, Image.MAX_IMAGE_PIXELS).
  """
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

  if isinstance(data, (str, os.PathLike)):
    filename = os.fspath(data)
    path = path or filename
    if not os.path.isfile(filename):
      raise SkipExample("missing_file", path, "no such file")
    source = filename
  elif isinstance(data, (bytes, bytearray, memoryview)):
    if len(data) == 0:
      raise SkipExample("corrupt_image", path, "empty data (0 bytes)")
    source = io.BytesIO(data)
  else:
    raise TypeError(f"image data must be a path or bytes, got {type(data).__name__}.")
  try:
    with Image.open(source) as image:
      limit = Image.MAX_IMAGE_PIXELS
      if limit is not None and image.width * image.height > limit:
        raise SkipExample(
          "corrupt_image",
          path,
          f"{image.width}x{image.height} pixels exceed PIL's limit of {limit} "
          "(decompression bomb?)",
        )
      if image.format == "JPEG":  # decode at a reduced DCT scale when the image is large
        short = min(image.width, image.height)
        factor = resolution / short
        image.draft(None, (math.ceil(image.width * factor), math.ceil(image.height * factor)))
      image.load()
      image = ImageOps.exif_transpose(image)
      rgb = _to_rgb(image)  # [H, W, 3]
  except SkipExample:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any PIL error: not a usable image
    reason = "missing_file" if isinstance(e, FileNotFoundError) else "corrupt_image"
    raise SkipExample(reason, path, _describe(e)) from e
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or 0 in rgb.shape:
    raise SkipExample("corrupt_image", path, f"decoded to an array of shape {rgb.shape}")
  return fit_frames(rgb[None], resolution, rng)  # [1, R, R, 3]


# ------------------------------------------------------------------------------------------------
# Captions.
# ------------------------------------------------------------------------------------------------

# Invisible format characters that are noise in captions (zero-width space, BOM, ...).
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")


def clean_caption(text, max_chars: int = 256, path: str = "") -> str:
  """A caption made safe to train on.

  Strips, collapses runs of whitespace (newlines, tabs) to one space, drops control characters
  (and zero-width ones), and truncates to `max_chars` at a word boundary when one falls in the
  second half of the allowance (else mid-word). Bytes are decoded as UTF-8, errors replaced;
  None and NaN (a missing index cell) count as empty.

  Raises:
    SkipExample: 'empty_caption' when nothing is left.
    ValueError: max_chars < 1.
  """
  if not _is_int(max_chars) or max_chars < 1:
    raise ValueError(f"max_chars must be an integer >= 1, got {max_chars!r}.")
  if text is None or (isinstance(text, float) and math.isnan(text)):
    text = ""
  elif isinstance(text, (bytes, bytearray, memoryview)):
    text = bytes(text).decode("utf-8", errors="replace")
  elif not isinstance(text, str):
    text = str(text)
  # Whitespace controls (\t \n \r \v \f, \x1c-\x1f, \x85) become spaces; other controls vanish.
  text = "".join(
    " " if c.isspace() else "" if c in _INVISIBLE or unicodedata.category(c) in ("Cc", "Cs") else c
    for c in text
  )
  text = " ".join(text.split())
  if len(text) > max_chars:
    if text[max_chars] == " ":
      text = text[:max_chars]
    else:
      cut = text.rfind(" ", 0, max_chars)
      text = text[:cut] if cut >= max_chars // 2 and cut > 0 else text[:max_chars]
    text = text.rstrip()
  if not text:
    raise SkipExample("empty_caption", path, "no text after cleaning")
  return text
