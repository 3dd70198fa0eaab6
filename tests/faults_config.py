"""The conftest.py tiny configs as a config file, for the training CLIs run by test_faults.py.

  python -m phenaki_jax.train --config=tests/faults_config.py:cvivit --workdir=...
  python -m phenaki_jax.train --config=tests/faults_config.py:maskgit \
      --config.tokenizer.workdir=... --workdir=...

The fault trials compare a CLI run, killed and restarted, with the session fixtures that
conftest.py trains in process (`tiny_cvivit_dir`, `tiny_maskgit_dir`). Building the config from
the very functions the fixtures use keeps the two runs the same by construction; the trials
override only intervals (checkpoint, evaluation, log) that do not enter the train state.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import conftest  # noqa: E402  (after the path it is found on)


def get_config(arg: str = "cvivit"):
  if arg == "cvivit":
    return conftest.tiny_cvivit_config().lock()
  if arg == "maskgit":
    # The tokenizer's work directory comes with --config.tokenizer.workdir.
    return conftest.tiny_maskgit_config("").lock()
  raise ValueError(f"unknown variant {arg!r} of {__file__}; use cvivit or maskgit")
