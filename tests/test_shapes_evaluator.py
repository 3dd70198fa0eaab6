"""The analytic Shapes evaluator: ~100% on ground truth, catches corrupted videos."""

import numpy as np
import pytest
from scipy import ndimage

from phenaki_jax.data import shapes
from phenaki_jax.evaluators import shapes as evaluator

SPEC = shapes.ShapesSpec()


def _clips(split, count, spec=SPEC, seed=11):
  return [shapes.video_example(spec, seed, index, split) for index in range(count)]


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_ground_truth_scores_perfectly(split):
  scores = [evaluator.score(ex["video"], ex["caption"]) for ex in _clips(split, 36)]
  result = evaluator.aggregate(scores)
  accuracy = {k: v for k, v in result.items() if k.endswith("_accuracy") or k == "num_clips"}
  assert accuracy == {
    "color_accuracy": 1.0,
    "shape_accuracy": 1.0,
    "direction_accuracy": 1.0,
    "all_accuracy": 1.0,
    "num_clips": 36,
  }, [s for s in scores if not s["all_ok"]]
  # Fidelity: the rendered objects are their templates, alone, at a constant size.
  assert min(v for s in scores for v in s["frame_template_iou"]) >= 0.97
  assert result["template_iou"] >= 0.97 and result["num_frames"] == 36 * 9
  assert result["stray_components"] == 0.0 and result["stray_frame_fraction"] == 0.0
  assert max(s["area_change"] for s in scores) <= 0.05 and result["area_change"] <= 0.05


def test_ground_truth_images_and_other_resolutions():
  images = [shapes.image_example(SPEC, 3, index) for index in range(48)]
  scores = [evaluator.score(ex["video"], ex["caption"]) for ex in images]
  assert all(s["all_ok"] and s["direction_ok"] is None for s in scores)
  for res, frames in ((16, 5), (64, 11)):
    spec = shapes.ShapesSpec(resolution=res, num_frames=frames)
    scores = [evaluator.score(ex["video"], ex["caption"]) for ex in _clips("train", 12, spec)]
    assert evaluator.aggregate(scores)["all_accuracy"] == 1.0


def test_analyze_video_reads_the_clip():
  example = shapes.video_example(SPEC, 0, 2, "heldout")
  analysis = evaluator.analyze_video(example["video"])
  assert (analysis["color"], analysis["shape"], analysis["direction"]) == (
    example["color"],
    example["shape"],
    example["direction"],
  )
  assert analysis["centroids"].shape == (9, 2) and analysis["present"].all()
  step = np.array(shapes.DIRECTION_VECTORS[example["direction"]]) * SPEC.speed_px
  np.testing.assert_allclose(analysis["velocity"], step, atol=0.05)
  empty = evaluator.analyze_video(np.zeros((9, 32, 32, 3), np.uint8))
  assert empty["color"] is None and empty["shape"] is None and empty["direction"] is None
  assert not evaluator.score(np.zeros((9, 32, 32, 3), np.uint8), "a red circle moves left")[
    "all_ok"
  ]


def test_robust_to_blur_and_noise():
  rng = np.random.default_rng(0)
  scores = []
  for ex in _clips("eval", 30):
    blurred = ndimage.gaussian_filter(ex["video"].astype(np.float32), (0, 1.0, 1.0, 0))
    noisy = np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8)
    scores.append(evaluator.score(noisy, ex["caption"]))
  assert evaluator.aggregate(scores)["all_accuracy"] >= 0.95


def test_catches_wrong_color():
  for ex in _clips("train", 24):
    other = shapes.COLORS[(shapes.COLORS.index(ex["color"]) + 3) % len(shapes.COLORS)]
    coverage = ex["video"].max(axis=-1, keepdims=True) / max(shapes.PALETTE[ex["color"]])
    recolored = np.rint(coverage * np.array(shapes.PALETTE[other])).astype(np.uint8)
    result = evaluator.score(recolored, ex["caption"])
    assert not result["color_ok"] and result["pred_color"] == other
    assert result["shape_ok"] and result["direction_ok"] and not result["all_ok"]


def test_catches_wrong_direction():
  for ex in _clips("heldout", 24):
    result = evaluator.score(ex["video"][::-1], ex["caption"])  # time-reversed
    assert not result["direction_ok"] and not result["all_ok"]
    assert result["color_ok"] and result["shape_ok"]
  static = np.repeat(_clips("train", 1)[0]["video"][:1], 9, axis=0)
  assert evaluator.analyze_video(static)["direction"] is None


def test_catches_wrong_shape():
  for ex in _clips("image_only", 24):
    analysis = evaluator.analyze_video(ex["video"])
    other = "circle" if ex["shape"] == "square" else "square"  # a different mask, same motion
    swapped = shapes.render_trajectory(SPEC, analysis["centroids"], [other] * 9, [ex["color"]] * 9)
    result = evaluator.score(swapped, ex["caption"])
    assert not result["shape_ok"] and result["pred_shape"] == other
    assert result["color_ok"] and result["direction_ok"]


@pytest.mark.parametrize("split", ["train", "heldout", "image_only"])
def test_ground_truth_stories(split):
  stories = []
  for index in range(6):
    prompts = shapes.random_story_prompts(
      SPEC, 5, index, 3, 9, split=split, vary_appearance=index % 2 == 1
    )
    story = shapes.story_example(SPEC, 5, index, prompts, 9)
    stories.append(evaluator.score_story(story["video"], prompts, frames_per_segment=9, spec=SPEC))
  result = evaluator.aggregate(stories, jump_limit=SPEC.resolution / 16)
  assert result["segment_accuracy"] == 1.0 and result["num_segments"] == 18
  # Fidelity with each segment's own shape (half the stories change shape and colour).
  assert result["template_iou"] >= 0.97 and result["num_frames"] == 6 * 27
  assert result["stray_frame_fraction"] == 0.0 and result["area_change"] <= 0.05
  assert all(len(s["area_changes"]) == 24 for s in stories)  # the pairs inside the segments
  assert result["feasible_fraction"] == 1.0 and result["feasible_segment_accuracy"] == 1.0
  # The raw jump is one frame of motion, well under 1/16 of the canvas; so is every step
  # inside a segment (27 frames, 2 boundaries: 24 steps per story).
  assert abs(result["mean_jump"] - SPEC.speed_px) < 0.1
  assert result["max_jump"] < SPEC.resolution / 16
  assert all(len(s["steps"]) == 24 for s in stories)
  assert abs(result["mean_step"] - SPEC.speed_px) < 0.1 and result["max_step"] < 2
  assert result["jumps_over_limit"] == 0.0 and result["steps_over_limit"] == 0.0


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_ground_truth_long_stories(split):
  """20-segment turning stories (the evaluation's long stories: 2 new frames per segment; and 4)
  fit the canvas and score 1.0, the object kept in every segment, every jump one step."""
  scores = []
  for index, lengths in enumerate([[9] + [2] * 19, [9] + [4] * 19]):
    prompts = shapes.turning_story_prompts(SPEC, 7, index, 20, lengths, split=split)
    story = shapes.story_example(SPEC, 7, index, prompts, lengths)
    scores.append(evaluator.score_story(story["video"], prompts, lengths, spec=SPEC))
  assert all(s["segment_color_shape_ok"] == [True] * 20 for s in scores)
  result = evaluator.aggregate(scores, jump_limit=SPEC.resolution / 16)
  assert result["num_segments"] == 40 and result["segment_accuracy"] == 1.0
  assert result["color_shape_kept"] == 1.0 and result["feasible_fraction"] == 1.0
  assert result["jumps_over_limit"] == 0.0 and abs(result["mean_jump"] - SPEC.speed_px) < 0.1
  assert result["template_iou"] >= 0.97 and result["stray_frame_fraction"] == 0.0


def test_color_shape_kept_drops_when_the_object_drifts():
  """A story whose object turns blue (and, later, square) mid-way: those segments lose the
  object whatever their motion; the motion alone is still read."""
  lengths = [9] + [2] * 19
  prompts = shapes.turning_story_prompts(SPEC, 7, 0, 20, lengths)  # a red circle
  assert {shapes.parse_caption(p)[:2] for p in prompts} == {("red", "circle")}
  drifted = [
    p.replace("red", "blue") if k >= 10 else p for k, p in enumerate(prompts)
  ]  # colour from segment 10 on
  drifted = [p.replace("circle", "square") if k >= 15 else p for k, p in enumerate(drifted)]
  video = shapes.story_example(SPEC, 7, 0, drifted, lengths)["video"]
  result = evaluator.score_story(video, prompts, lengths, spec=SPEC)
  assert result["segment_color_shape_ok"] == [True] * 10 + [False] * 10
  assert result["color_shape_kept"] == 0.5 and result["segment_accuracy"] == 0.5
  assert all(s["direction_ok"] for s in result["segments"])
  assert [s["pred_color"] for s in result["segments"]][9:11] == ["red", "blue"]
  truth = evaluator.score_story(
    shapes.story_example(SPEC, 7, 0, prompts, lengths)["video"], prompts, lengths
  )
  pooled = evaluator.aggregate([truth, result])
  assert pooled["color_shape_kept"] == 0.75 and pooled["segment_accuracy"] == 0.75


def test_story_catches_wrong_segments_and_jumps():
  prompts = ["a red circle moves right", "a red circle moves down", "a red circle moves left"]
  story = shapes.story_example(SPEC, 0, 1, prompts, [9, 5, 5])
  good = evaluator.score_story(story["video"], prompts, segment_starts=[0, 9, 14])
  assert good["segment_ok"] == [True, True, True] and good["max_jump"] < 2
  wrong = evaluator.score_story(story["video"], prompts[::-1], frames_per_segment=[9, 5, 5])
  assert wrong["segment_ok"] == [False, True, False] and wrong["segment_accuracy"] == 1 / 3
  # A teleport at the second boundary: the third segment restarts elsewhere.
  far = shapes.story_example(SPEC, 0, 99, prompts, [9, 5, 5])
  spliced = np.concatenate([story["video"][:14], far["video"][14:]])
  jump = np.linalg.norm(story["centroids"][13] - far["centroids"][14])
  result = evaluator.score_story(spliced, prompts, frames_per_segment=[9, 5, 5])
  assert result["jumps"][1] == pytest.approx(jump, abs=0.2) and result["max_jump"] > 2
  assert max(result["steps"]) < 2 and len(result["steps"]) == 19 - 1 - 2
  limited = evaluator.aggregate([result], jump_limit=2.0)
  assert limited["jumps_over_limit"] == 0.5 and limited["steps_over_limit"] == 0.0
  # The same teleport inside a segment is a step, not a jump.
  inside = np.concatenate([story["video"][:5], far["video"][5:]])
  result = evaluator.score_story(inside, prompts, frames_per_segment=[9, 5, 5])
  assert result["steps"][4] == pytest.approx(
    np.linalg.norm(story["centroids"][4] - far["centroids"][5]), abs=0.2
  )
  assert result["steps"][4] > 2 and evaluator.aggregate([result])["max_step"] > 2
  assert "jumps_over_limit" not in evaluator.aggregate([result])
  # Very short segments still read their direction (the step into the segment counts).
  short = shapes.story_example(SPEC, 0, 2, prompts, [9, 2, 1])
  assert evaluator.score_story(short["video"], prompts, [9, 2, 1])["segment_ok"] == [True] * 3
  with pytest.raises(ValueError, match="cover 18 frames"):
    evaluator.score_story(story["video"], prompts, frames_per_segment=6)


def test_story_feasibility():
  (x0, x1), (y0, y1) = SPEC.centroid_bounds
  step, mid = SPEC.speed_px, ((x0 + x1) / 2, (y0 + y1) / 2)
  assert evaluator.segment_feasible(SPEC, mid, "up", 4)
  assert evaluator.segment_feasible(SPEC, (mid[0], y0 + 4 * step), "up", 4)
  assert not evaluator.segment_feasible(SPEC, (mid[0], y0 + step), "up", 4)
  assert not evaluator.segment_feasible(SPEC, (x1 - step, mid[1]), "right", 4)
  assert evaluator.segment_feasible(SPEC, (x1 - step, mid[1]), "left", 4)
  assert evaluator.segment_feasible(SPEC, (np.nan, np.nan), "down", 4)  # no object: not excused
  # A story whose first segment ends 10 px up from the bottom edge: 8 more steps up would leave
  # the canvas (infeasible), 8 steps left from the right edge stay inside.
  positions = shapes.trajectory(SPEC, (x1, y1), ["up"] * 9 + ["left"] * 8)
  video = shapes.render_trajectory(SPEC, positions, ["circle"] * 17, ["red"] * 17)
  up, left = "a red circle moves up", "a red circle moves left"
  asked_up = evaluator.score_story(video, [up, up], [9, 8], spec=SPEC)
  assert asked_up["segment_feasible"] == [True, False] and asked_up["segment_ok"] == [True, False]
  asked_left = evaluator.score_story(video, [up, left], [9, 8], spec=SPEC)
  assert asked_left["segment_feasible"] == [True, True] and asked_left["segment_ok"] == [True] * 2
  result = evaluator.aggregate([asked_up, asked_left])
  assert result["segment_accuracy"] == 0.75 and result["feasible_fraction"] == 0.75
  assert result["feasible_segment_accuracy"] == 1.0
  # The boundary into the infeasible segment drops out of the feasible jump figures: splice a
  # teleport into that one only and the feasible mean keeps the one-step jump of the other.
  far = np.roll(video[9:], -12, axis=2)  # the second segment 12 px further left
  teleported = evaluator.score_story(np.concatenate([video[:9], far]), [up, up], [9, 8], spec=SPEC)
  assert teleported["segment_feasible"] == [True, False] and teleported["jumps"][0] > 10
  result = evaluator.aggregate([teleported, asked_left])
  assert result["max_jump"] > 10 and result["mean_jump"] > 5
  assert result["feasible_mean_jump"] == pytest.approx(asked_left["jumps"][0])
  assert result["feasible_max_jump"] == pytest.approx(asked_left["jumps"][0])
  assert abs(result["feasible_mean_jump"] - SPEC.speed_px) < 0.1
  assert "segment_feasible" not in evaluator.score_story(video, [up, left], [9, 8])


def test_aggregate_mixes_clips_and_stories():
  ex = _clips("train", 1)[0]
  clip = evaluator.score(ex["video"], ex["caption"])
  image = evaluator.score(ex["video"][:1], f"a {ex['color']} {ex['shape']}")
  wrong = evaluator.score(ex["video"], "a orange triangle moves left")
  result = evaluator.aggregate([clip, image, wrong])
  assert result["num_clips"] == 3 and result["direction_accuracy"] == 0.5  # the image has none
  assert result["all_accuracy"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="uint8"):
    evaluator.analyze_video(ex["video"].astype(np.float32) / 255)


def _square_clip():
  positions = shapes.trajectory(SPEC, (14.3, 15.1), ["right"] * 9)
  video = shapes.render_trajectory(SPEC, positions, ["square"] * 9, ["green"] * 9)
  return video, positions, "a green square moves right"


def test_fidelity_of_other_resolutions():
  for res, frames in ((64, 11), (48, 9)):
    spec = shapes.ShapesSpec(resolution=res, num_frames=frames)
    scores = [evaluator.score(ex["video"], ex["caption"]) for ex in _clips("eval", 12, spec)]
    result = evaluator.aggregate(scores)
    assert result["template_iou"] >= 0.97 and result["stray_frame_fraction"] == 0.0, res
    assert result["area_change"] <= 0.05, res


def test_fidelity_catches_a_bite():
  """A square with a bite out of its top edge: the prompt scores stay right, the template IoU
  drops; no stray component and no change of area between frames."""
  clean, _, caption = _square_clip()
  bitten = clean.copy()
  for t in range(len(clean)):
    rows, cols = np.nonzero(clean[t].max(axis=-1))
    middle = (cols.min() + cols.max()) // 2
    bitten[t, rows.min() : rows.min() + 3, middle - 2 : middle + 2] = 0  # 3 x 4 px
  good, bad = evaluator.score(clean, caption), evaluator.score(bitten, caption)
  assert good["all_ok"] and bad["all_ok"]
  assert good["template_iou"] >= 0.97 and bad["template_iou"] < 0.95
  assert max(bad["frame_template_iou"]) < 0.95
  assert sum(bad["stray_components"]) == 0 and bad["area_change"] <= 0.05


def test_fidelity_catches_a_stray_block():
  """A 4 x 4 block 3 px beside the square in frames 0, 2, 4 and 6: one stray component in each;
  the object's template fit and area are untouched."""
  clean, _, caption = _square_clip()
  strayed = clean.copy()
  for t in (0, 2, 4, 6):
    rows, cols = np.nonzero(clean[t].max(axis=-1))
    strayed[t, rows.min() : rows.min() + 4, cols.max() + 4 : cols.max() + 8] = 200
  good, bad = evaluator.score(clean, caption), evaluator.score(strayed, caption)
  assert bad["all_ok"] and bad["stray_components"] == [1, 0, 1, 0, 1, 0, 1, 0, 0]
  assert sum(good["stray_components"]) == 0
  assert bad["template_iou"] == pytest.approx(good["template_iou"], abs=1e-9)
  assert bad["area_change"] == pytest.approx(good["area_change"], abs=1e-9)
  result = evaluator.aggregate([good, bad])
  assert result["stray_frame_fraction"] == pytest.approx(4 / 18)
  assert result["stray_components"] == pytest.approx(4 / 18)
  # Two blocks in one frame are two components; one smaller than min_stray_pixels is ignored.
  strayed[8, 1:3, 1:3] = 200
  strayed[8, 28:31, 1:2] = 200
  assert evaluator.score(strayed, caption)["stray_components"][8] == 2
  counted = evaluator.score(strayed, caption, min_stray_pixels=4)["stray_components"]
  assert counted == [1, 0, 1, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_fidelity_catches_a_size_that_oscillates(shape):
  """Every other frame drawn at 9 instead of 12 px: each frame is a clean shape (the template
  fit follows the size), but the area changes by about half its mean at every pair."""
  positions = shapes.trajectory(SPEC, (14.3, 15.1), ["right"] * 9)
  clean = shapes.render_trajectory(SPEC, positions, [shape] * 9, ["red"] * 9)
  small = shapes.ShapesSpec(object_size=9 / 32)
  pulsing = clean.copy()
  pulsing[1::2] = shapes.render_trajectory(small, positions, [shape] * 9, ["red"] * 9)[1::2]
  caption = f"a red {shape} moves right"
  good, bad = evaluator.score(clean, caption), evaluator.score(pulsing, caption)
  assert bad["all_ok"] and good["area_change"] <= 0.05
  # |12² - 9²| over the mean of five 12² and four 9² frames: 63 / 116 = 0.54 at every pair.
  expected = (12**2 - 9**2) / ((5 * 12**2 + 4 * 9**2) / 9)
  assert bad["area_change"] == pytest.approx(expected, rel=0.05)
  assert bad["template_iou"] >= 0.97 and sum(bad["stray_components"]) == 0


def test_fidelity_of_missing_and_wrong_objects():
  clean, _, caption = _square_clip()
  gap = clean.copy()
  gap[4] = 0  # the object vanishes for one frame
  result = evaluator.score(gap, caption)
  assert result["frame_template_iou"][4] == 0.0
  assert result["template_iou"] == pytest.approx(np.mean(result["frame_template_iou"]))
  assert result["area_changes"][3] == pytest.approx(result["area_changes"][4], rel=0.01)
  assert result["area_changes"][3] > 1.0  # the whole area, over a mean of 8/9 of it
  empty = evaluator.score(np.zeros_like(clean), caption)
  assert empty["template_iou"] == 0.0 and np.isnan(empty["area_change"])
  image = evaluator.score(clean[:1], "a green square")
  assert image["area_changes"] == [] and np.isnan(image["area_change"])
  assert image["template_iou"] >= 0.97
  # A frame read as another shape is still fitted with the clip's shape.
  positions = shapes.trajectory(SPEC, (14.3, 15.1), ["right"] * 9)
  mixed = clean.copy()
  mixed[2] = shapes.render_trajectory(SPEC, positions[2:3], ["circle"], ["green"])[0]
  analysis = evaluator.analyze_video(mixed)
  assert analysis["shape"] == "square" and analysis["frame_shapes"][2] == "circle"
  assert (
    analysis["frame_template_iou"][2]
    < 0.95
    <= min(v for t, v in enumerate(analysis["frame_template_iou"]) if t != 2)
  )
