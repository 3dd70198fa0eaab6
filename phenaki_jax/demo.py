r"""The end-to-end demo on the embedded default (Shapes data, tiny configs, MiniLM text).

  make demo        # = python -m phenaki_jax.demo --workdir=workdirs/demo

1. trains the tiny C-ViViT (stage 1) into WORKDIR/cvivit and writes its held-out
   reconstructions (side-by-side GIF + PNG contact sheet) and metrics, then polishes its decoder
   (`phenaki_jax.trainers.decoder_polish`: codes unchanged, objects drawn more cleanly) into
   WORKDIR/cvivit_polished, which the samples are decoded with;
2. trains the tiny text-conditioned MaskGIT (stage 2) on 80% video / 20% image into
   WORKDIR/maskgit;
3. samples a 3-prompt story video and a contact sheet of generated clips, and runs the Shapes
   prompt-following evaluator on its test split, held-out stories included (JSON), into
   WORKDIR/eval (docs/design.md, "The Shapes benchmark": defaults are chosen on the val split,
   `python -m phenaki_jax.evaluate shapes --split=val`, never on these figures).
Each stage trains for its config's steps (sized for a quiet 2-core CPU; --stage1_steps and
--stage2_steps train longer) under a wall-clock cap, and is skipped when already done, so an
interrupted demo resumes where it stopped (the trainers resume from their checkpoints).
"""

import json
import os
import shutil
import time

from absl import app, flags, logging

from phenaki_jax import config_io

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where everything is written.")


def _stage_flags(stage: int, model: str, minutes: float, steps: int, takes: str):
  """--stage{N}_minutes and --stage{N}_steps of one training stage."""
  minutes_flag = flags.DEFINE_float(
    f"stage{stage}_minutes",
    minutes,
    f"Wall-clock cap on the {model}'s training (its "
    f"config's {steps} steps take {takes} on a quiet 2-core CPU). Not given: {minutes:g} min, "
    f"times --stage{stage}_steps / {steps} when that is over 1.",
  )
  steps_flag = flags.DEFINE_integer(
    f"stage{stage}_steps",
    0,
    f"{model} training steps (its cosine decays over them); 0 = the config's {steps}.",
    lower_bound=0,
  )
  return minutes_flag, steps_flag


_STAGE1_MIN, _STAGE1_STEPS = _stage_flags(1, "C-ViViT", 12.0, 3000, "~8 min")
_STAGE2_MIN, _STAGE2_STEPS = _stage_flags(2, "MaskGIT", 24.0, 8400, "~14 min")
_POLISH_STEPS = flags.DEFINE_integer(
  "polish_steps",
  1000,
  "Decoder polish steps after stage 1 (~3 min on a quiet 2-core CPU; the MaskGIT does not "
  "depend on it); 0 = none: samples are decoded by stage 1's C-ViViT.",
  lower_bound=0,
)
_POLISH_MIN = flags.DEFINE_float(
  "polish_minutes", 6.0, "Wall-clock cap on the decoder polish (0: none).", lower_bound=0.0
)
_EVAL_SEEDS = flags.DEFINE_integer(
  "eval_seeds",
  2,
  "Seeds the Shapes evaluator samples every prompt set with (pooled): one "
  "seed's figures move by about ±0.06, and each seed costs ~1.5 min on a 2-core CPU.",
  lower_bound=1,
)
_SEED = flags.DEFINE_integer(
  "seed",
  0,
  "Retraining seed: both stages' initialisation and dropout (config.seed) and their Shapes "
  "streams (config.data.seed, kept apart per stage) move with it; 0 is the published demo. "
  "The evaluation's prompts and sampling seeds do not change.",
  lower_bound=0,
)
_STORY = flags.DEFINE_multi_string(
  "story",
  ["a green circle moves right", "a green circle moves down", "a green circle moves left"],
  "The prompts of the demo story.",
)


def _done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "DONE"))


def _mark_done(workdir: str, info: dict) -> None:
  with open(os.path.join(workdir, "DONE"), "w") as f:
    json.dump(info, f, indent=2)


def stage_config(
  name: str, workdir: str, steps: int, minutes: float, minutes_given: bool = True, seed: int = 0
):
  """The tiny config of one demo stage: `steps` training steps (0 = the config's), its cosine
  decaying over them, under a wall-clock cap of `minutes` (unless `minutes_given`, raised by
  steps / the config's steps when that is over 1), retrained with `seed` (added to the
  config's seed, and twice to its data seed: the two stages' streams stay apart). A run
  already started in `workdir` must have planned the same number of steps and the same seed:
  resuming it with others would change it midway."""
  config = config_io.from_file(name, "tiny")
  total = steps or config.total_steps
  seeds = (config.seed + seed, config.data.seed + 2 * seed)
  if not minutes_given:  # more steps than the config's: a longer cap; fewer: the same cap
    minutes *= max(1.0, total / config.total_steps)
  if os.path.exists(os.path.join(workdir, "config.json")):
    planned = config_io.from_workdir(workdir)
    if planned.total_steps != total:
      flag = "stage1_steps" if name == "cvivit_b" else "stage2_steps"
      raise ValueError(
        f"{workdir} holds a run of {planned.total_steps} training steps, and this demo asks "
        f"for {total}: pass --{flag}={planned.total_steps} to use it, or another --workdir"
      )
    if (planned.seed, planned.data.seed) != seeds:
      raise ValueError(
        f"{workdir} holds a run trained with other seeds (config.seed={planned.seed}, "
        f"data.seed={planned.data.seed}) than --seed={seed} gives {seeds}: pass the --seed "
        f"it was started with, or use another --workdir"
      )
  with config.unlocked():
    config.seed, config.data.seed = seeds
    config.total_steps = config.optim.decay_steps = total
    config.max_train_seconds = 60 * minutes
  return config


def polish_stage(
  cvivit_dir: str, polished_dir: str, steps: int, minutes: float, seed: int = 0
) -> dict:
  """Polishes the decoder of the C-ViViT in `cvivit_dir` into `polished_dir` (unless done) and
  returns the polish's report; its data and mixing seed moves with the retraining `seed`. The
  polish writes into `polished_dir`.partial, renamed when complete, so an interrupted polish
  starts again rather than leaving half a tokenizer."""
  from phenaki_jax.trainers import decoder_polish  # pylint: disable=g-import-not-at-top

  if _done(polished_dir):
    with open(os.path.join(polished_dir, "DONE")) as f:
      report = json.load(f)
    if report.get("planned_steps") != steps:
      raise ValueError(
        f"{polished_dir} holds a polish of {report.get('planned_steps')} steps, and this demo "
        f"asks for {steps}: pass --polish_steps={report.get('planned_steps')} to use it, or "
        "another --workdir"
      )
    return report
  if os.path.exists(polished_dir):
    raise FileExistsError(
      f"{polished_dir} exists but holds no finished polish: remove it, or use another --workdir"
    )
  partial = polished_dir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  report = decoder_polish.polish(
    cvivit_dir,
    partial,
    steps=steps,
    max_seconds=60 * minutes,
    seed=decoder_polish.DEFAULT_SEED + seed,
    log=logging.info,
  )
  report["out_dir"] = polished_dir
  _mark_done(partial, report)
  os.replace(partial, polished_dir)
  return report


def main(argv):
  del argv
  from phenaki_jax import evaluate, sample  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import video_io  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import cvivit as cvivit_trainer  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import maskgit as maskgit_trainer  # pylint: disable=g-import-not-at-top

  root = os.path.abspath(_WORKDIR.value)
  cvivit_dir, polished_dir, maskgit_dir, eval_dir = (
    os.path.join(root, d) for d in ("cvivit", "cvivit_polished", "maskgit", "eval")
  )
  t0 = time.time()

  # Both stages' plans first, so that a workdir holding other runs fails before any training.
  config1 = stage_config(
    "cvivit_b",
    cvivit_dir,
    _STAGE1_STEPS.value,
    _STAGE1_MIN.value,
    _STAGE1_MIN.present,
    _SEED.value,
  )
  config2 = stage_config(
    "maskgit_b",
    maskgit_dir,
    _STAGE2_STEPS.value,
    _STAGE2_MIN.value,
    _STAGE2_MIN.present,
    _SEED.value,
  )
  with config2.unlocked():
    config2.tokenizer.workdir = cvivit_dir

  # ---- Stage 1: C-ViViT ----
  if not _done(cvivit_dir):
    out = cvivit_trainer.main(config1, cvivit_dir)
    _mark_done(cvivit_dir, out["eval"])
  with open(os.path.join(cvivit_dir, "DONE")) as f:
    stage1 = json.load(f)
  print(f"[stage 1] C-ViViT held-out reconstruction: {json.dumps(stage1)}", flush=True)
  decoder_dir = cvivit_dir
  if _POLISH_STEPS.value:
    polished = polish_stage(
      cvivit_dir, polished_dir, _POLISH_STEPS.value, _POLISH_MIN.value, _SEED.value
    )
    decoder_dir = polished_dir
    print(
      f"[stage 1] decoder polished in {polished['train_seconds']:.0f} s, held-out PSNR "
      f"{json.dumps(polished['held_out_psnr_before'])} -> "
      f"{json.dumps(polished['held_out_psnr_after'])}",
      flush=True,
    )

  # ---- Stage 2: MaskGIT ----
  if not _done(maskgit_dir):
    out = maskgit_trainer.main(config2, maskgit_dir)
    _mark_done(maskgit_dir, {"step": int(out["state"]["step"])})
  print(f"[stage 2] MaskGIT trained in {maskgit_dir}", flush=True)

  # ---- Sampling and evaluation ----
  os.makedirs(eval_dir, exist_ok=True)
  sampler = sample.Sampler.from_workdirs(decoder_dir, maskgit_dir)
  story = sampler.story(
    _STORY.value,
    [sampler.max_frames] + [sampler.max_frames - 5] * (len(_STORY.value) - 1),
    context_frames=5,
    seed=0,
  )
  files = {
    "story_mp4": video_io.write_mp4(
      os.path.join(eval_dir, "demo_story.mp4"), story, fps=4, scale=8
    ),
    "story_gif": video_io.write_gif(
      os.path.join(eval_dir, "demo_story.gif"), story, fps=4, scale=8
    ),
  }
  video_io.contact_sheet(story[None], os.path.join(eval_dir, "demo_story.png"), scale=4)
  results = evaluate.evaluate_shapes(
    sampler,
    evaluate.shapes_spec(cvivit_dir),
    split="test",
    num_seeds=_EVAL_SEEDS.value,
    out_dir=eval_dir,
  )
  with open(os.path.join(eval_dir, "shapes_eval.json"), "w") as f:
    json.dump(results, f, indent=2)
  files.update(
    samples_png=os.path.join(eval_dir, "seen.png"),
    eval_json=os.path.join(eval_dir, "shapes_eval.json"),
    reconstructions=os.path.join(cvivit_dir, "eval"),
  )
  print(
    json.dumps(
      {
        "story_prompts": _STORY.value,
        "results": results,
        "files": files,
        "workdir": root,
        "decoder": decoder_dir,
        "minutes": round((time.time() - t0) / 60, 1),
      },
      indent=2,
    )
  )
  logging.info("demo finished in %.1f min", (time.time() - t0) / 60)


if __name__ == "__main__":
  app.run(main)
