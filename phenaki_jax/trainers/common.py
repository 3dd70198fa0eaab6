"""Pieces both trainers share: work directory set-up, metric logging, NaN guard."""
import json
import logging as logging_std
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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
