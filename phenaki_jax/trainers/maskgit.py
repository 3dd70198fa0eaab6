"""Stage 2: train the text-conditioned MaskGIT on frozen C-ViViT tokens (Phenaki §4.2).

  python -m phenaki_jax.train --config=configs/maskgit_b.py:tiny --workdir=workdirs/maskgit

Per step: videos (and 1-frame images, from a mixture of sources) are tokenised by the frozen
C-ViViT inside the jitted step (or read from a pre-tokenised directory), a cosine-scheduled
random subset of the valid tokens is masked, 10% of the examples get the null caption, and the
cross-entropy is taken on masked tokens only. An image example is a 1-frame video: only its
first time step is valid, and its padded later steps are neither attended to nor scored.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import flax.linen as nn
from absl import logging

from phenaki_jax import checkpoint, config_io, masking, optim, sharding, text
from phenaki_jax import sample as sample_lib
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.data import pipeline, pretokenized, video_io
from phenaki_jax.models import cvivit, layers, quantizer
from phenaki_jax.models import maskgit as maskgit_lib
from phenaki_jax.trainers import common


# ---- Config ------------------------------------------------------------------------------------
def tokenizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The frozen tokenizer's run config (its work directory's config.json)."""
  return config_io.from_workdir(config.tokenizer.workdir)


def build_model(config: ml_collections.ConfigDict, tok_config=None) -> maskgit_lib.MaskGIT:
  """The MaskGIT for this run; its token grid and codebook are the frozen tokenizer's."""
  tok_config = tokenizer_config(config) if tok_config is None else tok_config
  tok_model = cvivit.get_model(tok_config.model_size, **tok_config.model)
  return maskgit_lib.get_model(
    config.model_size,
    codebook_size=tok_model.codebook_size,
    grid=tok_model.token_grid(tok_config.data.num_frames),
    **config.model,
  )


def validate_config(config: ml_collections.ConfigDict) -> None:
  common.check_choice(config, "token_embed_init", ("normal", "codebook"))
  optim.check_accum_steps(config)
  common.check_choice(config, "model.head", maskgit_lib.HEADS)
  common.check_choice(config, "model.dtype", layers.DTYPES)
  if not os.path.isdir(config.tokenizer.workdir):
    raise ValueError(
      f"config.tokenizer.workdir={config.tokenizer.workdir!r} does not exist: "
      f"train the C-ViViT first (configs/cvivit_b.py) and point to its workdir"
    )
  if not 0.0 <= config.text_dropout < 1.0:
    raise ValueError(f"config.text_dropout={config.text_dropout} must be in [0, 1)")
  if (
    config.data.video_rate < 0
    or config.data.image_rate < 0
    or (config.data.video_rate + config.data.image_rate) <= 0
  ):
    raise ValueError(
      "config.data.video_rate and config.data.image_rate must be ≥ 0 with a positive sum"
    )
  if config.data.video_rate == 0:
    raise ValueError("config.data.video_rate=0 trains no video at all")
  common.check_ema_decay(config)
  common.check_choice(config, "nonfinite", common.NONFINITE_POLICIES)
  if not 0.0 <= config.prefix_rate <= 1.0:
    raise ValueError(f"config.prefix_rate={config.prefix_rate} must be in [0, 1]")
  common.check_data_config(config)
  if config.code_support_clips < 0:
    raise ValueError(
      f"config.code_support_clips={config.code_support_clips} must be ≥ 0 "
      f"(0 skips the code support)"
    )
  maskgit_lib.check_group(
    config.model.group, build_model(config).grid[1:], config.model.head, prefix="config.model."
  )


def given_time_steps(context_frames, temporal_patch: int, num_frames: int) -> np.ndarray:
  """int32 [B]: the time steps that `context_frames` [B] given frames fill (0 for 0 frames).

  A context must be whole time steps, 1 + k·t_p frames with 1 + k·t_p < num_frames, so that
  something is left to predict."""
  frames = np.asarray(context_frames, np.int64)
  bad = (frames > 0) & (((frames - 1) % temporal_patch != 0) | (frames >= num_frames))
  if bad.any():
    raise ValueError(
      f"context frames {sorted(set(frames[bad].tolist()))} are not whole time "
      f"steps of a {num_frames}-frame clip: use 1 + k·{temporal_patch} frames, "
      f"fewer than {num_frames} (config.data.turn_context_frames)"
    )
  return np.where(frames > 0, 1 + (frames - 1) // temporal_patch, 0).astype(np.int32)


def make_batches(config, tok_config) -> pipeline.Batches:
  """The training mixture of `config.data` (Shapes or files) in clips of the tokenizer's run
  (`tok_config`: its frames and resolution)."""
  return common.train_batches(
    config,
    num_frames=tok_config.data.num_frames,
    resolution=tok_config.data.resolution,
    video_rate=config.data.video_rate,
  )


# ---- Code support: which codes the tokenizer emits at the first and at later time steps --------
def code_counts(codes, is_image, codebook_size: int) -> np.ndarray:
  """int64 [2, K]: how often each code appears at the first time step (row 0) and at later time
  steps (row 1) of `codes` int [B, t, h, w]; an image (`is_image` bool [B]) only has a first."""
  codes = np.asarray(codes)
  is_image = np.asarray(is_image, bool)
  counts = np.zeros((2, codebook_size), np.int64)
  np.add.at(counts[0], codes[:, 0].ravel(), 1)
  np.add.at(counts[1], codes[~is_image, 1:].ravel(), 1)
  return counts


def write_code_support(config, workdir: str, tok: tokenizer_lib.Tokenizer, batches) -> str:
  """Counts the codes of the first `config.code_support_clips` training examples (the run's own
  stream: tokenised videos and images, or the pre-tokenised codes) and writes them to
  `workdir/code_support.npz` (`counts` [2, K]). The sampler can then restrict each time step
  to codes that occur there (`sample.restrict_codes`): the C-ViViT's first frame is a 2-D patch
  embedding and its later steps are tubelets, so they use largely different codes."""
  counts = np.zeros((2, tok.codebook_size), np.int64)
  step = seen = 0
  last_step = getattr(batches, "meta", {}).get("num_steps")  # pre-tokenised data may end
  while seen < config.code_support_clips and (last_step is None or step < last_step):
    batch = batches.batch(step)
    codes = batch["codes"] if "codes" in batch else np.asarray(tok.encode(batch["video"]))
    counts += code_counts(codes, batch["is_image"], tok.codebook_size)
    seen += len(codes)
    step += 1
  path = sample_lib.save_code_support(workdir, counts, seen)
  logging.info(
    "code support from %d clips: %d codes at the first time step, %d later (%s)",
    seen,
    int((counts[0] > 0).sum()),
    int((counts[1] > 0).sum()),
    path,
  )
  return path


def load_tokenizer(config) -> tokenizer_lib.Tokenizer:
  step = config.tokenizer.step if config.tokenizer.step >= 0 else None
  return tokenizer_lib.Tokenizer.from_workdir(config.tokenizer.workdir, step)


def tokenizer_shardings(tok_model, mesh) -> dict:
  """Where the frozen C-ViViT's parameters go on the training mesh: by their logical axes, as
  the C-ViViT's own training shards them (the width over 'fsdp', heads, MLP and codebook rows
  over 'model'), not a full copy on every device."""
  video = jax.ShapeDtypeStruct(
    (1, tok_model.max_frames, tok_model.image_size, tok_model.image_size, 3), jnp.float32
  )
  return sharding.param_shardings(tok_model.init, mesh, jax.random.PRNGKey(0), video)


# ---- State ---------------------------------------------------------------------------------------
def make_init_fn(model, tx, text_len: int, text_dim: int, codebook=None, *, ema: bool):
  """`codebook` (the tokenizer's ℓ2-normalised code vectors [K, C], optional): the token
  embeddings of the K codes start as a random projection of them, so codes that the C-ViViT
  finds alike start alike (the [MASK] row keeps its random init). `ema`: the state also holds
  `ema_params`, an exponential moving average of the parameters (config.ema_decay)."""

  def init(rng):
    t, h, w = model.grid
    tokens = jnp.zeros((1, t * h * w), jnp.int32)
    params = model.init(
      rng, tokens, jnp.zeros((1, text_len, text_dim)), jnp.ones((1, text_len), bool)
    )["params"]
    if codebook is not None:
      box = params["token_embed"]["embedding"]
      table = nn.unbox(box)  # [K + 1, D]
      proj = 0.02 * jax.random.normal(
        jax.random.fold_in(rng, 7), (codebook.shape[1], table.shape[1]), table.dtype
      )
      table = table.at[: codebook.shape[0]].set(jnp.asarray(codebook, table.dtype) @ proj)
      params = dict(params, token_embed=dict(embedding=box.replace_boxed(table)))
    return common.init_state(params, tx, ema=ema)

  return init


def abstract_state(config, text_len: int, text_dim: int):
  model = build_model(config)
  tx = optim.make_optimizer(config.optim)
  mesh = sharding.make_mesh(config.mesh)
  return sharding.abstract_state(
    make_init_fn(model, tx, text_len, text_dim, ema=config_io.uses_ema(config)),
    mesh,
    jax.random.PRNGKey(0),
  )[0]


# ---- Update step ---------------------------------------------------------------------------------
def valid_tokens(is_image, grid) -> jax.Array:
  """bool [B, N]: every token of a video; only the first time step of an image."""
  t = grid[0]
  steps = jnp.where(is_image, 1, t)
  return masking.valid_from_time_steps(steps, grid)


def train_step(state, batch, null_text, tok_params, rng, *, model, tok_model, tx, config):
  """batch: video uint8 [B,F,H,W,3] (or pre-tokenised codes int [B,t,h,w]), text f32 [B,L,D],
  text_mask bool [B,L], is_image bool [B]."""
  step = state["step"]
  rng = jax.random.fold_in(rng, step)
  drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
  b = batch["is_image"].shape[0]

  if "codes" in batch:
    codes = batch["codes"].astype(jnp.int32)  # [B, t, h, w]
  else:
    codes = tok_model.apply(
      {"params": tok_params}, cvivit.to_model_range(batch["video"]), method=cvivit.CViViT.encode
    )  # [B, t, h, w]
  codes = jax.lax.stop_gradient(codes).reshape(b, -1)  # [B, N]
  valid = valid_tokens(batch["is_image"], model.grid)  # [B, N]

  # Classifier-free guidance: some examples see the null (empty) caption.
  null_tokens, null_mask = null_text
  drop = jax.random.bernoulli(drop_rng, config.text_dropout, (b,))
  text_tokens = jnp.where(drop[:, None, None], null_tokens[None], batch["text"])
  text_mask = jnp.where(drop[:, None], null_mask[None], batch["text_mask"])

  maskable = valid
  if "given_steps" in batch:
    # Turn clips (config.data.turn_rate): their first time steps are the story context, given.
    maskable = maskable & ~masking.valid_from_time_steps(batch["given_steps"], model.grid)
  if config.prefix_rate > 0:
    # Frame prediction: a share of the videos keep their first s time steps (1 ≤ s < t) given,
    # as story mode and image-to-video give the context; the mask is drawn over the rest.
    mask_rng, prefix_rng = jax.random.split(mask_rng)
    maskable = maskable & ~masking.sample_prefix_given(
      prefix_rng, batch["is_image"], config.prefix_rate, model.grid
    )
  mask = masking.sample_training_mask(mask_rng, maskable)  # [B, N]
  inputs = masking.apply_mask(codes, mask, model.mask_token_id)

  # The loss is a sum over tokens, so it takes the logits in the model's group order (no
  # transpose of the logits or their gradient) with the targets and mask permuted to match.
  codes_g, mask_g = model.group_order(codes), model.group_order(mask)

  def loss_fn(params, inputs, text_tokens, text_mask, valid, codes_g, mask_g, rng):
    logits = model.apply(
      {"params": params},
      inputs,
      text_tokens,
      text_mask,
      token_valid=valid,
      train=True,
      rngs={"dropout": rng},
      token_order=False,
    )
    return masking.masked_cross_entropy(logits, codes_g, mask_g)

  parts = (inputs, text_tokens, text_mask, valid, codes_g, mask_g)
  k = config.get("grad_accum_steps", 1)
  if k == 1:
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], *parts, dropout_rng
    )
  else:
    # Micro-batches: k forward/backward passes of B/k examples, one at a time (the activations
    # of one), their gradients summed. Each micro-batch's mean is weighted by its share of the
    # batch's masked tokens, so loss and gradient equal the whole batch's (dropout apart).
    chunks = optim.micro_batches(parts, k)
    total = jnp.maximum(jnp.sum(mask_g), 1).astype(jnp.float32)
    weights = jnp.sum(chunks[-1], axis=tuple(range(1, chunks[-1].ndim))) / total

    def micro_loss(params, chunk, i):
      value, aux = loss_fn(params, *chunk, jax.random.fold_in(dropout_rng, i))
      return value, ({"accuracy": aux["accuracy"]}, aux["token_nll"])

    loss, grads, scalars, nll = optim.accumulate_gradients(
      micro_loss, state["params"], chunks, weights
    )
    metrics = {"accuracy": scalars["accuracy"], "token_nll": nll}
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)

  # Per-source losses (no gradient): images are scored on first-frame tokens only.
  token_nll = jax.lax.stop_gradient(metrics["token_nll"])
  is_image = batch["is_image"][:, None]
  loss_video = layers.masked_mean(token_nll, mask_g & ~is_image)
  loss_image = layers.masked_mean(token_nll, mask_g & is_image)

  param_norm, ok = common.norm_and_finite(params)  # a finite loss can still overflow
  ok &= jnp.isfinite(loss)
  updated = dict(state, params=params, opt_state=opt_state)
  if config_io.uses_ema(config):
    updated["ema_params"] = common.ema_update(state["ema_params"], params, step, config.ema_decay)
  new_state = common.finish_step(state, updated, ok, step)
  health = common.health_metrics(ok, loss)
  metrics = dict(
    loss=loss,
    masked_accuracy=metrics["accuracy"],
    loss_video=loss_video,
    loss_image=loss_image,
    image_fraction=jnp.mean(batch["is_image"].astype(jnp.float32)),
    text_dropped=jnp.mean(drop.astype(jnp.float32)),
    mask_fraction=jnp.sum(mask) / jnp.maximum(jnp.sum(valid), 1),
    grad_norm=optax.global_norm(grads),
    param_norm=param_norm,
    lr=optim.make_schedule(config.optim)(step),
    **health,
  )
  return new_state, metrics


# ---- The jitted step, as training compiles it ---------------------------------------------------
def batch_spec(config, tok_config, text_len: int, text_dim: int, mesh) -> dict:
  """ShapeDtypeStructs of the global batch `main` hands the step (see `train_step`): videos of
  the tokenizer's clips (or, pre-tokenised, their codes), is_image, the captions' embeddings
  and mask, and with turn clips the given time steps; rows split over data×fsdp."""
  rows = sharding.batch_sharding(mesh)
  b = config.data.batch_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((b,) + tuple(shape), dtype, sharding=rows)
  if config.data.pretokenized:
    batch = {"codes": spec(build_model(config, tok_config).grid, jnp.int32)}
  else:
    size = tok_config.data.resolution
    batch = {"video": spec((tok_config.data.num_frames, size, size, 3), jnp.uint8)}
  if config.data.turn_rate > 0:
    batch["given_steps"] = spec((), jnp.int32)
  batch.update(
    is_image=spec((), jnp.bool_),
    text=spec((text_len, text_dim), jnp.float32),
    text_mask=spec((text_len,), jnp.bool_),
  )
  return batch


def text_shape(text_config) -> tuple:
  """(tokens L, width D) of the caption embeddings `config.text_encoder` gives, no weights read."""
  from phenaki_jax.models import minilm, t5  # pylint: disable=g-import-not-at-top

  module = minilm if text_config.name == "minilm" else t5
  width = module.get_model(text_config.size, text_config.get("dtype", "float32")).width
  return int(text_config.max_length), int(width)


def abstract_steps(config, mesh, tok_config) -> list:
  """[(name, jitted step, abstract args)] of the step `main` compiles, over `mesh`, for the
  C-ViViT config `tok_config`, on ShapeDtypeStructs alone (no tokenizer checkpoint or text
  encoder weights read): for the ahead-of-time fit check and the FLOP count of the MFU log."""
  repl = sharding.replicated(mesh)
  model = build_model(config, tok_config)
  tok_model = cvivit.get_model(tok_config.model_size, **tok_config.model)
  text_len, text_dim = text_shape(config.text_encoder)
  tx = optim.make_optimizer(config.optim)
  init_fn = make_init_fn(model, tx, text_len, text_dim, ema=config_io.uses_ema(config))
  state, shardings = sharding.abstract_state(init_fn, mesh, jax.random.PRNGKey(0))
  size = tok_model.image_size
  video = jax.ShapeDtypeStruct((1, tok_model.max_frames, size, size, 3), jnp.float32)
  tok_params = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    checkpoint.abstract_params(tok_model.init, video),
    tokenizer_shardings(tok_model, mesh),
  )
  null_text = (
    jax.ShapeDtypeStruct((text_len, text_dim), jnp.float32, sharding=repl),
    jax.ShapeDtypeStruct((text_len,), jnp.bool_, sharding=repl),
  )
  batch = batch_spec(config, tok_config, text_len, text_dim, mesh)
  jitted = jit_train_step(config, mesh, shardings, model, tok_model, tx)
  return [("train step", jitted, (state, batch, null_text, tok_params, common.abstract_key(repl)))]


def jit_train_step(config, mesh, state_shardings, model, tok_model, tx):
  """`train_step` jitted as training runs it: the state in `state_shardings` and donated, the
  batch's rows split over data×fsdp, the frozen tokenizer by its logical axes
  (`tokenizer_shardings`), the null caption and rng replicated. One place for `main` and the
  ahead-of-time fit check (`phenaki_jax.aot`)."""
  repl = sharding.replicated(mesh)
  tok = tokenizer_shardings(tok_model, mesh)
  return jax.jit(
    functools.partial(train_step, model=model, tok_model=tok_model, tx=tx, config=config),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl, tok, repl),
    out_shardings=(state_shardings, repl),
    donate_argnums=0,
  )


# ---- Main ----------------------------------------------------------------------------------------
EVAL_PROMPTS = (
  "a red square moves right",
  "a cyan triangle moves up",
  "a white circle moves down",
  "a orange square moves left",
)


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate_config(config)
  tok_config = tokenizer_config(config)
  model = build_model(config, tok_config)
  common.setup_workdir(config, workdir)
  writer = common.metric_writer(workdir)  # TensorBoard, or metrics.jsonl without TensorFlow

  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh)

  # ---- Frozen tokenizer and text encoder ----
  tok = load_tokenizer(config)
  # Sharded over this host's devices (T5-XXL: 4.8B parameters); each host encodes its own rows.
  text_encoder = text.TextEncoder.from_config(
    config.text_encoder,
    cache_dir=os.path.join(workdir, "text_cache"),
    mesh=sharding.local_mesh(),
  )
  null_text = tuple(jnp.asarray(x) for x in text_encoder.null_embedding())
  repl = sharding.replicated(mesh)
  tok_params = jax.device_put(tok.params, tokenizer_shardings(tok.model, mesh))
  null_text = jax.device_put(null_text, repl)

  # ---- Input pipeline ----
  if config.data.turn_rate > 0:  # fail at start-up, naming the key, not at the first turn clip
    if config.data.turn_context_frames < 1:
      raise ValueError(
        f"config.data.turn_context_frames={config.data.turn_context_frames} must be >= 1"
      )
    given_time_steps(
      [config.data.turn_context_frames], tok.temporal_patch, tok_config.data.num_frames
    )
  if config.data.pretokenized:
    batches = pretokenized.PretokenizedBatches(
      config.data.pretokenized, pretokenized.expected_meta(config), config.total_steps
    )
  else:
    batches = make_batches(config, tok_config)

  # ---- Model & optimizer ----
  tx = optim.make_optimizer(config.optim)
  codebook = None
  if config.token_embed_init == "codebook":
    codebook = np.asarray(quantizer.l2_normalize(tok.params["quantizer"]["codebook"]))
  init_fn = make_init_fn(
    model, tx, text_encoder.max_length, text_encoder.dim, codebook, ema=config_io.uses_ema(config)
  )
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  state, state_shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  logging.info(
    "MaskGIT %s: %.2fM parameters, grid %s, codebook %d",
    config.model_size,
    sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6,
    model.grid,
    model.codebook_size,
  )

  # ---- Load checkpoint ----
  ckpt, state = common.open_checkpoints(config, workdir, state)

  # ---- Update step ----
  jitted_step = jit_train_step(config, mesh, state_shardings, model, tok.model, tx)

  compiled, perf = [], {}  # perf: the step's FLOPs, for the MFU log

  def step_fn(state, step, batch):
    del step
    text_tokens, text_mask = text_encoder.encode(list(batch["caption"]))
    inputs = {"codes": batch["codes"]} if "codes" in batch else {"video": batch["video"]}
    if config.data.turn_rate > 0:
      inputs["given_steps"] = given_time_steps(
        batch["context_frames"], tok.temporal_patch, tok_config.data.num_frames
      )
    global_batch = sharding.put_global_batch(
      {**inputs, "is_image": batch["is_image"], "text": text_tokens, "text_mask": text_mask}, mesh
    )
    args = (state, global_batch, null_text, tok_params, train_rng)
    if not compiled:  # compiled at the first step, checked to fit a device
      what = "the MaskGIT train step"
      compiled.append(
        common.compile_checked(
          jitted_step,
          *args,
          config=config,
          what=what,
          perf=perf,
          abstract_steps=lambda c, m: abstract_steps(c, m, tok_config),
        )
      )
    return compiled[0](*args)

  # ---- Evals ----
  fvd_setup, last_eval = None, {}
  if config.eval_metrics.fvd_videos > 0:
    decoded = batches if hasattr(batches, "sources") else make_batches(config, tok_config)
    fvd_setup = eval_metric_setup(config, tok_config, decoded)

  def run_eval(state, step):
    params = state[config_io.params_key(config)]
    if config.sample.num_videos > 0:
      write_samples(workdir, step, config, tok, model, params, text_encoder, writer)
    if fvd_setup is not None:
      scalars = eval_metrics(workdir, step, config, tok, model, params, text_encoder, fvd_setup)
      writer.write_scalars(step, scalars)
      last_eval.update(scalars)

  # ---- Train loop ----
  start_time = time.time()
  with jax.set_mesh(mesh):
    if common.final_evaluation_missing(workdir, int(state["step"]), config.total_steps):
      run_eval(state, int(state["step"]))  # killed in it last time, after the final save
    state, train_metrics, stopped_early = common.train_loop(
      config, state, batches, step_fn, ckpt, writer, evaluate=run_eval, perf=perf
    )
  if int(state["step"]) >= config.total_steps and jax.process_index() == 0:
    common.write_final_metrics(workdir, int(state["step"]), last_eval)  # the end was evaluated
  # A finished run (not a preempted one) records which codes occur where, for the sampler.
  if config.code_support_clips > 0 and jax.process_index() == 0 and not stopped_early:
    write_code_support(config, workdir, tok, batches)
  return {
    "state": state,
    "train": train_metrics,
    "eval": last_eval,
    "seconds": time.time() - start_time,
  }


def eval_metric_setup(config, tok_config, batches) -> dict:
  """What the evaluation's FVD (and CLIP score) need: a fixed set of real clips with their
  captions — the first `config.eval_metrics.fvd_videos` usable examples of the training
  mixture's video sources, centred, in turn — and the frozen I3D (and CLIP) networks."""
  from phenaki_jax.data import media  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import clip, i3d  # pylint: disable=g-import-not-at-top

  n, frames = config.eval_metrics.fvd_videos, tok_config.data.num_frames
  videos, captions = [], []
  sources = [s for s, image in zip(batches.sources, batches.is_image) if not image]
  indexes = [0] * len(sources)
  while len(videos) < n:
    progress = False
    for k, source in enumerate(sources):
      size = getattr(source, "num_examples", None)
      while len(videos) < n and (size is None or indexes[k] < size):
        indexes[k] += 1
        try:
          example = source.example(indexes[k] - 1, num_frames=frames)
        except media.SkipExample:
          continue
        videos.append(example["video"])
        captions.append(str(example["caption"]))
        progress = True
        break
    if not progress:
      break
  if not videos:
    raise ValueError("config.eval_metrics.fvd_videos > 0 but the training data has no video")
  setup = {
    "videos": np.stack(videos),
    "captions": captions,
    "i3d": i3d.load_i3d_params(config.eval_metrics.i3d_checkpoint or None),
  }
  if config.eval_metrics.clip_dir:
    setup["clip"] = clip.load_clip(config.eval_metrics.clip_dir)
    setup["clip_tokenizer"] = clip.Tokenizer(
      config.eval_metrics.clip_dir, context_length=setup["clip"][0].context_length
    )
  logging.info("evaluation: FVD over %d prompts of the training data", len(captions))
  return setup


def eval_metrics(workdir, step, config, tok, model, params, text_encoder, setup) -> dict:
  """FVD of samples for the fixed prompts against their real clips (statistics of the real
  clips cached in workdir/fvd_reference.npz) and, with CLIP weights, their CLIP score."""
  from phenaki_jax import metrics  # pylint: disable=g-import-not-at-top

  sampler = sample_lib.Sampler(tok, model, params, text_encoder, config.sample)
  captions = setup["captions"]
  fake = np.concatenate(
    [np.asarray(sampler.generate(captions[i : i + 8], seed=i)) for i in range(0, len(captions), 8)]
  )
  reference = os.path.join(workdir, "fvd_reference.npz")
  result = metrics.fvd(setup["videos"], fake, setup["i3d"], real_stats=reference)
  scalars = {"eval/fvd": result["fvd"]}
  if "clip" in setup:
    model_clip, params_clip = setup["clip"]
    scalars["eval/clip_score"] = metrics.clip_score(
      fake, captions, model_clip, params_clip, setup["clip_tokenizer"]
    )["clip_score"]
  return scalars


def write_samples(workdir, step, config, tok, model, params, text_encoder, writer):
  """A few text-to-video samples (the default prompts) as GIF and a contact sheet."""
  sampler = sample_lib.Sampler(tok, model, params, text_encoder, config.sample)
  prompts = list(EVAL_PROMPTS[: config.sample.num_videos])
  videos = np.asarray(sampler.generate(prompts, seed=step))  # [B, T, H, W, 3]
  out = os.path.join(workdir, "samples")
  os.makedirs(out, exist_ok=True)
  video_io.write_gif(
    os.path.join(out, f"samples_{step:07d}.gif"),
    np.concatenate(list(videos), axis=2),
    fps=4,
    scale=4,
  )
  grid = video_io.contact_sheet(videos, os.path.join(out, f"samples_{step:07d}.png"), scale=3)
  writer.write_images(step, {"samples": np.asarray(grid)[None]})
  with open(os.path.join(out, f"samples_{step:07d}.json"), "w") as f:
    json.dump({"prompts": prompts}, f)
