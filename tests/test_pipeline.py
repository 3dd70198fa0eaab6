"""The step-indexed batch pipeline (resume-exact, rates, host slicing) and the seqio tasks."""

import subprocess
import sys

import numpy as np
import pytest

from phenaki_jax.data import media, pipeline
from phenaki_jax.data import shapes
from phenaki_jax.data import tasks

SPEC = shapes.ShapesSpec()


def _equal(a, b):
  return (
    np.array_equal(a["video"], b["video"])
    and np.array_equal(a["caption"], b["caption"])
    and np.array_equal(a["is_image"], b["is_image"])
  )


def test_batch_contents():
  batches = pipeline.Batches("shapes_mix", 32, seed=1)
  batch = batches.batch(0)
  assert batch["video"].shape == (32, 9, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert batch["caption"].shape == (32,) and batch["is_image"].dtype == np.bool_
  assert {k: v[0] for k, v in batches.shapes.items()} == {
    "video": (32, 9, 32, 32, 3),
    "caption": (32,),
    "is_image": (32,),
    "context_frames": (32,),
  }
  assert 0 < batch["is_image"].sum() < 32
  assert batch["context_frames"].dtype == np.int32 and not batch["context_frames"].any()
  for video, caption, is_image in zip(batch["video"], batch["caption"], batch["is_image"]):
    color, shape, direction = shapes.parse_caption(caption)
    assert (direction is None) == is_image
    if is_image:  # a 1-frame image padded with black frames
      assert video[0].max() > 0 and video[1:].max() == 0
    else:
      assert (color, shape, direction) in shapes.train_triples(SPEC)
      assert video.max(axis=(1, 2, 3)).min() > 0


def test_static_images():
  """static_images=True: the same draws, each image repeated over every frame and not flagged."""
  batches = pipeline.Batches("shapes_mix", 32, seed=1, static_images=True)
  padded = pipeline.Batches("shapes_mix", 32, seed=1).batch(0)
  static = batches.batch(0)
  assert not static["is_image"].any() and np.array_equal(static["caption"], padded["caption"])
  images = padded["is_image"]
  assert images.sum() > 0
  np.testing.assert_array_equal(static["video"][~images], padded["video"][~images])
  repeated = np.repeat(padded["video"][images][:, :1], 9, axis=1)  # [N, 9, H, W, 3]
  np.testing.assert_array_equal(static["video"][images], repeated)
  # Over a few steps the static clips show the image-only colour at every frame.
  orange = [
    b["video"][row]
    for b in map(batches.batch, range(8))
    for row, c in enumerate(b["caption"])
    if shapes.parse_caption(c)[0] == "orange"
  ]
  assert orange
  color = np.array(shapes.PALETTE["orange"], np.uint8)
  for clip in orange:  # [9, H, W, 3]
    assert np.all(clip == color, axis=-1).any(axis=(1, 2)).all()


def test_pure_function_of_seed_and_step():
  a = pipeline.Batches("shapes_mix", 8, seed=5)
  b = pipeline.Batches("shapes_mix", 8, seed=5)
  assert _equal(a.batch(3), b.batch(3)) and _equal(a.batch(3), a.batch(3))
  assert not _equal(a.batch(3), a.batch(4))
  assert not _equal(a.batch(3), pipeline.Batches("shapes_mix", 8, seed=6).batch(3))


def test_resume_is_exact():
  batches = pipeline.Batches("shapes_mix", 8, seed=2, prefetch=3, num_threads=2)
  uninterrupted = list(batches.iterate(0, num_steps=7))
  assert [s for s, _ in uninterrupted] == list(range(7))
  # "Kill" after step 3 (close the generator mid-prefetch) and resume at 4 in a new pipeline.
  first = batches.iterate(0)
  for step, _ in first:
    if step == 3:
      break
  first.close()
  resumed = list(pipeline.Batches("shapes_mix", 8, seed=2).iterate(4, num_steps=3))
  assert [s for s, _ in resumed] == [4, 5, 6]
  for (s1, b1), (s2, b2) in zip(uninterrupted[4:], resumed):
    assert s1 == s2 and _equal(b1, b2)


def test_processes_read_their_own_rows():
  """Each process's rows are a pure function of (seed, step, process); processes never render
  the same procedural example (they read different positions of one global stream)."""
  parts = [
    pipeline.Batches("shapes_mix", 12, seed=9, process_index=p, process_count=3).batch(5)
    for p in range(3)
  ]
  assert all(p["video"].shape[0] == 4 for p in parts)
  again = pipeline.Batches("shapes_mix", 12, seed=9, process_index=1, process_count=3).batch(5)
  assert _equal(parts[1], again)
  videos = [v.tobytes() for p in parts for v, im in zip(p["video"], p["is_image"]) if not im]
  assert len(set(videos)) == len(videos)
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.Batches("shapes_mix", 10, process_count=3)


def _old_single_process_row(batches, step, row):
  """Row `row` of a 1-process batch at `step`, derived from first principles: stream position
  step·B + row; its source from the period's seeded shuffle of the quotas; the source's ordinal
  = its draws in earlier periods plus its earlier slots in this one; example number = ordinal."""
  position = step * batches.global_batch_size + row
  period, offset = divmod(position, pipeline.PERIOD)
  order = np.repeat(np.arange(len(batches.sources)), batches.quotas)
  order = np.random.default_rng([batches.seed, 0, period]).permutation(order)
  source = int(order[offset])
  k = period * int(batches.quotas[source]) + int(np.sum(order[:offset] == source))
  frames = None if batches.is_image[source] else batches.num_frames
  return source, batches.sources[source].example(k, num_frames=frames)


def test_one_process_stream_is_position_step_times_batch_plus_row():
  """One process reads positions step·B + row and renders a Shapes source's k-th draw as its
  example k: the stream every published single-process figure was trained on."""
  batches = pipeline.Batches("shapes_mix", 8, seed=1)
  assert batches.global_stream
  for step in (0, 1, 511, 512):  # 512·8 = PERIOD: the second period starts at step 512
    batch = batches.batch(step)
    for row in (0, 3, 7):
      source, example = _old_single_process_row(batches, step, row)
      assert batch["caption"][row] == example["caption"]
      assert batch["is_image"][row] == batches.is_image[source]
      frames = example["video"]
      np.testing.assert_array_equal(batch["video"][row, : len(frames)], frames)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_rows_make_the_one_process_global_batch(process_count):
  """With only procedural sources, the processes' rows concatenated in process order are the
  1-process run's global batch at every step (also across a period boundary): training data
  does not depend on the process count."""
  name = "shapes_mix"
  whole = pipeline.Batches(name, 8, seed=4)
  parts = [
    pipeline.Batches(name, 8, seed=4, process_index=p, process_count=process_count)
    for p in range(process_count)
  ]
  assert all(part.global_stream for part in parts)
  for step in (0, 1, 2, 511, 512):
    expected = whole.batch(step)
    rows = [part.batch(step) for part in parts]
    assert all(len(r["caption"]) == 8 // process_count for r in rows)
    for key in ("video", "caption", "is_image", "context_frames"):
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), expected[key])
  # Not trivially equal: the steps differ, and a process's rows differ from its neighbour's.
  assert not _equal(whole.batch(0), whole.batch(1))
  assert not np.array_equal(parts[0].batch(0)["video"], parts[1].batch(0)["video"])


@pytest.mark.parametrize("video_rate,image_rate", [(0.8, 0.2), (0.5, 0.5), (1.0, 0.0)])
def test_mixture_rates(video_rate, image_rate):
  name = tasks.register_shapes_mixture(f"test_mix_{int(video_rate * 100)}", video_rate, image_rate)
  batches = pipeline.Batches(name, 16, seed=0)
  # Source choice over 6400 slots (no rendering): binomial standard error <= 0.00625.
  images = np.mean(
    [batches.is_image[batches.slot(step, s)[0]] for step in range(400) for s in range(16)]
  )
  assert abs(images - image_rate) < 0.03, (name, images)
  # The rendered batches agree with the slot draws.
  rendered = np.mean([batches.batch(step)["is_image"] for step in range(20)])
  assert abs(rendered - image_rate) < 0.12


def test_video_only_and_explicit_sources():
  batches = pipeline.Batches("shapes_mix", 16, seed=0, video_only=True)
  assert not batches.batch(0)["is_image"].any()
  custom = pipeline.Batches(
    [("shapes_video", 1.0), (tasks.ShapesSource(SPEC, 0, "image"), 1.0)], 16, seed=0, num_frames=5
  )
  batch = custom.batch(0)
  assert batch["video"].shape == (16, 5, 32, 32, 3) and 0 < batch["is_image"].sum() < 16
  with pytest.raises(ValueError, match="Unknown task or mixture"):
    pipeline.Batches("no_such_mixture", 4)
  with pytest.raises(ValueError, match="no video source"):
    pipeline.Batches("shapes_image", 4, video_only=True)


def test_pipeline_does_not_import_tensorflow():
  code = (
    "import sys; from phenaki_jax.data import pipeline; "
    'pipeline.Batches("shapes_mix", 4).batch(0); '
    'assert "tensorflow" not in sys.modules and "seqio" not in sys.modules'
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_seqio_mixture_yields_examples():
  """The only test that imports TensorFlow/seqio."""
  import seqio  # a core requirement; imported here as it imports TensorFlow

  tasks.register_seqio()
  mixture = seqio.get_mixture_or_task("shapes_mix")
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
    "shapes_video": 0.8,
    "shapes_image": 0.2,
  }
  dataset = mixture.get_dataset(None, split="train", shuffle=False, seed=0)
  examples = list(dataset.take(12).as_numpy_iterator())
  assert len(examples) == 12
  for ex in examples:
    caption = ex["caption"].decode()
    assert ex["video"].dtype == np.uint8
    assert ex["video"].shape == ((1 if ex["is_image"] else 9), 32, 32, 3)
    assert (shapes.parse_caption(caption)[2] is None) == ex["is_image"]
  # The seqio source offers the same examples by random access.
  task = seqio.get_mixture_or_task("shapes_video_heldout")
  first = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  again = task.source.example(0, split="validation")
  assert first["caption"].decode() == again["caption"]
  np.testing.assert_array_equal(first["video"], again["video"])
  assert shapes.parse_caption(again["caption"]) in SPEC.heldout_triples
  # Mixtures registered after seqio was imported reach seqio directly.
  tasks.register_shapes_mixture("test_seqio_mix_50", 0.5, 0.5)
  assert "test_seqio_mix_50" in seqio.MixtureRegistry.names()


# ---- Finite sources (files): epochs, host shards, skips ----------------------------------------
class ListSource:
  """A finite in-memory source: example i is a 3-frame clip filled with i; those in `bad`
  raise media.SkipExample with their reason (how a corrupt file reaches the pipeline)."""

  is_image = False

  def __init__(self, num_examples: int, bad=None, offset: int = 0, size: int = 4):
    self.num_examples, self.bad, self.offset = num_examples, dict(bad or {}), offset
    self.size = size
    self.calls = []

  def describe(self) -> str:
    return f"ListSource({self.num_examples})"

  def example(self, index, num_frames=None, rng=None):
    self.calls.append((index, rng))
    if index in self.bad:
      raise media.SkipExample(self.bad[index], f"clip{index + self.offset}.mp4", "made bad")
    frames = num_frames or 3
    shift = 0 if rng is None else int(rng.integers(100))  # stands for a random crop
    video = np.full((frames, self.size, self.size, 3), index + self.offset, np.uint8)
    video[:, 0, 0, 0] = shift
    return dict(video=video, caption=f"clip {index + self.offset}")


def _captions(batches, steps):
  return [c for s in range(steps) for c in batches.batch(s)["caption"]]


def test_finite_source_serves_every_example_once_per_epoch():
  batches = pipeline.Batches([(ListSource(24), 1.0)], 8, seed=3)
  seen = _captions(batches, 9)  # 72 draws = 3 epochs of 24
  for epoch in range(3):
    assert sorted(seen[24 * epoch : 24 * (epoch + 1)]) == sorted(f"clip {i}" for i in range(24))
  assert seen[:24] != seen[24:48]  # each epoch in its own order
  assert seen[:24] != [f"clip {i}" for i in range(24)]  # shuffled


def test_two_processes_cover_their_disjoint_halves():
  """Process p holds its own shards (a source over half the files): together one epoch covers
  every example exactly once."""
  halves = [ListSource(12, offset=0), ListSource(12, offset=12)]
  seen = []
  for p in range(2):
    batches = pipeline.Batches([(halves[p], 1.0)], 8, seed=0, process_index=p, process_count=2)
    seen += _captions(batches, 3)  # 12 rows per process
  assert sorted(seen) == sorted(f"clip {i}" for i in range(24))


def test_a_mixture_with_a_finite_source_keeps_per_process_streams():
  """Files (finite sources) are split by host, so such a mixture reads each process's own
  stream (position step·B_local + row), and its procedural rows render k·P + p."""
  size, frames = tasks.DEFAULT_SPEC.resolution, tasks.DEFAULT_SPEC.num_frames
  shapes_source = tasks.get_sources("shapes_video")[0][0]
  mixture = [(ListSource(50, size=size), 0.25), (shapes_source, 0.75)]
  alone = pipeline.Batches(mixture, 4, seed=1, num_frames=frames)
  second = pipeline.Batches(mixture, 8, seed=1, num_frames=frames, process_index=1, process_count=2)
  assert not second.global_stream and not alone.global_stream
  checked = 0
  for step in range(3):
    batch = second.batch(step)
    for row in range(4):
      source, k = second.slot(step, row)
      assert (source, k) == alone.slot(step, row)  # the same per-process positions
      if source == 1:
        expected = shapes_source.example(2 * k + 1, num_frames=frames)
        assert batch["caption"][row] == expected["caption"]
        np.testing.assert_array_equal(batch["video"][row], expected["video"])
        checked += 1
  assert checked > 0


def test_mixture_of_finite_and_procedural_sources_keeps_rates_and_epochs():
  source = ListSource(50, size=tasks.DEFAULT_SPEC.resolution)
  batches = pipeline.Batches(
    [(source, 0.25), ("shapes_video", 0.75)], 16, seed=1, num_frames=tasks.DEFAULT_SPEC.num_frames
  )
  kinds = [batches.slot(step, row)[0] for step in range(256) for row in range(16)]  # 1 period
  assert np.mean(np.array(kinds) == 0) == pytest.approx(0.25, abs=1e-3)
  seen = [c for c in _captions(batches, 25) if c.startswith("clip")]
  assert len(seen) >= 50 and sorted(seen[:50]) == sorted(f"clip {i}" for i in range(50))


def test_unusable_examples_are_skipped_counted_and_replaced():
  bad = {1: "corrupt_video", 5: "too_short", 6: "empty_caption"}
  batches = pipeline.Batches([(ListSource(20, bad), 1.0)], 10, seed=0)
  first = [batches.batch(s) for s in range(4)]  # two epochs
  captions = [c for b in first for c in b["caption"]]
  assert not {"clip 1", "clip 5", "clip 6"} & set(captions) and len(captions) == 40
  assert batches.skip_counts() == {"corrupt_video": 2, "too_short": 2, "empty_caption": 2}
  # Deterministic: a fresh pipeline (a resumed run) gives the same batches.
  fresh = pipeline.Batches([(ListSource(20, bad), 1.0)], 10, seed=0)
  for s, b in zip(range(4), first):
    assert _equal(fresh.batch(s), b)
  # Known-bad examples are not decoded again.
  source = ListSource(20, bad)
  batches = pipeline.Batches([(source, 1.0)], 10, seed=0)
  for s in range(8):
    batches.batch(s)
  assert sum(1 for index, _ in source.calls if index == 1) == 1


def test_a_source_with_no_usable_example_fails_at_start_up():
  with pytest.raises(ValueError, match=r"ListSource\(20\).*corrupt_video"):
    pipeline.Batches([(ListSource(20, {i: "corrupt_video" for i in range(20)}), 1.0)], 4)


def test_random_crops_differ_per_epoch_and_resume_exactly():
  source = ListSource(4)
  batches = pipeline.Batches([(source, 1.0)], 4, seed=0, prefetch=2, num_threads=2)
  crops = {}
  for step, batch in batches.iterate(0, num_steps=6):
    for caption, video in zip(batch["caption"], batch["video"]):
      crops.setdefault(caption, []).append(int(video[0, 0, 0, 0]))
  assert all(len(set(c)) > 1 for c in crops.values())  # a new crop every epoch
  resumed = dict(pipeline.Batches([(ListSource(4), 1.0)], 4, seed=0).iterate(3, num_steps=3))
  for step, batch in pipeline.Batches([(ListSource(4), 1.0)], 4, seed=0).iterate(0, num_steps=6):
    if step >= 3:
      assert _equal(batch, resumed[step])
  centred = pipeline.Batches([(source, 1.0)], 4, seed=0, random_crops=False).batch(0)
  assert not centred["video"][:, 0, 0, 0, 0].any() and source.calls[-1][1] is None
