"""The step-indexed batch pipeline (resume-exact, rates, host slicing) and the seqio tasks."""

import subprocess
import sys

import numpy as np
import pytest

from phenaki_jax.data import pipeline
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


def test_process_slices_make_the_global_batch():
  whole = pipeline.Batches("shapes_mix", 12, seed=9).batch(5)
  parts = [
    pipeline.Batches("shapes_mix", 12, seed=9, process_index=p, process_count=3).batch(5)
    for p in range(3)
  ]
  assert all(p["video"].shape[0] == 4 for p in parts)
  joined = {k: np.concatenate([p[k] for p in parts]) for k in whole}
  assert _equal(whole, joined)
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.Batches("shapes_mix", 10, process_count=3)


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
