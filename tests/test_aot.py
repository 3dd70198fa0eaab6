"""The ahead-of-time fit check (`phenaki_jax.aot`): slice names, and the tiny configs compiled for
a 4-chip v5e slice by libtpu on this CPU machine (each in a subprocess, JAX_PLATFORMS=cpu)."""

import importlib.util
import json

import pytest

from phenaki_jax import aot
from conftest import load_config, run_module

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler to check against",
)


# ---- Slice names (no compiler needed) -------------------------------------------------------------
@pytest.mark.parametrize(
  "name, generation, shape",
  [
    # The shape tables of cloud.google.com/tpu/docs/v4, v5p, v5e and v6e.
    ("v5p-8", "v5p", (2, 2, 1)),
    ("v5p-16", "v5p", (2, 2, 2)),
    ("v5p-64", "v5p", (2, 4, 4)),
    ("v5p-128", "v5p", (4, 4, 4)),
    ("v5p-256", "v5p", (4, 4, 8)),
    ("v5p-512", "v5p", (4, 8, 8)),
    ("v5p-1024", "v5p", (8, 8, 8)),
    ("v4-32", "v4", (2, 2, 4)),
    ("v4-64", "v4", (2, 4, 4)),
    ("v4-128", "v4", (4, 4, 4)),
    ("v5litepod-1", "v5e", (1, 1)),
    ("v5litepod-8", "v5e", (2, 4)),
    ("v5litepod-16", "v5e", (4, 4)),
    ("v5e-32", "v5e", (4, 8)),
    ("v5litepod-128", "v5e", (8, 16)),
    ("v6e-16", "v6e", (4, 4)),
    ("v6e-256", "v6e", (16, 16)),
    ("v5p:4x4x4", "v5p", (4, 4, 4)),
    ("v5e:2x2", "v5e", (2, 2)),
    ("tpu7x:2x2x1", "tpu7x", (2, 2, 1)),
  ],
)
def test_slice_names_map_to_topologies(name, generation, shape):
  tpu = aot.parse_slice(name)
  assert (tpu.generation, tpu.shape) == (generation, shape)
  assert tpu.topology == f"{generation}:{'x'.join(map(str, shape))}"


def test_slice_names_count_cores_or_chips():
  # v4 and v5p names count TensorCores (2 per chip); v5e and v6e names count chips.
  assert aot.parse_slice("v5p-128").chips == 64
  assert aot.parse_slice("v4-64").chips == 32
  assert aot.parse_slice("v5litepod-16").chips == 16
  assert aot.parse_slice("v6e-16").chips == 16
  assert aot.parse_slice("v5p:4x4x4").accelerator_type == "v5p-128"
  assert aot.parse_slice("v5e:4x4").accelerator_type == "v5litepod-16"


@pytest.mark.parametrize(
  "name, says", [("h100-8", "valid forms"), ("v5e:2x2x2", "2 sides"), ("v5p-24", "name the")]
)
def test_bad_slice_names_say_what_is_valid(name, says):
  with pytest.raises(ValueError, match=says):
    aot.parse_slice(name)


def test_loop_free_config_leaves_the_config_alone():
  paper = load_config("maskgit_b", "paper")
  paper.grad_accum_steps = 4
  counted = aot.loop_free(paper)
  assert (counted.model.scan, counted.grad_accum_steps) == (False, 1)
  assert (paper.model.scan, paper.grad_accum_steps) == (True, 4)
  assert aot.loop_free(load_config("maskgit_b", "tiny")) is None


# ---- Compiled for a v5e:2x2 slice -----------------------------------------------------------------
def _aot(*args):
  result = run_module("phenaki_jax.aot", *args, timeout=300)
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  report = json.loads(lines[-1]) if lines else None
  return result, report


def _check_step(step, report):
  total = step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"] + step["temp_bytes"]
  assert step["total_bytes"] == total > 0
  assert 0 < step["temp_bytes"] and step["fits"]
  # Data parallel: every device holds all the (float32) parameters among its arguments.
  assert step["argument_bytes"] >= 4 * report["parameters"]
  assert step["total_bytes"] < report["hbm_bytes_per_device"]
  # A training step uses each weight at least once per example, forward and backward.
  assert 4 * report["parameters"] * report["global_batch"] < step["flops"] < 1e13
  assert step["compile_seconds"] > 0


@needs_libtpu
@pytest.mark.parametrize(
  "config, extra",
  [
    ("configs/cvivit_b.py:tiny", ()),
    ("configs/maskgit_b.py:tiny", ("--tokenizer_config=configs/cvivit_b.py:tiny",)),
  ],
)
def test_tiny_configs_fit_a_small_slice(config, extra):
  result, report = _aot(f"--config={config}", "--topology=v5e:2x2", "--json", *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  assert report["devices"] == 4 and report["device_kind"].startswith("TPU v5")
  assert report["per_device_batch"] * 4 == report["global_batch"]
  assert report["fits"] and report["steps"]
  for step in report["steps"]:
    _check_step(step, report)
  assert "fits: yes" in result.stdout


@needs_libtpu
def test_a_step_too_big_fails_with_advice():
  result, report = _aot(
    "--config=configs/maskgit_b.py:tiny",
    "--tokenizer_config=configs/cvivit_b.py:tiny",
    "--topology=v5litepod-4",
    "--config.data.batch_size=65536",
    "--json",
  )
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
  assert not report["fits"]
  assert "fits: NO" in result.stdout
  for hint in ("per-device batch (now 16384", "grad_accum_steps", "--mesh=-1,2,1"):
    assert hint in result.stdout


@needs_libtpu
@pytest.mark.parametrize(
  "args, says",
  [
    (("--topology=v5p_128",), "valid forms"),
    (("--topology=v5e:2x2", "--config.data.batch_size=6"), "does not split over data×fsdp"),
    (("--topology=v5e:2x2", "--mesh=3,1,1"), "needs 3 devices, have 4"),
  ],
)
def test_bad_flags_fail_clearly(args, says):
  result, _ = _aot("--config=configs/cvivit_b.py:tiny", *args)
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
  assert says in result.stderr
