"""Faults: kill -9 at random moments, SIGTERM, and neither network nor unpickling at run time.

Kill -9 trials. The training CLI runs in a subprocess (the conftest.py tiny configs through
tests/faults_config.py), saving a checkpoint every few steps with orbax's async saves and
evaluating every few more, and is SIGKILLed at moments drawn from an RNG seeded by the trial:
during a step, while an async save is half-written (orbax's temporary directory present),
during an evaluation, during the final evaluation once the final checkpoint is saved (the
restart has no step left to run), and for the MaskGIT during the pre-tokenise pass it then
trains on. The same command is rerun until it finishes. Each restart must resume from the
newest *complete* checkpoint present when it starts (its "resumed from step N" line against the
directories; an orbax temporary directory is never restored, and none is left at the end), and
the finished run must hold the state of an uninterrupted run bit for bit: parameters, optimizer
state, step, meta, the final evaluation's figures (and the MaskGIT's samples and code support).
The uninterrupted runs are the
session fixtures `tiny_cvivit_dir` and `tiny_maskgit_dir`, trained once per pytest run for the
rest of the suite anyway: the same configs (checked: the config.json files differ only in the
intervals, which do not enter the state), since data order and randomness are functions of the
step (docs/design.md, invariant 6) and pre-tokenised batches equal tokenising in the step
(invariant 8).

A kill at a uniformly random time would land mostly in start-up (imports, compilation), which
tests nothing, so each kill aims at its phase (a step's log line, the temporary directory, an
evaluation's start) and waits a random time after; where it really landed is read off after
the process is dead (a temporary directory left → the save; an evaluation begun and not logged
→ the evaluation; else a step) and reported with PHENAKI_FAULTS_LOG=<file> (JSON lines).

`make test` runs trial 0 of each trainer (a save kill for the C-ViViT; a pre-tokenise and a
final-evaluation kill for the MaskGIT), with -m "not faults", pyproject.toml's default; `make
test-faults` runs all ten of each, and the SIGTERM latency over three signals per trainer.

SIGTERM: a single process saves at the next step boundary, logs that step, and exits 0; the
signal → exit time is printed (and logged).

No network, no pickle: every subprocess here runs with a `sitecustomize` that installs an audit
hook (sys.addaudithook): outbound socket events (connect, DNS, sendto) raise and are recorded,
and so is every global an unpickler looks up (`pickle.find_class`), with whether the
numpy-only unpickler of models/safe_pickle.py asked. One test runs training steps of both
stages and a sample under it and checks that nothing was attempted, its probes proving that the
hook was there; another scans the package source for unpickling calls (tested on planted code).
"""

import ast
import dataclasses
import json
import os
import pathlib
import random
import re
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest

REPO = conftest.REPO
CONFIG_FILE = str(REPO / "tests" / "faults_config.py")
TRIALS = 10  # per trainer in the full mode (make test-faults)
CI_TRIALS = (0,)  # per trainer in make test
RUN_TIMEOUT = 900  # seconds for one run of a CLI on the contended 2-core CPU
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temporary directories (path/atomicity_types.py)
AUDIT_ENV = "PHENAKI_FAULTS_AUDIT"
REPORT_ENV = "PHENAKI_FAULTS_LOG"

# Runs in every subprocess of this file before anything else (site imports `sitecustomize`
# from PYTHONPATH). Audit events cover every way into a socket's network side, including
# `connect_ex`, `create_connection` and DNS, and every unpickler's global lookup.
SITECUSTOMIZE = """
import json, os, sys

_LOG = os.environ.get("PHENAKI_FAULTS_AUDIT")
_BLOCKED = {
  "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
  "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto", "socket.sendmsg",
}


def _via_safe_pickle():
  frame = sys._getframe(2)
  while frame is not None:
    if frame.f_code.co_filename.endswith(os.path.join("models", "safe_pickle.py")):
      return True
    frame = frame.f_back
  return False


def _hook(event, args):
  if event in _BLOCKED or event == "pickle.find_class":
    record = {"event": event, "args": [repr(a)[:200] for a in args]}
    if event == "pickle.find_class":
      record["safe_pickle"] = _via_safe_pickle()
    with open(_LOG, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\\n")
    if event in _BLOCKED:
      raise OSError(f"network disabled in this test: {event}")


if _LOG:
  sys.addaudithook(_hook)
"""


# ---- Subprocesses --------------------------------------------------------------------------------
def guarded_env(tmp_path: pathlib.Path) -> dict:
  """The environment of a CLI run here: CPU, the audit hook on, its log in tmp_path."""
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
  path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
  return dict(
    os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, **{AUDIT_ENV: str(tmp_path / "audit.jsonl")}
  )


def audit_records(env: dict) -> list:
  path = env[AUDIT_ENV]
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def assert_no_network_or_pickle(env: dict) -> None:
  """Nothing the audit hook recorded: no network attempt, no unpickling outside safe_pickle."""
  bad = [r for r in audit_records(env) if not r.get("safe_pickle")]
  assert not bad, f"network attempts or unpickling outside safe_pickle: {bad[:5]}"


class Child:
  """A CLI in its own process group whose output lines are collected as they come."""

  def __init__(self, module: str, args: list, env: dict, log_path: pathlib.Path):
    self.started = time.monotonic()
    self.proc = subprocess.Popen(
      [sys.executable, "-u", "-m", module, *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
    )
    self.lines: list = []
    self.ended = False
    self._cond = threading.Condition()
    self._log_path = log_path
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    with open(self._log_path, "w", encoding="utf-8") as log:
      for line in self.proc.stdout:
        log.write(line)
        with self._cond:
          self.lines.append(line)
          self._cond.notify_all()
    with self._cond:
      self.ended = True
      self._cond.notify_all()

  def _left(self) -> float:
    return RUN_TIMEOUT - (time.monotonic() - self.started)

  def wait_for(self, pattern: str, start: int = 0):
    """(index, match) of the first line from `start` on that matches, or None when the output
    ends first. A run past RUN_TIMEOUT is killed and fails the test."""
    regex = re.compile(pattern)
    i = start
    with self._cond:
      while True:
        while i < len(self.lines):
          m = regex.search(self.lines[i])
          if m:
            return i, m
          i += 1
        if self.ended:
          return None
        if self._left() <= 0:
          self.kill()
          pytest.fail(f"{self.proc.args} ran past {RUN_TIMEOUT} s; output in {self._log_path}")
        self._cond.wait(timeout=1.0)

  def find(self, pattern: str):
    regex = re.compile(pattern)
    with self._cond:
      return [m for m in (regex.search(line) for line in self.lines) if m]

  def alive(self) -> bool:
    return self.proc.poll() is None

  def kill(self) -> float:
    """SIGKILL to this run's process group (the CLI and anything it started); returns when."""
    when = time.monotonic()
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.proc.wait(timeout=60)
    self._reader.join(timeout=60)
    return when

  def finish(self) -> int:
    try:
      code = self.proc.wait(timeout=max(1.0, self._left()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"{self.proc.args} ran past {RUN_TIMEOUT} s; output in {self._log_path}")
    self._reader.join(timeout=60)
    return code

  def tail(self, n: int = 40) -> str:
    return "".join(self.lines[-n:])


def report(record: dict) -> None:
  """Appends `record` to $PHENAKI_FAULTS_LOG (the figures of BENCHMARKS.md) and prints it."""
  print(json.dumps(record))
  path = os.environ.get(REPORT_ENV)
  if path:
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


# ---- Checkpoint directories and states -----------------------------------------------------------
def checkpoint_listing(workdir: str) -> tuple:
  """(complete steps, orbax temporary directories) under workdir/checkpoints."""
  directory = os.path.join(workdir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP_SUFFIX in n)


def restore_numpy(workdir: str, step: int) -> tuple:
  """(state as numpy, meta) of workdir's checkpoint `step`, as saved (no template needed)."""
  manager = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    options=ocp.CheckpointManagerOptions(read_only=True),
    item_names=("state", "meta"),
  )
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
  finally:
    manager.close()
  return jax.tree.map(np.asarray, restored["state"]), restored["meta"]


def assert_bit_identical(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs"


def assert_same_config(workdir: str, reference: str, differing: set) -> None:
  """The two runs' config.json agree except at the (dotted) keys in `differing`."""

  def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out

  a, b = (
    flat(json.loads(pathlib.Path(w, "config.json").read_text())) for w in (workdir, reference)
  )
  diff = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
  assert diff <= differing, {k: (a.get(k), b.get(k)) for k in diff - differing}


# ---- The trainers under test ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Trainer:
  name: str
  total: int
  checkpoint_every: int
  eval_every: int
  eval_seconds: float  # about how long one evaluation takes (the eval kill's delay range)
  intervals: tuple = ("checkpoint_every", "eval_every", "log_every")

  def train_args(
    self, workdir: str, tokenizer_dir: str = "", tokens: str = "", every: Optional[int] = None
  ) -> list:
    """The CLI's flags; `every` replaces both the checkpoint and the evaluation interval."""
    args = [
      f"--config={CONFIG_FILE}:{self.name}",
      f"--workdir={workdir}",
      f"--config.checkpoint_every={every or self.checkpoint_every}",
      f"--config.eval_every={every or self.eval_every}",
      "--config.log_every=1",
    ]
    if tokenizer_dir:
      args.append(f"--config.tokenizer.workdir={tokenizer_dir}")
    if tokens:
      args.append(f"--config.data.pretokenized={tokens}")
    return args

  def eval_steps(self) -> list:
    return [s for s in range(1, self.total + 1) if s % self.eval_every == 0 or s == self.total]

  def save_steps(self) -> list:
    return [s for s in range(1, self.total + 1) if s % self.checkpoint_every == 0]


CVIVIT = Trainer("cvivit", total=30, checkpoint_every=2, eval_every=10, eval_seconds=4.0)
MASKGIT = Trainer(
  "maskgit", total=conftest.MASKGIT_STEPS, checkpoint_every=4, eval_every=40, eval_seconds=1.0
)
TOKENS_CHUNK = 10  # steps per pre-tokenised file: 12 files, so a kill finds some written

# A training log line "[step] key=value, ..." (log_every=1) and an evaluation's last line.
TRAIN_ANY = r"\] \[(\d+)\] (?!eval/)(?:[\w/]+=[^,]*, )*loss="
TRAIN_LINE = TRAIN_ANY.replace(r"(\d+)", "{step}")
EVAL_DONE = r"\] \[{step}\] (?:eval/|Got images)"
TRAINING_FROM = r"training from step (\d+) to"


# ---- One kill --------------------------------------------------------------------------------------
def landing(child: Child, workdir: str, trainer: Trainer) -> str:
  """Where a kill landed, read off once the process is dead."""
  if checkpoint_listing(workdir)[1]:
    return "save"
  if not child.find(TRAINING_FROM):
    return "startup"
  logged = [int(m.group(1)) for m in child.find(TRAIN_ANY)]
  last = max(logged, default=0)
  if last in trainer.eval_steps() and not child.find(EVAL_DONE.format(step=last)):
    final = last == trainer.total and last in checkpoint_listing(workdir)[0]
    return "final eval" if final else "eval"
  if last >= trainer.total:
    return "end"  # after the final evaluation: the MaskGIT's code support, the exit
  return "step"


def aim_and_kill(child: Child, workdir: str, trainer: Trainer, phase: str, rng, start: int):
  """Kills `child` (training from step `start`) at a random moment of `phase`; returns where it
  landed, or None when the run finished first."""
  if phase == "save":
    # Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` and renames it when done:
    # polled every few ms, the directory is seen while the save is under way.
    target = rng.choice([s for s in trainer.save_steps() if s > start] or [trainer.total])
    delay = rng.uniform(0.0, 0.05)
    while child.alive():
      tmp = [n for n in checkpoint_listing(workdir)[1] if int(n.split(".")[0]) >= target]
      if tmp:
        time.sleep(delay)
        break
      time.sleep(0.003)
  elif phase == "end":
    # The final evaluation, once the final checkpoint is saved: the restart has no step left.
    if child.wait_for(TRAIN_LINE.format(step=trainer.total)) is None:
      return None
    while child.alive() and trainer.total not in checkpoint_listing(workdir)[0]:
      time.sleep(0.003)
    time.sleep(rng.uniform(0.0, trainer.eval_seconds / 2))
  elif phase == "eval":
    target = rng.choice([s for s in trainer.eval_steps() if s > start] or [trainer.total])
    if child.wait_for(TRAIN_LINE.format(step=target)) is None:
      return None
    time.sleep(rng.uniform(0.0, trainer.eval_seconds))
  else:  # a step
    if start + 1 > trainer.total - 1:
      return None
    target = rng.randint(start + 1, trainer.total - 1)
    if child.wait_for(TRAIN_LINE.format(step=target)) is None:
      return None
    time.sleep(rng.uniform(0.0, 0.2))
  if not child.alive():
    return None
  child.kill()
  return landing(child, workdir, trainer)


def check_resume(child: Child, complete: list) -> int:
  """The restart's first step is the newest complete checkpoint present when it started."""
  found = child.wait_for(TRAINING_FROM)
  assert found is not None, child.tail()
  start = int(found[1].group(1))
  resumed = child.find(r"resumed from step (\d+)")
  if complete:
    assert [int(m.group(1)) for m in resumed] == [complete[-1]], (complete, child.tail())
    assert start == complete[-1]
  else:
    assert not resumed and start == 0, child.tail()
  return start


def kill_trial(trainer: Trainer, trial: int, tmp_path, reference: str, tokenizer_dir: str = ""):
  """Runs one trial (see the module docstring) and checks the finished run."""
  rng = random.Random(f"{trainer.name}-{trial}")
  # The first kill's phase turns with the trial (trial 0: a save for the C-ViViT, the final
  # evaluation for the MaskGIT); a second one, from trial 1 on, is drawn.
  phases = ("save", "eval", "step", "end")
  first = (trial + (3 if trainer is MASKGIT else 0)) % len(phases)
  kills = [phases[first]] + [rng.choice(phases) for _ in range(min(trial, 1))]
  tokenize_kills = 1 if trainer is MASKGIT and trial % 2 == 0 else 0
  env = guarded_env(tmp_path)
  workdir = str(tmp_path / "run")
  landed, runs = [], 0

  tokens = ""
  if trainer is MASKGIT:
    tokens = str(tmp_path / "tokens")
    tokens_args = [
      f"--config={CONFIG_FILE}:maskgit",
      f"--config.tokenizer.workdir={tokenizer_dir}",
      f"--out={tokens}",
      f"--num_steps={trainer.total}",
      f"--chunk_steps={TOKENS_CHUNK}",
    ]
    written = []  # the chunks a killed pass left
    for attempt in range(tokenize_kills + 1):
      child = Child("phenaki_jax.tokenize", tokens_args, env, tmp_path / f"tokenize{attempt}.log")
      if attempt < tokenize_kills:
        k = rng.randrange(trainer.total // TOKENS_CHUNK)
        # The k-th file written (k = 0: the pass has begun encoding).
        pattern = r"wrote steps" if k else r"training data: mixture"
        found, at = None, 0
        for _ in range(max(k, 1)):
          found = child.wait_for(pattern, at)
          assert found is not None, child.tail()
          at = found[0] + 1
        time.sleep(rng.uniform(0.0, 0.3))
        if child.alive():
          child.kill()
          landed.append("tokenize")
          # Nothing readable is left half-written: no meta.json, every chunk whole.
          assert not os.path.exists(os.path.join(tokens, "meta.json"))
          written = sorted(pathlib.Path(tokens).glob("chunk_*.npz"))
          for path in written:
            with np.load(path) as z:
              assert z["codes"].shape[0] == TOKENS_CHUNK, path
          continue
      assert child.finish() == 0, child.tail()
      assert len(child.find(r"kept steps")) == len(written), child.tail()  # resumed
    assert os.path.exists(os.path.join(tokens, "meta.json"))
    assert not os.path.exists(os.path.join(tokens, "pending.json"))

  args = trainer.train_args(workdir, tokenizer_dir, tokens)
  complete: list = []
  while True:
    child = Child("phenaki_jax.train", args, env, tmp_path / f"train{runs}.log")
    runs += 1
    start = check_resume(child, complete)
    if kills and start < trainer.total:
      where = aim_and_kill(child, workdir, trainer, kills.pop(0), rng, start)
      if where is not None:
        landed.append(where)
        complete = checkpoint_listing(workdir)[0]
        continue
      landed.append("missed (the run finished first)")
    assert child.finish() == 0, child.tail()
    break

  # The finished run: nothing temporary left, the uninterrupted run's state bit for bit.
  steps, tmp = checkpoint_listing(workdir)
  assert not tmp and steps[-1] == trainer.total, (steps, tmp)
  state, meta = restore_numpy(workdir, trainer.total)
  want_state, want_meta = restore_numpy(reference, trainer.total)
  assert meta == want_meta
  assert int(state["step"]) == trainer.total
  assert_bit_identical(state, want_state)
  # The final evaluation (its figures, and the MaskGIT's samples), done after the final save.
  got = json.loads(pathlib.Path(workdir, "metrics.json").read_text())
  assert got == json.loads(pathlib.Path(reference, "metrics.json").read_text())
  assert got["step"] == trainer.total
  differing = {f"{k}" for k in trainer.intervals}
  if trainer is MASKGIT:
    assert os.path.exists(os.path.join(workdir, "samples", f"samples_{trainer.total:07d}.json"))
    differing.add("data.pretokenized")
    with np.load(os.path.join(workdir, "code_support.npz")) as a:
      with np.load(os.path.join(reference, "code_support.npz")) as b:
        assert np.array_equal(a["counts"], b["counts"])
  assert_same_config(workdir, reference, differing)
  assert_no_network_or_pickle(env)
  report({"test": "kill9", "trainer": trainer.name, "trial": trial, "runs": runs, "landed": landed})


def _trials():
  return [
    pytest.param(i, id=f"trial{i}", marks=() if i in CI_TRIALS else pytest.mark.faults)
    for i in range(TRIALS)
  ]


@pytest.mark.parametrize("trial", _trials())
def test_cvivit_survives_kill9(trial, tmp_path, tiny_cvivit_dir):
  kill_trial(CVIVIT, trial, tmp_path, tiny_cvivit_dir)


@pytest.mark.parametrize("trial", _trials())
def test_maskgit_survives_kill9(trial, tmp_path, tiny_cvivit_dir, tiny_maskgit_dir):
  kill_trial(MASKGIT, trial, tmp_path, tiny_maskgit_dir, tokenizer_dir=tiny_cvivit_dir)


# ---- SIGTERM -------------------------------------------------------------------------------------
def sigterm_runs(trainer: Trainer, signals: int, seed: int, tmp_path, tokenizer_dir: str = ""):
  """`signals` runs of one work directory, each sent SIGTERM after a random step: each saves
  at the next step boundary, logs it, exits 0, and the next run resumes there. Returns the
  signal → exit times (s)."""
  rng = random.Random(seed)
  env = guarded_env(tmp_path)
  workdir = str(tmp_path / "run")
  # No periodic saves or evaluations: the only checkpoints are those the signals ask for.
  args = trainer.train_args(workdir, tokenizer_dir, every=10 * trainer.total)
  latencies, start = [], 0
  for run in range(signals):
    child = Child("phenaki_jax.train", args, env, tmp_path / f"sigterm{run}.log")
    assert check_resume(child, [start] if start else []) == start
    after = rng.randint(start + 1, start + 8)
    found = child.wait_for(TRAIN_LINE.format(step=after))
    assert found is not None, child.tail()
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code = child.finish()
    latencies.append(time.monotonic() - sent)
    assert code == 0, child.tail()
    saved = child.find(r"preempted: saving the checkpoint of step (\d+)")
    assert len(saved) == 1, child.tail()
    step = int(saved[0].group(1))
    logged = [int(m.group(1)) for m in child.find(TRAIN_ANY)]
    # The next boundary after the signal: the step under way then (the one whose line had not
    # been read yet at most), and no step after it.
    assert after < step <= after + 2 and max(logged) == step, (after, step, child.tail())
    steps, tmp = checkpoint_listing(workdir)
    assert steps[-1] == step and not tmp, (steps, tmp)
    start = step
  assert_no_network_or_pickle(env)
  return latencies


@pytest.mark.parametrize(
  "trainer, signals",
  [
    pytest.param(MASKGIT, 1, id="maskgit-1"),
    pytest.param(MASKGIT, 3, id="maskgit-3", marks=pytest.mark.faults),
    pytest.param(CVIVIT, 3, id="cvivit-3", marks=pytest.mark.faults),
  ],
)
def test_sigterm_saves_at_the_next_step_and_exits_zero(trainer, signals, tmp_path, tiny_cvivit_dir):
  latencies = sigterm_runs(
    trainer, signals, signals, tmp_path, tiny_cvivit_dir if trainer is MASKGIT else ""
  )
  report(
    {
      "test": "sigterm",
      "trainer": trainer.name,
      "seconds": [round(s, 2) for s in latencies],
      "median": round(statistics.median(latencies), 2),
    }
  )
  assert max(latencies) < 60, latencies


# ---- No network, no pickle -----------------------------------------------------------------------
OFFLINE_SCRIPT = """
import pickle, socket, sys
sys.path.insert(0, {tests!r})
import conftest
from phenaki_jax import sample
from phenaki_jax.trainers import cvivit, maskgit

c = conftest.tiny_cvivit_config()
c.total_steps = c.checkpoint_every = c.eval_every = 2
cvivit.main(c, {workdir!r} + "/cvivit")  # two steps and an evaluation (LPIPS: VGG weights)
m = conftest.tiny_maskgit_config({tokenizer!r}, total_steps=2)
m.code_support_clips = 0
maskgit.main(m, {workdir!r} + "/maskgit")  # two steps and an evaluation (one sample)
sampler = sample.Sampler.from_workdirs({tokenizer!r}, {maskgit_dir!r})
video = sampler.generate(["a red square moves right"], seed=0)
print("sampled", tuple(video.shape))
# Probes: the hook must see these two.
probe = socket.socket()
try:
  probe.connect(("192.0.2.1", 9))
except OSError as e:
  print("probe blocked:", e)
probe.close()
pickle.loads(pickle.dumps(socket.socket))
print("probes done")
"""


def test_training_and_sampling_need_no_network_and_no_pickle(
  tmp_path, tiny_cvivit_dir, tiny_maskgit_dir
):
  env = guarded_env(tmp_path)
  script = OFFLINE_SCRIPT.format(
    tests=str(REPO / "tests"),
    workdir=str(tmp_path),
    tokenizer=tiny_cvivit_dir,
    maskgit_dir=tiny_maskgit_dir,
  )
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "sampled (1," in proc.stdout and "probes done" in proc.stdout, proc.stdout
  assert "probe blocked: network disabled" in proc.stdout, proc.stdout
  assert os.path.exists(tmp_path / "maskgit" / "samples" / "samples_0000002.gif")
  records = audit_records(env)
  network = [r for r in records if r["event"] != "pickle.find_class"]
  unsafe = [r for r in records if r["event"] == "pickle.find_class" and not r["safe_pickle"]]
  safe = [r for r in records if r.get("safe_pickle")]
  # Exactly the probes, and the VGG weights read through safe_pickle.
  assert [r["event"] for r in network] == ["socket.connect"], network
  assert "192.0.2.1" in network[0]["args"][1]
  assert len(unsafe) == 1 and "'socket'" in unsafe[0]["args"][1], unsafe
  assert safe, "the LPIPS weights are read through safe_pickle: its lookups should show"


# ---- The source scan -----------------------------------------------------------------------------
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
SAFE_UNPICKLER = pathlib.Path("models", "safe_pickle.py")  # may subclass pickle.Unpickler


def unpickling_calls(root: pathlib.Path) -> list:
  """'path:line: what' for each way a file under `root` could unpickle: the pickle family's
  load/loads/Unpickler (aliases and from-imports included), shelve.open, torch.load without
  weights_only=True (torch's restricted unpickler), np.load with allow_pickle not False, and
  pandas.read_pickle. Only models/safe_pickle.py may use pickle.Unpickler."""
  found = []
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    alias = {}  # local name → module
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
      elif isinstance(node, ast.ImportFrom) and node.module:
        top = node.module.split(".")[0]
        for a in node.names:
          if top in PICKLE_MODULES and a.name in ("load", "loads", "Unpickler", "open", "*"):
            if not (rel == SAFE_UNPICKLER and a.name == "Unpickler"):
              found.append(f"{rel}:{node.lineno}: from {node.module} import {a.name}")
          alias.setdefault(a.asname or a.name, f"{node.module}.{a.name}")

    def dotted(node) -> Optional[str]:
      if isinstance(node, ast.Name):
        return alias.get(node.id, node.id)
      if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
      return None

    def keyword(call, name):
      return next((k.value for k in call.keywords if k.arg == name), None)

    def is_false(value) -> bool:
      return isinstance(value, ast.Constant) and value.value in (False, None, 0)

    for node in ast.walk(tree):
      refs = []
      if isinstance(node, ast.Call):
        refs.append((dotted(node.func), node))
      elif isinstance(node, ast.ClassDef):
        refs += [(dotted(b), None) for b in node.bases]
      for name, call in refs:
        if not name:
          continue
        module, _, attr = name.rpartition(".")
        top = module.split(".")[0]
        what = None
        if top in PICKLE_MODULES and attr in ("load", "loads", "open", "Unpickler"):
          if not (rel == SAFE_UNPICKLER and attr == "Unpickler" and call is None):
            what = name
        elif name == "torch.load":
          weights_only = keyword(call, "weights_only")
          if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            what = "torch.load without weights_only=True"
        elif name in ("numpy.load", "np.load"):
          allow = keyword(call, "allow_pickle")
          if allow is not None and not is_false(allow):
            what = "np.load(allow_pickle=...)"
        elif name in ("pandas.read_pickle", "pd.read_pickle"):
          what = name
        if what:
          found.append(f"{rel}:{node.lineno}: {what}")
  return found


def test_package_source_has_no_unpickling_but_safe_pickle():
  assert unpickling_calls(REPO / "phenaki_jax") == []


PLANTED = {
  "a.py": "import pickle\nx = pickle.load(open('f', 'rb'))\n",
  "b.py": "import pickle as pk\nx = pk.loads(b'')\n",
  "c.py": "from pickle import loads\n",
  "d.py": "import numpy as np\nx = np.load('f.npy', allow_pickle=True)\n",
  "e.py": "import numpy\nflag = True\nx = numpy.load('f.npy', allow_pickle=flag)\n",
  "f.py": "import torch\nx = torch.load('f.pt')\n",
  "g.py": "import torch\nx = torch.load('f.pt', weights_only=False)\n",
  "h.py": "import pickle\nclass U(pickle.Unpickler):\n  pass\n",
  "i.py": "import dill\nx = dill.loads(b'')\n",
  "j.py": "import pandas as pd\nx = pd.read_pickle('f')\n",
  "k.py": "import _pickle\nx = _pickle.Unpickler(f).load()\n",
  "l.py": "import shelve\nx = shelve.open('db')\n",
}
HARMLESS = {
  "ok1.py": "import numpy as np\nx = np.load('f.npz')\ny = np.load('f.npy', allow_pickle=False)\n",
  "ok2.py": "import torch\nx = torch.load('f.pt', map_location='cpu', weights_only=True)\n",
  "ok3.py": "import pickle\ndata = pickle.dumps({'a': 1})\n# pickle.loads(data) in a comment\n",
  "ok4.py": "import json\nx = json.loads('{}')\n",
}


def test_the_scan_finds_planted_unpickling(tmp_path):
  for name, text in {**PLANTED, **HARMLESS}.items():
    (tmp_path / name).write_text(textwrap.dedent(text))
  found = unpickling_calls(tmp_path)
  flagged = {line.split(":")[0] for line in found}
  assert flagged == set(PLANTED), found
  # The real restricted unpickler passes only at its own path.
  (tmp_path / "models").mkdir()
  safe = (REPO / "phenaki_jax" / SAFE_UNPICKLER).read_text()
  (tmp_path / SAFE_UNPICKLER).write_text(safe)
  (tmp_path / "copy_of_safe_pickle.py").write_text(safe)
  flagged = {line.split(":")[0] for line in unpickling_calls(tmp_path)}
  assert flagged == set(PLANTED) | {"copy_of_safe_pickle.py"}
