"""Configs: the experiment files under `configs/` and the `config.json` every run writes.

  config = config_io.from_file("maskgit_b", "tiny")       # configs/maskgit_b.py:tiny
  config = config_io.from_workdir("workdirs/demo/maskgit")  # what that run trained with
  key = config_io.params_key(config)                       # "ema_params" or "params"

A work directory's `config.json` is the exact config of its run; the tokenizer, the sampler and
a resumed run read it back with `from_workdir`. Keys added to the configs after a run was
written are absent from its file: readers use `config.get(key, default)` for those.
"""

import importlib.util
import json
import os
from typing import Optional

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = "config.json"


def from_file(name: str, variant: str = "") -> ml_collections.ConfigDict:
  """`get_config(variant)` of `configs/<name>.py` (a name, or a path to any config file);
  locked, as the file returns it."""
  path = name if name.endswith(".py") else os.path.join(REPO, "configs", f"{name}.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  module_name = "phenaki_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def write_to_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `workdir/config.json` whole or not at all (a run killed while writing it keeps the
  previous one); returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp{os.getpid()}"  # one per process: every host of a run writes it
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with (its `config.json`); a damaged file is a
  ValueError naming it rather than a JSON parser's message without a path."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f"a work directory must be a path, got {type(workdir).__name__}")
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a phenaki_jax work directory?")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(
      f"{path} is not a valid config.json ({e}): the run's config is damaged"
    ) from None
  if not isinstance(config, dict):
    raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a config (an object)")
  return ml_collections.ConfigDict(config)


def uses_ema(config) -> bool:
  """Whether a run keeps an exponential moving average of its parameters (`ema_params` in its
  state; config.ema_decay > 0). A config.json from before the option: no EMA."""
  return config.get("ema_decay", 0.0) > 0


def params_key(config, ema: Optional[bool] = None) -> str:
  """The state's subtree that evaluates and samples a run: `ema_params` when it keeps an EMA
  (unless `ema` is False), else `params`. Asking for the EMA of a run without one fails."""
  if ema is None:
    ema = uses_ema(config)
  if ema and not uses_ema(config):
    raise ValueError(
      f"this {config.get('trainer', '')} run keeps no EMA of its parameters "
      f"(config.ema_decay=0): load it with ema=False (or --noema)"
    )
  return "ema_params" if ema else "params"


def default_workdir(config_arg: str) -> str:
  """`workdirs/<file stem>[_<variant>]` of a `--config=path.py[:variant]` argument."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{variant}" if variant else name)
