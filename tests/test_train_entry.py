"""phenaki_jax/train.py: the entry point's defaults."""

import pytest

from phenaki_jax import train


@pytest.mark.parametrize(
  "arg, want",
  [
    ("configs/cvivit_b.py", "workdirs/cvivit_b"),
    ("configs/maskgit_b.py:tiny", "workdirs/maskgit_b_tiny"),
    ("/abs/path/my_run.py:real", "workdirs/my_run_real"),
  ],
)
def test_default_workdir_is_named_after_the_config(arg, want):
  assert train.default_workdir(arg) == want
