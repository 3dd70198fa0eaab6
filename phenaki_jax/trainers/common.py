"""Pieces both trainers share: work directory set-up, metric logging, NaN guard, parameter EMA."""
import contextlib
import json
import logging as logging_std
import os
from typing import Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging


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
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  logging.info("config written to %s", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a phenaki_jax work directory?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


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
      logging.info("step %d/%d, %.2f steps/s, %.1f min left", step, self.total, rate,
                   (self.total - step) / rate / 60)
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
    raise ValueError(f"config.data.turn_rate={config.data.turn_rate} must be in [0, 1) (the "
                     f"share of the video examples that are turn clips)")


def dtype_of(name: str):
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)


def mean_metrics(history: list) -> dict:
  """Averages a list of per-step scalar metric dicts (device arrays) on the host."""
  history = jax.device_get(history)
  keys = sorted({k for h in history for k in h})  # a window may span adversarial_start_step
  return {k: float(np.mean([h[k] for h in history if k in h])) for k in keys}


# ---- Parameter EMA ------------------------------------------------------------------------------
def uses_ema(config) -> bool:
  """Whether a run keeps an exponential moving average of its parameters (`ema_params` in its
  state; config.ema_decay > 0). A workdir's config.json from before the option: no EMA."""
  return config.get("ema_decay", 0.0) > 0


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


def params_key(config, ema: Optional[bool] = None) -> str:
  """The state's subtree that evaluates and samples a run: `ema_params` when it keeps an EMA
  (unless `ema` is False), else `params`. Asking for the EMA of a run without one fails."""
  if ema is None:
    ema = uses_ema(config)
  if ema and not uses_ema(config):
    raise ValueError(f"this {config.get('trainer', '')} run keeps no EMA of its parameters "
                     f"(config.ema_decay=0): load it with ema=False (or --noema)")
  return "ema_params" if ema else "params"


def restore_state(ckpt, state: dict):
  """(state, meta) of the latest checkpoint, laid out like `state` (the freshly initialised,
  sharded train state). A run resumed with config.ema_decay > 0 whose checkpoints have no EMA
  (the option turned on midway) starts its average at the restored parameters; one resumed
  without an EMA whose checkpoints keep one fails, naming the option, rather than drop it."""
  from phenaki_jax import checkpoint  # pylint: disable=g-import-not-at-top
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
      logging.warning("the checkpoints in %s keep no parameter EMA: config.ema_decay starts "
                      "it at the restored step-%d parameters", ckpt.directory, meta["step"])
      return dict(restored, ema_params=restored["params"]), meta
    raise ValueError(f"the checkpoints in {ckpt.directory} keep a parameter EMA (ema_params) "
                     f"and this config has ema_decay=0: resume with the --config.ema_decay the "
                     f"run started with, or use another --workdir") from None


def guard_update(ok, new_tree, old_tree):
  """Keeps the old state where the step's loss was not finite (jittable; `ok` a bool scalar).

  One `lax.cond` over the whole tree, not a `jnp.where` per leaf: the per-leaf selects tripled
  the XLA compile time of the C-ViViT step on a 2-core CPU (≈125 s → ≈42 s).
  """
  return jax.lax.cond(ok, lambda: new_tree, lambda: old_tree)


def all_finite(tree) -> jax.Array:
  """True iff every element of every leaf is finite (jittable; a scalar bool)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def raise_if_bad(first_bad_step: int, latest_checkpoint) -> None:
  if first_bad_step >= 0:
    raise FloatingPointError(
        f"non-finite loss or update at step {first_bad_step}; the update was skipped and "
        f"training stopped. The last good checkpoint is step {latest_checkpoint} (unchanged). "
        f"Lower the learning rate or check the data, then rerun the same command to resume.")


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))
