r"""Training entry point: one flag file, one work directory, dispatch on `config.trainer`.

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit
  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit

Configs are locked: a misspelt `--config.x=...` fails at start-up and names the key. A run
resumes from the latest checkpoint in --workdir automatically. Without --workdir a run goes to
`workdirs/<config file name>[_<variant>]`, e.g. `workdirs/cvivit_b` or `workdirs/maskgit_b_tiny`.
"""

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phenaki_jax import config_io

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints and logs go (default: workdirs/<config>[_<variant>])."
)
flags.mark_flags_as_required(["config"])

TRAINERS = {"cvivit": "phenaki_jax.trainers.cvivit", "maskgit": "phenaki_jax.trainers.maskgit"}


def main(argv):
  del argv
  config = _CONFIG.value
  if config.trainer not in TRAINERS:
    raise ValueError(f"config.trainer={config.trainer!r} is not one of {sorted(TRAINERS)}")
  workdir = _WORKDIR.value
  if not workdir:
    workdir = config_io.default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
    logging.info("no --workdir given: writing to %s", workdir)
  try:
    importlib.import_module(TRAINERS[config.trainer]).main(config, workdir)
  except MemoryError as e:  # a step that cannot fit, found before the first step
    logging.error("%s", e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
