"""The code is formatted (`make format`: ruff format, Google 2-space style, pyproject.toml)."""

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
