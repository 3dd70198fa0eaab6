r"""The quality half of the race against phenaki-pytorch 0.5.0: both trained on Shapes for the
same wall-clock minutes on the same CPU, both judged by our Shapes evaluator.

  python benchmarks/vs_phenaki_pytorch_quality.py                     # make demo's minutes
  python benchmarks/vs_phenaki_pytorch_quality.py --quick --ours_only # smoke, no torch
  python benchmarks/vs_phenaki_pytorch_quality.py --reuse --ours_only --split=val
                                      # our models of an earlier run, sampled again

The flags --venv, --threads, --ours_only and --quick are the speed race's (imported from it);
here --quick trains each stage for 0.25 minutes and samples 4 prompts per set with one seed.

Both sides train the configs/race.py shapes (the same widths, depths, heads, codebook, batch,
weight decay, clip 0.5) on videos alone (the reference has no image path): stage 1 the C-ViViT
with L2 + VQ, stage 2 the MaskGIT over its frozen codes with MiniLM text (8 tokens; the
reference gets our MiniLM embeddings of the same captions), 25% of captions dropped. The
reference trains as its trainer does (whole-frame encoder, AdamW at a constant 3e-4); ours with
`--recipe=ours` (the default) as the tiny configs train (`OUR_RECIPE`: patch-local codes, Muon
with a warm-up and a cosine), with `--recipe=mirrored` exactly as the reference. Each
stage has the same wall clock on both sides (default: the minutes `make demo`'s two stages take
on the 2-core CPU, BENCHMARKS.md), run one side after the other so that neither competes with
the other for the CPU; each side's steps are reported. Both read the same clips: our procedural
Shapes (split 'train', which leaves out the held-out triples), from the same data seed.

Then both sample the seen and held-out prompts of the test split (`--split`;
`evaluate.prompt_sets`) with 12 decoding steps and one sample per prompt: theirs with its own
sampler (guidance 3, temperature 0.9 falling to 0), ours three ways: as mirrored (guidance 3,
temperature 1, no top-k), at that compute with the options chosen on the validation split of
these race models (`EQUAL_COMPUTE`), and with the tiny configs' sampling defaults (chosen on the
validation split for `make demo`'s models; more steps and candidates). Our evaluator scores
every clip: colour, shape, direction, their conjunction, and the fidelity measures (template
IoU, stray components, area change). Both C-ViViTs also encode and decode ground-truth clips of
the same prompts (`round_trip`): what each tokenizer alone keeps of the shapes, the ceiling of
its samples. The reference runs as in benchmarks/vs_phenaki_pytorch.py
(its venv, its worker process). `--reuse` skips training and samples our models already in
`--workdir` (with `--ours_only`: the reference keeps no trained model).
"""

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import vs_phenaki_pytorch as race  # noqa: E402  pylint: disable=g-import-not-at-top

_SIZE = flags.DEFINE_string("size", "small", "configs/race.py size.")
_STAGE1_MIN = flags.DEFINE_float("stage1_minutes", 4.2, "Stage-1 wall clock of each side.")
_STAGE2_MIN = flags.DEFINE_float("stage2_minutes", 9.2, "Stage-2 wall clock of each side.")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Sampling seeds per prompt set (pooled).", lower_bound=1)
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "The Shapes stream both sides train on.")
_WORKDIR = flags.DEFINE_string(
  "workdir", os.path.join(race.REPO, "workdirs", "race_quality"), "Our runs and the samples."
)
_SPLIT = flags.DEFINE_enum("split", "test", ["val", "test"], "The evaluation's prompts and seeds.")
_REUSE = flags.DEFINE_boolean(
  "reuse", False, "Sample our models already in --workdir instead of training (--ours_only)."
)
_RECIPE = flags.DEFINE_enum(
  "recipe",
  "ours",
  ["ours", "mirrored"],
  "How our side trains the mirrored shapes: 'ours' (OUR_RECIPE) or 'mirrored' (the "
  "reference's: whole-frame encoder, AdamW at a constant 3e-4).",
)
SETS = ("seen", "heldout")

# Ours at the reference's sampling compute (12 steps, one sample per prompt), with the options
# chosen on the validation split of the SMALL race models of data seed 0 (the most prompts
# right, then the fewest strays; docs/experiments.md, "Quality at equal minutes").
EQUAL_COMPUTE = dict(cfg_scale=1.5, top_k=3, temperature_decay=1.0)


# Our recipe at the mirrored shapes (`--recipe=ours`; the same widths, depths, heads, codebook,
# batch, losses, data and minutes), as the tiny configs train, chosen on the validation split of
# data seed 0 (docs/experiments.md, "Our recipe at the mirrored shapes"): patch-local codes (the
# C-ViViT encoder's spatial layers see their own patch) and Muon with a warm-up and a cosine.
# The cosines span about the steps each stage reaches in its minutes on the 2-core CPU; the wall
# clock stops the run wherever it is on them.
OUR_RECIPE = dict(
  encoder_spatial_radius=0,
  cvivit=dict(lr=8e-3, decay_steps=11_000),
  maskgit=dict(lr=2e-3, decay_steps=40_000, muon_per_head=True),
)


def apply_recipe(cv, mg, recipe: str) -> None:
  """Our side's training recipe at the mirrored shapes (`--recipe`), in place."""
  from phenaki_jax import optim  # pylint: disable=g-import-not-at-top

  if recipe == "mirrored":
    return
  if recipe != "ours":
    raise ValueError(f"unknown recipe {recipe!r}; use 'ours' or 'mirrored'")
  cv.model.encoder_spatial_radius = OUR_RECIPE["encoder_spatial_radius"]
  for c, stage in ((cv, "cvivit"), (mg, "maskgit")):
    mirrored = c.optim
    c.optim = optim.default_config(
      name="muon",
      warmup_steps=200,
      end_lr_fraction=0.05,
      weight_decay=mirrored.weight_decay,
      clip_norm=mirrored.clip_norm,
      **OUR_RECIPE[stage],
    )


def our_configs(size: str, minutes: tuple, data_seed: int, workdir: str, recipe: str) -> tuple:
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

  cv = config_io.from_file("race", size).unlock()
  cv.losses.image_perceptual = cv.losses.adversarial = 0.0  # L2 + VQ, as the reference here
  mg = config_io.from_file("race", f"{size}.maskgit").unlock()
  apply_recipe(cv, mg, recipe)  # configs/race.py's schedule is flat (end_lr_fraction 1)
  for c, m in ((cv, minutes[0]), (mg, minutes[1])):
    c.total_steps = 10**7  # the wall clock stops it
    c.max_train_seconds = 60 * m
    # No evaluation or checkpoint inside the budget (the reference's loop has neither); the
    # final ones come after it.
    c.eval_every = c.checkpoint_every = 10**7
    c.data.seed = data_seed
  mg.tokenizer.workdir = os.path.join(workdir, "cvivit")
  return cv, mg


def train_ours(cv, mg, workdir: str) -> dict:
  from phenaki_jax.trainers import cvivit as cv_trainer  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import maskgit as mg_trainer  # pylint: disable=g-import-not-at-top

  out = {}
  for name, config, trainer in (("cvivit", cv, cv_trainer), ("maskgit", mg, mg_trainer)):
    t = time.perf_counter()
    result = trainer.main(config, os.path.join(workdir, name))
    out[name] = dict(steps=int(result["state"]["step"]), seconds=round(time.perf_counter() - t, 1))
  return out


def caption_embeddings(mg, path: str) -> None:
  """Our MiniLM embeddings of every Shapes caption, for the reference's text input."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from phenaki_jax import text as text_lib  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import shapes as shapes_lib  # pylint: disable=g-import-not-at-top

  captions = sorted({shapes_lib.caption(*t) for t in shapes_lib.all_triples()})
  encoder = text_lib.TextEncoder.from_config(mg.text_encoder)
  tokens, mask = encoder.encode(captions)
  np.savez(path, captions=np.array(captions), tokens=np.asarray(tokens), mask=np.asarray(mask))


# The sampling options of one clip (not of continuations).
DRAW = ("steps", "cfg_scale", "top_k", "candidates", "score_chunks", "restrict_codes")


def evaluate_seed(rep: int) -> int:
  """The sampling seed of repeat `rep` (+ the batch's first prompt on our side)."""
  from phenaki_jax import evaluate  # pylint: disable=g-import-not-at-top

  return evaluate.SPLIT_SEEDS[_SPLIT.value] + 1000 * rep


def sample_ours(sampler, prompts, batch: int, seeds: int, **options):
  """uint8 clips of `prompts` for each of `seeds` sampling seeds, in padded batches."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  clips = []
  for rep in range(seeds):
    for i in range(0, len(prompts), batch):
      chunk = prompts[i : i + batch]
      padded = chunk + chunk[-1:] * (batch - len(chunk))
      seed = evaluate_seed(rep) + i
      clips.append(np.asarray(sampler.generate(padded, seed=seed, **options))[: len(chunk)])
  return np.concatenate(clips)


def score(clips, prompts) -> dict:
  from phenaki_jax.evaluators import shapes as shapes_eval  # pylint: disable=g-import-not-at-top

  result = shapes_eval.aggregate([shapes_eval.score(v, p) for v, p in zip(clips, prompts)])
  keep = (
    "all_accuracy",
    "color_accuracy",
    "shape_accuracy",
    "direction_accuracy",
    "template_iou",
    "stray_components",
    "area_change",
    "num_clips",
  )
  return {k: result[k] for k in keep if k in result}


def main(argv):
  del argv
  cpus = race.limit_cpus(flags.FLAGS.threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from phenaki_jax import config_io, evaluate, sample  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import shapes as shapes_lib  # pylint: disable=g-import-not-at-top

  quick = flags.FLAGS.quick
  minutes = (0.25, 0.25) if quick else (_STAGE1_MIN.value, _STAGE2_MIN.value)
  seeds = 1 if quick else _SEEDS.value
  workdir = _WORKDIR.value
  trained = os.path.exists(os.path.join(workdir, "cvivit"))
  if _REUSE.value and not (trained and flags.FLAGS.ours_only):
    raise ValueError(
      "--reuse samples our models of an earlier run: it needs --ours_only and a --workdir "
      f"that holds one ({workdir} does {'' if trained else 'not'})"
    )
  if trained and not _REUSE.value:
    raise ValueError(
      f"{workdir} holds an earlier race: remove it, pass another --workdir, or sample its "
      "models again with --reuse --ours_only"
    )
  os.makedirs(workdir, exist_ok=True)
  size = _SIZE.value
  cv, mg = our_configs(size, minutes, _DATA_SEED.value, workdir, _RECIPE.value)
  spec = shapes_lib.spec_from_config(cv)
  sets = evaluate.prompt_sets(spec, _SPLIT.value)
  prompts = {k: list(sets[k][:4] if quick else sets[k]) for k in SETS}
  flat = [p for k in SETS for p in prompts[k]]
  report = dict(size=size, minutes=minutes, seeds=seeds, data_seed=_DATA_SEED.value, cpus=cpus)
  report["split"] = _SPLIT.value
  report["recipe"] = _RECIPE.value

  # ---- Ours ----
  if not _REUSE.value:
    report["ours_training"] = train_ours(cv, mg, workdir)
  sampler = sample.Sampler.from_workdirs(
    os.path.join(workdir, "cvivit"), os.path.join(workdir, "maskgit")
  )
  batch = cv.data.batch_size
  # Ground-truth clips of the same prompts (the evaluation's data seed), through each C-ViViT.
  data_seed = evaluate.SPLIT_SEEDS[_SPLIT.value]
  real = np.stack(
    [
      v
      for k in SETS
      for v in evaluate.real_clips(spec, prompts[k], evaluate.DATA_SPLITS[k], data_seed)
    ]
  )
  round_trips = {"real": real, "ours": _common.round_trip(sampler.tokenizer, real)}
  ours = sample_ours(sampler, flat, batch, seeds)
  ours_equal = sample_ours(sampler, flat, batch, seeds, **EQUAL_COMPUTE)
  report["ours_equal_compute_knobs"] = EQUAL_COMPUTE
  # Ours again with the sampling defaults chosen on the validation split for the tiny configs
  # (more steps, top-k, candidates, code support): the same models, drawn as a user would.
  tiny = {k: v for k, v in config_io.from_file("maskgit_b", "tiny").sample.items() if k in DRAW}
  ours_tiny = sample_ours(sampler, flat, batch, seeds, **tiny)
  report["ours_tiny_sampling_knobs"] = tiny

  # ---- Theirs ----
  theirs = None
  if not flags.FLAGS.ours_only:
    if not race.venv_ready(flags.FLAGS.venv):
      race.setup_venv(flags.FLAGS.venv)
    text_path = os.path.join(workdir, "captions.npz")
    caption_embeddings(mg, text_path)
    worker = race.Worker(flags.FLAGS.venv, race.reference_size(size), flags.FLAGS.threads)
    try:
      worker.ask(
        cmd="shapes",
        resolution=spec.resolution,
        num_frames=spec.num_frames,
        data_seed=_DATA_SEED.value,
        text=text_path,
      )
      report["theirs_training"] = {
        stage: worker.ask(cmd="train", stage=stage, seconds=60 * m)
        for stage, m in (("cvivit", minutes[0]), ("maskgit", minutes[1]))
      }
      clips = []
      with tempfile.TemporaryDirectory(prefix="race_quality_") as tmp:
        src, out = os.path.join(tmp, "real.npy"), os.path.join(tmp, "round_trip.npy")
        np.save(src, real)
        worker.ask(cmd="reconstruct", path=src, out=out)
        round_trips["theirs"] = np.load(out)
        for rep in range(seeds):
          out = os.path.join(tmp, f"{rep}.npy")
          worker.ask(cmd="sample", prompts=flat, seed=evaluate_seed(rep), out=out)
          clips.append(np.load(out))
      theirs = np.concatenate(clips)
    finally:
      worker.close()

  # ---- Judge ----
  sides = (
    ("ours", ours),
    ("ours_equal_compute", ours_equal),
    ("ours_tiny_sampling", ours_tiny),
    ("theirs", theirs),
  )

  def by_set(clips, reps: int) -> dict:
    """Scores per prompt set of `clips`: `reps` repeats of `flat`, pooled per set."""
    out, start = {}, 0
    for k in SETS:
      n = len(prompts[k])
      chosen = [clips[r * len(flat) + start : r * len(flat) + start + n] for r in range(reps)]
      out[k] = score(np.concatenate(chosen), prompts[k] * reps)
      start += n
    return out

  for side, clips in sides:
    if clips is not None:
      report[side] = by_set(clips, seeds)
  report["round_trip"] = {side: by_set(clips, 1) for side, clips in round_trips.items()}
  report["machine"] = _common.machine()
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
