r"""Stage 1 on the Shapes data: the tiny C-ViViT trained for a wall-clock budget. Prints JSON.

  python benchmarks/cvivit_shapes.py --seconds=840 [--workdir=workdirs/bench_cvivit]

Reports the steps run, steps/s, and the held-out reconstruction metrics of the trainer's final
evaluation (PSNR over all frames and the first frame alone, SSIM, codebook usage and perplexity
over `config.eval.num_clips` eval-split clips), with the machine it ran on. A workdir that
already holds a checkpoint resumes from it; `steps` counts only the steps of this call.
Targets (2-core CPU, ≤ 15 min): ≥ 30 dB PSNR and > 50% of the codebook in use.
"""

import glob
import json
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top
from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

_SECONDS = flags.DEFINE_float("seconds", 840.0, "Training budget (config.max_train_seconds).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Default: a temporary directory.")
_VARIANT = flags.DEFINE_string("variant", "tiny", "configs/cvivit_b.py variant.")


def _latest_step(workdir: str):
  from phenaki_jax import checkpoint  # pylint: disable=g-import-not-at-top

  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  ckpt = checkpoint.Checkpointer(directory, read_only=True)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _last_scalar(workdir: str, tag: str):
  """The last value clu's ReportProgress (or the loop) wrote for `tag`, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu has imported it already)

  last = None
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag and value.metadata.plugin_data.plugin_name == "scalars":
          last = (event.step, float(tf.make_ndarray(value.tensor)))
  return last


def main(argv):
  del argv
  from phenaki_jax.trainers import cvivit  # pylint: disable=g-import-not-at-top

  config = config_io.from_file("cvivit_b", _VARIANT.value)
  with config.unlocked():
    config.max_train_seconds = _SECONDS.value
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="cvivit_bench_")
  start = _latest_step(workdir) or 0
  out = cvivit.main(config, workdir)
  final = int(out["state"]["step"])
  steps = final - start
  steady = _last_scalar(workdir, "steps_per_sec")
  ev = out["eval"]
  print(
    json.dumps(
      {
        "benchmark": "cvivit_shapes",
        "config": f"cvivit_b.py:{_VARIANT.value}",
        "workdir": workdir,
        "budget_seconds": _SECONDS.value,
        "start_step": start,
        "final_step": final,
        "steps": steps,
        "seconds": round(out["seconds"], 1),
        # Includes the first step's compile; `steps_per_sec_steady` is ReportProgress's last rate.
        "steps_per_sec": round(steps / out["seconds"], 3) if out["seconds"] else None,
        "steps_per_sec_steady": round(steady[1], 3) if steady else None,
        "batch_size": config.data.batch_size,
        "num_frames": config.data.num_frames,
        "resolution": config.data.resolution,
        "eval_clips": config.eval.num_clips,
        "psnr": ev.get("eval/psnr"),
        "psnr_first_frame": ev.get("eval/psnr_first_frame"),
        "ssim": ev.get("eval/ssim"),
        "codebook_usage": ev.get("eval/codebook_usage"),
        "codebook_perplexity": ev.get("eval/codebook_perplexity"),
        "codebook_size": cvivit.build_model(config).codebook_size,
        "train_l2": out["train"].get("l2"),
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
