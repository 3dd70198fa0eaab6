"""Helpers shared by the benchmark scripts: machine facts."""

import os
import platform

import jax


def machine() -> dict:
  return {
    "platform": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "load_average_1min": round(os.getloadavg()[0], 2),
  }
