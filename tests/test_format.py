"""The code is formatted (`make format`: ruff format, Google 2-space style) and passes pyflakes'
checks (unused imports and variables, undefined names); settings in pyproject.toml."""

import subprocess
import sys

from conftest import REPO


def test_ruff_format_is_clean():
  result = subprocess.run(
    [sys.executable, "-m", "ruff", "format", "--check", "--diff", "."],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, f"run `make format`:\n{result.stdout[-4000:]}{result.stderr}"


def test_ruff_check_is_clean():
  result = subprocess.run(
    [sys.executable, "-m", "ruff", "check", "."],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr
