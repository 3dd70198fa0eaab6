"""Several processes on this machine (`jax.distributed` over 127.0.0.1, CPU collectives, fake
devices) run the same `python -m phenaki_jax.train` command.

  * Two processes × 4 devices train what one process × 8 devices trains: the same global batch
    (the Shapes stream does not depend on the process count) on the same (8, 1, 1) mesh, so both
    stages, the C-ViViT and the MaskGIT over it, end with the same parameters.
  * They save checkpoints together, process 0 alone writes the summaries.
  * SIGTERM to one process: both save at one agreed step and exit 0; a relaunch resumes there
    and ends where an uninterrupted run ends.

Every launch has a bounded timeout, so a hang fails. The runs are a handful of steps: compiling
the steps dominates (the persistent compilation cache of conftest.py serves later launches).
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, _shared_run

LAUNCH_TIMEOUT = 420  # seconds per launch of all processes: a hang fails, a slow CPU does not
STEPS = 8  # steps of the uninterrupted C-ViViT runs
HALF = STEPS // 2  # they also save here: the parameters' movement from here to STEPS
# The tiny C-ViViT, shortened: one held-out clip at the end (no evaluation otherwise), no
# warm-up, so that a few steps move the parameters well beyond the tolerance.
CVIVIT = [
  "--config=configs/cvivit_b.py:tiny",
  "--config.log_every=1",
  "--config.eval_every=100000",
  "--config.eval.num_clips=1",
  "--config.optim.warmup_steps=1",
]
MASKGIT_STEPS = 4
# The tiny MaskGIT: no samples, FVD or code statistics at the end.
MASKGIT = [
  "--config=configs/maskgit_b.py:tiny",
  "--config.log_every=1",
  f"--config.total_steps={MASKGIT_STEPS}",
  f"--config.checkpoint_every={MASKGIT_STEPS // 2}",
  "--config.sample.num_videos=0",
  "--config.eval_metrics.fvd_videos=0",
  "--config.code_support_clips=0",
  "--config.optim.warmup_steps=1",
]
# One process and two must agree to this share of how far the parameters moved over the last
# half of the run. They differ in the order of the cross-process reductions only (float
# rounding), which Adam amplifies in the few parameters whose gradient is ~0 (attention key
# biases, to which softmax is blind); a different batch or mesh moves them apart by O(1).
RELATIVE_TOLERANCE = 1e-2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Launch:
  """`processes` copies of one training command, `devices` fake CPU devices each, their output
  in `<workdir>.<n>.log<p>` (n: the launch's number in this work directory)."""

  def __init__(self, workdir, args, processes: int = 2, devices: int = 4):
    self.workdir = workdir
    env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    port = _free_port()
    n = 0
    while os.path.exists(f"{workdir}.{n}.log0"):
      n += 1
    self.logs = [f"{workdir}.{n}.log{p}" for p in range(processes)]
    self.procs = []
    for p in range(processes):
      dist = []
      if processes > 1:
        dist = [
          f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={processes}",
          f"--process_id={p}",
        ]
      with open(self.logs[p], "w") as out:
        self.procs.append(
          subprocess.Popen(
            [sys.executable, "-m", "phenaki_jax.train", *args, f"--workdir={workdir}", *dist],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
          )
        )
    self.deadline = time.monotonic() + LAUNCH_TIMEOUT

  def log(self, p: int) -> str:
    with open(self.logs[p], errors="replace") as f:
      return f.read()

  def wait_for(self, p: int, text: str) -> None:
    """Until process p has logged `text` (fails if it ends first or the launch times out)."""
    while text not in self.log(p):
      if self.procs[p].poll() is not None or time.monotonic() > self.deadline:
        self.kill()
        pytest.fail(f"process {p} never logged {text!r}:\n{self.log(p)[-3000:]}")
      time.sleep(0.1)

  def finish(self) -> list:
    """Waits for every process; fails with its log as soon as one fails, or on the timeout."""
    while any(proc.poll() is None for proc in self.procs):
      failed = [p for p, proc in enumerate(self.procs) if proc.poll() not in (None, 0)]
      if failed or time.monotonic() > self.deadline:
        self.kill()
        p = failed[0] if failed else 0
        what = f"process {p} failed" if failed else f"timed out after {LAUNCH_TIMEOUT} s"
        pytest.fail(f"{what}:\n{self.log(p)[-3000:]}")
      time.sleep(0.2)
    logs = [self.log(p) for p in range(len(self.procs))]
    for p, (proc, log) in enumerate(zip(self.procs, logs)):
      assert proc.returncode == 0, f"process {p} exited {proc.returncode}:\n{log[-3000:]}"
    return logs

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def _state(workdir, step: int) -> dict:
  """The train state saved at `step`, as numpy arrays (read without the run's mesh)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=args)


def _distance(a, b) -> float:
  """The L2 distance between two parameter trees of one structure."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return float(np.sqrt(sum(np.sum((np.float64(x) - y) ** 2) for x, y in pairs)))


def _assert_same_training(one, two, first: int, last: int) -> None:
  """One process's and two processes' parameters, saved at steps `first` and `last`, agree to
  RELATIVE_TOLERANCE of how far the two-process parameters moved between those steps."""
  moved = _distance(_state(two, last)["params"], _state(two, first)["params"])
  assert moved > 0.05, f"the parameters barely moved ({moved:.3g}): the comparison is void"
  for step in (first, last):
    apart = _distance(_state(one, step)["params"], _state(two, step)["params"])
    assert apart <= RELATIVE_TOLERANCE * moved, (
      f"at step {step} 1 and 2 processes are {apart:.3g} apart; the parameters moved "
      f"{moved:.3g} from step {first} to {last}"
    )


@pytest.fixture(scope="module")
def cvivit_runs(tmp_path_factory):
  """The tiny C-ViViT trained for STEPS steps, saved at HALF and STEPS, by 2 processes × 4
  devices and by 1 process × 8 devices (launched together: the CPU is shared, not idle).
  Returns their work directories; the first is the reference of the SIGTERM test and the
  tokenizer of the MaskGIT runs."""

  def train(base):
    base = pathlib.Path(base)
    shutil.rmtree(base, ignore_errors=True)  # what a failed attempt of another worker left
    base.mkdir()
    args = [*CVIVIT, f"--config.total_steps={STEPS}", f"--config.checkpoint_every={HALF}"]
    two = Launch(base / "cvivit_2x4", args)
    one = Launch(base / "cvivit_1x8", args, processes=1, devices=8)
    logs = two.finish() + one.finish()
    for p, log in enumerate(logs[:2]):
      assert f"process {p} of 2: 4 local of 8 devices" in log
    for log in logs:
      assert "mesh {'data': 8, 'fsdp': 1, 'model': 1}" in log

  # Once per pytest run: the xdist workers share the runs.
  base = pathlib.Path(_shared_run(tmp_path_factory, "multiprocess_cvivit", train))
  two, one = base / "cvivit_2x4", base / "cvivit_1x8"
  assert sorted(os.listdir(two / "checkpoints"), key=int) == [str(HALF), str(STEPS)]
  assert len(list(two.glob("events.out.tfevents*"))) == 1  # process 0's summaries only
  return two, one


def test_two_processes_train_the_cvivit_like_one(cvivit_runs):
  two, one = cvivit_runs
  _assert_same_training(one, two, HALF, STEPS)


def test_two_processes_train_the_maskgit_like_one(cvivit_runs, tmp_path):
  args = [*MASKGIT, f"--config.tokenizer.workdir={cvivit_runs[0]}"]
  # One launch at a time: the MaskGIT compiles its step within the first step, after the
  # processes met, and a third process on the CPU would spread their finishing times.
  two = Launch(tmp_path / "maskgit_2x4", args)
  two.finish()
  one = Launch(tmp_path / "maskgit_1x8", args, processes=1, devices=8)
  one.finish()
  _assert_same_training(one.workdir, two.workdir, MASKGIT_STEPS // 2, MASKGIT_STEPS)


def test_one_process_keeps_a_python_sigterm_handler(tmp_path):
  """Without JAX's distributed runtime no sync manager listens: a Python handler notes the
  signal, and the run saves at its next step."""
  from phenaki_jax import checkpoint  # pylint: disable=g-import-not-at-top

  previous = signal.getsignal(signal.SIGTERM)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  try:
    ckpt.install_signal_handlers()
    assert callable(signal.getsignal(signal.SIGTERM))
    assert not ckpt.preempted(1) and not ckpt.should_save(1)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not ckpt.preempted(2) and time.monotonic() < deadline:
      time.sleep(0.01)  # the handler runs between bytecodes of this (the main) thread
    assert ckpt.preempted(2)
  finally:
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()


def test_sigterm_to_one_process_saves_all_at_one_step_and_resumes(cvivit_runs, tmp_path, capsys):
  """SIGTERM to process 1 alone, mid-run: both processes save at the step JAX's preemption
  sync agrees on and exit 0; relaunched, they resume there and end bit-identical to the
  uninterrupted run (the same programs on the same devices, restored exactly)."""
  workdir = tmp_path / "preempted"
  many = 100_000  # never reached
  args = [*CVIVIT, "--config.checkpoint_every=100000"]
  run = Launch(workdir, [*args, f"--config.total_steps={many}"])
  run.wait_for(1, "training from step 0")
  signalled = time.monotonic()
  os.kill(run.procs[1].pid, signal.SIGTERM)
  logs = run.finish()
  latency = time.monotonic() - signalled
  steps = [re.findall(r"preempted: saving the checkpoint of step (\d+)", log) for log in logs]
  assert all(len(s) == 1 for s in steps), logs[1][-3000:]
  (stop,), (other,) = steps
  stop = int(stop)
  assert int(other) == stop and 0 < stop < many
  assert os.listdir(workdir / "checkpoints") == [str(stop)]  # that one checkpoint alone
  with capsys.disabled():
    print(f"\nSIGTERM to process 1 → both saved step {stop} and exited 0 in {latency:.1f} s")

  # Relaunched for as many steps as the uninterrupted run (or, had the signal come late, a few
  # more than the preemption, with its own uninterrupted run).
  total, reference = STEPS, cvivit_runs[0]
  if stop >= STEPS:
    total, reference = stop + 2, tmp_path / "uninterrupted"
    Launch(reference, [*args, f"--config.total_steps={total}"]).finish()
  logs = Launch(workdir, [*args, f"--config.total_steps={total}"]).finish()
  for log in logs:
    assert f"resumed from step {stop}" in log
  resumed, uninterrupted = _state(workdir, total), _state(reference, total)
  assert jax.tree.structure(resumed) == jax.tree.structure(uninterrupted)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)
