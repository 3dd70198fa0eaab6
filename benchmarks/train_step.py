r"""Seconds per training step of either stage, for any config variant, on synthetic inputs of the
config's shapes, with the step's FLOPs (XLA's cost analysis) and the rate it reaches. Prints JSON.

  python benchmarks/train_step.py --runs=cvivit:tiny,maskgit:tiny
  python benchmarks/train_step.py --runs=cvivit:B:8,maskgit:paper:8 --peak   # on a GPU/TPU

A run is `stage:variant[:global batch]` (stage cvivit → configs/cvivit_b.py, maskgit →
configs/maskgit_b.py; the batch defaults to the config's). Each run builds the trainer's own
state and jitted `train_step` (same shardings, same donation) over a data-parallel mesh of all
local devices (`--mesh` to change it), feeds it random batches of the config's shapes (the
values do not change the cost: every shape is static) and reports the median of `--steps` timed
steps after two warm-up steps. C-ViViT runs time the adversarial step (the discriminator on)
when the config uses one, and the perceptual terms it asks for (frozen VGG16/LPIPS and I3D;
`--noperceptual` leaves them out and `perceptual_terms_dropped` names them). MaskGIT runs tokenise the videos
in the step with a randomly initialised C-ViViT of the matching stage-1 variant (tiny → tiny,
paper → B), as a run without `data.pretokenized` does; `--maskgit_input=codes` feeds codes
instead. Text embeddings are random tensors of the text encoder's shape: no encoder is loaded.

`--count_only` builds the state abstractly and only lowers each step (no allocation, no
compilation): the FLOPs of a paper-scale step, counted on a laptop.

`flops_per_step` is XLA's count for the lowered step, before compilation (recomputation under
remat included, so a hardware rather than a model FLOP count; for a scanned model, counted on the
same step with its layers unrolled, since XLA counts a loop's body once);
`tflops_per_sec` divides it by the median step time. `--peak` also times a large bfloat16 and a
float32 matrix product on the device and reports each run's rate as a fraction of them (a
utilisation against the measured, not the datasheet, peak).
"""

import json
import math
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top
from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_string(
  "runs", "cvivit:tiny,maskgit:tiny", "Comma-separated stage:variant[:global batch]."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per run (median reported).")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "Mesh shape (data, fsdp, model) for every run.")
_MASKGIT_INPUT = flags.DEFINE_enum(
  "maskgit_input",
  "video",
  ["video", "codes"],
  "MaskGIT batches: videos tokenised in the step, or codes.",
)
_PERCEPTUAL = flags.DEFINE_bool(
  "perceptual", True, "C-ViViT runs: include the perceptual terms the config asks for."
)
_PEAK = flags.DEFINE_bool("peak", False, "Also time bf16/f32 matrix products (the MFU base).")
_SCAN = flags.DEFINE_enum(
  "scan",
  "config",
  ["config", "true", "false"],
  "Run the layers as one nn.scan (faster compile) or unrolled; default: as the config says.",
)
_COUNT_ONLY = flags.DEFINE_bool(
  "count_only",
  False,
  "Only count each step's FLOPs (abstract state, lowered, not compiled "
  "or run): sizes a paper-scale step on a laptop.",
)
_UNROLLED_FLOPS = flags.DEFINE_bool(
  "unrolled_flops", True, "Scanned models: count FLOPs on an unrolled twin (costs a trace)."
)

STAGES = {"cvivit": "cvivit_b", "maskgit": "maskgit_b"}
TOKENIZER_VARIANT = {"tiny": "tiny", "paper": "B"}


def parse_run(spec: str) -> tuple:
  parts = spec.strip().split(":")
  if len(parts) not in (2, 3) or parts[0] not in STAGES:
    raise ValueError(
      f"--runs entry {spec!r}: expected stage:variant[:batch] with stage in {sorted(STAGES)}"
    )
  batch = int(parts[2]) if len(parts) == 3 else None
  if batch is not None and batch < 1:
    raise ValueError(f"--runs entry {spec!r}: the batch must be >= 1")
  return parts[0], parts[1], batch


def flops_of(lowered) -> float:
  """XLA's FLOP count of a lowered (not yet compiled) function, or None.

  Counted before compilation, so the same on every backend: a GPU-compiled step's count leaves
  out the convolutions it hands to cuDNN (the C-ViViT B step counted 2% of its FLOPs there).
  """
  from phenaki_jax.trainers import common  # pylint: disable=g-import-not-at-top

  return common.lowered_flops(lowered)


def step_bytes(compiled):
  """XLA's buffer assignment for one step: arguments + outputs + temporaries − donated aliases."""
  try:
    m = compiled.memory_analysis()
    return int(
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      + m.temp_size_in_bytes
      - m.alias_size_in_bytes
    )
  except Exception:  # pylint: disable=broad-except
    return None


def peak_bytes():
  """The device's high-water mark so far (all earlier runs of this process and --peak too)."""
  import jax  # pylint: disable=g-import-not-at-top

  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get("peak_bytes_in_use")


def time_steps(step_fn, state, batch_fn, steps: int):
  """Two warm-up steps, then `steps` steps each synchronised; returns (state, [seconds])."""
  import jax  # pylint: disable=g-import-not-at-top

  for i in range(2):
    state, metrics = step_fn(state, batch_fn(i))
    jax.block_until_ready((state, metrics))
  times = []
  for i in range(steps):
    batch = batch_fn(i + 2)
    jax.block_until_ready(batch)
    t = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(f"the benchmarked step gave a non-finite loss ({loss})")
  return state, times


def configure(stage: str, variant: str, batch_size, mesh_shape):
  """The config of a run, with the benchmark's overrides."""
  config = config_io.from_file(STAGES[stage], variant)
  with config.unlocked():
    config.mesh = mesh_shape
    if _SCAN.value != "config":
      config.model.scan = _SCAN.value == "true"
    if batch_size:
      config.data.batch_size = batch_size
  return config


def make_state(init_fn, mesh):
  """The trainer's sharded train state, or (--count_only) its ShapeDtypeStructs."""
  import jax  # pylint: disable=g-import-not-at-top
  from phenaki_jax import sharding  # pylint: disable=g-import-not-at-top

  make = sharding.abstract_state if _COUNT_ONLY.value else sharding.create_sharded_state
  return make(init_fn, mesh, jax.random.PRNGKey(0))


def measure(config, build, mesh, batches, args):
  """Lowers, counts, compiles and times one run's step.

  build(config) -> (step_fn(state, batch, *args), init_fn(rng)); `args` are the step's
  arguments after the batch. Returns the row's fields and the step times (None: --count_only).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections
  from phenaki_jax import sharding

  fn, init_fn = build(config)
  state, state_shardings = make_state(init_fn, mesh)
  repl = sharding.replicated(mesh)
  jitted = jax.jit(
    fn,
    in_shardings=(state_shardings, sharding.batch_sharding(mesh)) + (repl,) * len(args),
    out_shardings=(state_shardings, repl),
    donate_argnums=0,
  )
  params = sum(x.size for x in jax.tree.leaves(state["params"]))
  out = dict(params_m=round(params / 1e6, 2), scan=bool(config.model.get("scan", False)))
  with sharding.rules_in_force(mesh):
    lowered = jitted.lower(state, batches[0], *args)
    if not config.model.get("scan"):
      flops = flops_of(lowered)
    elif _UNROLLED_FLOPS.value:
      # XLA counts a scanned loop's body once: count the same step with its layers unrolled
      # (lowered on abstract state, not compiled).
      unrolled = ml_collections.ConfigDict(config.to_dict())
      unrolled.model.scan = False
      fn_u, init_u = build(unrolled)
      abstract, _ = sharding.abstract_state(init_u, mesh, jax.random.PRNGKey(0))
      flops = flops_of(jax.jit(fn_u).lower(abstract, batches[0], *args))
    else:
      flops = None  # XLA's count of a scanned step holds one layer: not reported
    out["flops_per_step"] = flops
    if _COUNT_ONLY.value:
      return out, None
    t = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = round(time.perf_counter() - t, 1)
    out["xla_step_bytes"] = step_bytes(compiled)
    _, times = time_steps(
      lambda s, x: compiled(s, x, *args), state, lambda i: batches[i % 2], _STEPS.value
    )
  return out, times


def cvivit_run(variant: str, batch_size, mesh_shape):
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from phenaki_jax import losses, sharding
  from phenaki_jax.models import discriminator
  from phenaki_jax.trainers import cvivit as trainer

  config = configure("cvivit", variant, batch_size, mesh_shape)
  # The perceptual terms (frozen VGG16/LPIPS and I3D) as configured, or left out (--noperceptual).
  dropped = [
    k
    for k in ("image_perceptual", "video_perceptual")
    if config.losses[k] > 0 and not _PERCEPTUAL.value
  ]
  with config.unlocked():
    for k in dropped:
      config.losses[k] = 0.0
  trainer.validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  disc = discriminator.VideoDiscriminator(tuple(config.disc.channels))
  tx, disc_tx = trainer.make_optimizers(config)
  adversarial = config.losses.adversarial > 0

  def build(cfg):
    model = trainer.build_model(cfg)
    fn = functools.partial(
      trainer.train_step,
      model=model,
      disc=disc,
      tx=tx,
      disc_tx=disc_tx,
      config=cfg,
      adversarial=adversarial,
    )
    return fn, trainer.make_init_fn(
      model, disc, tx, disc_tx, num_frames=cfg.data.num_frames, ema=config_io.uses_ema(cfg)
    )

  b, f, r = config.data.batch_size, config.data.num_frames, config.data.resolution
  rng_np = np.random.default_rng(0)
  batches = [
    sharding.put_global_batch(
      {
        "video": rng_np.integers(0, 256, (b, f, r, r, 3), dtype=np.uint8),
        "is_image": rng_np.random(b) < config.data.image_rate,
      },
      mesh,
    )
    for _ in range(2)
  ]
  rng = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh))
  frozen = jax.device_put(losses.load_perceptual_params(config.losses), sharding.replicated(mesh))
  out, times = measure(config, build, mesh, batches, (rng, frozen))
  return dict(
    batch=b, clip=[f, r, r], adversarial=adversarial, perceptual_terms_dropped=dropped, **out
  ), times


def maskgit_run(variant: str, batch_size, mesh_shape):
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from phenaki_jax import optim, sharding
  from phenaki_jax.models import minilm, t5
  from phenaki_jax.models import cvivit
  from phenaki_jax.trainers import common
  from phenaki_jax.trainers import maskgit as trainer

  if variant not in TOKENIZER_VARIANT:
    raise ValueError(f"maskgit variant {variant!r}: expected one of {sorted(TOKENIZER_VARIANT)}")
  config = configure("maskgit", variant, batch_size, mesh_shape)
  tok_dir = tempfile.mkdtemp(prefix="train_step_tok_")
  common.setup_workdir(config_io.from_file("cvivit_b", TOKENIZER_VARIANT[variant]), tok_dir)
  with config.unlocked():
    config.tokenizer.workdir = tok_dir
  trainer.validate_config(config)
  tok_config = trainer.tokenizer_config(config)
  tok_model = cvivit.get_model(tok_config.model_size, **tok_config.model)
  te = config.text_encoder
  text_model = minilm.get_model(te.size) if te.name == "minilm" else t5.get_model(te.size)
  text_len, text_dim = te.max_length, text_model.width  # the encoder itself is not run
  mesh = sharding.make_mesh(config.mesh)
  repl = sharding.replicated(mesh)
  tx = optim.make_optimizer(config.optim)

  def build(cfg):
    model = trainer.build_model(cfg, tok_config)
    fn = functools.partial(trainer.train_step, model=model, tok_model=tok_model, tx=tx, config=cfg)
    return fn, trainer.make_init_fn(model, tx, text_len, text_dim, ema=config_io.uses_ema(cfg))

  grid = trainer.build_model(config, tok_config).grid
  codebook_size = tok_model.codebook_size
  b = config.data.batch_size
  f, r = tok_config.data.num_frames, tok_config.data.resolution
  tok_params = None
  rng_np = np.random.default_rng(0)
  if _MASKGIT_INPUT.value == "video":
    tok_init = jax.jit(
      lambda k: tok_model.init(k, jax.numpy.zeros((1, f, r, r, 3)))["params"], out_shardings=repl
    )
    tok_params = (
      jax.eval_shape(tok_init, jax.random.PRNGKey(2))
      if _COUNT_ONLY.value
      else tok_init(jax.random.PRNGKey(2))
    )

  def make_batch():
    x = {
      "is_image": rng_np.random(b) < config.data.image_rate,
      "text": rng_np.standard_normal((b, text_len, text_dim)).astype(np.float32),
      "text_mask": np.arange(text_len)[None].repeat(b, 0) < rng_np.integers(2, text_len, (b, 1)),
    }
    if _MASKGIT_INPUT.value == "video":
      x["video"] = rng_np.integers(0, 256, (b, f, r, r, 3), dtype=np.uint8)
    else:
      x["codes"] = rng_np.integers(0, codebook_size, (b, *grid), dtype=np.int32)
    if config.data.turn_rate > 0:
      x["given_steps"] = np.where(
        rng_np.random(b) < config.data.turn_rate,
        trainer.given_time_steps([config.data.turn_context_frames], tok_model.temporal_patch, f)[0],
        0,
      )
    return sharding.put_global_batch(x, mesh)

  batches = [make_batch() for _ in range(2)]
  null_text = jax.device_put(
    (np.zeros((text_len, text_dim), np.float32), np.arange(text_len) < 2), repl
  )
  rng = jax.device_put(jax.random.PRNGKey(1), repl)
  out, times = measure(config, build, mesh, batches, (null_text, tok_params, rng))
  return dict(
    batch=b,
    grid=list(grid),
    tokens_per_example=math.prod(grid),
    input=_MASKGIT_INPUT.value,
    dtype=config.model.get("dtype", "float32"),
    **out,
  ), times


def matmul_peak(dtype_name: str, n: int = 8192, repeats: int = 10) -> float:
  """Measured TFLOP/s of an n×n×n matrix product in `dtype_name` (random operands)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp

  if jax.default_backend() == "cpu":
    n = 2048
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.dtype(dtype_name))
  b = jax.random.normal(kb, (n, n), jnp.dtype(dtype_name))
  mm = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(mm(a, b))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    times.append(time.perf_counter() - t)
  times.sort()
  return 2 * n**3 / times[len(times) // 2] / 1e12


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top

  mesh_shape = tuple(int(x) for x in _MESH.value.split(","))
  runs = [parse_run(s) for s in _RUNS.value.split(",") if s.strip()]
  peaks = (
    {"bfloat16": round(matmul_peak("bfloat16"), 1), "float32": round(matmul_peak("float32"), 1)}
    if _PEAK.value
    else None
  )
  results = []
  for stage, variant, batch in runs:
    fn = cvivit_run if stage == "cvivit" else maskgit_run
    out, times = fn(variant, batch, mesh_shape)
    row = dict(run=f"{stage}:{variant}", **out)
    if times is None:  # --count_only
      results.append(row)
      print(json.dumps(row), flush=True)
      continue
    median = float(np.median(times))
    row.update(
      ms_per_step=round(1e3 * median, 2),
      ms_per_step_min=round(1e3 * min(times), 2),
      examples_per_sec=round(out["batch"] / median, 1),
      peak_device_bytes=peak_bytes(),
    )
    if out["flops_per_step"]:
      rate = out["flops_per_step"] / median / 1e12
      row["tflops_per_sec"] = round(rate, 2)
      if peaks:
        row["fraction_of_matmul_peak"] = {k: round(rate / v, 3) for k, v in peaks.items()}
    results.append(row)
    print(json.dumps(row), flush=True)
  print(
    json.dumps(
      {
        "benchmark": "train_step",
        "steps": _STEPS.value,
        "mesh": list(mesh_shape),
        "matmul_peak_tflops": peaks,
        "results": results,
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
