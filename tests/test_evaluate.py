"""Tests of the Shapes prompt-following evaluation (`phenaki_jax/evaluate.py`).

Mechanics only: the fixture models (conftest.py) are barely trained, so their scores are low;
what is checked is the report's structure, the prompt sets and stories, and the CLI. The
evaluator's scoring itself is tested on ground-truth clips in test_shapes_evaluator.py.
"""

import json
import re
import shutil

import pytest

from phenaki_jax import evaluate
from phenaki_jax.data import shapes as shapes_lib
from phenaki_jax.evaluators import shapes as evaluator

import conftest

SPEC = shapes_lib.ShapesSpec(resolution=32, num_frames=9)
STEPS = 4  # decoding steps of the sampled evaluations
CAPTION = re.compile(r"^a (\w+) (\w+) moves (\w+)$")


def _triple(caption):
  match = CAPTION.match(caption)
  assert match, caption
  return match.groups()


def _check_report(results, num_stories, split="test", heldout_stories=0):
  assert results["split"] == split
  assert {"seen", "heldout", "image_only", "story"} <= set(results)
  for name in evaluate.PROMPT_SETS:
    r = results[name]
    assert r["num_triples"] == len(evaluate.split_triples(SPEC, name, split)), name
    assert r["num_clips"] == r["num_triples"], name  # one sample per triple in these tests
    for key in ("color", "shape", "direction", "all"):
      assert 0.0 <= r[f"{key}_accuracy"] <= 1.0, (name, key, r)
    assert r["all_accuracy"] <= min(
      r["color_accuracy"], r["shape_accuracy"], r["direction_accuracy"]
    )
  story_sets = ["story"]
  if heldout_stories:
    story_sets += ["story_context3", "story_context7", "story_long"]
  else:
    assert not {"story_context3", "story_context7", "story_long"} & set(results)
  for name in story_sets:
    story = results[name]
    count = num_stories if name == "story" else heldout_stories
    assert story["num_stories"] == count, name
    assert story["num_segments"] == len(story["frames_per_segment"]) * count, name
    # A segment that follows its prompt keeps its object.
    assert 0.0 <= story["segment_accuracy"] <= story["color_shape_kept"] <= 1.0
    assert 0.0 <= story["mean_jump"] <= story["max_jump"]
    assert 0.0 <= story["mean_step"] <= story["max_step"]
    assert 0.0 <= story["jumps_over_limit"] <= 1.0 and 0.0 <= story["steps_over_limit"] <= 1.0
    assert story["max_jump_limit"] == SPEC.resolution / 16
    assert story["canvas"] == SPEC.resolution
  # First segment a full clip, the next two the frames after 5 context frames (9 − 5 = 4).
  assert results["story"]["frames_per_segment"] == [9, 4, 4]
  assert results["story"]["context_frames"] == 5
  if heldout_stories:
    assert results["story_context3"]["frames_per_segment"] == [9, 6, 5]
    assert results["story_context3"]["context_frames"] == 3
    assert results["story_context7"]["frames_per_segment"] == [9, 2, 2, 2, 2]
    assert results["story_long"]["frames_per_segment"] == [9] + [2] * 19
    assert results["story_long"]["context_frames"] == 7
    for key in ("color_shape_kept_by_quarter", "segment_accuracy_by_quarter"):
      assert len(results["story_long"][key]) == 4
  assert results["sampling_seeds"][0] == evaluate.SPLIT_SEEDS[split]
  assert results["data_seed"] == evaluate.SPLIT_SEEDS[split]
  # Fidelity of every set, with ground-truth clips of the same prompts beside it.
  for name in list(evaluate.PROMPT_SETS) + story_sets:
    r = results[name]
    assert 0.0 <= r["template_iou"] <= 1.0 and r["stray_components"] >= 0.0, (name, r)
    assert 0.0 <= r["stray_frame_fraction"] <= 1.0 and r["area_change"] >= 0.0, (name, r)
    real = r["real_clips"]
    assert set(real) == set(evaluate.FIDELITY_KEYS), name
    assert real["template_iou"] >= 0.97 and real["stray_frame_fraction"] == 0.0, (name, real)
    assert real["area_change"] <= 0.05, (name, real)


def test_story_prompts_are_seen_same_object_stories():
  seen = set(shapes_lib.train_triples(SPEC))
  for split in evaluate.SPLITS:
    stories = evaluate.story_prompts(SPEC, 12, split)
    assert len(stories) == 12
    assert len({tuple(s) for s in stories}) == 12
    for story in stories:
      triples = [_triple(p) for p in story]
      assert len(triples) == 3
      assert all(t in seen for t in triples), story
      assert triples[0] in evaluate.split_triples(SPEC, "seen", split)
      assert len({(c, s) for c, s, _ in triples}) == 1, story  # one object throughout
      d1, d2, d3 = (d for _, _, d in triples)
      assert d3 == evaluate.OPPOSITE[d1] and d2 == evaluate.PERPENDICULAR[d1]
      assert d2 not in (d1, d3)
    # Both axes and most colours among the first directions.
    assert {_triple(s[0])[2] for s in stories} == set(shapes_lib.DIRECTIONS)
    assert len({_triple(s[0])[0] for s in stories}) >= 6
    assert len(evaluate.story_prompts(SPEC, 2, split)) == 2
  val, test = (
    {tuple(s) for s in evaluate.story_prompts(SPEC, 12, split)} for split in ("val", "test")
  )
  assert not val & test


def test_val_and_test_are_disjoint():
  """Prompts, sampling seeds and the real clips' data seeds of the two splits never meet."""
  for name in evaluate.PROMPT_SETS:
    val = set(evaluate.split_triples(SPEC, name, "val"))
    test = set(evaluate.split_triples(SPEC, name, "test"))
    assert val and test and not val & test, name
  val = {p for ps in evaluate.prompt_sets(SPEC, "val").values() for p in ps}
  test = {p for ps in evaluate.prompt_sets(SPEC, "test").values() for p in ps}
  assert not val & test
  val_stories = evaluate.story_sets(SPEC, "val", 9)
  test_stories = evaluate.story_sets(SPEC, "test", 9)
  assert set(val_stories) == {"story"}  # the held-out stories are test only
  assert set(test_stories) == {"story", "story_context3", "story_context7", "story_long"}
  # Seeds: every seed of a val evaluation (any number of repeats, any offset) is below every
  # seed of the test evaluation with the same offset.
  for num_seeds in (1, 2, evaluate.MAX_SEEDS):
    for seed in (0, 5):
      val_lo, val_hi = evaluate.seed_range("val", num_seeds, seed)
      test_lo, test_hi = evaluate.seed_range("test", num_seeds, seed)
      assert val_lo == seed and val_hi < test_lo < test_hi
  assert evaluate.sampling_seeds("test", 2) == [1_000_003, 1_010_010]
  with pytest.raises(ValueError, match="num_seeds"):
    evaluate.sampling_seeds("val", evaluate.MAX_SEEDS + 1)
  with pytest.raises(ValueError, match="split"):
    evaluate.sampling_seeds("train")
  # Real clips: each split's own data seed, so even one prompt starts elsewhere.
  assert evaluate.SPLIT_SEEDS["val"] != evaluate.SPLIT_SEEDS["test"]
  prompt = ["a white square moves left"]
  val_clip, test_clip = (
    evaluate.real_clips(SPEC, prompt, "eval", evaluate.SPLIT_SEEDS[split])[0]
    for split in ("val", "test")
  )
  assert not (val_clip == test_clip).all()


def test_each_split_covers_what_it_claims():
  """Every colour, shape and direction of a set in each half; every (colour, shape) pair, with
  one horizontal and one vertical direction where none is held out; the held-out halves with
  all three shapes."""
  seen = shapes_lib.train_triples(SPEC)
  for split in evaluate.SPLITS:
    for name, full in (
      ("seen", seen),
      ("image_only", shapes_lib.image_only_triples(SPEC)),
    ):
      half = evaluate.split_triples(SPEC, name, split)
      for i in range(3):
        assert {t[i] for t in half} == {t[i] for t in full}, (name, split, i)
      assert abs(len(half) - len(full) / 2) <= 1, (name, split)
      for pair in {t[:2] for t in full}:
        directions = {t[2] for t in half if t[:2] == pair}
        assert directions, (pair, split)  # every object, one direction at least
        if len([t for t in full if t[:2] == pair]) == 4:  # none held out: one of each axis
          assert directions & {"left", "right"} and directions & {"up", "down"}, (pair, split)
    # (shape, direction) pairs: all in each half; (colour, direction): all but one whose
    # triples of the half's parity are held out (green up in val, cyan right in test).
    half = evaluate.split_triples(SPEC, "seen", split)
    assert {(t[1], t[2]) for t in half} == {(t[1], t[2]) for t in seen}
    assert len({(t[0], t[2]) for t in half}) >= len({(t[0], t[2]) for t in seen}) - 1
    heldout = evaluate.split_triples(SPEC, "heldout", split)
    assert len(heldout) == 3 and {t[1] for t in heldout} == set(shapes_lib.SHAPES)
    assert len({t[0] for t in heldout}) == 3 and len({t[2] for t in heldout}) == 3
    sets = evaluate.prompt_sets(SPEC, split)
    assert len(sets["seen"]) >= 38 and len(sets["heldout"]) == len(sets["image_only"]) == 24
  assert len(evaluate.split_triples(SPEC, "seen", "test")) == 40
  val, test = evaluate.covering_halves(SPEC.heldout_triples)
  assert set(val) | set(test) == set(SPEC.heldout_triples)


def test_heldout_stories_leave_the_training_window():
  """The held-out story sets: other context lengths and segment lengths than the training turn
  clips (5 context frames, 4 new), random turns at every boundary, held-out objects in every
  set, 20 segments in the long stories, and every story fits the canvas."""
  sets = evaluate.heldout_stories(SPEC, 9, 4)
  assert set(sets) == {"story_context3", "story_context7", "story_long"}
  heldout = set(SPEC.heldout_triples)
  all_triples = []
  for name, (stories, lengths, context) in sets.items():
    assert context != 5 and 4 not in lengths[1:], name
    assert len(stories) == 4 and len({tuple(s) for s in stories}) == 4
    assert len(lengths) == (20 if name == "story_long" else len(stories[0]))
    fixed_pattern = 0
    for story in stories:
      triples = [_triple(p) for p in story]
      all_triples += triples
      assert len(triples) == len(lengths) and len({t[:2] for t in triples}) == 1
      assert all(a[2] != b[2] for a, b in zip(triples, triples[1:]))
      d = triples[0][2]
      fixed_pattern += [t[2] for t in triples[:3]] == [
        d,
        evaluate.PERPENDICULAR[d],
        evaluate.OPPOSITE[d],
      ]
      assert shapes_lib.story_fits(SPEC, story, lengths)
      truth = shapes_lib.story_example(SPEC, evaluate.SPLIT_SEEDS["test"], 0, story, lengths)
      scored = evaluator.score_story(truth["video"], story, lengths, spec=SPEC)
      assert scored["segment_accuracy"] == 1.0 and scored["color_shape_kept"] == 1.0
    assert fixed_pattern < len(stories), name
    assert sum(_triple(s[0]) in heldout for s in stories) == 2, name  # half held-out objects
  assert heldout <= set(all_triples)  # every held-out triple across the sets
  with pytest.raises(ValueError, match="9 frames"):
    evaluate.heldout_story_windows(7)


def test_prompt_sets_cover_the_three_splits():
  sets = evaluate.prompt_sets(SPEC, "test", samples_per_triple=2)
  seen = set(shapes_lib.train_triples(SPEC))
  assert {_triple(p) for p in sets["seen"]} == set(evaluate.split_triples(SPEC, "seen", "test"))
  heldout = [_triple(p) for p in sets["heldout"]]
  assert len(heldout) == 2 * len(evaluate.split_triples(SPEC, "heldout", "test"))
  assert not set(heldout) & seen
  image_only = [_triple(p) for p in sets["image_only"]]
  assert {c for c, _, _ in image_only} == set(SPEC.image_only_colors)
  assert not set(image_only) & seen


def test_real_clips_follow_the_prompts():
  """The ceiling's clips are the data's own clips of the very prompts, in order."""
  prompts = evaluate.prompt_sets(SPEC, "test", samples_per_triple=2)["heldout"]
  videos = evaluate.real_clips(SPEC, prompts, "heldout", seed=3)
  assert len(videos) == len(prompts) and videos[0].shape == (9, 32, 32, 3)
  scores = [evaluator.score(v, p) for v, p in zip(videos, prompts)]
  assert all(s["all_ok"] for s in scores)
  assert not (videos[0] == videos[1]).all()  # two samples of a triple: two starts
  n = len(shapes_lib.split_triples(SPEC, "heldout"))
  index = shapes_lib.split_triples(SPEC, "heldout").index(shapes_lib.parse_caption(prompts[1]))
  expected = shapes_lib.video_example(SPEC, 3, index + n, "heldout")["video"]
  assert (videos[1] == expected).all()
  with pytest.raises(ValueError):
    evaluate.real_clips(SPEC, ["a red circle moves left"], "train")  # a held-out triple


def test_evaluate_shapes(tiny_sampler, tmp_path):
  # batch_size 32, the CLI's default: the 49 clips (40 seen, 3 held-out and 6 image-only test
  # triples, once each) are sampled in two batches padded to 32, so one compiled decode serves
  # this test and the CLI's. 4 decoding steps instead of 12: the same mechanics at a third of
  # the compute. One story per held-out story set.
  results = evaluate.evaluate_shapes(
    tiny_sampler,
    SPEC,
    split="test",
    samples_per_triple=1,
    num_stories=2,
    heldout_stories=1,
    batch_size=32,
    out_dir=str(tmp_path),
    steps=STEPS,
  )
  _check_report(results, num_stories=2, split="test", heldout_stories=1)
  assert results["sampling"]["steps"] == STEPS
  json.dumps(results)  # plain JSON types
  for name in (
    "seen.png",
    "heldout.png",
    "image_only.png",
    "stories.png",
    "story.gif",
    "story.mp4",
    "story.txt",
    "story_context3.png",
    "story_long.png",
    "story_long.gif",
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  story_lines = (tmp_path / "story.txt").read_text().splitlines()
  assert story_lines == evaluate.story_prompts(SPEC, 2, "test")[0]


def test_evaluate_shapes_pools_seeds(tiny_sampler):
  """num_seeds=2 samples everything twice: pooled clip and segment counts double, the first
  repeat is the single-seed evaluation, and the pooled accuracy is the mean of the two."""
  kw = dict(split="val", samples_per_triple=1, num_stories=1, batch_size=32, steps=STEPS)
  one = evaluate.evaluate_shapes(tiny_sampler, SPEC, **kw)
  two = evaluate.evaluate_shapes(tiny_sampler, SPEC, num_seeds=2, **kw)
  assert one["num_seeds"] == 1 and two["num_seeds"] == 2
  assert two["sampling_seeds"] == [0, evaluate.SEED_STRIDE] and one["split"] == "val"
  for name in ("seen", "heldout", "image_only"):
    assert two[name]["num_clips"] == 2 * one[name]["num_clips"]
    first, second = two[name]["per_seed_all_accuracy"]
    assert first == pytest.approx(one[name]["all_accuracy"])
    assert two[name]["all_accuracy"] == pytest.approx((first + second) / 2)
    assert "per_seed_all_accuracy" not in one[name]
  assert two["story"]["num_segments"] == 2 * one["story"]["num_segments"]
  assert two["story"]["per_seed_segment_accuracy"][0] == pytest.approx(
    one["story"]["segment_accuracy"]
  )
  with pytest.raises(ValueError, match="num_seeds"):
    evaluate.evaluate_shapes(tiny_sampler, SPEC, num_seeds=0, **kw)


def test_cli_prints_and_writes_json(tiny_cvivit_dir, tiny_maskgit_dir, tmp_path):
  out = tmp_path / "eval"
  proc = conftest.run_module(
    "phenaki_jax.evaluate",
    "shapes",
    "--tokenizer_dir",
    tiny_cvivit_dir,
    "--maskgit_dir",
    tiny_maskgit_dir,
    "--split=val",
    "--samples_per_triple=1",
    "--num_stories=2",
    f"--steps={STEPS}",
    "--out",
    str(out),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = json.loads(proc.stdout[proc.stdout.index("{") :])
  written = json.loads((out / "shapes_eval.json").read_text())
  assert printed == written
  _check_report(written, num_stories=2, split="val")
  assert written["sampling"]["steps"] == STEPS


def test_cli_text_cache_only_needs_a_filled_cache(tiny_cvivit_dir, tiny_maskgit_dir, tmp_path):
  """--text_cache_only loads no encoder: with an empty text cache it fails and names the fix."""
  maskgit_dir = tmp_path / "maskgit"
  shutil.copytree(tiny_maskgit_dir, maskgit_dir, ignore=shutil.ignore_patterns("text_cache"))
  proc = conftest.run_module(
    "phenaki_jax.evaluate",
    "shapes",
    "--tokenizer_dir",
    tiny_cvivit_dir,
    "--maskgit_dir",
    str(maskgit_dir),
    "--text_cache_only",
  )
  assert proc.returncode != 0
  assert "cache_only=True" in proc.stderr and "encode_text" in proc.stderr, proc.stderr[-3000:]
