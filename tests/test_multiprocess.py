"""Two processes on this machine (`jax.distributed` over 127.0.0.1, CPU collectives, 2 fake
devices each) run the same `python -m phenaki_jax.train` command: they train a 4-device mesh,
save one checkpoint together, process 0 alone writes the summaries, and a second launch of both
resumes from that checkpoint. A bounded timeout makes a hang fail."""

import os
import socket
import subprocess
import sys

from conftest import REPO

COMMON = [
  "--config=configs/cvivit_b.py:tiny",
  "--config.log_every=2",
  "--config.checkpoint_every=4",
  "--config.eval_every=4",
  "--config.eval.num_clips=8",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, total_steps: int) -> list:
  """Runs both processes to the end; returns their (returncode, log) pairs."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "phenaki_jax.train",
        *COMMON,
        f"--config.total_steps={total_steps}",
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={p}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for p in range(2)
  ]
  out = []
  try:
    for proc in procs:
      log, _ = proc.communicate(timeout=300)
      out.append((proc.returncode, log))
  finally:
    for proc in procs:
      proc.kill()
  return out


def test_two_processes_train_checkpoint_and_resume(tmp_path):
  workdir = tmp_path / "run"
  first = _launch(workdir, total_steps=4)
  for p, (code, log) in enumerate(first):
    assert code == 0, log[-3000:]
    assert f"process {p} of 2: 2 local of 4 devices" in log
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
  assert len(list(workdir.glob("events.out.tfevents*"))) == 1  # process 0's summaries only
  second = _launch(workdir, total_steps=6)
  for code, log in second:
    assert code == 0, log[-3000:]
    assert "resumed from step 4" in log
  assert "6" in os.listdir(workdir / "checkpoints")
