"""Hostile input through the public API: every bad argument is a clear error, never a crash.

Property tests (hypothesis) feed the Sampler, the Tokenizer, the TextEncoder, the real-data
sources, the work-directory loaders and the CLIs inputs a user or a dataset may really hold:
prompts of any text or of the wrong type, out-of-range and non-finite sampling options, huge
batches, frames of every dtype, rank and size, codes out of range, random bytes as media and
captions, truncated and damaged shards, a checkpoint of another configuration.

What counts (`attempt`): an input either runs and gives a well-formed result, or is refused
with a ValueError / TypeError whose message names the argument (`media.SkipExample` with a
reason for a bad example of a dataset; FileNotFoundError naming the path for a missing work
directory). Anything else — an exception from deep inside XLA, numpy or a decoder, a message
that names nothing, a hang (pytest-timeout) — is a crash and fails the test. Set
HOSTILE_INPUT_REPORT=path.json to write the tally per category (BENCHMARKS.md, "Reliability").

Compilation dominates on a CPU, so every valid call here reuses the shapes the fixture sampler
already compiles (batch 1, the full 5-step window); invalid inputs must be refused before
anything compiles, which is what keeps these tests fast.
"""

import collections
import io
import json
import os
import shutil
import tarfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phenaki_jax import sample as sample_lib
from phenaki_jax import text as text_lib
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.data import media, sources

import conftest

P = "a red circle moves left"
FRAMES, H, K = 9, 32, 64  # the fixture models: 9 frames of 32², 64 codes, t_p = 2
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

pytestmark = pytest.mark.timeout(300)  # a hang is a failure, not a stuck run

# category -> Counter(tried, clear, ran, crash)
TALLY = collections.defaultdict(collections.Counter)


class Crash(AssertionError):
  pass


def attempt(category: str, fn, *names, clear=(ValueError, TypeError)):
  """Runs `fn()`; returns ('ran', result) or ('clear', exception) and counts it under
  `category`. An exception of another type, or whose message names none of `names` (any of
  them, case-insensitively), is a crash: counted and raised."""
  TALLY[category]["tried"] += 1
  try:
    result = fn()
  except clear as e:
    message = str(e)
    if not message or (names and not any(n.lower() in message.lower() for n in names)):
      TALLY[category]["crash"] += 1
      raise Crash(f"{type(e).__name__} names none of {names}: {message!r}") from e
    TALLY[category]["clear"] += 1
    return "clear", e
  except Exception as e:  # pylint: disable=broad-except
    TALLY[category]["crash"] += 1
    raise Crash(f"crash: {type(e).__name__}: {str(e)[:500]}") from e
  TALLY[category]["ran"] += 1
  return "ran", result


def refused(category: str, fn, *names, clear=(ValueError, TypeError)):
  """`attempt` that must end in a clear error."""
  outcome, value = attempt(category, fn, *names, clear=clear)
  assert outcome == "clear", f"accepted a bad input: {category} gave {type(value).__name__}"
  return value


@pytest.fixture(scope="module", autouse=True)
def report():
  yield
  rows = {k: dict(v) for k, v in sorted(TALLY.items())}
  print("\nhostile input: category: tried / clear errors / ran / crashes")
  for k, v in rows.items():
    print(f"  {k}: {v['tried']} / {v.get('clear', 0)} / {v.get('ran', 0)} / {v.get('crash', 0)}")
  if os.environ.get("HOSTILE_INPUT_REPORT"):
    with open(os.environ["HOSTILE_INPUT_REPORT"], "w") as f:
      json.dump(rows, f, indent=1)


def _is_video(x, frames=FRAMES) -> bool:
  return isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (frames, H, H, 3)


# ---- Sampler: prompts -------------------------------------------------------------------------
def _utf8(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


HOSTILE_TEXT = st.one_of(
  st.text(max_size=40),  # any Unicode, empty included
  st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=20),  # controls, NUL
  st.text(st.characters(categories=["Cs", "Cc", "Zs", "Mn", "So"]), min_size=1, max_size=20),
  st.integers(200, 20000).map(lambda n: "a red circle " * n),  # far beyond max_length tokens
  st.sampled_from(["", " ", "\x00", "\u202e\u200b\ufeff", "🎥 视频 ÄÖÜ", "a\ud800b"]),
)


@settings(max_examples=16, **SETTINGS)
@given(prompt=HOSTILE_TEXT)
@example(prompt="a\ud800b")
@example(prompt="")
def test_any_prompt_text_samples_or_is_refused_clearly(tiny_sampler, prompt):
  """Any text that is Unicode samples a video (an empty prompt is the unconditional one); a
  lone surrogate is refused, naming the caption."""
  outcome, value = attempt(
    "Sampler prompts (text)", lambda: tiny_sampler.generate(prompt), "caption"
  )
  if _utf8(prompt):
    assert outcome == "ran" and _is_video(value), value
  else:
    assert outcome == "clear" and isinstance(value, ValueError)


WRONG_PROMPTS = st.one_of(
  st.integers(),
  st.floats(),
  st.none(),
  st.binary(max_size=10),
  st.just([]),
  st.just(()),
  st.lists(st.one_of(st.integers(), st.none(), st.binary(max_size=4), st.floats()), min_size=1),
  st.lists(st.text(max_size=4), min_size=1, max_size=3).map(lambda p: p + [3]),
  st.lists(st.lists(st.text(max_size=4), min_size=1), min_size=1, max_size=2),
)


@settings(max_examples=20, **SETTINGS)
@given(prompt=WRONG_PROMPTS)
def test_prompt_of_the_wrong_type_is_refused(tiny_sampler, prompt):
  refused("Sampler prompts (type)", lambda: tiny_sampler.generate(prompt), "prompt")


# ---- Sampler: options, lengths, seeds ----------------------------------------------------------
NAN, INF = float("nan"), float("inf")
NOT_A_NUMBER = st.one_of(st.text(max_size=3), st.booleans(), st.none().map(lambda _: [1.0]))
BAD_OPTIONS = st.one_of(
  st.tuples(st.just("steps"), st.one_of(st.integers(max_value=0), st.floats(), NOT_A_NUMBER)),
  st.tuples(st.just("steps"), st.integers(321, 10**12)),  # more steps than tokens: 320
  st.tuples(
    st.sampled_from(["cfg_scale", "continue_cfg_scale", "choice_temperature"]),
    st.one_of(st.floats(max_value=-1e-9), st.sampled_from([NAN, INF, -INF]), NOT_A_NUMBER),
  ),
  st.tuples(
    st.just("temperature"),
    st.one_of(st.floats(max_value=0.0), st.sampled_from([NAN, INF]), NOT_A_NUMBER),
  ),
  st.tuples(
    st.just("temperature_decay"),
    st.one_of(
      st.floats(max_value=-1e-9),
      st.floats(min_value=1.0, exclude_min=True),
      st.sampled_from([NAN, INF]),
      NOT_A_NUMBER,
    ),
  ),
  st.tuples(
    st.just("top_k"),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=K + 1), st.floats()),
  ),
  st.tuples(
    st.just("top_p"),
    st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(NAN)),
  ),
  st.tuples(
    st.just("cfg_support"),
    st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(NAN)),
  ),
  st.tuples(
    st.sampled_from(["continue_candidates", "candidates", "score_chunks"]),
    st.one_of(st.integers(max_value=0), st.floats()),
  ),
  st.tuples(
    st.sampled_from(["restrict_codes", "continue_stepwise"]),
    st.one_of(st.text(max_size=3), st.integers(), st.floats()),
  ),
  st.tuples(st.sampled_from(["cfg_scal", "temprature", "topk", "seeds"]), st.integers()),
)


@settings(max_examples=40, **SETTINGS)
@given(option=BAD_OPTIONS)
def test_bad_sampling_options_are_refused_naming_the_option(tiny_sampler, option):
  name, value = option
  start = time.perf_counter()
  refused("Sampler options", lambda: tiny_sampler.generate(P, **{name: value}), name)
  assert time.perf_counter() - start < 5.0  # refused before any compilation


BAD_COUNTS = st.one_of(
  st.integers(max_value=0),
  st.integers(min_value=FRAMES + 1),
  st.floats(),
  st.text(max_size=3),
  st.booleans(),
)
BAD_SEEDS = st.one_of(
  st.integers(max_value=-1), st.integers(min_value=2**32), st.floats(), NOT_A_NUMBER
)


@settings(max_examples=40, **SETTINGS)
@given(
  which=st.sampled_from(["generate", "image_to_video", "continue_video", "story"]),
  count=BAD_COUNTS,
)
def test_bad_frame_counts_are_refused(tiny_sampler, which, count):
  s, image = tiny_sampler, np.zeros((H, H, 3), np.uint8)
  video = np.zeros((FRAMES, H, H, 3), np.uint8)
  if which == "generate":
    refused("Sampler lengths", lambda: s.generate(P, num_frames=count), "num_frames", "frames")
  elif which == "image_to_video":
    refused("Sampler lengths", lambda: s.image_to_video(image, P, num_frames=count), "num_frames")
  elif which == "continue_video":
    refused(
      "Sampler lengths",
      lambda: s.continue_video(video, P, count),
      "num_new_frames",
      "new frames",
    )
  else:
    refused(
      "Sampler lengths",
      lambda: s.story([P, P], frames_per_prompt=count),
      "frames_per_prompt",
      "time steps",
    )


@settings(max_examples=15, **SETTINGS)
@given(which=st.sampled_from(["generate", "continue_video", "story"]), seed=BAD_SEEDS)
def test_bad_seeds_are_refused(tiny_sampler, which, seed):
  s, video = tiny_sampler, np.zeros((FRAMES, H, H, 3), np.uint8)
  call = {
    "generate": lambda: s.generate(P, seed=seed),
    "continue_video": lambda: s.continue_video(video, P, 4, seed=seed),
    "story": lambda: s.story([P, P], seed=seed),
  }[which]
  refused("Sampler seeds", call, "seed")


def test_a_story_refuses_seeds_whose_segments_pass_32_bits(tiny_sampler):
  """Segment i draws from seed + i: the last segment's seed must still be below 2**32."""
  refused("Sampler seeds", lambda: tiny_sampler.story([P, P, P], seed=2**32 - 2), "seed + 2")


@settings(max_examples=12, **SETTINGS)
@given(context=st.one_of(st.integers(-5, 20).filter(lambda c: c < 1 or c % 2 == 0), st.floats()))
def test_bad_context_frames_are_refused(tiny_sampler, context):
  video = np.zeros((FRAMES, H, H, 3), np.uint8)
  refused(
    "Sampler lengths",
    lambda: tiny_sampler.continue_video(video, P, 2, context_frames=context),
    "context_frames",
  )


@settings(max_examples=8, **SETTINGS)
@given(prompts=st.integers(10**5, 10**6), candidates=st.integers(10**5, 10**12))
def test_huge_batches_fail_fast_before_allocating(tiny_sampler, prompts, candidates):
  video = np.zeros((FRAMES, H, H, 3), np.uint8)
  start = time.perf_counter()
  refused("Sampler huge batches", lambda: tiny_sampler.generate([P] * prompts), "at most")
  refused(
    "Sampler huge batches",
    lambda: tiny_sampler.continue_video(video, P, 4, continue_candidates=candidates),
    "at most",
  )
  assert time.perf_counter() - start < 5.0


def test_the_batch_bound_follows_the_device_memory(tiny_sampler, monkeypatch):
  """Under a memory budget of 1.5 videos one video samples and two are refused, naming 1."""
  s = tiny_sampler
  one = s._bytes_per_video(s.model.grid[0], guided=True)
  monkeypatch.setenv(sample_lib.MEMORY_ENV, str(int(one * 1.5)))
  assert _is_video(s.generate(P))
  error = refused("Sampler huge batches", lambda: s.generate([P, P]), "at most 1 per call")
  assert "2 videos" in str(error)


# ---- Sampler and Tokenizer: frames -------------------------------------------------------------
def _frames_of(kind: str, shape: tuple, rng: np.random.Generator):
  if kind == "float01":
    return rng.random(shape, np.float32)
  if kind == "float255":
    return rng.random(shape) * 255.0
  if kind == "nan":
    return np.full(shape, np.nan, np.float32)
  if kind == "int64":
    return rng.integers(0, 256, shape)
  if kind == "bool":
    return rng.random(shape) > 0.5
  if kind == "uint16":
    return rng.integers(0, 65536, shape).astype(np.uint16)
  if kind == "list":
    return rng.integers(0, 256, shape).tolist()
  if kind == "object":
    return np.full(shape, None, object)
  return rng.integers(0, 256, shape).astype(np.uint8)


BAD_DTYPES = ["float01", "float255", "nan", "int64", "bool", "uint16", "list", "object"]


@pytest.mark.parametrize("api", ["continue_video", "image_to_video", "encode"])
@settings(max_examples=20, **SETTINGS)
@given(
  dtype=st.sampled_from(BAD_DTYPES + ["uint8"] * 4),
  frames=st.integers(0, 12),
  height=st.integers(0, 40),
  width=st.integers(0, 40),
  channels=st.sampled_from([3, 3, 3, 1, 4, 0]),
  extra_rank=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_frames_of_any_dtype_shape_and_size(
  tiny_sampler, api, dtype, frames, height, width, channels, extra_rank
):
  """uint8 RGB frames of any size ≥ 1×1 are fitted and run; any other dtype, a channel count
  other than 3, an empty frame, the wrong rank, or too few frames is refused naming it."""
  s = tiny_sampler
  rng = np.random.default_rng(frames * 1000 + height * 40 + width)
  if api == "image_to_video":
    shape = (height, width, channels)
  elif api == "encode":  # frame counts that compile: 1 (image-to-video) and 5 (the context)
    shape = (1, frames if frames not in (3, 7, 9, 11) else 5, height, width, channels)
  else:
    shape = (frames, height, width, channels)
  shape = shape[1:] if extra_rank < 0 else (1,) * extra_rank + shape
  x = _frames_of(dtype, shape, rng)
  call = {
    "continue_video": lambda: s.continue_video(x, P, 4),
    "image_to_video": lambda: s.image_to_video(x, P),
    "encode": lambda: s.tokenizer.encode(x),
  }[api]
  names = ("video", "image", "frames", "shape", "dtype", "context_frames", "C-ViViT")
  outcome, value = attempt(f"frames: {api}", call, *names)
  ndim = len(shape)
  good_rank = {"continue_video": (4, 5), "image_to_video": (3, 4), "encode": (5,)}[api]
  good = dtype == "uint8" and channels == 3 and min(height, width) >= 1 and ndim in good_rank
  if api == "continue_video":
    good = good and (shape[-4] >= 5) and (ndim == 4 or shape[0] >= 1)
  if api == "image_to_video":
    good = good and (ndim == 3 or shape[0] >= 1)
  if api == "encode":
    good = good and shape[1] in (1, 5) and shape[0] >= 1
  assert (outcome == "ran") == good, (outcome, value)
  if outcome == "ran" and api != "encode":
    assert value.dtype == np.uint8 and value.shape[-3:] == (H, H, 3)


@settings(max_examples=8, **SETTINGS)
@given(frames=st.integers(5, 12), height=st.integers(1, 48), width=st.integers(1, 48))
def test_uint8_frames_of_any_size_are_fitted_and_continued(tiny_sampler, frames, height, width):
  """The valid corner of the space above, sampled on its own: odd sizes down to 1×1."""
  video = np.random.default_rng(height * 64 + width).integers(0, 256, (frames, height, width, 3))
  outcome, out = attempt(
    "frames: continue_video", lambda: tiny_sampler.continue_video(video.astype(np.uint8), P, 4)
  )
  assert outcome == "ran" and out.shape == (frames + 4, H, H, 3) and out.dtype == np.uint8


@settings(max_examples=25, **SETTINGS)
@given(
  case=st.sampled_from(
    ["negative", "too_big", "huge", "float", "bool", "object", "rank", "no_time", "too_long"]
  ),
  value=st.integers(1, 2**62),
)
def test_bad_codes_are_refused_before_decoding(tiny_sampler, case, value):
  tok = tiny_sampler.tokenizer
  codes = np.zeros((1, 5, 8, 8), np.int64)
  if case == "negative":
    codes[0, 0, 0, 0] = -value
  elif case == "too_big":
    codes[0, -1, -1, -1] = K + value % 1000
  elif case == "huge":
    codes = [[[[value * 4] * 8] * 8] * 5]
  elif case == "float":
    codes = codes.astype(np.float32)
  elif case == "bool":
    codes = codes.astype(bool)
  elif case == "object":
    codes = codes.astype(object)
  elif case == "rank":
    codes = codes[0]
  elif case == "no_time":
    codes = codes[:, :0]
  else:
    codes = np.zeros((1, 10 + value % 5, 8, 8), np.int32)
  refused("Tokenizer.decode codes", lambda: tok.decode(codes), "codes")


def test_valid_codes_decode(tiny_sampler):
  """The check above refuses only what is wrong: every code of the codebook decodes."""
  codes = np.arange(5 * 64).reshape(1, 5, 8, 8) % K
  outcome, video = attempt("Tokenizer.decode codes", lambda: tiny_sampler.tokenizer.decode(codes))
  assert outcome == "ran" and np.asarray(video).shape == (1, FRAMES, H, H, 3)


# ---- TextEncoder -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder():
  return text_lib.TextEncoder.from_config(text_lib.default_config())


@settings(max_examples=20, **SETTINGS)
@given(captions=st.lists(HOSTILE_TEXT, max_size=4))
def test_text_encoder_takes_any_unicode_and_names_what_is_not(encoder, captions):
  outcome, value = attempt("TextEncoder.encode", lambda: encoder.encode(captions), "caption")
  if all(_utf8(c) for c in captions):
    assert outcome == "ran", value
    tokens, mask = value
    assert tokens.shape == (len(captions), encoder.max_length, encoder.dim)
    assert np.isfinite(tokens).all() and mask.shape == tokens.shape[:2]
    assert all(mask[i].sum() >= 2 for i in range(len(captions)))  # [CLS] … [SEP] at least
    for i, c in enumerate(captions):
      if len(c) > 1000:  # cut to max_length tokens, not failed
        assert mask[i].all()
  else:
    bad = next(i for i, c in enumerate(captions) if not _utf8(c))
    assert isinstance(value, ValueError) and f"caption {bad}" in str(value)


@settings(max_examples=12, **SETTINGS)
@given(
  captions=st.one_of(
    st.text(max_size=5),
    st.binary(max_size=5),
    st.none(),
    st.integers(),
    st.lists(st.one_of(st.binary(max_size=3), st.integers(), st.none()), min_size=1, max_size=3),
  )
)
def test_text_encoder_refuses_what_is_not_a_list_of_str(encoder, captions):
  refused("TextEncoder.encode", lambda: encoder.encode(captions), "caption")


def test_text_encoder_reads_a_generator_once(encoder):
  """A generator of captions is a list of captions (not consumed by the type check)."""
  outcome, (tokens, _) = attempt("TextEncoder.encode", lambda: encoder.encode(c for c in [P, P]))
  assert outcome == "ran" and tokens.shape[0] == 2


# ---- Data: webdataset shards of hostile bytes --------------------------------------------------
CLIP = media.ClipSpec(num_frames=3, fps=8.0, resolution=16)


def _mp4(frames: int = 8) -> bytes:
  """An 8 fps H.264 clip of `frames` 32×24 frames (1 s)."""
  import av  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    for j in range(frames):
      image = np.full((24, 32, 3), 20 * j, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buffer.getvalue()


def _png() -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def good_media():
  return {"video": _mp4(), "image": _png()}


def _tar(path, members) -> str:
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size, info.mtime = len(data), 1700000000
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def _damaged(good: bytes, data) -> bytes:
  """`good` with random bytes overwritten, cut short, or behind a plausible header."""
  how = data.draw(st.sampled_from(["flip", "cut", "prefix"]))
  if how == "cut":
    return good[: data.draw(st.integers(0, len(good)))]
  if how == "prefix":
    return good[:32] + data.draw(st.binary(max_size=600))
  out = bytearray(good)
  for _ in range(data.draw(st.integers(1, 20))):
    out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
  return bytes(out)


HEADERS = [
  b"",
  b"\x00\x00\x00\x18ftypmp42",
  b"\x1aE\xdf\xa3",  # Matroska / WebM
  b"RIFF\x00\x00\x00\x00AVI ",
  b"\x89PNG\r\n\x1a\n",
  b"\xff\xd8\xff\xe0",
  b"GIF89a\xff\x7f\xff\x7f",
  b"P6\n99999 99999\n255\n",  # a bomb-sized PPM
  b"RIFF\x00\x00\x00\x00WEBPVP8 ",
]
CAPTIONS = st.one_of(
  st.binary(max_size=64),  # invalid UTF-8 too
  st.sampled_from([b"", b"\x00\x00", b"\xff\xfe\xfd", b"   \n\t", b"\xed\xa0\x80 lone surrogate"]),
  st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
JSON_CAPTIONS = st.one_of(
  st.none(),
  st.binary(max_size=64),
  st.sampled_from([b"[" * 50000, b'{"caption": ' * 20000, b"null", b"[1, 2]", b'{"caption": 5}']),
  st.text(max_size=30).map(lambda t: json.dumps({"caption": t}).encode()),
)
SKIP_REASONS = {
  "corrupt_video",
  "corrupt_image",
  "too_short",
  "no_video_stream",
  "empty_caption",
  "corrupt_caption",
  "read_error",
  "missing_file",
}


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_hostile_bytes_in_a_shard_are_skipped_with_a_reason(good_media, tmp_path_factory, data):
  """A sample of random or damaged media, caption and .json bytes is an example or a counted
  skip (`media.SkipExample` with a known reason), never another exception."""
  kind = data.draw(st.sampled_from(["video", "image"]))
  ext = data.draw(
    st.sampled_from(["mp4", "webm", "avi"] if kind == "video" else ["jpg", "png", "webp"])
  )
  if data.draw(st.booleans()):
    payload = data.draw(st.sampled_from(HEADERS)) + data.draw(st.binary(max_size=2000))
  else:
    payload = _damaged(good_media[kind], data)
  members = [(f"bad.{ext}", payload)]
  caption = data.draw(st.one_of(st.none(), CAPTIONS))
  if caption is not None:
    members.append(("bad.txt", caption))
  meta = data.draw(JSON_CAPTIONS)
  if meta is not None:
    members.append(("bad.json", meta))
  good_ext = "mp4" if kind == "video" else "png"
  members += [(f"good.{good_ext}", good_media[kind]), ("good.txt", b"a good sample")]
  root = tmp_path_factory.mktemp("shard")
  shard = _tar(root / "s.tar", members)
  source = sources.WebDatasetSource(shard, kind=kind, clip=CLIP)
  assert source.num_examples == 2
  for index in range(2):
    outcome, value = attempt(
      f"data: {kind} shard bytes", lambda: source.example(index), clear=(media.SkipExample,)
    )
    if outcome == "clear":
      assert value.reason in SKIP_REASONS and index == 0, value
    else:
      frames = 1 if kind == "image" else CLIP.num_frames
      assert value["video"].shape == (frames, 16, 16, 3) and value["video"].dtype == np.uint8
      assert isinstance(value["caption"], str) and value["caption"].strip()
  shutil.rmtree(root)


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_truncated_or_garbled_shards_keep_their_whole_samples(good_media, tmp_path_factory, data):
  """A shard cut at any byte or with random bytes written over it never fails the source: its
  complete samples before the damage are kept and the damage is counted; a source whose only
  shard holds nothing usable is refused at construction, naming the shard."""
  root = tmp_path_factory.mktemp("tars")
  members = []
  for i in range(3):
    members += [(f"k{i}.mp4", good_media["video"]), (f"k{i}.txt", f"clip {i}".encode())]
  whole = open(_tar(root / "whole.tar", members), "rb").read()
  if data.draw(st.booleans()):
    damaged = whole[: data.draw(st.integers(0, len(whole) - 1))]
  else:
    damaged = bytearray(whole)
    start = data.draw(st.integers(0, len(whole) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=1024))
    damaged[start : start + len(junk)] = junk
    damaged = bytes(damaged)
  (root / "d.tar").write_bytes(damaged)
  with_good = data.draw(st.booleans())
  shards = [str(root / "d.tar")] + ([str(root / "whole.tar")] if with_good else [])
  outcome, source = attempt(
    "data: damaged tar", lambda: sources.WebDatasetSource(shards, kind="video", clip=CLIP), "shard"
  )
  if outcome == "clear":
    assert not with_good and "d.tar" in str(source)
  else:
    assert source.num_examples >= (3 if with_good else 1)
    for i in range(source.num_examples):
      out, value = attempt(
        "data: damaged tar", lambda: source.example(i), clear=(media.SkipExample,)
      )
      assert out == "ran" or value.reason in SKIP_REASONS
  shutil.rmtree(root)


@settings(max_examples=12, **SETTINGS)
@given(caption=CAPTIONS, duration=st.one_of(st.binary(max_size=8), st.just(b"PT00H00M02S")))
def test_index_rows_of_hostile_bytes_are_skipped_with_a_reason(
  good_media, tmp_path_factory, caption, duration
):
  """A WebVid-style CSV whose caption or duration cells hold any bytes (invalid UTF-8 included)
  is read; each such row is an example or a counted skip."""
  root = tmp_path_factory.mktemp("index")
  (root / "v").mkdir()
  (root / "v" / "1.mp4").write_bytes(good_media["video"])
  clean = lambda b: b.replace(b'"', b"").replace(b"\n", b" ").replace(b"\r", b" ")
  lines = [b"videoid,page_dir,duration,name", b'1,v,PT00H00M02S,"a good clip"']
  lines.append(b'1,v,"' + clean(duration) + b'","' + clean(caption) + b'"')
  (root / "i.csv").write_bytes(b"\n".join(lines) + b"\n")
  outcome, source = attempt(
    "data: index cells",
    lambda: sources.IndexSource(str(root / "i.csv"), str(root), clip=CLIP),
    "index",
  )
  assert outcome == "ran", source
  for i in range(source.num_examples):
    out, value = attempt("data: index cells", lambda: source.example(i), clear=(media.SkipExample,))
    assert (out == "ran" and value["caption"]) or value.reason in SKIP_REASONS
  shutil.rmtree(root)


# ---- Work directories of another run or config -------------------------------------------------
def _edited_copy(workdir, tmp_path, name, edit):
  out = tmp_path / name
  shutil.copytree(workdir, out, ignore=shutil.ignore_patterns("text_cache", "eval", "*.jsonl"))
  config = json.loads((out / "config.json").read_text())
  edit(config)
  (out / "config.json").write_text(json.dumps(config))
  return str(out)


def test_work_directories_of_another_run_are_refused_clearly(
  tiny_cvivit_dir, tiny_maskgit_dir, tmp_path
):
  cat = "work directories"
  Tok, Sampler = tokenizer_lib.Tokenizer, sample_lib.Sampler
  refused(cat, lambda: Tok.from_workdir(tiny_maskgit_dir), "not a C-ViViT")
  refused(cat, lambda: Sampler.from_workdirs(tiny_cvivit_dir, tiny_cvivit_dir), "not a MaskGIT")
  refused(cat, lambda: Sampler.from_workdirs(tiny_maskgit_dir, tiny_maskgit_dir), "not a C-ViViT")
  refused(cat, lambda: Tok.from_workdir(tiny_cvivit_dir, step="30"), "step")
  refused(cat, lambda: Tok.from_workdir(None), "work directory")
  missing = str(tmp_path / "nothing")
  refused(cat, lambda: Tok.from_workdir(missing), "config.json", clear=(FileNotFoundError,))
  (tmp_path / "garbled").mkdir()
  (tmp_path / "garbled" / "config.json").write_bytes(b'{"trainer": "cvi\xff')
  refused(cat, lambda: Tok.from_workdir(str(tmp_path / "garbled")), "config.json")
  (tmp_path / "list").mkdir()
  (tmp_path / "list" / "config.json").write_text("[1, 2]")
  refused(cat, lambda: Tok.from_workdir(str(tmp_path / "list")), "config.json")
  # A config.json edited away from its checkpoint: the message is short and names the config.
  wider = _edited_copy(
    tiny_cvivit_dir, tmp_path, "wider", lambda c: c["model"].update(codebook_size=128)
  )
  error = refused(cat, lambda: Tok.from_workdir(wider), "does not fit", "config.json")
  assert "(128, " in str(error) and len(str(error)) < 1000
  # A MaskGIT trained on another tokenizer's grid (this one's clips are 5 frames, not 9).
  shorter = _edited_copy(
    tiny_cvivit_dir, tmp_path, "shorter", lambda c: c["data"].update(num_frames=5)
  )
  error = refused(cat, lambda: Sampler.from_workdirs(shorter, tiny_maskgit_dir), "does not fit")
  assert "another tokenizer" in str(error) and len(str(error)) < 1000


# ---- CLIs --------------------------------------------------------------------------------------
def test_cli_bad_sampling_option_exits_naming_it(tiny_cvivit_dir, tiny_maskgit_dir, tmp_path):
  TALLY["CLIs"]["tried"] += 1
  proc = conftest.run_module(
    "phenaki_jax.sample",
    f"--tokenizer_dir={tiny_cvivit_dir}",
    f"--maskgit_dir={tiny_maskgit_dir}",
    f"--prompt={P}",
    "--cfg_scale=nan",
    f"--out={tmp_path / 'out'}",
  )
  ok = proc.returncode != 0 and "cfg_scale must be finite" in proc.stderr
  TALLY["CLIs"]["clear" if ok else "crash"] += 1
  assert ok, proc.stderr[-3000:]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
  "args, named",
  [
    (["--config=configs/maskgit_b.py:tiny", "--config.data.batch_sise=4"], "batch_sise"),
    (["--config=configs/maskgit_b.py:tiny", "--config.data.batch_size=four"], "batch_size"),
  ],
)
def test_cli_bad_config_flags_exit_naming_the_key(tmp_path, args, named):
  TALLY["CLIs"]["tried"] += 1
  proc = conftest.run_module(
    "phenaki_jax.tokenize", *args, f"--out={tmp_path / 'tok'}", timeout=120
  )
  ok = proc.returncode != 0 and named in proc.stderr
  TALLY["CLIs"]["clear" if ok else "crash"] += 1
  assert ok, proc.stderr[-3000:]


def test_nothing_crashed():
  """The tally (run last in this module) holds no crash; what a crash was is in its test."""
  assert sum(v["tried"] for v in TALLY.values()) > 0
  assert not [k for k, v in TALLY.items() if v["crash"]], dict(TALLY)
  assert all(v["tried"] == v["clear"] + v["ran"] + v["crash"] for v in TALLY.values())
