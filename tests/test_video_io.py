"""Video files: GIF/MP4 round trips, contact sheets, side-by-side, clear errors."""

import os

import imageio.v3 as iio
import numpy as np
import pytest

from phenaki_jax.data import shapes
from phenaki_jax.data import video_io

VIDEO = shapes.video_example(shapes.ShapesSpec(), 0, 0)["video"]  # [9, 32, 32, 3]


def test_gif_round_trip(tmp_path):
  path = video_io.write_gif(str(tmp_path / "sub" / "a.gif"), VIDEO, fps=8, scale=3)
  frames = video_io.read_video(path)
  assert frames.shape == (9, 96, 96, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames[:, ::3, ::3], VIDEO)  # few colours: lossless


def test_mp4_round_trip(tmp_path):
  path = video_io.write_mp4(str(tmp_path / "a.mp4"), VIDEO, fps=8, scale=2)
  frames = video_io.read_video(path)
  assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
  assert np.abs(frames[:, ::2, ::2].astype(int) - VIDEO).mean() < 6  # lossy H.264
  odd = video_io.read_video(video_io.write_mp4(str(tmp_path / "odd.mp4"), VIDEO[:, :31, :29]))
  assert odd.shape == (9, 32, 30, 3)  # padded to even sizes for yuv420p


def test_contact_sheet_and_side_by_side(tmp_path):
  path = str(tmp_path / "sheet.png")
  sheet = video_io.contact_sheet([VIDEO, VIDEO[:4]], path, scale=2)
  assert sheet.shape == (2 * 65 - 1, 9 * 65 - 1, 3)
  np.testing.assert_array_equal(iio.imread(path)[..., :3], sheet)
  np.testing.assert_array_equal(sheet[:64, :64], video_io.upscale(VIDEO[0], 2))
  assert sheet[65:, 4 * 65 :].max() <= 128  # the short row is padded with black (and lines)
  both = video_io.side_by_side(VIDEO, VIDEO[::-1])
  assert both.shape == (9, 32, 65, 3)
  np.testing.assert_array_equal(both[:, :, 33:], VIDEO[::-1])
  assert (both[:, :, 32] == 128).all()


def test_clear_errors(tmp_path):
  good = video_io.write_mp4(str(tmp_path / "good.mp4"), VIDEO)
  for name, data in (
    ("cut.mp4", open(good, "rb").read()[:200]),
    ("junk.gif", b"GIF89a junk"),
    ("empty.mp4", b""),
  ):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(video_io.VideoReadError, match=name):
      video_io.read_video(str(path))
  with pytest.raises(video_io.VideoReadError, match="does not exist"):
    video_io.read_video(str(tmp_path / "missing.gif"))
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_gif(str(tmp_path / "f.gif"), VIDEO.astype(np.float32) / 255)
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    video_io.write_mp4(str(tmp_path / "f.mp4"), VIDEO[..., 0])
  assert not os.path.exists(tmp_path / "f.gif")
