"""Video files for people to look at: GIF, MP4 (H.264 via PyAV), PNG contact sheets.

Used by the trainers (reconstructions at eval steps), the sampler CLI and the demo. Frames are
uint8 [T, H, W, 3]. Small frames (32x32 Shapes) are upscaled by an integer nearest-neighbour
``scale`` so that they are viewable; MP4 (yuv420p) needs even sizes, so odd sizes are padded
with black on the right/bottom.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np


class VideoReadError(IOError):
  """A video file is missing, truncated or not a video; the message names the file."""


def _check_frames(frames, what: str = "frames") -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim == 3 and frames.shape[-1] == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(
      f"{what} must be [T, H, W, 3] (or one frame [H, W, 3]), got shape {frames.shape}."
    )
  if frames.dtype != np.uint8:
    raise ValueError(
      f"{what} must be uint8 in [0, 255], got {frames.dtype}; convert with "
      f"np.clip(x * 255, 0, 255).round().astype(np.uint8) for [0, 1] floats."
    )
  if frames.shape[0] == 0:
    raise ValueError(f"{what} has no frames.")
  return frames


def upscale(frames, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [..., H, W, C] by an integer factor."""
  scale = int(scale)
  if scale < 1:
    raise ValueError(f"scale must be an integer >= 1, got {scale}.")
  frames = np.asarray(frames)
  if scale == 1:
    return frames
  return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


def _prepare_dir(path: str):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)


def write_gif(path: str, frames, fps: float = 8.0, scale: int = 1) -> str:
  """Writes uint8 [T, H, W, 3] frames as a looping GIF. Returns ``path``.

  Note: the GIF writer (Pillow) merges identical consecutive frames into one longer frame.
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  frames = upscale(_check_frames(frames), scale)
  _prepare_dir(path)
  iio.imwrite(path, frames, extension=".gif", duration=1000.0 / float(fps), loop=0)
  return path


def write_mp4(path: str, frames, fps: float = 8.0, scale: int = 1, codec: str = "libx264") -> str:
  """Writes uint8 [T, H, W, 3] frames as an H.264 MP4 (yuv420p). Returns ``path``."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  frames = upscale(_check_frames(frames), scale)
  _, height, width, _ = frames.shape
  pad_h, pad_w = height % 2, width % 2
  if pad_h or pad_w:  # yuv420p subsamples chroma by 2: sizes must be even
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  _prepare_dir(path)
  iio.imwrite(
    path,
    frames,
    plugin="pyav",
    extension=".mp4",
    codec=codec,
    fps=float(fps),
    out_pixel_format="yuv420p",
  )
  return path


def read_video(path: str) -> np.ndarray:
  """Reads a GIF/MP4 (or any format imageio reads) as uint8 [T, H, W, 3].

  Raises:
    VideoReadError: the file is missing, empty, truncated or not a decodable video.
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise VideoReadError(f"Video file {path!r} does not exist.")
  if os.path.getsize(path) == 0:
    raise VideoReadError(f"Video file {path!r} is empty (0 bytes).")
  try:
    if path.lower().endswith(".gif"):
      frames = iio.imread(path, index=None, extension=".gif", mode="RGB")
    else:
      frames = iio.imread(path, plugin="pyav", index=None)
  except Exception as e:  # pylint: disable=broad-except
    raise VideoReadError(
      f"Could not decode video file {path!r} (corrupt or truncated?): {type(e).__name__}: {e}"
    ) from e
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise VideoReadError(
      f"Video file {path!r} decoded to an array of shape {frames.shape}, not frames [T, H, W, C]."
    )
  if frames.shape[-1] == 4:
    frames = frames[..., :3]
  return frames.astype(np.uint8, copy=False)


def side_by_side(a, b, separator: int = 128) -> np.ndarray:
  """[T, H, Wa, 3] and [T, H, Wb, 3] -> [T, H, Wa + 1 + Wb, 3] with a 1-px grey separator."""
  a, b = _check_frames(a, "a"), _check_frames(b, "b")
  if a.shape[:2] != b.shape[:2]:
    raise ValueError(f"side_by_side needs the same frames and height, got {a.shape} and {b.shape}.")
  line = np.full(a.shape[:2] + (1, 3), separator, np.uint8)  # [T, H, 1, 3]
  return np.concatenate([a, line, b], axis=2)


def contact_sheet(
  videos: Union[np.ndarray, Sequence[np.ndarray]],
  path: str = None,
  scale: int = 1,
  separator: int = 128,
) -> np.ndarray:
  """A PNG grid: one row per video, one column per frame, 1-px grey lines between cells.

  Args:
    videos: [N, T, H, W, 3] uint8, or a list of [T_i, H, W, 3] (shorter ones padded black).
    path: where to write the PNG (nothing is written when None).
    scale: integer nearest-neighbour upscaling of each frame.

  Returns:
    The sheet, uint8 [N*(H*scale+1)-1, T*(W*scale+1)-1, 3].
  """
  videos = [_check_frames(v, f"videos[{i}]") for i, v in enumerate(videos)]
  if not videos:
    raise ValueError("contact_sheet needs at least one video.")
  height, width = videos[0].shape[1:3]
  if any(v.shape[1:3] != (height, width) for v in videos):
    raise ValueError(
      f"contact_sheet needs frames of one size, got {sorted({v.shape[1:3] for v in videos})}."
    )
  num_cols = max(v.shape[0] for v in videos)
  cell_h, cell_w = height * scale, width * scale
  sheet = np.full(
    (len(videos) * (cell_h + 1) - 1, num_cols * (cell_w + 1) - 1, 3), separator, np.uint8
  )
  for row, video in enumerate(videos):
    video = upscale(video, scale)
    for col in range(num_cols):
      y, x = row * (cell_h + 1), col * (cell_w + 1)
      sheet[y : y + cell_h, x : x + cell_w] = video[col] if col < video.shape[0] else 0
  if path is not None:
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

    _prepare_dir(path)
    iio.imwrite(path, sheet, extension=".png")
  return sheet
