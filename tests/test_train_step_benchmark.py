"""benchmarks/train_step.py: FLOP counts that survive nn.scan, timed steps, no TensorFlow needed."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = str(REPO / "benchmarks" / "train_step.py")


def run_benchmark(*args) -> list:
  proc = subprocess.run(
    [sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run"')]
  summary = json.loads(proc.stdout[proc.stdout.index("{\n") :])
  assert summary["benchmark"] == "train_step" and summary["results"] == rows
  return rows


def test_scanned_layers_count_all_their_flops():
  runs = "--runs=cvivit:tiny:2,maskgit:tiny:2"
  scanned = run_benchmark(runs, "--count_only", "--scan=true")
  unrolled = run_benchmark(runs, "--count_only", "--scan=false")
  for s, u in zip(scanned, unrolled):
    assert s["run"] == u["run"] and s["scan"] and not u["scan"]
    assert u["flops_per_step"] > 1e9
    # XLA alone counts a scan's body once (cvivit:tiny: 1.50e9 instead of 2.28e9).
    assert s["flops_per_step"] == pytest.approx(u["flops_per_step"], rel=1e-3)
    assert "ms_per_step" not in s  # nothing compiled or run


def test_timed_steps():
  (row,) = run_benchmark(
    "--runs=maskgit:tiny:2",
    "--steps=2",
    "--scan=true",
    "--unrolled_flops=false",
    "--maskgit_input=codes",
  )
  assert row["batch"] == 2 and row["grid"] == [5, 8, 8] and row["input"] == "codes"
  assert row["flops_per_step"] is None  # a scanned step's own count is not reported
  assert 0 < row["ms_per_step_min"] <= row["ms_per_step"]
  assert row["xla_step_bytes"] > 4 * 1.14e6 * 2  # at least the parameters and their gradients
  assert row["examples_per_sec"] == pytest.approx(2e3 / row["ms_per_step"], rel=0.01)


def test_trainers_import_without_tensorflow():
  """clu's metric writers need TensorFlow; the trainers import clu only when they train."""
  code = (
    "import sys; sys.modules['tensorflow'] = None\n"
    "import phenaki_jax.trainers.cvivit, phenaki_jax.trainers.maskgit\n"
    "assert 'clu.metric_writers' not in sys.modules\n"
    "print('ok')"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
