"""Shapes data (docs/design.md, "The Shapes benchmark"): captions match pixels, splits,
determinism. Generation speed: benchmarks/shapes_data.py."""

import numpy as np
import pytest

from phenaki_jax.data import shapes

SPEC = shapes.ShapesSpec()


def _centroids(video):
  """Brightness-weighted centroid (x, y) per frame of uint8 [T, H, W, 3] -> [T, 2]."""
  w = video.max(axis=-1).astype(np.float64)  # [T, H, W]
  ys, xs = np.indices(w.shape[1:])
  total = w.sum(axis=(1, 2))
  return np.stack(
    [(w * (xs + 0.5)).sum(axis=(1, 2)) / total, (w * (ys + 0.5)).sum(axis=(1, 2)) / total], axis=-1
  )


def _dominant_color(video):
  """The most frequent non-black pixel value."""
  pixels = video.reshape(-1, 3)
  pixels = pixels[pixels.max(axis=-1) > 0]
  values, counts = np.unique(pixels, axis=0, return_counts=True)
  return tuple(int(v) for v in values[np.argmax(counts)])


def _check_pixels(example, spec):
  video = example["video"]
  assert video.dtype == np.uint8 and video.shape[1:] == (spec.resolution, spec.resolution, 3)
  color, shape, direction = shapes.parse_caption(example["caption"])
  assert (color, shape) == (example["color"], example["shape"])
  # Colour: the interior pixels carry the exact palette colour.
  assert _dominant_color(video) == shapes.PALETTE[color], example["caption"]
  # Shape: the rendered area (coverage) is the shape's area.
  coverage = video.max(axis=-1).sum(axis=(1, 2)) / max(shapes.PALETTE[color])  # [T]
  np.testing.assert_allclose(coverage, shapes.SHAPE_AREA[shape] * spec.size_px**2, rtol=0.04)
  # Stays inside the canvas, with its black margin.
  border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
  assert border.max() == 0, f"{example['caption']} touches the border"
  if direction is not None:
    assert example["direction"] == direction
    move = _centroids(video)[-1] - _centroids(video)[0]
    expected = np.array(shapes.DIRECTION_VECTORS[direction]) * spec.speed_px * (len(video) - 1)
    np.testing.assert_allclose(move, expected, atol=0.2, err_msg=example["caption"])


def test_palette_and_grammar():
  assert shapes.PALETTE == {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 210),
    "white": (235, 235, 235),
    "orange": (245, 140, 20),
  }
  assert shapes.SHAPES == ("circle", "square", "triangle")
  assert set(shapes.DIRECTIONS) == {"left", "right", "up", "down"}
  assert shapes.caption("red", "circle", "left") == "a red circle moves left"
  assert shapes.caption("orange", "square") == "a orange square"
  for triple in shapes.all_triples():
    assert shapes.parse_caption(shapes.caption(*triple)) == triple
  assert shapes.parse_caption("a cyan triangle") == ("cyan", "triangle", None)
  with pytest.raises(ValueError, match="colour .*purple"):
    shapes.parse_caption("a purple circle moves left")
  with pytest.raises(ValueError, match="direction .*sideways"):
    shapes.parse_caption("a red circle moves sideways")
  with pytest.raises(ValueError, match="grammar"):
    shapes.parse_caption("red circle left")


def test_default_spec_and_splits():
  assert (SPEC.resolution, SPEC.num_frames, SPEC.image_only_colors) == (32, 9, ("orange",))
  assert 10 <= SPEC.size_px <= 14 and 1.0 <= SPEC.speed_px <= 1.5
  heldout = set(SPEC.heldout_triples)
  assert len(heldout) == 6
  assert len({t[0] for t in heldout}) == 6 and {t[1] for t in heldout} == set(shapes.SHAPES)
  assert {t[2] for t in heldout} == set(shapes.DIRECTIONS)
  train = set(shapes.train_triples(SPEC))
  assert len(train) == 7 * 3 * 4 - 6
  assert not train & heldout and all(t[0] != "orange" for t in train)
  # Every held-out triple is a new combination of seen parts.
  for color, shape, direction in heldout:
    assert any(t[:2] == (color, shape) for t in train)
    assert any(t[1:] == (shape, direction) for t in train)
    assert any((t[0], t[2]) == (color, direction) for t in train)


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_captions_match_pixels(split):
  for index in range(60):
    example = shapes.video_example(SPEC, 7, index, split)
    assert example["video"].shape == (9, 32, 32, 3)
    _check_pixels(example, SPEC)
    triple = (example["color"], example["shape"], example["direction"])
    assert triple in shapes.split_triples(SPEC, split)


def test_images_match_pixels():
  colors = set()
  for index in range(48):
    example = shapes.image_example(SPEC, 7, index)
    assert example["video"].shape == (1, 32, 32, 3)
    assert shapes.parse_caption(example["caption"])[2] is None
    _check_pixels(example, SPEC)
    colors.add(example["color"])
  assert colors == set(shapes.COLORS)  # image-only colours included


def test_other_resolutions_scale():
  for res, frames in ((16, 5), (64, 11)):
    spec = shapes.ShapesSpec(resolution=res, num_frames=frames)
    assert spec.size_px == pytest.approx(0.375 * res)
    for index in range(8):
      _check_pixels(shapes.video_example(spec, 0, index), spec)


def test_train_never_shows_heldout_or_image_only():
  heldout = set(SPEC.heldout_triples)
  seen = set()
  for index in range(5000):
    example = shapes.video_example(SPEC, 0, index, "train")
    triple = shapes.parse_caption(example["caption"])
    assert triple not in heldout, (index, example["caption"])
    assert triple[0] not in SPEC.image_only_colors, (index, example["caption"])
    seen.add(triple)
  assert seen == set(shapes.train_triples(SPEC))


def test_pure_function_of_seed_and_index():
  a = shapes.video_example(SPEC, 3, 11)
  b = shapes.video_example(SPEC, 3, 11)
  assert a["caption"] == b["caption"] and np.array_equal(a["video"], b["video"])
  assert not np.array_equal(a["video"], shapes.video_example(SPEC, 4, 11)["video"])
  # 'eval' shares the triples of 'train' but never its clips.
  for index in range(20):
    train = shapes.video_example(SPEC, 3, index, "train")
    evalu = shapes.video_example(SPEC, 3, index, "eval")
    assert train["caption"] == evalu["caption"]
    assert not np.array_equal(train["video"], evalu["video"])
  np.testing.assert_array_equal(
    shapes.image_example(SPEC, 1, 5)["video"], shapes.image_example(SPEC, 1, 5)["video"]
  )


def test_spec_validation():
  with pytest.raises(ValueError, match="num_frames <="):
    shapes.ShapesSpec(num_frames=17)
  with pytest.raises(ValueError, match="image-only"):
    shapes.ShapesSpec(heldout_triples=(("orange", "circle", "left"),))
  with pytest.raises(ValueError, match="shape"):
    shapes.ShapesSpec(heldout_triples=(("red", "hexagon", "left"),))
  spec = shapes.ShapesSpec(heldout_triples=[["red", "circle", "left"]])
  assert spec.heldout_triples == (("red", "circle", "left"),)
  hash(spec)


def test_story_continues_where_it_was():
  prompts = ["a red circle moves right", "a red circle moves down", "a blue square moves left"]
  story = shapes.story_example(SPEC, 0, 4, prompts, frames_per_segment=[9, 5, 5])
  video = story["video"]
  assert video.shape == (19, 32, 32, 3) and story["segment_starts"] == [0, 9, 14]
  steps = np.diff(_centroids(video), axis=0)  # [T-1, 2]
  np.testing.assert_allclose(np.linalg.norm(steps, axis=-1), SPEC.speed_px, atol=0.1)
  expected = [shapes.DIRECTION_VECTORS[d] for d in ["right"] * 8 + ["down"] * 5 + ["left"] * 5]
  np.testing.assert_allclose(steps, np.array(expected) * SPEC.speed_px, atol=0.1)
  np.testing.assert_allclose(_centroids(video), story["centroids"], atol=0.1)
  assert _dominant_color(video[:9]) == shapes.PALETTE["red"]
  assert _dominant_color(video[14:]) == shapes.PALETTE["blue"]
  border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
  assert border.max() == 0
  with pytest.raises(ValueError, match="further than"):
    shapes.story_example(SPEC, 0, 0, ["a red circle moves right"] * 3, 9)


def test_turn_clips_turn_after_their_context():
  """A turn clip moves in its first direction up to frame context_frames - 1 and in its
  caption's direction from there, one step per frame, inside the canvas; both its triples are
  training triples; the first direction is not always the same."""
  firsts = set()
  for index in range(24):
    ex = shapes.turn_example(SPEC, 0, index, 5)
    video = ex["video"]
    assert video.shape == (9, 32, 32, 3) and ex["context_frames"] == 5
    color, shape, direction = shapes.parse_caption(ex["caption"])
    assert (color, shape, direction) == (ex["color"], ex["shape"], ex["direction"])
    assert ex["first_direction"] != direction
    assert (color, shape, direction) in shapes.train_triples(SPEC)
    assert (color, shape, ex["first_direction"]) in shapes.train_triples(SPEC)
    assert _dominant_color(video) == shapes.PALETTE[color]
    steps = np.diff(_centroids(video), axis=0)  # [8, 2]
    expected = [shapes.DIRECTION_VECTORS[d] for d in [ex["first_direction"]] * 4 + [direction] * 4]
    np.testing.assert_allclose(steps, np.array(expected) * SPEC.speed_px, atol=0.1)
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
    assert border.max() == 0
    firsts.add((direction, ex["first_direction"]))
  assert len(firsts) >= 9  # of the 12 (direction, first direction) pairs
  np.testing.assert_array_equal(
    shapes.turn_example(SPEC, 0, 7, 5)["video"], shapes.turn_example(SPEC, 0, 7, 5)["video"]
  )
  three = shapes.turn_example(SPEC, 0, 7, 3)
  steps = np.diff(_centroids(three["video"]), axis=0)
  np.testing.assert_allclose(
    steps[2], np.array(shapes.DIRECTION_VECTORS[three["direction"]]) * SPEC.speed_px, atol=0.1
  )
  for bad in (0, 9):
    with pytest.raises(ValueError, match="context_frames"):
      shapes.turn_example(SPEC, 0, 0, bad)


def test_random_story_prompts_fit():
  for split in ("train", "heldout", "image_only"):
    for index in range(5):
      prompts = shapes.random_story_prompts(SPEC, 0, index, 3, 9, split=split)
      assert len(prompts) == 3
      triples = [shapes.parse_caption(p) for p in prompts]
      assert len({t[:2] for t in triples}) == 1  # the same object
      if split == "train":
        assert all(t in shapes.train_triples(SPEC) for t in triples)
      story = shapes.story_example(SPEC, 0, index, prompts, 9)
      assert story["video"].shape[0] == 27


@pytest.mark.parametrize("lengths", [[9, 6, 5], [9] + [2] * 19, [9] + [4] * 19])
def test_turning_story_prompts_turn_and_fit(lengths):
  """One object, a turn at every boundary, a path that fits (20 segments too, where whole random
  stories never fit), seen directions only for a seen object, any for a held-out one."""
  directions_used = set()
  for split in ("train", "heldout"):
    for index in range(6):
      prompts = shapes.turning_story_prompts(SPEC, 3, index, len(lengths), lengths, split=split)
      triples = [shapes.parse_caption(p) for p in prompts]
      assert len(triples) == len(lengths) and len({t[:2] for t in triples}) == 1
      assert triples[0] == shapes.split_triples(SPEC, split)[index]
      assert all(a[2] != b[2] for a, b in zip(triples, triples[1:]))  # every boundary turns
      if split == "train":
        assert all(t in shapes.train_triples(SPEC) for t in triples)
      directions_used |= {t[2] for t in triples[1:]}
      assert shapes.story_fits(SPEC, prompts, lengths)
      story = shapes.story_example(SPEC, 3, index, prompts, lengths)
      assert story["video"].shape[0] == sum(lengths)
      assert prompts == shapes.turning_story_prompts(SPEC, 3, index, len(lengths), lengths, split)
  assert directions_used == set(shapes.DIRECTIONS)
  other = shapes.turning_story_prompts(SPEC, 4, 0, len(lengths), lengths)
  assert other != shapes.turning_story_prompts(SPEC, 3, 0, len(lengths), lengths)
  with pytest.raises(ValueError, match="No turning story"):
    shapes.turning_story_prompts(SPEC, 0, 0, 3, [9, 17, 17])  # 16 steps each way do not fit


def test_story_prompt_helpers_leave_the_training_stream_alone():
  """The evaluation's story helpers draw from a random stream of their own: the data's streams
  keep their numbers, so every training example stays the same function of (seed, index)."""
  streams = dict(shapes._STREAM)  # pylint: disable=protected-access
  data = ("train", "eval", "heldout", "image_only", "image", "story", "story_prompts", "turn")
  assert {k: streams[k] for k in data} == {k: i for i, k in enumerate(data)}
  assert len(set(streams.values())) == len(streams)
