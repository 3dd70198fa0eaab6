"""A config's train steps built abstractly: the trainers' own jitted steps over ShapeDtypeStructs
(state, batch, frozen networks), allocating nothing and reading no checkpoint or weight file.

`phenaki_jax.aot` compiles them for a TPU slice; the trainers count a step's FLOPs with
`step_flops` (for the MFU in their logs) where XLA's cost analysis of the compiled program
cannot: a loop's body is counted once, and a TPU backend counts nothing before compiling.
"""

import math
import os
from typing import Optional


def _key_spec(repl):
  import jax  # pylint: disable=g-import-not-at-top

  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl)


def abstract_perceptual_params(losses_config, repl) -> dict:
  """Shapes of `losses.load_perceptual_params(losses_config)` (the frozen VGG16/LPIPS and I3D
  trees), replicated, without their weight files."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  shapes = {"image": vgg.expected_shapes, "video": i3d.expected_shapes}
  return {
    kind: flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=repl) for k, s in shapes[kind]().items()}
    )
    for kind in ("image", "video")
    if losses_config[f"{kind}_perceptual"] > 0
  }


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


def text_shape(text_config) -> tuple:
  """(tokens L, width D) of the caption embeddings `config.text_encoder` gives, no weights read."""
  from phenaki_jax.models import minilm, t5  # pylint: disable=g-import-not-at-top

  module = minilm if text_config.name == "minilm" else t5
  width = module.get_model(text_config.size, text_config.get("dtype", "float32")).width
  return int(text_config.max_length), int(width)


def build_steps(config, mesh, tok_config=None) -> tuple:
  """([(name, jitted step, abstract args)], parameter count) of what `config`'s trainer
  compiles before its first step, over `mesh`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from phenaki_jax import checkpoint, config_io, optim, sharding  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import cvivit  # pylint: disable=g-import-not-at-top

  repl = sharding.replicated(mesh)
  rng = _key_spec(repl)
  if config.trainer == "cvivit":
    from phenaki_jax.trainers import cvivit as trainer  # pylint: disable=g-import-not-at-top

    model, disc, tx, disc_tx, init_fn = trainer.build(config)
    state, shardings = sharding.abstract_state(init_fn, mesh, jax.random.PRNGKey(0))
    frozen = abstract_perceptual_params(config.losses, repl)
    batch = trainer.batch_spec(config, mesh)
    steps = [
      (
        "train step" + (" with the discriminator" if adversarial else ""),
        trainer.jit_train_step(config, mesh, shardings, model, disc, tx, disc_tx, adversarial),
        (state, batch, rng, frozen),
      )
      for adversarial in trainer.step_phases(config)
    ]
  elif config.trainer == "maskgit":
    from phenaki_jax.trainers import maskgit as trainer  # pylint: disable=g-import-not-at-top

    model = trainer.build_model(config, tok_config)
    tok_model = cvivit.get_model(tok_config.model_size, **tok_config.model)
    text_len, text_dim = text_shape(config.text_encoder)
    tx = optim.make_optimizer(config.optim)
    init_fn = trainer.make_init_fn(model, tx, text_len, text_dim, ema=config_io.uses_ema(config))
    state, shardings = sharding.abstract_state(init_fn, mesh, jax.random.PRNGKey(0))
    size = tok_model.image_size
    video = jax.ShapeDtypeStruct((1, tok_model.max_frames, size, size, 3), jnp.float32)
    tok_params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      checkpoint.abstract_params(tok_model.init, video),
      trainer.tokenizer_shardings(tok_model, mesh),
    )
    null_text = (
      jax.ShapeDtypeStruct((text_len, text_dim), jnp.float32, sharding=repl),
      jax.ShapeDtypeStruct((text_len,), jnp.bool_, sharding=repl),
    )
    batch = trainer.batch_spec(config, tok_config, text_len, text_dim, mesh)
    jitted = trainer.jit_train_step(config, mesh, shardings, model, tok_model, tx)
    steps = [("train step", jitted, (state, batch, null_text, tok_params, rng))]
  else:
    raise ValueError(f"config.trainer={config.trainer!r} is not cvivit or maskgit")
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
  return steps, params


def loop_free(config):
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


def step_flops(config, tok_config=None) -> list:
  """XLA's FLOP count of each step `build_steps` gives, for the whole batch (all devices).

  Counted on the step lowered for one CPU device: the lowered (not yet partitioned) program is
  the same computation whatever the mesh, and XLA's TPU plugin offers no cost analysis before
  compilation. A config with loops (`loop_free`) is counted without them."""
  import jax  # pylint: disable=g-import-not-at-top

  from phenaki_jax import sharding  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import common  # pylint: disable=g-import-not-at-top

  if config.trainer == "maskgit" and tok_config is None:
    tok_config = tokenizer_config(config, None)[0]
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices("cpu")[:1])
  steps, _ = build_steps(loop_free(config) or config, mesh, tok_config)
  flops = []
  for _, fn, args in steps:
    with sharding.rules_in_force(mesh):
      flops.append(common.lowered_flops(fn.lower(*args)))
  return flops
