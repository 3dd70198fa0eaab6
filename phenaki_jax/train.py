r"""Training entry point: one flag file, one work directory, dispatch on `config.trainer`.

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit
  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit

Configs are locked: a misspelt `--config.x=...` fails at start-up and names the key. A run
resumes from the latest checkpoint in --workdir automatically.
"""

import importlib

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = {"cvivit": "phenaki_jax.trainers.cvivit", "maskgit": "phenaki_jax.trainers.maskgit"}


def main(argv):
  del argv
  config = _CONFIG.value
  if config.trainer not in TRAINERS:
    raise ValueError(f"config.trainer={config.trainer!r} is not one of {sorted(TRAINERS)}")
  importlib.import_module(TRAINERS[config.trainer]).main(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
