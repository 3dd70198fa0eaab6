"""Real-data sources (data/sources.py) on small real files made here.

MP4 clips encoded with PyAV from numpy frames, JPEG / PNG / WebP images from PIL, packed in tar
shards as img2dataset and video2dataset write them (KEY.ext + KEY.txt + KEY.json); a WebVid-style
CSV and parquet index over a folder of clips; a tiny TFDS dataset prepared in ArrayRecord (and in
TFRecord, which must be refused).

Clip c, frame j is uniform in red (20 + 40 c: which clip) and green (8 + 14 j: which frame),
with a horizontal blue gradient (so that spatial crops differ).
"""

import io
import json
import os
import re
import tarfile

import numpy as np
import pytest

from phenaki_jax.data import media
from phenaki_jax.data import sources

CLIP = media.ClipSpec(num_frames=5, fps=8.0, resolution=32)
SOURCE_FRAMES = 16  # per clip, at 8 fps: 2 s
H, W = 48, 64


def _frames(clip: int, num_frames: int = SOURCE_FRAMES) -> np.ndarray:
  """uint8 [T, H, W, 3] of clip ``clip``."""
  frames = np.zeros((num_frames, H, W, 3), np.uint8)
  frames[..., 0] = 20 + 40 * clip
  frames[..., 1] = (8 + 14 * np.arange(num_frames))[:, None, None]
  frames[..., 2] = np.linspace(0, 255, W).astype(np.uint8)[None, None, :]
  return frames


def _mp4(frames: np.ndarray, fps: int = 8) -> bytes:
  import av  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.options = {"crf": "8"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buffer.getvalue()


def _image(clip: int, fmt: str) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  Image.fromarray(_frames(clip, 1)[0]).save(buffer, format=fmt, quality=95)
  return buffer.getvalue()


def _write_tar(path, members) -> str:
  """A tar of (name, bytes) members, as webdataset's TarWriter writes them."""
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size, info.mode, info.mtime = len(data), 0o444, 1700000000
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def _sample(key: str, media_ext: str, data: bytes, caption=None, json_caption=None) -> list:
  members = [(f"{key}.{media_ext}", data)]
  if caption is not None:
    members.append((f"{key}.txt", caption.encode()))
  meta = {"key": key, "status": "success"}
  if json_caption is not None:
    meta["caption"] = json_caption
  members.append((f"{key}.json", json.dumps(meta).encode()))
  return members


def _clip_of(video: np.ndarray) -> int:
  return int(round((float(video[..., 0].mean()) - 20) / 40))


def _frame_numbers(video: np.ndarray) -> list:
  return [int(round((float(f[..., 1].mean()) - 8) / 14)) for f in video]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Shards, clips and indexes; the names of what was written."""
  root = tmp_path_factory.mktemp("sources")
  clips = {c: _mp4(_frames(c)) for c in range(6)}
  out = {"root": root, "clips": clips, "video_shards": [], "keys": {}}
  # Video shards (video2dataset): 3 shards x 3 samples of clips 0..5 (cycled); shard 1 also has
  # a failed download (json only); shard 2's last sample has its caption in the .json only.
  n = 0
  for s in range(3):
    members = []
    for i in range(3):
      key, clip = f"{s:05d}{i:04d}", n % 6
      if s == 2 and i == 2:
        members += _sample(key, "mp4", clips[clip], json_caption=f"clip {clip} sample {n}")
      else:
        members += _sample(key, "mp4", clips[clip], f"clip {clip} sample {n}", "json caption")
      out["keys"][key] = (clip, f"clip {clip} sample {n}")
      n += 1
    if s == 1:
      members.append((f"{s:05d}9999.json", b'{"status": "failed_to_download"}'))
    out["video_shards"].append(_write_tar(root / f"vid-{s:05d}.tar", members))
  # Image shards (img2dataset): jpg, png, webp.
  out["image_shards"] = [
    _write_tar(
      root / f"img-{s:05d}.tar",
      [
        m
        for i, fmt in enumerate(("jpg", "png", "webp"))
        for m in _sample(
          f"{s:05d}{i:04d}",
          fmt,
          _image(s * 3 + i, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]),
          f"image {s * 3 + i}",
        )
      ],
    )
    for s in range(2)
  ]
  # A shard of bad samples: corrupt video bytes, a video without caption, one good sample.
  out["bad_shard"] = _write_tar(
    root / "bad.tar",
    _sample("corrupt", "mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000), "corrupt video")
    + [("nocaption.mp4", clips[1])]
    + _sample("good", "mp4", clips[2], "a good clip"),
  )
  # A truncated copy of shard 0: cut inside its last sample's video.
  whole = open(out["video_shards"][0], "rb").read()
  cut = whole.rfind(clips[2][:64])  # the third sample's (clip 2) video data
  assert cut > 0
  (root / "damaged").mkdir()
  out["truncated"] = str(root / "damaged" / "truncated.tar")
  with open(out["truncated"], "wb") as f:
    f.write(whole[: cut + 100])
  out["garbage"] = str(root / "damaged" / "garbage.tar")
  with open(out["garbage"], "wb") as f:
    f.write(os.urandom(5000))
  # WebVid-style folder + index: page_dir/videoid.mp4; a row too short, a row without its file.
  video_dir = root / "videos"
  rows = []
  for c in range(4):
    page = f"page{c % 2}"
    (video_dir / page).mkdir(parents=True, exist_ok=True)
    (video_dir / page / f"00{c}.mp4").write_bytes(clips[c])
    rows.append((f"00{c}", page, "PT00H00M02S", f"webvid clip {c}"))
  rows.append(("0098", "page0", "PT00H00M00S", "too short"))  # no file: never opened
  rows.append(("0099", "page1", "PT00H00M02S", "missing"))
  out["video_dir"] = str(video_dir)
  out["rows"] = rows
  csv_path = root / "results_2M_val.csv"
  lines = ["videoid,contentUrl,duration,page_dir,name"]
  lines += [f'{v},https://example.com/{v}.mp4,{d},{p},"{n}"' for v, p, d, n in rows]
  csv_path.write_text("\n".join(lines) + "\n")
  out["csv"] = str(csv_path)
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  seconds = {"PT00H00M02S": 2.0, "PT00H00M00S": 0.0}
  table = pa.table(
    {
      "videoid": [r[0] for r in rows],
      "page_dir": [r[1] for r in rows],
      "duration": [seconds[r[2]] for r in rows],
      "name": [r[3] for r in rows],
    }
  )
  out["parquet"] = str(root / "index.parquet")
  pq.write_table(table, out["parquet"])
  return out


def _video_source(data, **kw):
  return sources.WebDatasetSource(data["video_shards"], kind="video", clip=CLIP, **kw)


# ---- paths --------------------------------------------------------------------------------------
def test_expand_paths_braces_globs_lists_and_commas(data):
  root, shards = data["root"], data["video_shards"]
  assert sources.expand_paths(f"{root}/vid-{{00000..00002}}.tar") == shards
  assert sources.expand_paths(f"{root}/vid-*.tar") == shards
  assert sources.expand_paths(shards[::-1] + shards[:1]) == shards  # sorted, de-duplicated
  both = sources.expand_paths(f"{root}/vid-{{00000,00002}}.tar,{root}/img-*.tar")
  assert both == sorted([shards[0], shards[2]] + data["image_shards"])
  # A brace pattern of which only some paths exist keeps those.
  assert sources.expand_paths(f"{root}/vid-{{00001..00005}}.tar") == shards[1:]


@pytest.mark.parametrize("pattern", ["nothing-*.tar", "vid-{00007..00009}.tar", "vid-00009.tar"])
def test_expand_paths_names_a_pattern_that_matches_nothing(data, pattern):
  with pytest.raises(ValueError, match=re.escape(pattern.split("{")[0])):
    sources.expand_paths([data["video_shards"][0], f"{data['root']}/{pattern}"])


def test_open_file_and_host_split(data):
  with sources.open_file(data["csv"]) as f:
    assert f.read(7) == b"videoid"
  assert sources.host_split(list("abcde"), 1, 2, "shards") == ["b", "d"]
  assert sources.host_split(range(10), 2, 3) == range(2, 10, 3)
  with pytest.raises(ValueError, match=r"3 shards .* 4 processes"):
    sources.host_split(["a", "b", "c"], 0, 4, "shards")
  with pytest.raises(ValueError, match="process_index"):
    sources.host_split(["a", "b"], 2, 2, "shards")


# ---- webdataset ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_match_tarfile(fmt):
  """The header reader agrees with tarfile: long names (ustar prefix, GNU, pax), non-ASCII."""
  names = ["a.mp4", "p" * 90 + "/" + "q" * 90 + ".txt"]
  if fmt != tarfile.USTAR_FORMAT:
    names += ["d/" + "x" * 120 + ".mp4", "é/ü.json"]
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
    folder = tarfile.TarInfo("folder")
    folder.type = tarfile.DIRTYPE
    tar.addfile(folder)
    for i, name in enumerate(names):
      info = tarfile.TarInfo(name)
      info.size = 700 * i + 3
      tar.addfile(info, io.BytesIO(bytes(info.size)))
  data = buffer.getvalue()
  buffer.seek(0)
  expected = [(m.name, m.offset_data, m.size) for m in tarfile.open(fileobj=buffer) if m.isfile()]
  assert list(sources.tar_members(io.BytesIO(data), len(data))) == expected
  assert sources.split_member_name(names[1]) == ("p" * 90 + "/" + "q" * 90, "txt")


def test_every_sample_reachable_exactly_once(data):
  source = _video_source(data)
  assert source.num_examples == 9 and source.num_shards == 3 and not source.index_skips
  assert not source.is_image and "9 examples in 3 shards" in source.describe()
  seen = {}
  for i in range(source.num_examples):
    example = source.example(i)
    assert example["video"].shape == (5, 32, 32, 3) and example["video"].dtype == np.uint8
    clip, caption = data["keys"][example["key"]]
    assert example["caption"] == caption  # .txt before .json; the .json when no .txt
    assert _clip_of(example["video"]) == clip  # the media of this very sample
    assert example["path"].endswith(f".tar:{example['key']}.mp4")
    seen[example["key"]] = i
  assert sorted(seen) == sorted(data["keys"])  # the json-only failed download is no example
  with pytest.raises(IndexError):
    source.example(source.num_examples)


def test_two_processes_get_disjoint_shards_covering_all(data):
  parts = [_video_source(data, process_index=p, process_count=2) for p in range(2)]
  assert [p.shards for p in parts] == [data["video_shards"][0::2], data["video_shards"][1::2]]
  keys = [{p.example(i)["key"] for i in range(p.num_examples)} for p in parts]
  assert not keys[0] & keys[1] and keys[0] | keys[1] == set(data["keys"])
  assert [p.num_examples for p in parts] == [6, 3]
  with pytest.raises(ValueError, match=r"3 shards .* 4 processes"):
    _video_source(data, process_index=0, process_count=4)


def test_images_from_jpeg_png_webp(data):
  source = sources.WebDatasetSource(data["image_shards"], kind="image", clip=CLIP, name="imgs")
  assert source.is_image and source.num_examples == 6
  for i in range(6):
    example = source.example(i, num_frames=17)  # ignored for images
    assert example["video"].shape == (1, 32, 32, 3)
    number = int(example["caption"].split()[1])
    assert _clip_of(example["video"]) == number
  assert sorted(e.split(".")[-1] for e in (source.example(i)["path"] for i in range(3))) == [
    "jpg",
    "png",
    "webp",
  ]


def test_damaged_shards_keep_complete_samples_and_are_counted(data):
  shards = [data["truncated"], data["garbage"], data["video_shards"][1]]
  source = _video_source(data | {"video_shards": shards})
  assert source.index_skips == {"unreadable_shard": 2}
  assert {os.path.basename(p) for p, _ in source.index_errors} == {"truncated.tar", "garbage.tar"}
  # The truncated shard keeps its first two samples (the third's video is cut), shard 1 all 3.
  keys = sorted(source.example(i)["key"] for i in range(source.num_examples))
  assert keys == ["000000000", "000000001", "000010000", "000010001", "000010002"]
  assert "unreadable_shard" in source.describe()


def test_no_usable_shard_is_an_error_naming_the_shards(data):
  with pytest.raises(ValueError, match=r"garbage\.tar.*unreadable"):
    _video_source(data | {"video_shards": [data["garbage"]]})
  with pytest.raises(ValueError, match=r"no sample with a image file.*mp4"):
    sources.WebDatasetSource(data["video_shards"][:1], kind="image", clip=CLIP)


def test_bad_examples_raise_skip_example_with_their_reason(data):
  source = sources.WebDatasetSource(data["bad_shard"], kind="video", clip=CLIP)
  assert source.num_examples == 3
  reasons = {}
  for i in range(3):
    key = source.locate(i)[1]
    try:
      reasons[key] = source.example(i)["caption"]
    except media.SkipExample as e:
      reasons[key] = e.reason
      assert "bad.tar:" in e.path
  assert reasons == {
    "corrupt": "corrupt_video",
    "nocaption": "empty_caption",
    "good": "a good clip",
  }
  long = media.ClipSpec(num_frames=40, fps=8.0, resolution=32)  # 4.9 s of a 2 s clip
  with pytest.raises(media.SkipExample) as e:
    sources.WebDatasetSource(data["bad_shard"], kind="video", clip=long).example(2)
  assert e.value.reason == "too_short"


def test_centred_crops_are_deterministic_random_ones_vary(data):
  source = _video_source(data)
  centred = source.example(0)["video"]
  np.testing.assert_array_equal(centred, source.example(0)["video"])
  middle = (SOURCE_FRAMES - CLIP.num_frames) / 2
  assert abs(_frame_numbers(centred)[0] - middle) <= 1
  assert np.all(np.diff(_frame_numbers(centred)) == 1)  # 8 fps from 8 fps: consecutive frames
  same = [source.example(0, rng=np.random.default_rng(7))["video"] for _ in range(2)]
  np.testing.assert_array_equal(*same)
  draws = [source.example(0, rng=np.random.default_rng(s))["video"] for s in range(8)]
  starts = {_frame_numbers(v)[0] for v in draws}
  assert len(starts) > 2
  assert len({v[..., 2].tobytes() for v in draws}) > 2  # spatial crops differ too
  assert source.example(0, num_frames=9)["video"].shape == (9, 32, 32, 3)


# ---- WebVid-style index -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_index_source_reads_every_row(data, kind):
  source = sources.IndexSource(data[kind], data["video_dir"], clip=CLIP)
  assert source.num_examples == len(data["rows"])
  outcomes = []
  for i in range(source.num_examples):
    try:
      example = source.example(i)
      outcomes.append((_clip_of(example["video"]), example["caption"], example["key"]))
    except media.SkipExample as e:
      outcomes.append(e.reason)
  expected = [(c, f"webvid clip {c}", f"page{c % 2}/00{c}.mp4") for c in range(4)]
  assert outcomes == expected + ["too_short", "missing_file"]


def test_index_source_host_split_and_missing_columns(data):
  parts = [
    sources.IndexSource(data["csv"], data["video_dir"], clip=CLIP, process_index=p, process_count=2)
    for p in range(2)
  ]
  assert [p.row(0)["videoid"] for p in parts] == ["000", "001"]  # strings: zeros kept
  assert sum(p.num_examples for p in parts) == len(data["rows"])
  with pytest.raises(ValueError, match=r"column 'caption'.*'videoid'"):
    sources.IndexSource(data["csv"], data["video_dir"], clip=CLIP, caption_column="caption")
  with pytest.raises(ValueError, match=r"column 'folder'"):
    sources.IndexSource(
      data["parquet"], data["video_dir"], clip=CLIP, path_template="{folder}/{videoid}.mp4"
    )


def test_parse_duration():
  assert sources.parse_duration("PT00H01M02S") == 62.0
  assert sources.parse_duration("PT12.5S") == 12.5
  assert sources.parse_duration(3) == 3.0 and sources.parse_duration("4.5") == 4.5
  assert sources.parse_duration("1:02:03") == 3723.0
  assert sources.parse_duration("") is None and sources.parse_duration("soon") is None


def test_window_indices():
  """media.decode_video's rule on decoded frames: 10 frames at 16 fps last 0.625 s."""
  np.testing.assert_array_equal(sources.window_indices(10, 16.0, 5, 8.0), [1, 3, 5, 7, 9])
  np.testing.assert_array_equal(sources.window_indices(12, 8.0, 5, 8.0), [4, 5, 6, 7, 8])
  np.testing.assert_array_equal(sources.window_indices(8, 16.0, 5, 8.0), [0, 2, 4, 6, 7])
  rng = np.random.default_rng(0)
  starts = {int(sources.window_indices(40, 8.0, 5, 8.0, rng)[0]) for _ in range(20)}
  assert len(starts) > 5 and max(starts) <= 36
  with pytest.raises(media.SkipExample) as e:
    sources.window_indices(7, 16.0, 5, 8.0, path="x")
  assert e.value.reason == "too_short"


# ---- TFDS ---------------------------------------------------------------------------------------
TFDS_FRAMES = (16, 16, 3, 16)  # record r's video frames; the 3-frame one is too short


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
  """A tiny TFDS dataset ('phenaki_tiny_clips') prepared in ArrayRecord and in TFRecord."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class PhenakiTinyClips(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "video": tfds.features.Video(shape=(None, H, W, 3)),
            "image": tfds.features.Image(shape=(H, W, 3)),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue", "grey"]),
            "text": tfds.features.Text(),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for r, frames in enumerate(TFDS_FRAMES):
        video = _frames(r, frames)
        yield r, {"video": video, "image": video[0], "label": r, "text": f"record {r}"}

  dirs = {}
  for fmt in ("array_record", "tfrecord"):
    dirs[fmt] = str(tmp_path_factory.mktemp(fmt))
    PhenakiTinyClips(data_dir=dirs[fmt], file_format=fmt).download_and_prepare()
  return dirs


def test_tfds_video_template_caption_and_frame_rate(tfds_dirs):
  source = sources.TfdsSource(
    "phenaki_tiny_clips",
    kind="video",
    clip=CLIP,
    data_dir=tfds_dirs["array_record"],
    caption_template="a video of {label}",
    source_fps=16.0,  # every other source frame at 8 fps
  )
  assert source.num_examples == 4 and not source.is_image
  seen = {}
  for i in range(4):
    try:
      example = source.example(i)
    except media.SkipExample as e:
      seen[e.reason] = i
      continue
    record = _clip_of(example["video"])
    assert example["caption"] == "a video of " + ["red", "green", "blue", "grey"][record]
    assert example["video"].shape == (5, 32, 32, 3)
    frames = _frame_numbers(example["video"])
    assert frames == [4, 6, 8, 10, 12]  # centred: t0 = (1 - 0.5) / 2 s
    seen[record] = i
  assert sorted(seen, key=str) == [0, 1, 3, "too_short"]
  random = source.example(seen[0], rng=np.random.default_rng(1))["video"]
  assert np.all(np.diff(_frame_numbers(random)) == 2)


def test_tfds_images_text_caption_and_host_split(tfds_dirs):
  parts = [
    sources.TfdsSource(
      "phenaki_tiny_clips",
      kind="image",
      clip=CLIP,
      data_dir=tfds_dirs["array_record"],
      caption_key="text",
      process_index=p,
      process_count=2,
    )
    for p in range(2)
  ]
  captions = set()
  for part in parts:
    assert part.is_image and part.num_examples == 2
    for i in range(part.num_examples):
      example = part.example(i)
      assert example["video"].shape == (1, 32, 32, 3)
      assert example["caption"] == f"record {_clip_of(example['video'])}"
      captions.add(example["caption"])
  assert len(captions) == 4


def test_tfds_configuration_errors(tfds_dirs):
  with pytest.raises(ValueError, match=r"tfrecord.*--file_format=array_record"):
    sources.TfdsSource(
      "phenaki_tiny_clips", kind="video", clip=CLIP, data_dir=tfds_dirs["tfrecord"], source_fps=8
    )
  common = dict(clip=CLIP, data_dir=tfds_dirs["array_record"])
  with pytest.raises(ValueError, match="source_fps"):
    sources.TfdsSource("phenaki_tiny_clips", kind="video", caption_key="text", **common)
  with pytest.raises(ValueError, match=r"no feature 'caption'.*'label'"):
    sources.TfdsSource("phenaki_tiny_clips", kind="video", source_fps=8, **common)
