r"""Training entry point: one flag file, one work directory, dispatch on `config.trainer`.

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit
  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit

Configs are locked: a misspelt `--config.x=...` fails at start-up and names the key. A run
resumes from the latest checkpoint in --workdir automatically. Without --workdir a run goes to
`workdirs/<config file name>[_<variant>]`, e.g. `workdirs/cvivit_b` or `workdirs/maskgit_b_tiny`.

Several processes (multi-host): with --coordinator_address, --num_processes and --process_id
the processes meet there; without them, `jax.distributed.initialize()` finds its peers itself
where JAX can (a Cloud TPU pod slice, a SLURM job with several tasks, or the JAX_COORDINATOR_
ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment). Every process runs the same
command; each reads its own rows of the global batch, process 0 alone writes logs and media,
and checkpoints are saved by all together. SIGTERM to any process (a preemption) makes all of
them save at one step they agree on and exit 0; the same command resumes there.
"""

import importlib
import os
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
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-process runs; see the docstring)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config"])

TRAINERS = {"cvivit": "phenaki_jax.trainers.cvivit", "maskgit": "phenaki_jax.trainers.maskgit"}


def _cluster_detected() -> bool:
  """Whether the environment describes a multi-process run that JAX can join by itself."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def initialize_processes() -> None:
  """`jax.distributed.initialize` from the flags or the environment; nothing for one process."""
  import jax  # pylint: disable=g-import-not-at-top

  given = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise ValueError(
        f"--coordinator_address, --num_processes and --process_id go together; got {given}"
      )
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info(
    "process %d of %d: %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def main(argv):
  del argv
  initialize_processes()
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
