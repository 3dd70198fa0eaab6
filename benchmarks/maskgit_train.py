r"""Stage-2 throughput and what the tiny MaskGIT reaches in a wall-clock budget. Prints JSON.

python benchmarks/maskgit_train.py --tokenizer_dir=workdirs/demo/cvivit --seconds=720
"""

import json
import math
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, __import__("os").path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top
from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

_TOK = flags.DEFINE_string("tokenizer_dir", "workdirs/demo/cvivit", "A trained C-ViViT workdir.")
_SECONDS = flags.DEFINE_float("seconds", 720.0, "Training budget.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Default: a temporary directory.")


def main(argv):
  del argv
  from phenaki_jax.trainers import maskgit  # pylint: disable=g-import-not-at-top

  config = config_io.from_file("maskgit_b", "tiny")
  with config.unlocked():
    config.tokenizer.workdir = _TOK.value
    config.max_train_seconds = _SECONDS.value
    config.sample.num_videos = 0
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="maskgit_bench_")
  out = maskgit.main(config, workdir)
  steps = int(out["state"]["step"])
  model = maskgit.build_model(config)
  tokens = math.prod(model.grid)
  print(
    json.dumps(
      {
        "benchmark": "maskgit_train",
        "config": "maskgit_b.py:tiny",
        "steps": steps,
        "seconds": round(out["seconds"], 1),
        "steps_per_sec": round(steps / out["seconds"], 3),
        "tokens_per_sec": round(steps * config.data.batch_size * tokens / out["seconds"], 1),
        "masked_accuracy": out["train"].get("masked_accuracy"),
        "loss": out["train"].get("loss"),
        "uniform_loss": math.log(model.codebook_size),
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
