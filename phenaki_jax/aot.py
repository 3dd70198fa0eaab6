r"""Does a config's train step fit a TPU slice? Compile it for that slice, here, ahead of time.

  python -m phenaki_jax.aot --config=configs/maskgit_b.py:paper --topology=v5p-128 --mesh=-1,16,1
  python -m phenaki_jax.aot --config=configs/cvivit_b.py --topology=v5p:4x4x4 --json
  python -m phenaki_jax.aot --config=configs/maskgit_b.py:paper --topology=v5p-128 \
      --config.grad_accum_steps=4

Renting a slice to learn at the first step that the step does not fit is slow and costly. With
libtpu installed (`pip install -e '.[tpu]'`; `make test` installs it) XLA compiles for a named
TPU topology on any machine, TPU or not: `jax.experimental.topologies.get_topology_desc` gives
compile-only devices, and a step lowered with ShapeDtypeStructs sharded over a mesh of them
compiles exactly as it would on the slice. The step is the trainer's own (`jit_train_step`: the
same function, shardings and donation), traced under the logical axis rules
(`sharding.rules_in_force`); the train state, the batch and the frozen inputs (perceptual
networks, C-ViViT tokenizer, null caption) are abstract: nothing is allocated, and no
checkpoint or weight file is read.

Printed per compiled step: per-device memory from XLA's memory analysis (arguments, outputs,
temporaries; total = arguments + outputs − donated + temporaries, what `common.compile_checked`
checks before training), the FLOPs of one step, and whether it fits the chip's HBM. XLA on TPU
refuses to compile a program whose temporaries exceed the HBM ("Ran out of memory in memory
space hbm"); that is caught and reported with what to change. Exit status: 0 fits, 1 does not
fit, 2 a bad flag or config. --json adds one JSON line (the last line of stdout).

The FLOPs are XLA's cost analysis of the lowered step, which counts a loop's body once: for a
config that scans its layers (config.model.scan) or accumulates micro-batches
(config.grad_accum_steps > 1) they are counted on the same step without those loops (the same
arithmetic), lowered but not compiled.

Slices (`--topology`), as Cloud TPU names them:
  v5p-128, v4-64         TensorCores: 2 per chip, so 64 and 32 chips (v5p:4x4x4, v4:2x4x4)
  v5litepod-16, v5e-16   chips: 16 v5e chips (v5e:4x4)
  v6e-16                 chips: 16 v6e chips (v6e:4x4)
  v5p:4x4x4, v5e:4x4     the topology itself (v4, v5p, tpu7x: AxBxC; v5e, v6e: AxB)
A count maps to the shape Cloud TPU gives it: powers of two, the last of the smallest sides
doubled from 2x2x1 (3-D) or 2x2 (2-D), e.g. 8 chips v5p:2x2x2, 32 chips v4:2x4x4 and 32 chips
v5e:4x8 (the shape tables of cloud.google.com/tpu/docs/v4, v5e, v5p, v6e). Other counts: name
the topology. --num_slices compiles for several such slices (multislice, over DCN).
"""

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Optional

from absl import app, flags
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file[:variant].", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
  "topology", None, "A TPU slice: v5p-128, v4-64, v5litepod-16, v6e-16, or v5p:4x4x4, v5e:4x4."
)
_MESH = flags.DEFINE_string(
  "mesh", None, "data,fsdp,model sizes (one may be -1), e.g. -1,16,1; default: config.mesh."
)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of that topology (multislice).")
_TOKENIZER_CONFIG = flags.DEFINE_string(
  "tokenizer_config",
  None,
  "MaskGIT only: the C-ViViT config file[:variant] whose tokens it models. Default: the "
  "config.json in config.tokenizer.workdir if there is one, else configs/cvivit_b.py:tiny "
  "(tiny MaskGIT on Shapes), :real (tiny on files) or configs/cvivit_b.py (B, the paper's).",
)
_JSON = flags.DEFINE_bool("json", False, "Also print the results as one JSON line.")
flags.mark_flags_as_required(["config", "topology"])

GiB = 2**30

# HBM per chip. Sources: the "System architecture" tables of Cloud TPU's pages
# cloud.google.com/tpu/docs/v4 (32 GiB HBM2), /v5e (16 GB HBM2), /v5p (95 GB HBM2e) and /v6e
# (32 GB), read as GiB; tpu7x (Ironwood): 192 GB per chip, as Google announced it (assumed, not
# in those tables). XLA's own limit is slightly lower (it reserves some HBM): its out-of-memory
# message gave 15.75 GiB per v5e chip, 30.75 per v4 chip, 31.25 per v6e chip and 94.75 per
# tpu7x device; the compiler's verdict counts, this table sizes the margin.
HBM_PER_CHIP = {
  "v4": 32 * GiB,
  "v5e": 16 * GiB,
  "v5p": 95 * GiB,
  "v6e": 32 * GiB,
  "tpu7x": 192 * GiB,
}
# Sides of a topology: v4 and v5p slices are 3-D tori, v5e and v6e 2-D.
TOPOLOGY_RANK = {"v4": 3, "v5e": 2, "v5p": 3, "v6e": 2, "tpu7x": 3}
# Accelerator-type names: the number after the dash counts TensorCores (v4, v5p: 2 per chip)
# or chips (v5e, v6e) — the Cloud TPU pages above.
ACCELERATOR_NAMES = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5litepod": ("v5e", 1)}
ACCELERATOR_NAMES.update({"v5e": ("v5e", 1), "v6e": ("v6e", 1)})
# libtpu's chip configuration: v4 by default shows each TensorCore as a device; on a v4 slice
# JAX runs "megacore" (one device per chip, both cores), so it is asked for here. v5p's
# default is megacore already.
CHIP_CONFIG = {"v4": "megacore"}
VALID_FORMS = (
  "v5p-128 or v4-64 (TensorCores, 2 per chip), v5litepod-16, v5e-16 or v6e-16 (chips), "
  "or a topology: v4:AxBxC, v5p:AxBxC, tpu7x:AxBxC, v5e:AxB, v6e:AxB (e.g. v5p:4x4x4, v5e:4x4)"
)


class UsageError(ValueError):
  """A flag or config that cannot describe a compilable step (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Slice:
  generation: str  # v4, v5e, v5p, v6e, tpu7x
  shape: tuple  # chips along each side
  given: str  # the name on the command line

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology(self) -> str:
    """libtpu's name, e.g. v5p:4x4x4."""
    return f"{self.generation}:{'x'.join(map(str, self.shape))}"

  @property
  def accelerator_type(self) -> str:
    """The Cloud TPU accelerator type, e.g. v5p-128 (libtpu reads it from the environment)."""
    if self.generation in ("v5e", "v6e"):
      return f"{'v5litepod' if self.generation == 'v5e' else 'v6e'}-{self.chips}"
    return f"{self.generation}-{2 * self.chips}"


def default_shape(chips: int, rank: int) -> Optional[tuple]:
  """The shape Cloud TPU gives a slice of `chips` chips: from 2x2 (2-D) or 2x2x1 (3-D), the last
  of the smallest sides doubled until the count is reached (4x4x4 = 64, 4x4x8, 4x8x8, ...;
  2x4 = 8, 4x4, 4x8, ...). None for a count that is not a power of two ≥ 4 (or 1 chip, 2-D)."""
  if rank == 2 and chips == 1:
    return (1, 1)
  shape = [2, 2] if rank == 2 else [2, 2, 1]
  if chips < math.prod(shape) or chips & (chips - 1):
    return None
  while math.prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, s in enumerate(shape) if s == smallest)
    shape[last] *= 2
  return tuple(shape)


def parse_slice(name: str) -> Slice:
  """`v5p-128`, `v5litepod-16`, `v6e-16`, `v4-64` or `v5p:4x4x4` → a Slice; ValueError naming the
  valid forms otherwise."""
  name = name.strip()
  match = re.fullmatch(r"(v4|v5e|v5p|v6e|tpu7x)[:=_]([0-9]+(?:x[0-9]+)+)", name)
  if match:
    generation, sides = match.group(1), tuple(int(s) for s in match.group(2).split("x"))
    rank = TOPOLOGY_RANK[generation]
    if len(sides) != rank or min(sides) < 1:
      raise UsageError(
        f"--topology={name}: a {generation} topology has {rank} sides "
        f"({'AxBxC' if rank == 3 else 'AxB'}); valid forms: {VALID_FORMS}"
      )
    return Slice(generation, sides, name)
  match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-([0-9]+)", name)
  if match:
    generation, per_chip = ACCELERATOR_NAMES[match.group(1)]
    count = int(match.group(2))
    shape = None
    if count % per_chip == 0:
      shape = default_shape(count // per_chip, TOPOLOGY_RANK[generation])
    if shape is None:
      unit = "TensorCores (2 per chip)" if per_chip == 2 else "chips"
      raise UsageError(
        f"--topology={name}: {count} {unit} has no default slice shape here; name the "
        f"topology instead (e.g. {generation}:{'2x2x2' if per_chip == 2 else '4x4'})"
      )
    return Slice(generation, shape, name)
  raise UsageError(f"--topology={name!r} is not a TPU slice name; valid forms: {VALID_FORMS}")


def slice_devices(tpu: Slice, num_slices: int = 1) -> list:
  """The compile-only devices of `num_slices` slices `tpu` (libtpu, no TPU needed)."""
  # libtpu reads these at start-up: the accelerator type (else it warns that it cannot tell),
  # no peers to look for, and leave to others the lock file it takes against two processes
  # driving one TPU (nothing here drives one; the test suite's own processes may hold it).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    import libtpu  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UsageError(
      "libtpu is not installed: `pip install -e '.[tpu]'` (or `make install`) brings the TPU "
      "compiler this check needs"
    ) from None
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  kwargs = dict(num_slices=num_slices)
  # A slice smaller than a 2x2 host (one v5e chip) is described with its own host bounds.
  kwargs["chips_per_host_bounds"] = tuple(min(s, 2) for s in tpu.shape[:2]) + (1,)
  if tpu.generation in CHIP_CONFIG:
    kwargs["chip_config_name"] = CHIP_CONFIG[tpu.generation]
  desc = topologies.get_topology_desc(topology_name=tpu.topology, platform="tpu", **kwargs)
  return list(desc.devices)


# ---- The steps, abstractly (each trainer's `abstract_steps`) ----------------------------------
def tokenizer_config(config, flag_value: Optional[str]):
  """(the C-ViViT config a MaskGIT config models, where it came from). See --tokenizer_config."""
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

  if flag_value:
    path, _, variant = flag_value.partition(":")
    return config_io.from_file(path, variant), flag_value
  workdir = config.tokenizer.workdir
  if os.path.exists(os.path.join(workdir, config_io.CONFIG_FILE)):
    return config_io.from_workdir(workdir), os.path.join(workdir, config_io.CONFIG_FILE)
  if config.model_size == "tiny":
    variant = "real" if config.data.source == "files" else "tiny"
  else:
    variant = ""
  name = "configs/cvivit_b.py" + (f":{variant}" if variant else "")
  return config_io.from_file("cvivit_b", variant), name


def build_steps(config, mesh, tok_config=None) -> tuple:
  """([(name, jitted step, abstract args)], parameter count) of what `config`'s trainer
  compiles before its first step, over `mesh` (its `abstract_steps`)."""
  import jax  # pylint: disable=g-import-not-at-top

  if config.trainer == "cvivit":
    from phenaki_jax.trainers import cvivit  # pylint: disable=g-import-not-at-top

    steps = cvivit.abstract_steps(config, mesh)
  elif config.trainer == "maskgit":
    from phenaki_jax.trainers import maskgit  # pylint: disable=g-import-not-at-top

    steps = maskgit.abstract_steps(config, mesh, tok_config)
  else:
    raise ValueError(f"config.trainer={config.trainer!r} is not cvivit or maskgit")
  state = steps[0][2][0]
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
  return steps, params


def step_flops(config, tok_config=None) -> list:
  """XLA's FLOP count of each step `build_steps` gives, for the whole batch (all devices),
  without the loops its cost analysis counts once (`common.loop_free_flops`)."""
  from phenaki_jax.trainers import common  # pylint: disable=g-import-not-at-top

  if config.trainer == "maskgit" and tok_config is None:
    tok_config = tokenizer_config(config, None)[0]
  return common.loop_free_flops(lambda c, m: build_steps(c, m, tok_config)[0], config)


def loop_free(config):
  """See `common.loop_free`."""
  from phenaki_jax.trainers import common  # pylint: disable=g-import-not-at-top

  return common.loop_free(config)


# ---- Compile and measure --------------------------------------------------------------------------
OOM = re.compile(r"Ran out of memory in memory space hbm|RESOURCE_EXHAUSTED.*(memory|HBM)", re.S)


def compile_step(name, jitted, args, mesh) -> dict:
  """Lowers and compiles one step for the slice: its memory and timings (or the compiler's
  out-of-memory message)."""
  from phenaki_jax import sharding  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  with sharding.rules_in_force(mesh):
    lowered = jitted.lower(*args)
  result = {"step": name, "lower_seconds": time.perf_counter() - start}
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if not OOM.search(str(e)):
      raise
    result["compile_seconds"] = time.perf_counter() - start
    result["error"] = str(e).strip().splitlines()[0]
    return result
  result["compile_seconds"] = time.perf_counter() - start
  stats = compiled.memory_analysis()
  result.update(
    argument_bytes=stats.argument_size_in_bytes,
    output_bytes=stats.output_size_in_bytes,
    alias_bytes=stats.alias_size_in_bytes,
    temp_bytes=stats.temp_size_in_bytes,
    code_bytes=stats.generated_code_size_in_bytes,
  )
  result["total_bytes"] = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
  return result


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def advice(config, per_device_batch: int, mesh_shape: dict) -> str:
  """What to change when a step does not fit."""
  k = config.get("grad_accum_steps", None)
  fsdp = mesh_shape["fsdp"]
  tips = [
    f"a smaller per-device batch (now {per_device_batch}: --config.data.batch_size="
    f"{config.data.batch_size // 2} halves it)",
  ]
  if k is not None:
    tips.append(
      f"micro-batches, --config.grad_accum_steps={2 * k} (the same update; the activations of "
      f"1/{2 * k} of the batch at a time)"
    )
  tips.append(
    f"a bigger fsdp axis, e.g. --mesh=-1,{2 * fsdp},{mesh_shape['model']} (parameters and "
    f"optimizer state sharded {2 * fsdp} ways instead of {fsdp})"
  )
  tips.append("or a bigger slice")
  return "; ".join(tips)


def run(config, config_name: str, topology: str, mesh_flag, num_slices=1, tok_flag=None) -> dict:
  """Compiles `config`'s train step(s) for the slice; returns the report (see `main`)."""
  from phenaki_jax import sharding  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import common  # pylint: disable=g-import-not-at-top

  tpu = parse_slice(topology)
  if num_slices < 1:
    raise UsageError(f"--num_slices={num_slices} must be >= 1")
  if mesh_flag:
    try:
      config.mesh = tuple(int(s) for s in mesh_flag.split(","))
    except ValueError:
      raise UsageError(f"--mesh={mesh_flag!r}: three integers data,fsdp,model") from None
  devices = slice_devices(tpu, num_slices)
  try:
    mesh = sharding.make_mesh(config.mesh, devices=devices)
  except ValueError as e:
    raise UsageError(f"{e} ({len(devices)} devices in {num_slices} x {tpu.topology})") from None
  shape = dict(mesh.shape)
  rows = shape["data"] * shape["fsdp"]
  batch = config.data.batch_size
  if batch % rows:
    raise UsageError(
      f"config.data.batch_size={batch} does not split over data×fsdp = {shape['data']}×"
      f"{shape['fsdp']} = {rows} devices: use a multiple of {rows} (or another --mesh)"
    )
  tok_config, tok_source = None, None
  if config.trainer == "maskgit":
    tok_config, tok_source = tokenizer_config(config, tok_flag)
  per_chip = len(devices) // (tpu.chips * num_slices)
  hbm = HBM_PER_CHIP[tpu.generation] // per_chip
  kind = devices[0].device_kind
  report = {
    "config": config_name,
    "trainer": config.trainer,
    "model_size": config.model_size,
    "topology": tpu.topology,
    "slice": tpu.given,
    "num_slices": num_slices,
    "chips": tpu.chips * num_slices,
    "devices": len(devices),
    "device_kind": kind,
    "hbm_bytes_per_device": hbm,
    "mesh": shape,
    "global_batch": batch,
    "per_device_batch": batch // rows,
    "grad_accum_steps": config.get("grad_accum_steps", 1),
    "tokenizer_config": tok_source,
  }
  steps, report["parameters"] = build_steps(config, mesh, tok_config)
  report["steps"] = []
  for name, fn, args in steps:  # a large step takes minutes: say what is under way
    print(f"compiling the {name} for {tpu.given} ...", file=sys.stderr, flush=True)
    report["steps"].append(compile_step(name, fn, args, mesh))
  for result, flops in zip(report["steps"], step_flops(config, tok_config)):
    result["flops"] = flops
  report["flops_counted_without_loops"] = loop_free(config) is not None
  peak = common.peak_flops(kind)
  for result in report["steps"]:
    result["fits"] = "error" not in result and result["total_bytes"] <= hbm
    if result.get("flops") and peak:
      # The step's time were every device at its dense bf16 peak (100% MFU): a lower bound.
      result["seconds_at_peak"] = result["flops"] / (peak * len(devices))
  report["fits"] = all(r["fits"] for r in report["steps"])
  report["advice"] = None if report["fits"] else advice(config, batch // rows, shape)
  return report


def format_report(report: dict) -> str:
  """The human-readable lines of a report."""
  lines = [
    f"config   {report['config']} ({report['trainer']} {report['model_size']}, "
    f"{report['parameters'] / 1e6:,.1f}M parameters)",
    f"slice    {report['slice']} = {report['num_slices']} x {report['topology']}: "
    f"{report['chips']} chips, {report['devices']} devices ({report['device_kind']}), "
    f"{_gib(report['hbm_bytes_per_device'])} HBM per device",
    "mesh     "
    + " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    + f"; batch {report['global_batch']} = {report['per_device_batch']} per device"
    + f", grad_accum_steps={report['grad_accum_steps']}",
  ]
  if report["tokenizer_config"]:
    lines.append(f"tokens   of the C-ViViT of {report['tokenizer_config']}")
  for r in report["steps"]:
    lines.append(
      f"{r['step']}: lowered in {r['lower_seconds']:.1f} s, compiled in "
      f"{r['compile_seconds']:.1f} s"
    )
    if "error" in r:
      lines.append(f"  does not fit: {r['error']}")
    else:
      share = r["total_bytes"] / report["hbm_bytes_per_device"]
      lines.append(
        f"  per device: arguments {_gib(r['argument_bytes'])}, outputs {_gib(r['output_bytes'])}"
        f" ({_gib(r['alias_bytes'])} donated), temporaries {_gib(r['temp_bytes'])}; total "
        f"{_gib(r['total_bytes'])} of {_gib(report['hbm_bytes_per_device'])} ({share:.0%})"
      )
    if r.get("flops"):
      how = ", counted without loops" if report["flops_counted_without_loops"] else ""
      line = f"  FLOPs per step: {r['flops'] / 1e12:,.3f} TFLOP (all devices{how})"
      if r.get("seconds_at_peak"):
        t = r["seconds_at_peak"]
        t = f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.3g} ms"
        line += f"; >= {t} per step at the chips' bf16 peak"
      lines.append(line)
  if report["fits"]:
    lines.append(f"fits: yes, on {report['slice']}")
  else:
    lines.append(
      f"fits: NO — the step does not fit {report['slice']} ({report['devices']} devices of "
      f"{_gib(report['hbm_bytes_per_device'])}). Try {report['advice']}."
    )
  return "\n".join(lines)


def main(argv):
  del argv
  # Compile-only: never take this machine's accelerators (a TPU VM's chips may be training).
  import jax  # pylint: disable=g-import-not-at-top

  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  # The compile time is part of the report: a persistent cache hit would hide it.
  jax.config.update("jax_enable_compilation_cache", False)
  config_name = config_flags.get_config_filename(flags.FLAGS["config"])
  try:
    report = run(
      _CONFIG.value,
      config_name,
      _TOPOLOGY.value,
      _MESH.value,
      _NUM_SLICES.value,
      _TOKENIZER_CONFIG.value,
    )
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_report(report), flush=True)
  if _JSON.value:
    print(json.dumps(report), flush=True)
  if not report["fits"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
