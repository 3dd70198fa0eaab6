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


def _check_report(results, num_stories):
  assert {"seen", "heldout", "image_only", "story"} <= set(results)
  counts = {
    "seen": len(shapes_lib.train_triples(SPEC)),
    "heldout": len(shapes_lib.split_triples(SPEC, "heldout")),
    "image_only": len(shapes_lib.image_only_triples(SPEC)),
  }
  for name, count in counts.items():
    r = results[name]
    assert r["num_clips"] == count, name
    for key in ("color", "shape", "direction", "all"):
      assert 0.0 <= r[f"{key}_accuracy"] <= 1.0, (name, key, r)
    assert r["all_accuracy"] <= min(
      r["color_accuracy"], r["shape_accuracy"], r["direction_accuracy"]
    )
  story = results["story"]
  assert story["num_stories"] == num_stories
  assert story["num_segments"] == 3 * num_stories
  assert 0.0 <= story["segment_accuracy"] <= 1.0
  assert 0.0 <= story["mean_jump"] <= story["max_jump"]
  assert 0.0 <= story["mean_step"] <= story["max_step"]
  assert 0.0 <= story["jumps_over_limit"] <= 1.0 and 0.0 <= story["steps_over_limit"] <= 1.0
  assert story["max_jump_limit"] == SPEC.resolution / 16
  # First segment a full clip, the next two the frames after 5 context frames (9 − 5 = 4).
  assert story["frames_per_segment"] == [9, 4, 4] and story["context_frames"] == 5
  assert story["canvas"] == SPEC.resolution
  # Fidelity of every set, with ground-truth clips of the same prompts beside it.
  for name in ("seen", "heldout", "image_only", "story"):
    r = results[name]
    assert 0.0 <= r["template_iou"] <= 1.0 and r["stray_components"] >= 0.0, (name, r)
    assert 0.0 <= r["stray_frame_fraction"] <= 1.0 and r["area_change"] >= 0.0, (name, r)
    real = r["real_clips"]
    assert set(real) == set(evaluate.FIDELITY_KEYS), name
    assert real["template_iou"] >= 0.97 and real["stray_frame_fraction"] == 0.0, (name, real)
    assert real["area_change"] <= 0.05, (name, real)


def test_story_prompts_are_seen_same_object_stories():
  seen = set(shapes_lib.train_triples(SPEC))
  stories = evaluate.story_prompts(SPEC, 12)
  assert len(stories) == 12
  assert len({tuple(s) for s in stories}) == 12
  for story in stories:
    triples = [_triple(p) for p in story]
    assert len(triples) == 3
    assert all(t in seen for t in triples), story
    assert len({(c, s) for c, s, _ in triples}) == 1, story  # one object throughout
    d1, d2, d3 = (d for _, _, d in triples)
    assert d3 == evaluate.OPPOSITE[d1] and d2 == evaluate.PERPENDICULAR[d1]
    assert d2 not in (d1, d3)
  assert len(evaluate.story_prompts(SPEC, 2)) == 2


def test_prompt_sets_cover_the_three_splits():
  sets = evaluate.prompt_sets(SPEC, samples_per_triple=2)
  seen = set(shapes_lib.train_triples(SPEC))
  assert {_triple(p) for p in sets["seen"]} == seen
  heldout = [_triple(p) for p in sets["heldout"]]
  assert len(heldout) == 2 * len(shapes_lib.split_triples(SPEC, "heldout"))
  assert not set(heldout) & seen
  image_only = [_triple(p) for p in sets["image_only"]]
  assert {c for c, _, _ in image_only} == set(SPEC.image_only_colors)
  assert not set(image_only) & seen


def test_real_clips_follow_the_prompts():
  """The ceiling's clips are the data's own clips of the very prompts, in order."""
  prompts = evaluate.prompt_sets(SPEC, samples_per_triple=2)["heldout"]
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
  # batch_size 32, the CLI's default: every batch (78 seen prompts = 32 + 32 + 14, 6 held-out,
  # 12 image-only) is padded to 32, so one compiled decode serves this test and the CLI's.
  # 4 decoding steps instead of 12: the mechanics are the same at a third of the compute.
  results = evaluate.evaluate_shapes(
    tiny_sampler,
    SPEC,
    samples_per_triple=1,
    num_stories=2,
    batch_size=32,
    out_dir=str(tmp_path),
    steps=STEPS,
  )
  _check_report(results, num_stories=2)
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
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  story_lines = (tmp_path / "story.txt").read_text().splitlines()
  assert story_lines == evaluate.story_prompts(SPEC, 2)[0]


def test_evaluate_shapes_pools_seeds(tiny_sampler):
  """num_seeds=2 samples everything twice: pooled clip and segment counts double, the first
  repeat is the single-seed evaluation, and the pooled accuracy is the mean of the two."""
  kw = dict(samples_per_triple=1, num_stories=1, batch_size=32, steps=STEPS)
  one = evaluate.evaluate_shapes(tiny_sampler, SPEC, **kw)
  two = evaluate.evaluate_shapes(tiny_sampler, SPEC, num_seeds=2, **kw)
  assert one["num_seeds"] == 1 and two["num_seeds"] == 2
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
  _check_report(written, num_stories=2)
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
