"""Helpers shared by the benchmark scripts: machine facts and config loading."""
import importlib.util
import os
import platform

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> dict:
  return {"platform": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "cpus": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
          "load_average_1min": round(os.getloadavg()[0], 2)}


def load_config(name: str, variant: str):
  spec = importlib.util.spec_from_file_location(
      f"bench_cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)
