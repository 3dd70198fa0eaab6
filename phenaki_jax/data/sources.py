"""Real-data sources: webdataset tar shards, a WebVid-style index over video files, and TFDS.

Every source here is *finite* and *random access*: ``num_examples`` N is the number of examples
this process holds (after its host split), and ``example(index, num_frames=None, rng=None)``
returns example ``index`` in [0, N) as ``dict(video=uint8 [F, R, R, 3], caption=str, key=str,
path=str)`` (F = 1 for images, ``is_image`` True). ``rng`` (a numpy Generator) draws the random
temporal window and spatial crop of training; ``rng=None`` takes the centred ones (evaluation),
so an example is then a pure function of its index.

Formats:
  * ``WebDatasetSource``: tar shards as img2dataset (``KEY.jpg|png|webp`` + ``KEY.txt`` +
    ``KEY.json``) and video2dataset (``KEY.mp4|webm|...`` + ``KEY.txt`` + ``KEY.json``) write
    them, e.g. LAION image-text pairs or WebVid clips. A sample is the members sharing a key (the
    member path up to the first dot of its basename, webdataset's rule); its caption is the
    ``.txt``, else the ``.json``'s "caption" field. Shards are uncompressed tars (a ``.tar.gz``
    cannot be read at an offset).
  * ``IndexSource``: a CSV or parquet index (WebVid's ``results_*.csv``: videoid, name,
    page_dir, duration, ...) over a folder of downloaded videos; one row, one video at
    ``video_dir/path_template.format(**row)``.
  * ``TfdsSource``: a prepared TFDS dataset in the ArrayRecord file format (random access needs
    it), with the caption from a text feature or a template over features ("a video of
    {label}", a ClassLabel's name in place of its number).

Why random access: ``data/pipeline.py`` addresses the k-th draw of a source as (epoch
``k // N``, position ``k % N`` of a permutation of range(N) seeded by (seed, epoch)), a pure
function of the draw number. So a restarted run resumes exactly (the step number is the only
data state, already in the checkpoint), and every process runs its own epochs over its own
examples without talking to the others. To make ``example(i)`` cheap, a source indexes its
data once at construction: ``WebDatasetSource`` reads the tar headers of its shards (not their
data; a few threads, one shard each) and keeps each sample's byte offsets and sizes, so that
``example(i)`` seeks and reads just that sample's media and caption; ``IndexSource`` keeps the
index's needed columns; ``TfdsSource`` reads through ``ArrayRecordDataSource``.

Host split: the process with index p of P holds items ``p::P`` of the sorted shard list
(``WebDatasetSource``), of the index rows (``IndexSource``) or of the dataset's records
(``TfdsSource``). Processes hold disjoint parts that cover everything; for shards every process
needs at least one (``host_split`` raises otherwise).

Failures:
  * One bad example (corrupt or missing media, too short a video, no caption, an unreadable
    read): ``example`` raises ``media.SkipExample(reason, path, detail)``, never another
    exception for bad data; the pipeline skips it, counts it by ``reason`` and takes the next.
    Reasons: media's ('corrupt_video', 'too_short', 'no_video_stream', 'missing_file',
    'corrupt_image', 'empty_caption') and this module's 'corrupt_caption' (an unparsable
    .json caption), 'read_error' (the bytes could not be read) and 'corrupt_record' (a TFDS
    record that does not decode).
  * A damaged shard (unreadable, not a tar, truncated, a garbage header) does not raise:
    ``WebDatasetSource`` keeps the complete samples before the damage, counts the shard in
    ``index_skips`` ({'unreadable_shard': n}) and lists ``(shard, what)`` in
    ``index_errors``; both appear in ``describe()`` and a warning is logged.
  * Configuration errors raise ``ValueError`` at construction, naming what is wrong: a path
    pattern that matches nothing, fewer shards than processes, no usable sample in any of this
    process's shards, an index column that is not there, a TFDS dataset not in ArrayRecord.

Paths are local or any scheme ``tf.io.gfile`` opens (``gs://...``); TensorFlow is imported only
for such paths (``TfdsSource`` imports ``tensorflow_datasets``, and with it TensorFlow, when it
is constructed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob as glob_lib
import json
import logging
import math
import os
import posixpath
import re
import string
import struct
import tarfile
from typing import Optional, Sequence, Union

import numpy as np

from phenaki_jax.data import media

_log = logging.getLogger(__name__)

INDEX_THREADS = 8  # shards whose headers are read at once
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


# ----------------------------------------------------------------------------------------------
# Paths.
# ----------------------------------------------------------------------------------------------
def is_remote(path: str) -> bool:
  """Whether ``path`` has a scheme (``gs://``, ...): read through ``tf.io.gfile``."""
  return bool(_SCHEME.match(str(path)))


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf.io.gfile


def open_file(path: str):
  """A binary file object (``read``, ``seek``, ``tell``) for a local or ``tf.io.gfile`` path."""
  path = os.fspath(path)
  if is_remote(path):
    return _gfile().GFile(path, "rb")
  return open(path, "rb")


def _join(directory: str, relative: str) -> str:
  if is_remote(directory):
    return posixpath.join(directory, relative)
  return os.path.join(directory, relative)


def _split_commas(text: str) -> list:
  """Comma-separated items; commas inside braces (``{a,b}``) belong to a brace pattern."""
  items, depth, current = [], 0, []
  for ch in text:
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth = max(0, depth - 1)
    if ch == "," and depth == 0:
      items.append("".join(current))
      current = []
    else:
      current.append(ch)
  items.append("".join(current))
  return [item.strip() for item in items if item.strip()]


def _existing(paths: list) -> list:
  """The paths of ``paths`` that exist (remote ones: one directory listing per directory)."""
  local = [p for p in paths if not is_remote(p)]
  remote = [p for p in paths if is_remote(p)]
  found = {p for p in local if os.path.exists(p)}
  if remote:
    gfile = _gfile()
    listings = {}
    for p in remote:
      directory, name = posixpath.split(p)
      if directory not in listings:
        try:
          listings[directory] = {n.rstrip("/") for n in gfile.listdir(directory)}
        except Exception:  # pylint: disable=broad-except  # no such directory
          listings[directory] = set()
      if name in listings[directory]:
        found.add(p)
  return [p for p in paths if p in found]


def expand_paths(spec: Union[str, os.PathLike, Sequence]) -> list:
  """Paths from a spec: sorted and de-duplicated.

  Args:
    spec: a string (comma-separated items allowed) or a list of strings. Each item is a plain
      path, a brace pattern (``shard-{00000..00127}.tar``, ``{a,b}.tar``; braceexpand) or a glob
      (``*.tar``), local or remote (``gs://...``, through ``tf.io.gfile``).

  Raises:
    ValueError: an item that matches no existing file (naming it), or no items at all. A brace
      pattern of which only some paths exist keeps those and logs how many are missing.
  """
  import braceexpand  # pylint: disable=g-import-not-at-top

  if isinstance(spec, (str, os.PathLike)):
    items = _split_commas(os.fspath(spec))
  else:
    items = [part for item in spec for part in _split_commas(os.fspath(item))]
  if not items:
    raise ValueError(f"No paths given: {spec!r}.")
  out = set()
  for item in items:
    plain = []
    for pattern in braceexpand.braceexpand(item):
      if glob_lib.has_magic(pattern):
        if is_remote(pattern):
          matches = _gfile().glob(pattern)
        else:
          matches = glob_lib.glob(pattern)
        if not matches:
          raise ValueError(f"Path pattern {pattern!r} (from {item!r}) matches no file.")
        out.update(matches)
      else:
        plain.append(pattern)
    if plain:
      existing = _existing(plain)
      if not existing:
        shown = plain[0] if len(plain) == 1 else f"{len(plain)} paths, e.g. {plain[0]!r}"
        raise ValueError(f"Path {item!r} matches no file ({shown} does not exist).")
      if len(existing) < len(plain):
        missing = sorted(set(plain) - set(existing))
        _log.warning(
          "%s: %d of its %d paths do not exist (e.g. %s); using the other %d.",
          item,
          len(missing),
          len(plain),
          missing[0],
          len(existing),
        )
      out.update(existing)
  return sorted(out)


def host_split(items: Sequence, process_index: int, process_count: int, what: str = "items"):
  """This process's part ``items[process_index::process_count]`` (a range stays a range).

  Raises:
    ValueError: a bad process index or count, or fewer items than processes (every process must
      get at least one), naming ``what`` and the counts.
  """
  process_index, process_count = int(process_index), int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index} must be in [0, process_count={process_count})."
    )
  if len(items) < process_count:
    raise ValueError(
      f"{len(items)} {what} cannot be split over {process_count} processes: each process needs "
      f"at least one. Use at least {process_count} {what} (e.g. re-shard the data)."
    )
  return items[process_index::process_count]


def _describe_paths(paths: Sequence, limit: int = 3) -> str:
  paths = list(paths)
  shown = ", ".join(paths[:limit])
  return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


# ----------------------------------------------------------------------------------------------
# webdataset tar shards.
# ----------------------------------------------------------------------------------------------
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def split_member_name(name: str) -> tuple:
  """(key, extension) of a tar member: the path up to the first dot of its basename, and the
  rest lower-cased (webdataset's rule); (None, None) for a name without one."""
  match = _KEY_RE.match(name)
  if not match:
    return None, None
  return match.group(1), match.group(2).lower()


@dataclasses.dataclass
class _ShardIndex:
  """Where each sample of one shard lies: byte offset and size of its parts (-1: absent)."""

  path: str
  keys: np.ndarray  # bytes [n]
  media: np.ndarray  # int64 [n, 2]: media member's (data offset, size)
  media_ext: np.ndarray  # uint8 [n]: index into the source's extensions
  txt: np.ndarray  # int64 [n, 2]
  json: np.ndarray  # int64 [n, 2]
  members: int = 0  # file members read
  extensions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  error: str = ""  # what was wrong with the shard ("" if nothing)

  @property
  def size(self) -> int:
    return len(self.keys)


class _TarDamage(Exception):
  """A tar is damaged here; the members before were complete."""


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _pax_records(data: bytes) -> dict:
  """{keyword: value} of a pax extended header ("LEN keyword=value\\n" records)."""
  out, pos = {}, 0
  while pos < len(data):
    space = data.find(b" ", pos)
    if space < 0:
      break
    length = int(data[pos:space])
    if length <= 0:
      break
    keyword, _, value = data[space + 1 : pos + length - 1].partition(b"=")
    out[keyword.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
    pos += length
  return out


def tar_members(f, file_size: int):
  """Yields (name, data offset, size) of a tar's regular files by reading only their headers
  (one 512-byte block each, seeking over the data; GNU long names and pax headers followed).

  Returns at the end-of-archive marker; raises ``_TarDamage`` where the tar is damaged (a
  member cut off, a short or invalid header, no end marker): everything yielded before is whole.
  """
  offset, long_name, pax = 0, None, {}
  while True:
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
      raise _TarDamage(f"truncated at byte {offset} of {file_size} (no end-of-archive marker)")
    if block == _ZERO_BLOCK:
      return
    name, size, kind = _parse_header(block, offset)
    data_at = offset + tarfile.BLOCKSIZE
    if "size" in pax:
      size = int(pax["size"])
    end = data_at + size
    if end > file_size:
      raise _TarDamage(
        f"truncated: member {name!r} needs bytes up to {end}, the file has {file_size}"
      )
    offset = data_at + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
      f.seek(data_at)
      data = f.read(size)
      if kind == tarfile.GNUTYPE_LONGNAME:
        long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
      else:
        pax = _pax_records(data)
      continue
    if kind in _REGULAR:
      yield pax.get("path") or long_name or name, data_at, size
    long_name, pax = None, {}


def _parse_header(block: bytes, offset: int) -> tuple:
  """(name, size, type flag) of a ustar / GNU / pax tar header block, checksum verified (the
  fields tarfile.TarInfo.frombuf reads, at a fraction of its cost)."""
  try:
    stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    size_field = block[124:136]
    if size_field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
      size = int.from_bytes(size_field[1:], "big")
    else:
      size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
  except ValueError:
    stored, size = -1, 0
  unsigned = sum(block) - sum(block[148:156]) + 8 * 32
  if stored != unsigned and stored != sum(struct.unpack("148b8x356b", block)) + 8 * 32:
    raise _TarDamage(f"invalid tar header at byte {offset} (bad checksum)")
  name = block[:100].split(b"\0", 1)[0]
  if block[257:263] == b"ustar\0" and block[345]:  # POSIX: a path prefix (GNU: times there)
    name = block[345:500].split(b"\0", 1)[0] + b"/" + name
  return name.decode("utf-8", "surrogateescape"), size, block[156:157]


def index_shard(path: str, extensions: Sequence[str]) -> _ShardIndex:
  """Reads a tar shard's headers (seeking over the data) into a ``_ShardIndex``.

  A sample is kept when it has a member with one of ``extensions`` (the first such member is
  its media). Never raises for a bad shard: ``error`` says what was wrong, and the complete
  samples before the damage are kept.
  """
  extensions = tuple(extensions)
  samples = {}  # key -> {ext: (offset, size)}, in order of first appearance
  seen = collections.Counter()
  members = 0
  error = ""
  try:
    with open_file(path) as f:
      f.seek(0, 2)
      file_size = f.tell()
      f.seek(0)
      if f.read(2) == b"\x1f\x8b":
        raise tarfile.ReadError("gzip-compressed; random access needs an uncompressed .tar")
      for name, offset, size in tar_members(f, file_size):
        members += 1
        key, ext = split_member_name(name)
        if key is not None:
          seen[ext] += 1
          samples.setdefault(key, {}).setdefault(ext, (offset, size))
  except _TarDamage as e:
    error = str(e)
    if not members:
      error = "unreadable: " + error
  except Exception as e:  # pylint: disable=broad-except  # any unreadable shard is reported
    error = f"unreadable: {type(e).__name__}: {e}"

  keys, media_at, media_ext, txt, js = [], [], [], [], []
  for key, parts in samples.items():
    found = [i for i, ext in enumerate(extensions) if ext in parts]
    if not found:
      continue  # e.g. a .json-only sample (a failed download): not an example
    keys.append(key.encode("utf-8", "surrogateescape"))
    media_at.append(parts[extensions[found[0]]])
    media_ext.append(found[0])
    txt.append(parts.get("txt", (-1, -1)))
    js.append(parts.get("json", (-1, -1)))
  n = len(keys)
  return _ShardIndex(
    path=path,
    keys=np.array(keys, dtype=np.bytes_) if n else np.zeros((0,), "S1"),
    media=np.array(media_at, np.int64).reshape(n, 2),
    media_ext=np.array(media_ext, np.uint8),
    txt=np.array(txt, np.int64).reshape(n, 2),
    json=np.array(js, np.int64).reshape(n, 2),
    members=members,
    extensions=seen,
    error=error,
  )


def _read_ranges(path: str, ranges: Sequence[tuple], where: str) -> list:
  """The bytes at (offset, size) ranges of a file, opened for this call (thread-safe); raises
  SkipExample('read_error') when they cannot be read (after one retry)."""
  last = None
  for _ in range(2):
    try:
      out = []
      with open_file(path) as f:
        for offset, size in ranges:
          f.seek(int(offset))
          data = f.read(int(size))
          if len(data) != int(size):
            raise EOFError(f"read {len(data)} of {int(size)} bytes at offset {int(offset)}")
          out.append(data)
      return out
    except Exception as e:  # pylint: disable=broad-except  # OSError, tf.errors.*, EOFError
      last = e
  raise media.SkipExample("read_error", where, f"{type(last).__name__}: {last}")


def _json_caption(data: bytes, where: str):
  try:
    obj = json.loads(data)
  except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
    raise media.SkipExample(
      "corrupt_caption", where, f"the .json does not parse: {type(e).__name__}: {str(e)[:200]}"
    ) from None
  caption = obj.get("caption") if isinstance(obj, dict) else None
  return caption if isinstance(caption, str) else None


class WebDatasetSource:
  """Random access to the samples of webdataset tar shards (img2dataset / video2dataset).

  Args:
    shards: shard paths or patterns (``expand_paths``): ``"data/{00000..00127}.tar"``,
      ``"gs://bucket/*.tar"``, a list.
    kind: "video" (members ``media.VIDEO_EXTENSIONS``) or "image" (``media.IMAGE_EXTENSIONS``).
    clip: frames, frame rate and resolution of the examples (images use only the resolution).
    process_index, process_count: this process's shards are ``sorted(shards)[p::P]``.
    max_caption_chars: captions are cleaned and cut to this length (``media.clean_caption``).
    name: a name for logs and errors.
    index_threads: shards whose headers are read at once at construction.

  Attributes:
    num_examples: samples with a media file of ``kind`` in this process's shards.
    num_shards: this process's shards.
    index_skips: {'unreadable_shard': n} for damaged shards (empty when none).
    index_errors: [(shard, what was wrong)].
  """

  def __init__(
    self,
    shards,
    *,
    kind: str,
    clip: media.ClipSpec,
    process_index: int = 0,
    process_count: int = 1,
    max_caption_chars: int = 256,
    name: str = "",
    index_threads: int = INDEX_THREADS,
  ):
    if kind not in ("video", "image"):
      raise ValueError(f"WebDatasetSource kind must be 'video' or 'image', got {kind!r}.")
    self.kind = kind
    self.clip = clip
    self.max_caption_chars = int(max_caption_chars)
    self.process_index, self.process_count = int(process_index), int(process_count)
    all_shards = expand_paths(shards)
    self.name = name or os.path.basename(all_shards[0]) + (
      f" +{len(all_shards) - 1}" if len(all_shards) > 1 else ""
    )
    self.shards = host_split(all_shards, self.process_index, self.process_count, "shards")
    self.extensions = media.VIDEO_EXTENSIONS if kind == "video" else media.IMAGE_EXTENSIONS

    workers = max(1, min(int(index_threads), len(self.shards)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tar-index") as pool:
      indexes = list(pool.map(lambda p: index_shard(p, self.extensions), self.shards))
    self.index_errors = [(ix.path, ix.error) for ix in indexes if ix.error]
    self.index_skips = {"unreadable_shard": len(self.index_errors)} if self.index_errors else {}
    for path, error in self.index_errors:
      _log.warning(
        "WebDatasetSource %r: shard %s: %s (its complete samples before that are kept)",
        self.name,
        path,
        error,
      )
    self._shards = [ix for ix in indexes if ix.size]
    sizes = [ix.size for ix in self._shards]
    self._starts = np.cumsum([0] + sizes).astype(np.int64)  # [num nonempty shards + 1]
    self.num_examples = int(self._starts[-1])
    self.num_shards = len(self.shards)
    if not self.num_examples:
      seen = collections.Counter()
      for ix in indexes:
        seen.update(ix.extensions)
      problems = "; ".join(f"{p}: {e}" for p, e in self.index_errors[:5]) or "none unreadable"
      raise ValueError(
        f"WebDatasetSource {self.name!r}: no sample with a {kind} file "
        f"({', '.join(self.extensions)}) in the {len(self.shards)} shards of process "
        f"{self.process_index}/{self.process_count} ({_describe_paths(self.shards)}). "
        f"Shard problems: {problems}. Member extensions seen: "
        f"{dict(seen.most_common(8)) or 'none'}."
      )

  @property
  def is_image(self) -> bool:
    return self.kind == "image"

  @property
  def num_frames(self) -> int:
    return 1 if self.is_image else self.clip.num_frames

  @property
  def resolution(self) -> int:
    return self.clip.resolution

  def locate(self, index: int) -> tuple:
    """(shard path, key, media extension) of example ``index``."""
    shard, row = self._find(index)
    return shard.path, self._key(shard, row), self.extensions[shard.media_ext[row]]

  def _find(self, index: int) -> tuple:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"{self.describe()}: index {index} is not in [0, {self.num_examples}).")
    s = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._shards[s], index - int(self._starts[s])

  @staticmethod
  def _key(shard: _ShardIndex, row: int) -> str:
    return bytes(shard.keys[row]).decode("utf-8", "surrogateescape")

  def example(self, index: int, num_frames: Optional[int] = None, rng=None) -> dict:
    """Example ``index``: dict(video=uint8 [F, R, R, 3] ([1, R, R, 3] for images), caption,
    key, path="shard.tar:KEY.ext"). Thread-safe (a file is opened per call).

    Raises:
      media.SkipExample: anything wrong with this example (see the module docstring).
      IndexError: ``index`` not in [0, num_examples).
    """
    shard, row = self._find(index)
    key = self._key(shard, row)
    where = f"{shard.path}:{key}.{self.extensions[shard.media_ext[row]]}"
    txt, js = shard.txt[row], shard.json[row]
    ranges = [tuple(shard.media[row])] + [tuple(r) for r in (txt, js) if r[0] >= 0]
    data = _read_ranges(shard.path, ranges, where)
    blobs = iter(data[1:])
    text = next(blobs).decode("utf-8", "replace") if txt[0] >= 0 else None
    json_data = next(blobs) if js[0] >= 0 else None
    if (text is None or not text.strip()) and json_data is not None:
      text = _json_caption(json_data, where) or text
    if text is None:
      raise media.SkipExample("empty_caption", where, "the sample has no .txt or .json caption")
    caption = media.clean_caption(text, self.max_caption_chars, path=where)
    if self.is_image:
      video = media.decode_image(data[0], self.clip.resolution, rng=rng, path=where)
    else:
      spec = self.clip
      if num_frames is not None and int(num_frames) != spec.num_frames:
        spec = dataclasses.replace(spec, num_frames=int(num_frames))
      video = media.decode_video(data[0], spec, rng=rng, path=where)
    return dict(video=video, caption=caption, key=key, path=where)

  def describe(self) -> str:
    skips = f", index skips {self.index_skips}" if self.index_skips else ""
    return (
      f"webdataset:{self.name} ({self.kind}, {self.num_examples} examples in {self.num_shards} "
      f"shards, process {self.process_index}/{self.process_count}{skips})"
    )

  def __repr__(self):
    return (
      f"WebDatasetSource({self.name!r}, kind={self.kind!r}, clip={self.clip}, "
      f"num_examples={self.num_examples}, num_shards={self.num_shards}, "
      f"process={self.process_index}/{self.process_count}, index_skips={self.index_skips})"
    )


# ----------------------------------------------------------------------------------------------
# A CSV / parquet index over video files (WebVid).
# ----------------------------------------------------------------------------------------------
_ISO_DURATION = re.compile(
  r"^P(?:(?P<d>\d+(?:\.\d*)?)D)?(?:T(?:(?P<h>\d+(?:\.\d*)?)H)?(?:(?P<m>\d+(?:\.\d*)?)M)?"
  r"(?:(?P<s>\d+(?:\.\d*)?)S)?)?$"
)


def parse_duration(value) -> Optional[float]:
  """Seconds from a duration cell: a number, "12.5", ISO 8601 "PT00H00M20S" (WebVid's) or
  "[HH:]MM:SS[.f]"; None when empty or not understood (then nothing is checked)."""
  if value is None or isinstance(value, bool):
    return None
  if isinstance(value, (int, float, np.integer, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  text = str(value).strip()
  if not text:
    return None
  try:
    seconds = float(text)
    return seconds if math.isfinite(seconds) else None
  except ValueError:
    pass
  match = _ISO_DURATION.match(text.upper())
  if match and any(match.groupdict().values()):
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
  fields = text.split(":")
  if 2 <= len(fields) <= 3:
    try:
      numbers = [float(f) for f in fields]
    except ValueError:
      return None
    return sum(n * 60**i for i, n in enumerate(reversed(numbers)))
  return None


def _read_table(path: str):
  """A pyarrow Table of a CSV (every column as strings: ids keep their leading zeros) or a
  parquet file, by extension."""
  import pyarrow  # pylint: disable=g-import-not-at-top

  lower = path.lower()
  if lower.endswith((".parquet", ".pq")):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    with open_file(path) as f:
      return pq.read_table(f)
  if lower.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
    import pyarrow.csv as pcsv  # pylint: disable=g-import-not-at-top

    parse = pcsv.ParseOptions(delimiter="\t" if ".tsv" in lower else ",")

    def stream(f):
      return pyarrow.CompressedInputStream(f, "gzip") if lower.endswith(".gz") else f

    with open_file(path) as f:
      names = pcsv.open_csv(stream(f), parse_options=parse).schema.names
    with open_file(path) as f:
      return pcsv.read_csv(
        stream(f),
        parse_options=parse,
        # Not checked here: one cell of invalid UTF-8 would refuse the whole index, where
        # `IndexSource.row` decodes that cell alone, its bad bytes replaced.
        convert_options=pcsv.ConvertOptions(
          column_types={n: pyarrow.string() for n in names},
          strings_can_be_null=True,
          check_utf8=False,
        ),
      )
  raise ValueError(f"Index {path!r}: expected a .csv, .tsv (optionally .gz) or .parquet file.")


def _cell(column, index: int):
  """A cell's Python value; a string cell of invalid UTF-8 (a CSV is read unchecked) decoded
  with its bad bytes replaced by U+FFFD."""
  try:
    return column[index].as_py()
  except UnicodeDecodeError:
    import pyarrow  # pylint: disable=g-import-not-at-top

    return column.cast(pyarrow.binary())[index].as_py().decode("utf-8", "replace")


class IndexSource:
  """Random access to videos listed by a WebVid-style CSV or parquet index.

  Args:
    index: the index file(s) (``expand_paths``: a path, a glob, a list; rows concatenated in
      sorted path order). CSV columns are read as strings.
    video_dir: the folder the video paths are relative to (local or ``gs://``).
    clip: frames, frame rate and resolution of the examples.
    path_template: a row's video path under ``video_dir``, formatted with the row's columns.
    caption_column: the caption (WebVid: "name").
    duration_column: the video's duration (seconds, or WebVid's "PT00H00M20S"); a row shorter
      than the clip window ``(num_frames - 1) / fps`` is skipped as 'too_short' without opening
      its file. None: not checked.
    process_index, process_count: this process's rows are ``rows[p::P]``.
    max_caption_chars: captions are cleaned and cut to this length.
  """

  is_image = False

  def __init__(
    self,
    index,
    video_dir: str,
    *,
    clip: media.ClipSpec,
    path_template: str = "{page_dir}/{videoid}.mp4",
    caption_column: str = "name",
    duration_column: Optional[str] = "duration",
    process_index: int = 0,
    process_count: int = 1,
    max_caption_chars: int = 256,
  ):
    import pyarrow  # pylint: disable=g-import-not-at-top

    self.clip = clip
    self.video_dir = os.fspath(video_dir)
    self.path_template = path_template
    self.caption_column, self.duration_column = caption_column, duration_column
    self.max_caption_chars = int(max_caption_chars)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.index_paths = expand_paths(index)
    fields = [f for _, f, _, _ in string.Formatter().parse(path_template) if f]
    fields = [re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields]
    roles = {caption_column: "caption_column"}
    for f in fields:
      roles.setdefault(f, f"a field of path_template {path_template!r}")
    if duration_column:
      roles.setdefault(duration_column, "duration_column")
    self.columns = list(roles)
    tables = []
    for path in self.index_paths:
      table = _read_table(path)
      for column, role in roles.items():
        if column not in table.column_names:
          raise ValueError(
            f"Index {path!r} has no column {column!r} ({role}); its columns: {table.column_names}."
          )
      tables.append(table.select(self.columns))
    if len({t.schema for t in tables}) > 1:  # e.g. a CSV and a parquet: compare as strings
      tables = [
        t.cast(pyarrow.schema([(c, pyarrow.string()) for c in self.columns])) for t in tables
      ]
    table = pyarrow.concat_tables(tables)
    self.total_rows = table.num_rows
    rows = host_split(range(self.total_rows), self.process_index, self.process_count, "rows")
    if self.process_count > 1:
      table = table.take(pyarrow.array(np.arange(rows.start, rows.stop, rows.step)))
    self._columns = {c: table.column(c).combine_chunks() for c in self.columns}
    self.num_examples = table.num_rows
    self.name = os.path.basename(self.index_paths[0])

  @property
  def num_frames(self) -> int:
    return self.clip.num_frames

  @property
  def resolution(self) -> int:
    return self.clip.resolution

  def row(self, index: int) -> dict:
    """The needed columns of this process's row ``index``."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"{self.describe()}: index {index} is not in [0, {self.num_examples}).")
    return {c: _cell(col, index) for c, col in self._columns.items()}

  def example(self, index: int, num_frames: Optional[int] = None, rng=None) -> dict:
    """Example ``index``: dict(video=uint8 [F, R, R, 3], caption, key=the relative video
    path, path). Thread-safe.

    Raises:
      media.SkipExample: 'too_short' (by the duration column, before opening the file),
        'missing_file', media's decoding and caption reasons.
    """
    row = self.row(index)
    spec = self.clip
    if num_frames is not None and int(num_frames) != spec.num_frames:
      spec = dataclasses.replace(spec, num_frames=int(num_frames))
    relative = self.path_template.format(**row)
    path = _join(self.video_dir, relative)
    if self.duration_column:
      duration = parse_duration(row[self.duration_column])
      window = (spec.num_frames - 1) / spec.fps
      if duration is not None and duration < window:
        raise media.SkipExample(
          "too_short", path, f"duration column says {duration:g} s < clip window {window:g} s"
        )
    caption = media.clean_caption(row[self.caption_column] or "", self.max_caption_chars, path)
    if is_remote(path):
      try:
        with open_file(path) as f:
          data = f.read()
      except Exception as e:  # pylint: disable=broad-except  # tf.errors.NotFoundError, ...
        reason = "missing_file" if "NotFound" in type(e).__name__ else "read_error"
        raise media.SkipExample(reason, path, f"{type(e).__name__}: {e}") from None
    else:
      if not os.path.isfile(path):
        raise media.SkipExample("missing_file", path, "no such file")
      data = path
    video = media.decode_video(data, spec, rng=rng, path=path)
    return dict(video=video, caption=caption, key=relative, path=path)

  def describe(self) -> str:
    return (
      f"index:{self.name} ({self.num_examples} of {self.total_rows} rows, videos under "
      f"{self.video_dir}, process {self.process_index}/{self.process_count})"
    )

  def __repr__(self):
    return (
      f"IndexSource({self.index_paths!r}, {self.video_dir!r}, clip={self.clip}, "
      f"num_examples={self.num_examples}, process={self.process_index}/{self.process_count})"
    )


# ----------------------------------------------------------------------------------------------
# TFDS (ArrayRecord).
# ----------------------------------------------------------------------------------------------
def window_indices(
  num_source_frames: int,
  source_fps: float,
  num_frames: int,
  fps: float,
  rng=None,
  path: str = "",
) -> np.ndarray:
  """int [num_frames]: which of ``num_source_frames`` frames at ``source_fps`` make a clip of
  ``num_frames`` at ``fps``, by ``media.decode_video``'s rule: the source lasts
  ``num_source_frames / source_fps`` seconds, the window ``[t0, t0 + (num_frames - 1) / fps]``
  must fit in it (else SkipExample('too_short')), t0 is uniform over where it fits (one draw
  from ``rng``) or centred (``rng=None``), and clip frame j is the source frame on screen at
  ``t0 + j / fps``."""
  duration = num_source_frames / float(source_fps)
  span = (num_frames - 1) / float(fps)
  if num_source_frames < 1 or span > duration + 1e-6:
    raise media.SkipExample(
      "too_short",
      path,
      f"{duration:.3f} s of video ({num_source_frames} frames at {source_fps:g} fps), "
      f"{num_frames} frames at {fps:g} fps need {span:.3f} s",
    )
  room = max(0.0, duration - span)
  t0 = float(rng.uniform(0.0, room)) if rng is not None else room / 2
  times = t0 + np.arange(num_frames) / float(fps)  # [F] seconds
  index = np.floor(times * float(source_fps) + 1e-6).astype(np.int64)
  return np.clip(index, 0, num_source_frames - 1)


def _rgb(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, 3] from grey, grey + alpha, RGB or RGBA frames."""
  frames = np.asarray(frames)
  if frames.ndim >= 3 and frames.shape[-1] in (1, 2):
    frames = np.repeat(frames[..., :1], 3, axis=-1)
  elif frames.shape[-1] == 4:
    frames = frames[..., :3]
  if frames.dtype != np.uint8:
    frames = np.clip(frames, 0, 255).astype(np.uint8)
  return frames


class TfdsSource:
  """Random access to a prepared TFDS dataset in the ArrayRecord file format.

  Args:
    name: the dataset's name (``"ucf101/ucf101_1_256:2.0.0"``, ``"my_dataset"``), found in
      ``data_dir`` (``tfds.builder(name, data_dir=...)``; a builder class need not be imported,
      the prepared files suffice).
    kind: "video" (frames [T, H, W, C] with no frame rate: give ``source_fps``) or "image".
    clip: frames, frame rate and resolution of the examples.
    split: a TFDS split ("train", "train[:90%]", ...).
    data_dir: where the dataset was prepared (default TFDS's).
    media_key: the video or image feature (default "video" / "image").
    caption_key: a text (or ClassLabel) feature used as the caption.
    caption_template: instead, a template over features, e.g. "a video of {label}"; a ClassLabel
      feature's number becomes its name, bytes are decoded. Default: caption_key "caption".
    source_fps: the frame rate the dataset's videos were sampled at (required for videos).
    process_index, process_count: this process's records are ``records[p::P]``.
    max_caption_chars: captions are cleaned and cut to this length.

  Videos are read without decoding: only the frames of the clip's window are decoded.
  """

  def __init__(
    self,
    name: str,
    *,
    kind: str,
    clip: media.ClipSpec,
    split: str = "train",
    data_dir: Optional[str] = None,
    media_key: Optional[str] = None,
    caption_key: Optional[str] = None,
    caption_template: Optional[str] = None,
    source_fps: Optional[float] = None,
    process_index: int = 0,
    process_count: int = 1,
    max_caption_chars: int = 256,
  ):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if kind not in ("video", "image"):
      raise ValueError(f"TfdsSource kind must be 'video' or 'image', got {kind!r}.")
    if kind == "video" and not (source_fps and source_fps > 0):
      raise ValueError(
        f"TfdsSource {name!r}: a video dataset needs source_fps (TFDS videos carry no frame "
        f"rate), got {source_fps!r}."
      )
    if caption_key is not None and caption_template is not None:
      raise ValueError("TfdsSource: give caption_key or caption_template, not both.")
    self.name, self.kind, self.clip, self.split = name, kind, clip, split
    self.data_dir = data_dir
    self.source_fps = None if source_fps is None else float(source_fps)
    self.max_caption_chars = int(max_caption_chars)
    self.process_index, self.process_count = int(process_index), int(process_count)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # pylint: disable=broad-except  # DatasetNotFoundError, ...
      raise ValueError(
        f"TfdsSource: cannot find TFDS dataset {name!r} in data_dir={data_dir!r}: "
        f"{type(e).__name__}: {e}"
      ) from e
    info = builder.info
    formats = set(info.available_file_formats()) or {info.file_format}
    random_access = set(tfds.core.FileFormat.with_random_access())
    if not formats & random_access:
      shown = ", ".join(str(getattr(f, "value", f)) for f in formats if f is not None) or "none"
      raise ValueError(
        f"TfdsSource: dataset {name!r} in {builder.data_dir} is prepared as {shown}, which has "
        f"no random access. Rebuild it in the ArrayRecord format: `tfds build {name} "
        f"--file_format=array_record` (or builder.download_and_prepare("
        f'file_format="array_record")), into another data_dir or after deleting this one.'
      )
    features = info.features
    self.media_key = media_key or kind
    if caption_key is None and caption_template is None:
      caption_key = "caption"
    self.caption_key, self.caption_template = caption_key, caption_template
    needed = {self.media_key: "media_key"}
    if caption_key is not None:
      needed.setdefault(caption_key, "caption_key")
    else:
      for _, field, _, _ in string.Formatter().parse(caption_template):
        if field:
          needed.setdefault(re.split(r"[.\[]", field, maxsplit=1)[0], "caption_template")
    for key, role in needed.items():
      if key not in features:
        raise ValueError(
          f"TfdsSource {name!r}: no feature {key!r} ({role}); its features: {sorted(features)}."
        )
    self._label_names = {
      k: list(features[k].names)
      for k in needed
      if isinstance(features[k], tfds.features.ClassLabel)
    }
    self._caption_keys = [k for k, role in needed.items() if role != "media_key"]
    media_feature = features[self.media_key]
    self._lazy_video = kind == "video" and isinstance(media_feature, tfds.features.Video)
    try:
      self._decoded = builder.as_data_source(split=split)
      # Videos: the undecoded tf.train.Example, so that only the window's frames are decoded.
      self._raw = (
        builder.as_data_source(
          split=split, deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE
        )
        if self._lazy_video
        else None
      )
    except (NotImplementedError, ValueError, KeyError) as e:
      raise ValueError(
        f"TfdsSource: cannot read split {split!r} of {name!r} in {builder.data_dir}: {e}"
      ) from e
    self._frame_feature = media_feature.feature if self._lazy_video else None
    self.total_records = len(self._decoded)
    self._records = host_split(
      range(self.total_records), self.process_index, self.process_count, "records"
    )
    self.num_examples = len(self._records)

  @property
  def is_image(self) -> bool:
    return self.kind == "image"

  @property
  def num_frames(self) -> int:
    return 1 if self.is_image else self.clip.num_frames

  @property
  def resolution(self) -> int:
    return self.clip.resolution

  def _caption(self, values: dict, where: str) -> str:
    def text(key):
      value = values[key]
      if key in self._label_names:
        return self._label_names[key][int(value)]
      if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
      if isinstance(value, np.ndarray) and value.ndim == 0:
        return text_of(value.item())
      return str(value)

    def text_of(value):
      return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    if self.caption_template is None:
      raw = text(self.caption_key)
    else:
      raw = self.caption_template.format(**{k: text(k) for k in self._caption_keys})
    return media.clean_caption(raw, self.max_caption_chars, path=where)

  def _raw_values(self, record, where: str) -> tuple:
    """(encoded frames, {caption key: value}) from an undecoded tf.train.Example."""
    feature = record.features.feature
    frames = list(feature[self.media_key].bytes_list.value)
    values = {}
    for key in self._caption_keys:
      f = feature[key]
      kind = f.WhichOneof("kind")
      seq = getattr(f, kind).value if kind else []
      if not seq:
        raise media.SkipExample("corrupt_record", where, f"feature {key!r} is empty")
      values[key] = seq[0]
    return frames, values

  def example(self, index: int, num_frames: Optional[int] = None, rng=None) -> dict:
    """Example ``index``: dict(video=uint8 [F, R, R, 3] ([1, R, R, 3] for images), caption,
    key="split[record]", path). Thread-safe (ArrayRecord readers are shared across threads).

    Raises:
      media.SkipExample: 'too_short', 'empty_caption', 'corrupt_record'.
    """
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"{self.describe()}: index {index} is not in [0, {self.num_examples}).")
    record = self._records[index]
    key = f"{self.split}[{record}]"
    where = f"tfds:{self.name}/{key}"
    if self.is_image or not self._lazy_video:
      try:
        values = self._decoded[record]
        frames = np.asarray(values[self.media_key])
      except Exception as e:  # pylint: disable=broad-except  # any undecodable record
        raise media.SkipExample("corrupt_record", where, f"{type(e).__name__}: {e}") from None
      caption = self._caption(values, where)
      if self.is_image:
        video = media.fit_frames(_rgb(frames)[None], self.clip.resolution, rng=rng)
        return dict(video=video, caption=caption, key=key, path=where)
      chosen = window_indices(len(frames), self.source_fps, *self._timing(num_frames), rng, where)
      frames = frames[chosen]
    else:
      try:
        encoded, values = self._raw_values(self._raw[record], where)
      except media.SkipExample:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise media.SkipExample("corrupt_record", where, f"{type(e).__name__}: {e}") from None
      caption = self._caption(values, where)
      chosen = window_indices(len(encoded), self.source_fps, *self._timing(num_frames), rng, where)
      decoded = {}
      try:
        for i in np.unique(chosen):
          decoded[int(i)] = np.asarray(self._frame_feature.decode_example_np(encoded[int(i)]))
      except Exception as e:  # pylint: disable=broad-except
        raise media.SkipExample(
          "corrupt_record", where, f"frame: {type(e).__name__}: {e}"
        ) from None
      frames = np.stack([decoded[int(i)] for i in chosen])
    video = media.fit_frames(_rgb(frames), self.clip.resolution, rng=rng)
    return dict(video=video, caption=caption, key=key, path=where)

  def _timing(self, num_frames: Optional[int]) -> tuple:
    frames = self.clip.num_frames if num_frames is None else int(num_frames)
    return frames, float(self.clip.fps)

  def describe(self) -> str:
    return (
      f"tfds:{self.name}/{self.split} ({self.kind}, {self.num_examples} of {self.total_records} "
      f"records, process {self.process_index}/{self.process_count})"
    )

  def __repr__(self):
    return (
      f"TfdsSource({self.name!r}, kind={self.kind!r}, split={self.split!r}, clip={self.clip}, "
      f"num_examples={self.num_examples}, process={self.process_index}/{self.process_count})"
    )
