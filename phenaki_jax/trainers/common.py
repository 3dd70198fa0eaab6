"""Pieces both trainers share: work directory set-up, metric logging, the train state and its
parameter EMA, the NaN guard, and the training loop's tail (log, evaluate, checkpoint, stop)."""

import contextlib
import importlib
import json
import logging as logging_std
import os
import time
from typing import Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from phenaki_jax import checkpoint, config_io, sharding
from phenaki_jax.data import pipeline, tasks


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (dozens of lines per checkpoint); warnings still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def setup_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Creates the work directory and writes config.json (the exact config of this run)."""
  quiet_library_logs()
  try:
    os.makedirs(workdir, exist_ok=True)
    path = config_io.write_to_workdir(config, workdir)
  except OSError as e:
    raise OSError(
      e.errno,
      f"cannot write to the work directory {workdir} ({e.strerror or e}): choose a writable "
      f"--workdir, or fix its permissions or free space",
    ) from e
  logging.info("config written to %s", path)


# ---- Metric writers ------------------------------------------------------------------------------
class JsonLinesWriter:
  """Scalars as JSON lines in `workdir/metrics.jsonl` (and the log).

  The trainers' writer where TensorFlow, which clu's TensorBoard writer imports, is not installed
  (a GPU machine with only jax[cuda], say). Images are not written: the trainers save their
  GIF/PNG media in the work directory anyway.
  """

  def __init__(self, workdir: str, just_logging: bool = False):
    self.path = None if just_logging else os.path.join(workdir, "metrics.jsonl")
    # pylint: disable-next=consider-using-with
    self._file = open(self.path, "a", encoding="utf-8") if self.path else None

  def write_scalars(self, step: int, scalars: Mapping) -> None:
    values = {k: float(v) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
    if self._file:
      self._file.write(json.dumps({"step": int(step), **values}) + "\n")

  def write_images(self, step: int, images: Mapping) -> None:
    del step, images

  def flush(self) -> None:
    if self._file:
      self._file.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None


class StepRate:
  """Logs and writes steps_per_sec about once a minute (clu's ReportProgress, for
  JsonLinesWriter)."""

  def __init__(self, total: int, writer, every_seconds: float = 60.0):
    self.total, self.writer, self.every = total, writer, every_seconds
    self._last = None

  def __call__(self, step: int, now: float) -> None:
    if self._last is None:  # the first step includes compilation: start counting after it
      self._last = (step, now)
      return
    last_step, last_time = self._last
    if now - last_time >= self.every and step > last_step:
      rate = (step - last_step) / (now - last_time)
      self.writer.write_scalars(step, {"steps_per_sec": rate})
      logging.info(
        "step %d/%d, %.2f steps/s, %.1f min left",
        step,
        self.total,
        rate,
        (self.total - step) / rate / 60,
      )
      self._last = (step, now)


def metric_writer(workdir: str):
  """clu's default writer (TensorBoard events + log), or JsonLinesWriter without TensorFlow."""
  just_logging = jax.process_index() > 0
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # clu.metric_writers imports TensorFlow
    logging.warning("no TensorBoard scalars (%s): writing them to %s/metrics.jsonl", e, workdir)
    return JsonLinesWriter(workdir, just_logging=just_logging)
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def progress_reporter(total: int, writer):
  """Called as report(step, time.time()) after each step: logs and writes the step rate."""
  if isinstance(writer, JsonLinesWriter):
    return StepRate(total, writer)
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  return periodic_actions.ReportProgress(num_train_steps=total, writer=writer)


@contextlib.contextmanager
def flushing(writer):
  """Flushes `writer` when the block ends, however it ends (and closes a JsonLinesWriter)."""
  try:
    yield writer
  finally:
    writer.flush()
    if isinstance(writer, JsonLinesWriter):
      writer.close()


def check_choice(config: ml_collections.ConfigDict, key: str, choices: Iterable) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  if value not in tuple(choices):
    raise ValueError(f"config.{key}={value!r} is not one of {tuple(choices)}")


def check_turn_rate(config: ml_collections.ConfigDict) -> None:
  """config.data.turn_rate is the share of the video examples that are turn clips: [0, 1)."""
  if not 0.0 <= config.data.turn_rate < 1.0:
    raise ValueError(
      f"config.data.turn_rate={config.data.turn_rate} must be in [0, 1) (the "
      f"share of the video examples that are turn clips)"
    )


def mean_metrics(history: list) -> dict:
  """Averages a list of per-step scalar metric dicts (device arrays) on the host."""
  history = jax.device_get(history)
  keys = sorted({k for h in history for k in h})  # a window may span adversarial_start_step
  return {k: float(np.mean([h[k] for h in history if k in h])) for k in keys}


def check_data_config(config: ml_collections.ConfigDict) -> None:
  """The data settings both trainers share; fails at start-up naming the key."""
  check_choice(config, "data.source", tasks.SOURCES)
  check_turn_rate(config)
  if config.data.source != "shapes" and config.data.turn_rate > 0:
    raise ValueError(
      f"config.data.turn_rate={config.data.turn_rate}: turn clips exist only in the Shapes data "
      f"(config.data.source='shapes')"
    )
  if config.data.source == "files" and config.data.fps <= 0:
    raise ValueError(f"config.data.fps={config.data.fps} must be > 0")
  for module in config.data.module_imports:
    importlib.import_module(module)


def train_batches(
  config: ml_collections.ConfigDict, *, num_frames: int, resolution: int, video_rate: float
) -> pipeline.Batches:
  """The step-indexed training batches of the mixture `config.data` describes
  (`tasks.mixture_from_config`), `num_frames` frames of `resolution`², this process's rows."""
  d = config.data
  name = tasks.mixture_from_config(
    d,
    num_frames=num_frames,
    resolution=resolution,
    video_rate=video_rate,
    image_rate=d.image_rate,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  batches = pipeline.Batches(
    name,
    d.batch_size,
    seed=d.seed,
    num_frames=num_frames,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    prefetch=max(d.prefetch, d.get("threads", 1)),
    num_threads=d.get("threads", 1),
    static_images=d.static_images,
  )
  logging.info("training data: mixture %r = %s", name, batches)
  return batches


# ---- Does the step fit? --------------------------------------------------------------------------
# Environment override of the memory one device may use (bytes), e.g. to leave room for other
# processes on a shared host, or to check the message without a large model.
MEMORY_ENV = "PHENAKI_DEVICE_MEMORY_BYTES"
MEMORY_HEADROOM = 0.9  # use at most this share of a device's memory


def device_memory_bytes(device=None) -> int:
  """The memory one device may use: `PHENAKI_DEVICE_MEMORY_BYTES`, an accelerator's own limit,
  or for CPU devices the host's available memory shared among the local CPU devices."""
  if os.environ.get(MEMORY_ENV):
    return int(float(os.environ[MEMORY_ENV]))
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  available = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except OSError:
    pass
  if available is None:
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  return available // max(1, len(jax.local_devices()))


# Dense bfloat16 peak FLOP/s of one device, by a substring of `device_kind` (first match wins):
# the MFU base. Vendor figures: TPU v6e 918T, v5p 459T, v5e 197T, v4 275T; H100/H200 SXM 989T,
# A100 312T. Unknown devices (a CPU) get no MFU.
PEAK_FLOPS = (
  ("v6 lite", 918e12),
  ("v6e", 918e12),
  ("v5p", 459e12),
  ("v5 lite", 197e12),
  ("v5e", 197e12),
  ("TPU v5", 459e12),  # a v5p's device_kind is "TPU v5" (a v5e's "TPU v5 lite", matched above)
  ("v4", 275e12),
  ("H200", 989e12),
  ("H100", 989e12),
  ("A100", 312e12),
)


def peak_flops(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of one device of this kind, or None when unknown."""
  for key, flops in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return flops
  return None


def lowered_flops(lowered) -> Optional[float]:
  """XLA's FLOP count of a whole lowered step (all devices; before compilation), or None."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  value = (cost or {}).get("flops")
  return float(value) if value and value > 0 else None


def abstract_key(sharding_) -> jax.ShapeDtypeStruct:
  """The ShapeDtypeStruct of a PRNG key placed with `sharding_`."""
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding_)


def loop_free(config: ml_collections.ConfigDict) -> Optional[ml_collections.ConfigDict]:
  """`config` without the loops XLA's cost analysis counts once (a copy), or None if it has
  none: layers unrolled (model.scan=False) and one pass over the batch (grad_accum_steps=1)."""
  changed = config.copy_and_resolve_references()
  changed.unlock()
  loops = False
  if changed.model.get("scan", False):
    changed.model.scan, loops = False, True
  if changed.get("grad_accum_steps", 1) > 1:
    changed.grad_accum_steps, loops = 1, True
  return changed if loops else None


def loop_free_flops(abstract_steps: Callable, config: ml_collections.ConfigDict) -> list:
  """XLA's FLOP count of each step `abstract_steps(config, mesh)` gives ([(name, jitted,
  abstract args)]: a trainer's `abstract_steps`), for the whole batch (all devices).

  Counted on the steps lowered for one CPU device: the lowered (not yet partitioned) program
  is the same computation whatever the mesh, and XLA's TPU plugin offers no cost analysis
  before compilation. A config with loops (`loop_free`) is counted without them."""
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices("cpu")[:1])
  flops = []
  for _, fn, args in abstract_steps(loop_free(config) or config, mesh):
    with sharding.rules_in_force(mesh):
      flops.append(lowered_flops(fn.lower(*args)))
  return flops


def step_flops(lowered, config, perf: dict, abstract_steps=None) -> Optional[float]:
  """The FLOPs of one step for the MFU log. XLA's cost analysis counts a loop's body once (a
  scanned layer stack, micro-batches) and a TPU backend gives none before compilation: then,
  given the trainer's `abstract_steps`, the step is counted as `phenaki_jax.aot` counts it —
  lowered for one CPU device, without its loops (`loop_free_flops`) — once per run (the
  largest of the run's steps)."""
  flops = lowered_flops(lowered)
  if (flops is not None and loop_free(config) is None) or abstract_steps is None:
    return flops
  if "loop_free_flops" not in perf:
    try:
      counts = loop_free_flops(abstract_steps, config)
      perf["loop_free_flops"] = max(f or 0.0 for f in counts) or None
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("no FLOP count of the step (no MFU in the logs): %s", e)
      perf["loop_free_flops"] = None
  return perf["loop_free_flops"]


def _size(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def compile_checked(
  jitted,
  *args,
  config: ml_collections.ConfigDict,
  what: str,
  perf: Optional[dict] = None,
  abstract_steps: Optional[Callable] = None,
):
  """Compiles `jitted` for `args` (arrays or ShapeDtypeStructs) ahead of time and returns the
  executable, after checking that one device can hold what the step needs (XLA's
  `memory_analysis`: arguments + outputs − donated + temporaries). When it cannot, fails before
  the first step, naming the batch size that should fit (the temporaries scale with the batch).
  `perf` (a dict) receives the step's FLOPs ('flops', for the MFU `train_loop` logs; see
  `step_flops` for `abstract_steps`, the trainer's steps built abstractly).

  The step is traced with the logical axis rules in force (`sharding.LOGICAL_RULES`) under the
  mesh its arguments are placed on, so its activation constraints act."""
  meshes = [
    x.sharding.mesh
    for x in jax.tree.leaves(args)
    if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
  ]
  if meshes:
    with sharding.rules_in_force(meshes[0]):
      lowered = jitted.lower(*args)
  else:
    lowered = jitted.lower(*args)
  if perf is not None:
    perf["flops"] = (
      max(perf.get("flops") or 0.0, step_flops(lowered, config, perf, abstract_steps) or 0.0)
      or None
    )
  compiled = lowered.compile()
  # The processes finish compiling at different times; the first collective connects them,
  # which on CPUs (gloo) fails when a peer is more than 30 s late.
  meet_all_processes(f"compiled {what}")
  stats = compiled.memory_analysis()
  if stats is None:  # a backend without the analysis
    return compiled
  fixed = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
  need = fixed + stats.temp_size_in_bytes
  have = device_memory_bytes()
  logging.info(
    "%s: %s per device (%s of state and batch, %s of temporaries); %s available",
    what,
    _size(need),
    _size(fixed),
    _size(stats.temp_size_in_bytes),
    _size(have),
  )
  if need <= MEMORY_HEADROOM * have:
    return compiled
  batch = config.data.batch_size
  per_example = stats.temp_size_in_bytes / batch
  room = MEMORY_HEADROOM * have - fixed
  fits = int(room // per_example) if per_example > 0 and room > 0 else 0
  step = jax.device_count()  # a batch must split evenly over the devices
  fits = fits // step * step
  hint = (
    f"--config.data.batch_size={fits} should fit (the temporaries scale with the batch)"
    if fits >= step
    else "even one example per device does not fit: use a smaller model or resolution, "
    "or devices with more memory (config.mesh shards the state over them)"
  )
  raise MemoryError(
    f"{what} needs {_size(need)} per device at config.data.batch_size={batch}, but "
    f"{_size(have)} is available ({MEMORY_HEADROOM:.0%} usable; {MEMORY_ENV} overrides "
    f"it). {hint}; or train on more devices (config.mesh), or accumulate gradients over "
    f"micro-batches (config.grad_accum_steps)."
  )


# ---- Train state and its parameter EMA -----------------------------------------------------------
def init_state(params, tx, *, ema: bool, **extra) -> dict:
  """A fresh train state: step 0, `params` and their optimizer state, no non-finite step yet
  (`first_bad_step` −1), `extra` entries (e.g. the discriminator's), and with `ema` the
  parameters' moving average `ema_params`, starting at `params`."""
  state = dict(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    first_bad_step=jnp.full((), -1, jnp.int32),
    **extra,
  )
  if ema:
    state["ema_params"] = params
  return state


def check_ema_decay(config) -> None:
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0 = no EMA)")


def ema_update(ema_params, params, step, decay: float):
  """One step of the parameters' exponential moving average: ema ← d·ema + (1 − d)·params with
  d = min(decay, (1 + step) / (10 + step)), a warm-up so that the first steps are not dominated
  by the random initialisation (jittable)."""
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return optax.incremental_update(params, ema_params, 1.0 - d)


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str, state: dict) -> tuple:
  """(the run's Checkpointer in workdir/checkpoints, the state to start from): the latest
  complete checkpoint restored like `state`, or `state` itself on a fresh run. Fails at once
  when the disk cannot hold a checkpoint of `state`; SIGTERM handlers installed."""
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    every_steps=config.checkpoint_every,
    keep=config.keep_checkpoints,
  )
  ckpt.check_room(state)
  ckpt.install_signal_handlers()
  if ckpt.latest_step() is not None:
    state, meta = restore_state(ckpt, state)
    logging.info("resumed from step %d (%s)", int(state["step"]), meta)
  return ckpt, state


def restore_state(ckpt, state: dict):
  """(state, meta) of the latest checkpoint, laid out like `state` (the freshly initialised,
  sharded train state). A run resumed with config.ema_decay > 0 whose checkpoints have no EMA
  (the option turned on midway) starts its average at the restored parameters; one resumed
  without an EMA whose checkpoints keep one fails, naming the option, rather than drop it."""
  try:
    return ckpt.restore(checkpoint.abstract_like(state))
  except ValueError as error:
    if "ema_params" in state:
      other = {k: v for k, v in state.items() if k != "ema_params"}
    else:
      other = dict(state, ema_params=state["params"])
    try:
      restored, meta = ckpt.restore(checkpoint.abstract_like(other))
    except ValueError:
      raise error from None
    if "ema_params" in state:
      logging.warning(
        "the checkpoints in %s keep no parameter EMA: config.ema_decay starts "
        "it at the restored step-%d parameters",
        ckpt.directory,
        meta["step"],
      )
      return dict(restored, ema_params=restored["params"]), meta
    raise ValueError(
      f"the checkpoints in {ckpt.directory} keep a parameter EMA (ema_params) "
      f"and this config has ema_decay=0: resume with the --config.ema_decay the "
      f"run started with, or use another --workdir"
    ) from None


def guard_update(ok, new_tree, old_tree):
  """Keeps the old state where the step's loss was not finite (jittable; `ok` a bool scalar).

  One `lax.cond` over the whole tree, not a `jnp.where` per leaf: the per-leaf selects tripled
  the XLA compile time of the C-ViViT step on a 2-core CPU (≈125 s → ≈42 s).
  """
  return jax.lax.cond(ok, lambda: new_tree, lambda: old_tree)


def norm_and_finite(tree) -> tuple:
  """(global ℓ2 norm of `tree`, whether every element is finite): jittable scalars.

  Read off the norm: a NaN or an infinity anywhere makes it NaN or infinite (so does a value
  past ~1e19, whose square overflows: a run that far gone has diverged all the same). One
  reduction per leaf, which the metrics need anyway; an is-finite test per leaf beside it
  cost ~3 ms of a 25-ms C-ViViT step on a 2-core CPU (a kernel launch each).
  """
  norm = optax.global_norm(tree)
  return norm, jnp.isfinite(norm)


# What a step whose loss or update is not finite does to the run (config.nonfinite); the update
# itself is never applied (`finish_step`).
NONFINITE_POLICIES = ("stop", "skip")
# Under "skip", this many non-finite steps in a row stop the run all the same: the training has
# diverged, and skipping on would only burn the budget.
MAX_CONSECUTIVE_NONFINITE = 20


def health_metrics(ok, loss) -> dict:
  """Per-step flags the loop reads (jittable): `skipped` (the update was not applied) and
  `nonfinite_loss` (the loss itself was not finite, rather than only the update)."""
  return {
    "skipped": 1.0 - ok.astype(jnp.float32),
    "nonfinite_loss": 1.0 - jnp.isfinite(loss).astype(jnp.float32),
  }


def nonfinite_cause(metrics: Optional[Mapping]) -> str:
  """What was not finite at a step, from its metrics (`health_metrics`), for the error."""
  if not metrics:
    return "its loss or update was not finite"
  metrics = jax.device_get(metrics)
  if float(metrics.get("nonfinite_loss", 0.0)) > 0:
    return f"its loss was not finite (loss={float(metrics['loss'])})"
  return (
    f"its loss was finite (loss={float(metrics['loss']):.6g}) but the update was not "
    f"(grad_norm={float(metrics.get('grad_norm', float('nan')))})"
  )


def raise_if_bad(first_bad_step: int, latest_checkpoint, cause: str = "") -> None:
  if first_bad_step >= 0:
    raise FloatingPointError(
      f"non-finite step {first_bad_step}: {cause or 'its loss or update was not finite'}; the "
      f"update was skipped and training stopped. The last good checkpoint is step "
      f"{latest_checkpoint} (unchanged). Lower the learning rate or check the data, then "
      f"rerun the same command to resume (or set config.nonfinite='skip' to skip such steps)."
    )


def finish_step(state, new_state, ok, step):
  """The guarded end of an update: `new_state` where `ok`, else the old `state` (the update is
  skipped); the step advanced either way; the first non-finite step recorded."""
  new_state = guard_update(ok, new_state, state)
  new_state["step"] = step + 1
  new_state["first_bad_step"] = jnp.where(
    ok | (state["first_bad_step"] >= 0), state["first_bad_step"], step
  )
  return new_state


# ---- The training loop ----------------------------------------------------------------------------
def out_of_time(start_time: float, budget_seconds: float) -> bool:
  """Whether `budget_seconds` have passed since `start_time`: by process 0's clock on every
  process (a broadcast), so that all stop, and save, at the same step."""
  over = time.time() - start_time > budget_seconds
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    over = bool(multihost_utils.broadcast_one_to_all(np.asarray(over)))
  return over


def meet_all_processes(name: str, timeout_seconds: int = 3600) -> None:
  """Waits until every process gets here (a barrier of JAX's distributed runtime, not a device
  collective; nothing with one process). Before the first step: the processes finish compiling
  at different times, and the first step's collectives connect them, which on CPUs (gloo)
  fails when a peer is more than 30 s late."""
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top

    multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_seconds * 1000)


def train_loop(
  config: ml_collections.ConfigDict,
  state: dict,
  batches,
  step_fn: Callable[[dict, int, dict], tuple],
  ckpt: checkpoint.Checkpointer,
  writer,
  evaluate: Optional[Callable[[dict, int], None]] = None,
  perf: Optional[dict] = None,
) -> tuple:
  """Runs `state, metrics = step_fn(state, step, batch)` from the state's step to
  config.total_steps (or config.stop_after_steps, config.max_train_seconds, a preemption).

  Every config.log_every steps, and at the end, the mean metrics are written (and a non-finite
  step stops the run, naming it); checkpoints are saved every config.checkpoint_every steps and
  at the end; `evaluate(state, step)` runs every config.eval_every steps and at the end. A
  preemption (SIGTERM) saves at the next step and stops (with several processes: at a step
  they agree on, `Checkpointer.preempted`). Returns (state, the last logged mean metrics,
  whether a preemption stopped the run before its end).

  With several processes every decision to log, save, evaluate or stop must be the same on
  all of them (saves and steps are collective): each is a function of the step, except the
  wall-clock budget, which process 0's clock decides for all.

  With `perf['flops']` (the step's FLOPs, `compile_checked`), each log also writes the mean
  seconds per step since the last log, the achieved TFLOP/s per device and, on a device in
  `PEAK_FLOPS`, the model FLOP utilisation (`perf/mfu`).

  However it ends (an error included), the checkpoint saves under way are finished first: a
  run stopped by a non-finite step keeps the good checkpoint it was writing."""
  try:
    return _train_loop(config, state, batches, step_fn, ckpt, writer, evaluate, perf)
  finally:
    ckpt.close()


def _train_loop(config, state, batches, step_fn, ckpt, writer, evaluate, perf) -> tuple:
  step = int(state["step"])
  total = config.total_steps
  report = progress_reporter(total, writer)
  history, train_metrics, preempted, last = [], {}, False, False
  stop_on_nonfinite = config.get("nonfinite", "stop") == "stop"
  skipped_total, skipped_in_a_row = 0, 0

  def check_finite():
    """At a log or save: under "stop", a recorded non-finite step raises, naming what was not
    finite (its metrics are in this window's history); under "skip", only a run of
    MAX_CONSECUTIVE_NONFINITE does."""
    bad = int(state["first_bad_step"])
    if stop_on_nonfinite:
      index = bad - last_log[0]
      raise_if_bad(
        bad,
        ckpt.latest_step(),
        nonfinite_cause(history[index] if 0 <= index < len(history) else None),
      )

  meet_all_processes(f"train_loop_from_step_{step}")
  start_time = time.time()
  last_log = (step, start_time)
  peak = peak_flops(jax.devices()[0].device_kind)
  logging.info("training from step %d to %d", step, total)
  with flushing(writer):
    for step, batch in batches.iterate(step):
      if step >= total:
        break
      state, metrics = step_fn(state, step, batch)
      history.append(metrics)
      done = step + 1
      report(done, time.time())
      last = bool(
        done >= total
        or (config.stop_after_steps and done >= config.stop_after_steps)
        or (config.max_train_seconds and out_of_time(start_time, config.max_train_seconds))
      )
      preempted = ckpt.preempted(done)  # every step, on every process (collective)
      if preempted:
        logging.warning("preempted: saving the checkpoint of step %d and stopping", done)
      if done % config.log_every == 0 or last or preempted:
        check_finite()
        if not stop_on_nonfinite:
          for flags in jax.device_get([h["skipped"] for h in history]):
            skipped_in_a_row = skipped_in_a_row + 1 if flags > 0 else 0
            skipped_total += int(flags > 0)
            if skipped_in_a_row >= MAX_CONSECUTIVE_NONFINITE:
              raise FloatingPointError(
                f"{skipped_in_a_row} non-finite steps in a row (to step {done}): the training "
                f"has diverged. The last checkpoint is step {ckpt.latest_step()}. Lower the "
                f"learning rate or check the data, then rerun the same command to resume."
              )
        train_metrics = mean_metrics(history)
        if not stop_on_nonfinite:
          train_metrics["nonfinite/skipped_steps"] = skipped_total
          if train_metrics.get("skipped"):
            logging.warning(
              "non-finite steps skipped (config.nonfinite='skip'): %d so far", skipped_total
            )
        skips = getattr(batches, "skip_counts", dict)()
        train_metrics.update({f"data/skipped_{reason}": n for reason, n in skips.items()})
        now = time.time()
        if done > last_log[0]:
          seconds = (now - last_log[1]) / (done - last_log[0])
          train_metrics["perf/step_seconds"] = seconds
          flops = (perf or {}).get("flops")
          if flops:
            per_device = flops / seconds / jax.device_count()
            train_metrics["perf/tflops_per_device"] = per_device / 1e12
            if peak:
              train_metrics["perf/mfu"] = per_device / peak
        last_log = (done, now)
        writer.write_scalars(done, train_metrics)
        history = []
      if ckpt.should_save(done, final=last or preempted):
        check_finite()
        ckpt.save(done, state, {"step": done, "data_seed": config.data.seed, "data_position": done})
      if evaluate is not None and (done % config.eval_every == 0 or last):
        evaluate(state, done)
      if last or preempted:
        break
  return state, train_metrics, preempted and not last


# ---- The final evaluation -------------------------------------------------------------------------
FINAL_METRICS = "metrics.json"  # written after a run's final evaluation


def final_evaluation_missing(workdir: str, step: int, total: int) -> bool:
  """Whether a run at `step` still owes its final evaluation: it is at its end (`total`) and
  workdir/metrics.json does not record that step. A run killed during its final evaluation,
  once its final checkpoint was saved, resumes with no step left, and `train_loop` would end
  it without the evaluation; the trainers call this first and evaluate where it is True."""
  if step < total:
    return False
  try:
    with open(os.path.join(workdir, FINAL_METRICS), encoding="utf-8") as f:
      return json.load(f).get("step") != step
  except (OSError, ValueError, AttributeError):  # absent or torn: not recorded
    return True


def write_final_metrics(workdir: str, step: int, metrics: Mapping) -> None:
  """workdir/metrics.json = {"step": step, **metrics}, written whole or not at all."""
  path = os.path.join(workdir, FINAL_METRICS)
  tmp = f"{path}.tmp{os.getpid()}"  # one per process: several hosts may write it
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"step": int(step), **metrics}, f, indent=2)
  os.replace(tmp, path)
