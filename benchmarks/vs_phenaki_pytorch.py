r"""Race against phenaki-pytorch 0.5.0 on the same CPU: both sides timed in one run, interleaved.

  python benchmarks/vs_phenaki_pytorch.py                        # both configs, every op
  python benchmarks/vs_phenaki_pytorch.py --quick                # smoke: SMALL, few runs
  python benchmarks/vs_phenaki_pytorch.py --quick --ours_only    # no torch needed

The reference lives in its own venv (`--venv`, default workdirs/race_venv, git-ignored), made
here on first use (`--setup`): torch 2.13.0 (CPU), then phenaki-pytorch 0.5.0 with torch pinned
by a constraint file, and the registry's torchvision removed (it does not import beside this
torch; benchmarks/_phenaki_pytorch_worker.py stands in a VGG16 of its own, random weights, and
MiniLM-sized text embeddings for the T5 it would download). It runs as a worker process in that
venv, driven over a pipe with JSON lines.

Shapes: configs/race.py (small, paper_like_small; the same models on both sides). Ops, each on
one batch of the config's shape:

  cvivit_recon    C-ViViT train step, L2 + VQ, AdamW
  cvivit_full     C-ViViT generator step (L2 + VQ + VGG perceptual + adversarial) and then a
                  discriminator step (with its gradient penalty)
  maskgit_step    MaskGIT train step (videos tokenised by the frozen C-ViViT in the step)
  sample          one batch, 12 decoding steps, classifier-free guidance (scale 3), decoded
  encode_decode   C-ViViT encode + decode of one batch

For each op both sides first warm up (ours: compile, reported as `compile_s`, plus `--warmup`
runs; theirs: `--warmup` runs), then run alternately in `--blocks` blocks of `--runs`/`--blocks`
runs each (ours, theirs, ours, theirs, ...), each block after a `--settle_s` pause and one
untimed run, each run synchronised; the medians over all runs are
reported with the ratio theirs/ours. Both sides get `--threads` CPUs: torch set_num_threads,
and both processes pinned to the same first `--threads` CPUs (sched_setaffinity, before JAX
starts: XLA sizes its CPU thread pool by the CPUs it may run on). The
1-minute load average is recorded before and after each op: the figures mean little above ~1.5
on a 2-core machine.

Where the two designs differ (what each side computes): BENCHMARKS.md, "Race: phenaki-pytorch
0.5.0 on the same CPU".
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_THREADS_DEFAULT = 2


def limit_cpus(threads: int) -> list:
  """Pins this process (and so the reference's worker, its child) to the first `threads` CPUs
  it may use; call before JAX's backend starts (XLA sizes its thread pool then). Returns the
  CPUs."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads < 1:
    raise ValueError(f"--threads must be >= 1, got {threads}")
  if threads < len(cpus):
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return cpus


sys.path.insert(0, os.path.dirname(__file__))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "benchmarks", "_phenaki_pytorch_worker.py")
TORCH_PIN = "torch==2.13.0"
REFERENCE_PIN = "phenaki-pytorch==0.5.0"
OPS = ("cvivit_recon", "cvivit_full", "maskgit_step", "sample", "encode_decode")
# The targets (theirs / ours) each op should reach.
TARGETS = dict(cvivit_recon=3.0, cvivit_full=2.0, maskgit_step=3.0, sample=5.0, encode_decode=3.0)

_CONFIGS = flags.DEFINE_string("configs", "small,paper_like_small", "configs/race.py variants.")
_OPS = flags.DEFINE_string("ops", ",".join(OPS), "Comma-separated ops to time.")
_RUNS = flags.DEFINE_integer("runs", 12, "Timed runs per side and op (median reported).")
_BLOCKS = flags.DEFINE_integer("blocks", 3, "Alternating blocks the timed runs are split into.")
_SETTLE_S = flags.DEFINE_float(
  "settle_s", 0.5, "Pause before each block (then one untimed run): the other side winds down."
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed runs per side and op after compiling.")
flags.DEFINE_integer("threads", _THREADS_DEFAULT, "CPUs (and torch threads) of each side.")
_QUICK = flags.DEFINE_bool(
  "quick", False, "Smoke mode: SMALL only, 2 runs in 2 blocks, 1 warm-up; no venv, no setup."
)
_OURS_ONLY = flags.DEFINE_bool("ours_only", False, "Time only our side (no torch needed).")
_VENV = flags.DEFINE_string(
  "venv", os.path.join(REPO, "workdirs", "race_venv"), "The reference's venv."
)
_SETUP = flags.DEFINE_bool("setup", True, "Make the reference's venv when absent.")
_WAIT_LOAD = flags.DEFINE_float(
  "wait_load",
  0.0,
  "Before each op (compiled, warmed up), wait until the 1-minute load average is below this "
  "(0 = never wait): other processes on a small machine skew both sides, torch's most.",
)
_WAIT_MAX_S = flags.DEFINE_integer("wait_max_s", 600, "The longest wait for --wait_load.")


# ---- The reference: venv and worker ---------------------------------------------------------
def venv_python(venv: str) -> str:
  return os.path.join(venv, "bin", "python")


def venv_ready(venv: str) -> bool:
  py = venv_python(venv)
  if not os.path.exists(py):
    return False
  probe = subprocess.run(
    [py, "-c", "import importlib.metadata as m; print(m.version('phenaki-pytorch'))"],
    capture_output=True,
    text=True,
  )
  return probe.returncode == 0 and probe.stdout.strip() == REFERENCE_PIN.split("==")[1]


def setup_venv(venv: str) -> None:
  """Idempotent: a venv with torch 2.13.0 and phenaki-pytorch 0.5.0, without torchvision."""
  if venv_ready(venv):
    return
  print(f"setting up the reference in {venv} (torch ~1 GB)", file=sys.stderr, flush=True)
  if not os.path.exists(venv_python(venv)):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
  pip = [venv_python(venv), "-m", "pip", "install", "--quiet"]
  subprocess.run(pip + [TORCH_PIN], check=True)
  constraints = os.path.join(venv, "constraints.txt")
  with open(constraints, "w") as f:
    f.write(TORCH_PIN + "\n")
  subprocess.run(pip + [REFERENCE_PIN, "-c", constraints], check=True)
  # The registry's torchvision does not import beside this CPU torch; the worker stands in.
  subprocess.run(
    [venv_python(venv), "-m", "pip", "uninstall", "--yes", "--quiet", "torchvision"], check=True
  )
  if not venv_ready(venv):
    raise RuntimeError(f"{venv}: {REFERENCE_PIN} did not install")


class Worker:
  """The reference's worker process: one JSON line per request and per answer."""

  def __init__(self, venv: str, size: dict, threads: int):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("XLA_FLAGS", None)
    self.proc = subprocess.Popen(
      [venv_python(venv), "-u", WORKER],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
      cwd=REPO,
    )
    self.info = self.ask(cmd="setup", size=size, threads=threads)

  def ask(self, **msg) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the reference's worker exited ({self.proc.poll()})")
    answer = json.loads(line)
    if not answer.pop("ok"):
      raise RuntimeError(f"reference, {msg}: {answer['error']}")
    return answer

  def run(self, op: str, runs: int) -> list:
    return self.ask(cmd="run", op=op, runs=runs)["times"]

  def close(self):
    try:
      self.ask(cmd="quit")
    except (RuntimeError, BrokenPipeError, ValueError):
      pass
    self.proc.wait(timeout=30)


def race_module():
  """configs/race.py as a module (its SIZES and optimizer constants)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
    "race_config", os.path.join(REPO, "configs", "race.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def reference_size(size: str) -> dict:
  """What the worker needs of a configs/race.py size (the same numbers as ours)."""
  race = race_module()
  cv, mg = race.get_config(size), race.get_config(f"{size}.maskgit")
  return dict(
    race.SIZES[size],
    patch=cv.model.patch_size,
    temporal_patch=cv.model.temporal_patch,
    lr=race.LR,
    weight_decay=race.WEIGHT_DECAY,
    clip_norm=race.CLIP_NORM,
    text_len=mg.text_encoder.max_length,
    text_dim=384,
    text_dropout=mg.text_dropout,
    sample_steps=mg.sample.steps,
    cfg_scale=mg.sample.cfg_scale,
  )


# ---- Our side -------------------------------------------------------------------------------
class _Text:
  """A text encoder stand-in for the sampler: fixed MiniLM-sized embeddings, no model."""

  def __init__(self, tokens, mask):
    self.tokens, self.mask = tokens, mask

  def encode(self, captions):
    n = len(captions)
    return self.tokens[:n], self.mask[:n]

  def null_embedding(self):
    import numpy as np  # pylint: disable=g-import-not-at-top

    length, dim = self.tokens.shape[1:]
    return np.zeros((length, dim), np.float32), np.arange(length) < 2


class Ours:
  """Our jitted ops for one configs/race.py size. Each op is a no-argument callable that runs
  once and blocks until done; `compile_s[op]` is its lowering + compilation (first call)."""

  def __init__(self, size: str, ops=OPS, seed: int = 0):
    import jax
    import numpy as np
    from phenaki_jax import config_io, losses, optim, sample, sharding, tokenizer
    from phenaki_jax.models import cvivit, discriminator
    from phenaki_jax.trainers import common
    from phenaki_jax.trainers import cvivit as cv_trainer
    from phenaki_jax.trainers import maskgit as mg_trainer

    self.jax = jax
    self.compile_s = {}
    rng_np = np.random.default_rng(seed)
    full = config_io.from_file("race", size)
    mg_config = config_io.from_file("race", f"{size}.maskgit")
    b, f, r = full.data.batch_size, full.data.num_frames, full.data.resolution
    self.mesh = mesh = sharding.make_mesh(full.mesh)
    repl = sharding.replicated(mesh)
    video_np = rng_np.integers(0, 256, (b, f, r, r, 3), dtype=np.uint8)
    cv_batch = sharding.put_global_batch(dict(video=video_np, is_image=np.zeros(b, bool)), mesh)
    step_rng = jax.device_put(jax.random.PRNGKey(1), repl)

    # C-ViViT steps: reconstruction only, and the full (adversarial, perceptual) step.
    recon = config_io.from_file("race", size).unlock()
    recon.losses.image_perceptual = recon.losses.adversarial = 0.0
    self._cv = {}
    for op, config, adversarial in (
      ("cvivit_recon", recon, False),
      ("cvivit_full", full, True),
    ):
      if op not in ops:
        continue
      cv_trainer.validate_config(config)
      model, disc, tx, disc_tx, init_fn = cv_trainer.build(config)
      assert isinstance(disc, discriminator.VideoDiscriminator)
      frozen = jax.device_put(losses.load_perceptual_params(config.losses), repl)
      state, shardings = sharding.create_sharded_state(init_fn, mesh, jax.random.PRNGKey(seed))
      jitted = cv_trainer.jit_train_step(
        config, mesh, shardings, model, disc, tx, disc_tx, adversarial
      )
      self._cv[op] = dict(state=state, step=jitted, args=(cv_batch, step_rng, frozen))

    # MaskGIT step over the frozen C-ViViT's codes of the videos.
    with tempfile.TemporaryDirectory(prefix="race_tok_") as tok_dir:
      common.setup_workdir(full, tok_dir)
      with mg_config.unlocked():
        mg_config.tokenizer.workdir = tok_dir
      mg_trainer.validate_config(mg_config)
      tok_config = mg_trainer.tokenizer_config(mg_config)
    tok_model = cvivit.get_model(tok_config.model_size, **tok_config.model)
    # The frozen C-ViViT of stage 2, sampling and encode + decode: its own (random) parameters.
    self.cv_params = jax.jit(
      lambda k: tok_model.init(k, jax.numpy.zeros((1, f, r, r, 3)))["params"], out_shardings=repl
    )(jax.random.PRNGKey(seed + 2))
    mg_model = mg_trainer.build_model(mg_config, tok_config)
    tx = optim.make_optimizer(mg_config.optim)
    text_len, text_dim = mg_config.text_encoder.max_length, 384
    init_fn = mg_trainer.make_init_fn(mg_model, tx, text_len, text_dim, ema=False)
    state, shardings = sharding.create_sharded_state(init_fn, mesh, jax.random.PRNGKey(seed))
    text = rng_np.standard_normal((b, text_len, text_dim)).astype(np.float32)
    text_mask = np.arange(text_len)[None] < rng_np.integers(2, text_len + 1, (b, 1))
    text = text * text_mask[..., None]
    mg_batch = sharding.put_global_batch(
      dict(video=video_np, is_image=np.zeros(b, bool), text=text, text_mask=text_mask), mesh
    )
    null_text = jax.device_put(
      (np.zeros((text_len, text_dim), np.float32), np.arange(text_len) < 2), repl
    )
    jitted = mg_trainer.jit_train_step(mg_config, mesh, shardings, mg_model, tok_model, tx)
    if "maskgit_step" in ops:
      self._cv["maskgit_step"] = dict(
        state=state, step=jitted, args=(mg_batch, null_text, self.cv_params, step_rng)
      )

    # Sampling and encode + decode: the frozen C-ViViT (the full step's parameters) and the
    # MaskGIT (the step's parameters).
    self.tok = tokenizer.Tokenizer(tok_model, self.cv_params, clip_frames=f)
    self.sampler = sample.Sampler(
      self.tok,
      mg_model,
      state["params"],
      _Text(text, text_mask),
      defaults=dict(mg_config.sample),
    )
    self.prompts = ["a caption"] * b
    self.num_frames = f
    self.video_np = video_np
    self.sample_steps = mg_config.sample.steps
    self.cfg_scale = mg_config.sample.cfg_scale

  def _train(self, op: str):
    entry = self._cv[op]
    state, metrics = entry["step"](entry["state"], *entry["args"])
    self.jax.block_until_ready((state, metrics))
    entry["state"] = state
    if op == "maskgit_step":
      # The sampler keeps the MaskGIT's parameters; the step donated the old ones.
      self.sampler.params = state["params"]
    return metrics

  def compile(self, op: str) -> float:
    """Lowers and compiles `op` (its first call for the sampler and the tokenizer)."""
    t = time.perf_counter()
    if op in self._cv:
      entry = self._cv[op]
      entry["step"] = entry["step"].lower(entry["state"], *entry["args"]).compile()
    else:
      self.run(op)
    self.compile_s[op] = round(time.perf_counter() - t, 2)
    return self.compile_s[op]

  def run(self, op: str):
    import numpy as np  # pylint: disable=g-import-not-at-top

    if op in self._cv:
      metrics = self._train(op)
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(f"{op}: loss {loss}")
      return loss
    if op == "sample":
      video = self.sampler.generate(
        self.prompts,
        self.num_frames,
        steps=self.sample_steps,
        cfg_scale=self.cfg_scale,
        restrict_codes=False,
      )
      return float(video.mean())
    if op == "encode_decode":
      video = np.asarray(self.tok.reconstruct(self.video_np))
      return float(video.mean())
    raise ValueError(f"unknown op {op!r}")

  def times(self, op: str, runs: int) -> list:
    out = []
    for _ in range(runs):
      t = time.perf_counter()
      self.run(op)
      out.append(time.perf_counter() - t)
    return out


# ---- The race -------------------------------------------------------------------------------
def load() -> float:
  return round(os.getloadavg()[0], 2)


def wait_for_load(threshold: float, max_s: float) -> float:
  """Sleeps until the 1-minute load average is below `threshold` (at most `max_s`); returns the
  seconds waited."""
  t = time.perf_counter()
  while threshold > 0 and load() >= threshold and time.perf_counter() - t < max_s:
    time.sleep(5)
  return round(time.perf_counter() - t, 1)


def _block(timed_runs, n: int) -> list:
  """One side's block of `n` timed runs, after a pause and one untimed run, so that the side
  that ran before has let its thread pool go idle (OpenMP and Eigen spin for a while before
  they sleep); each side gets the same settling. Measured on the 2-core CPU, it moved neither
  side's medians beyond run-to-run noise."""
  time.sleep(_SETTLE_S.value)
  timed_runs(1)
  return timed_runs(n)


def race_op(op: str, ours: Ours, theirs, runs: int, blocks: int, warmup: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  row = dict(op=op)
  row["ours_compile_s"] = ours.compile(op)
  t = time.perf_counter()
  ours.times(op, warmup)
  row["ours_warmup_s"] = round(time.perf_counter() - t, 2)
  if theirs is not None:
    t = time.perf_counter()
    theirs.run(op, warmup)
    row["theirs_warmup_s"] = round(time.perf_counter() - t, 2)
  row["waited_for_load_s"] = wait_for_load(_WAIT_LOAD.value, _WAIT_MAX_S.value)
  row["load_before"] = load()
  ours_t, theirs_t = [], []
  per_block = [runs // blocks + (i < runs % blocks) for i in range(blocks)]
  for n in per_block:
    if not n:
      continue
    ours_t += _block(lambda k: ours.times(op, k), n)
    if theirs is not None:
      theirs_t += _block(lambda k: theirs.run(op, k), n)
  row["ours_ms"] = round(1e3 * float(np.median(ours_t)), 2)
  row["ours_ms_min"] = round(1e3 * min(ours_t), 2)
  if theirs is not None:
    row["theirs_ms"] = round(1e3 * float(np.median(theirs_t)), 2)
    row["theirs_ms_min"] = round(1e3 * min(theirs_t), 2)
    row["ratio"] = round(row["theirs_ms"] / row["ours_ms"], 2)
    row["target"] = TARGETS[op]
    row["target_met"] = row["ratio"] >= TARGETS[op]
  row["runs"] = len(ours_t)
  row["load_after"] = load()
  return row


def main(argv):
  del argv
  threads = flags.FLAGS.threads
  cpus = limit_cpus(threads)
  import jax  # pylint: disable=g-import-not-at-top

  quick = _QUICK.value
  sizes = ["small"] if quick else [s.strip() for s in _CONFIGS.value.split(",") if s.strip()]
  runs, blocks, warmup = (2, 2, 1) if quick else (_RUNS.value, _BLOCKS.value, _WARMUP.value)
  ops = [o.strip() for o in _OPS.value.split(",") if o.strip()]
  unknown = set(ops) - set(OPS)
  if unknown:
    raise ValueError(f"--ops: unknown {sorted(unknown)}; choose from {OPS}")
  note = None
  with_reference = not _OURS_ONLY.value
  if with_reference and not venv_ready(_VENV.value):
    if quick or not _SETUP.value:
      note = (
        f"the reference's venv {_VENV.value} is absent or incomplete: timing our side only "
        f"(run without --quick to set it up)"
      )
      print(note, file=sys.stderr, flush=True)
      with_reference = False
    else:
      setup_venv(_VENV.value)
  results = []
  for size in sizes:
    theirs = Worker(_VENV.value, reference_size(size), threads) if with_reference else None
    try:
      ours = Ours(size, ops)
      for op in ops:
        row = dict(config=size, **race_op(op, ours, theirs, runs, blocks, warmup))
        results.append(row)
        print(json.dumps(row), flush=True)
    finally:
      if theirs is not None:
        info = theirs.info
        theirs.close()
    if theirs is not None:
      results.append(dict(config=size, reference=info))
  print(
    json.dumps(
      {
        "benchmark": "vs_phenaki_pytorch",
        "reference": REFERENCE_PIN if with_reference else None,
        "note": note,
        "runs": runs,
        "blocks": blocks,
        "warmup": warmup,
        "threads": {"cpus": cpus, "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch": threads},
        "jax_devices": [str(d) for d in jax.devices()],
        "results": results,
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
