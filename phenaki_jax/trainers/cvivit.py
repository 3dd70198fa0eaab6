"""Stage 1: train the C-ViViT video tokenizer (Phenaki §4.1). One readable loop.

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit

State: generator params + optimizer state, discriminator params + optimizer state, the EMA
code usage used for dead-code restarts, the step, and the first step whose loss was not finite
(−1 while all is well). The update step is one jitted pure function with explicit shardings;
before `losses.adversarial_start_step` a cheaper step without the discriminator runs.

Images (`data.image_rate` > 0): with `data.static_images` an image is a static clip trained as
a video; otherwise it is a 1-frame video, zero-padded to the batch's clip length, whose loss
(L2, VQ, code counts) covers only its first frame and first time step, so it trains exactly as
the 1-frame video would (the causal encoder and decoder give frame 0 from frame 0 alone).
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
from absl import logging

from phenaki_jax import checkpoint, losses, masking, optim, sharding
from phenaki_jax.data import pipeline, tasks, video_io
from phenaki_jax.data import shapes as shapes_lib
from phenaki_jax.evaluators import recon as recon_metrics
from phenaki_jax.models import cvivit, discriminator
from phenaki_jax.models import quantizer as quantizer_lib
from phenaki_jax.trainers import common


# ---- Config ------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict) -> cvivit.CViViT:
  m = dict(config.model)
  m["dtype"] = common.dtype_of(m.get("dtype", "float32"))
  return cvivit.get_model(config.model_size, **m)


def validate_config(config: ml_collections.ConfigDict) -> cvivit.CViViT:
  """Fails at start-up with the offending key named."""
  common.check_choice(config, "data.source", ("shapes",))
  model = build_model(config)
  if config.data.resolution != model.image_size:
    raise ValueError(f"config.data.resolution={config.data.resolution} but the {config.model_size}"
                     f" C-ViViT takes {model.image_size}² frames")
  try:
    model.check_video_shape((1, config.data.num_frames, model.image_size, model.image_size, 3))
  except ValueError as e:
    raise ValueError(f"config.data.num_frames={config.data.num_frames}: {e}") from None
  n_dev = jax.device_count()
  if config.data.batch_size % n_dev and config.data.batch_size % jax.process_count() == 0:
    pass  # batch rows are split over data×fsdp below; the mesh check reports misfits.
  if not 0.0 <= config.data.image_rate <= 1.0:
    raise ValueError(f"config.data.image_rate={config.data.image_rate} must be in [0, 1]")
  if config.losses.temporal_l2 < 0:
    raise ValueError(f"config.losses.temporal_l2={config.losses.temporal_l2} must be >= 0")
  common.check_turn_rate(config)
  frames = config.data.num_frames
  if config.data.turn_rate > 0 and not 1 <= config.data.turn_context_frames < frames:
    raise ValueError(f"config.data.turn_context_frames={config.data.turn_context_frames} must be "
                     f"in [1, {frames}) (frames before the turn)")
  if model.encoder_spatial_radius < -1:
    raise ValueError(f"config.model.encoder_spatial_radius={model.encoder_spatial_radius}: use -1"
                     " (whole-frame attention) or a radius >= 0 in patches")
  losses.check_perceptual_config(config.losses)
  common.check_ema_decay(config)
  return model


def shapes_spec(config: ml_collections.ConfigDict) -> shapes_lib.ShapesSpec:
  return shapes_lib.ShapesSpec(resolution=config.data.resolution,
                               num_frames=config.data.num_frames)


def make_batches(config: ml_collections.ConfigDict) -> pipeline.Batches:
  """Shapes videos (a config.data.turn_rate share of them turn clips; and, if
  config.data.image_rate > 0, 1-frame images or, with config.data.static_images, static clips
  of them) as a pure f(step)."""
  spec, seed = shapes_spec(config), config.data.seed
  mixture = tasks.shapes_mixture(spec, seed, video_rate=1.0 - config.data.image_rate,
                                 image_rate=config.data.image_rate,
                                 turn_rate=config.data.turn_rate,
                                 turn_context_frames=config.data.turn_context_frames)
  return pipeline.Batches(mixture, config.data.batch_size, seed=seed,
                          num_frames=config.data.num_frames, process_index=jax.process_index(),
                          process_count=jax.process_count(), prefetch=config.data.prefetch,
                          static_images=config.data.static_images)


def eval_clips(config: ml_collections.ConfigDict) -> np.ndarray:
  """Held-out reconstruction clips (the 'eval' split: never training clips). uint8 [N,F,H,W,3]."""
  spec = shapes_spec(config)
  # Index stride 7 (coprime with the 78 seen triples) spreads the clips over colours and shapes.
  return np.stack([shapes_lib.video_example(spec, config.data.seed, 7 * i, split="eval")["video"]
                   for i in range(config.eval.num_clips)])


# ---- State ---------------------------------------------------------------------------------------
def make_init_fn(config, model, disc, tx, disc_tx):
  video_shape = (1, config.data.num_frames, model.image_size, model.image_size, 3)

  def init(rng):
    model_rng, disc_rng = jax.random.split(rng)
    video = jnp.zeros(video_shape, jnp.float32)
    params = model.init(model_rng, video)["params"]
    disc_params = disc.init(disc_rng, video)["params"]
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 disc_params=disc_params, disc_opt_state=disc_tx.init(disc_params),
                 code_usage=jnp.zeros((model.codebook_size,), jnp.float32),
                 first_bad_step=jnp.full((), -1, jnp.int32))
    if common.uses_ema(config):   # config.ema_decay: a moving average of the generator
      state["ema_params"] = params
    return state
  return init


def make_optimizers(config):
  tx = optim.make_optimizer(config.optim)
  disc_tx = optax.chain(optax.clip_by_global_norm(config.optim.clip_norm),
                        optax.adam(config.disc.lr, b1=config.disc.b1, b2=config.disc.b2))
  return tx, disc_tx


def abstract_state(config):
  """The train state's ShapeDtypeStructs (allocating nothing) — used to restore checkpoints."""
  model = build_model(config)
  disc = discriminator.VideoDiscriminator(tuple(config.disc.channels))
  tx, disc_tx = make_optimizers(config)
  mesh = sharding.make_mesh(config.mesh)
  return sharding.abstract_state(make_init_fn(config, model, disc, tx, disc_tx), mesh,
                                 jax.random.PRNGKey(0))[0]


# ---- Update step ---------------------------------------------------------------------------------
def first_frame_images(config: ml_collections.ConfigDict) -> bool:
  """Whether the batches hold zero-padded 1-frame images (flagged is_image) to train as images."""
  return config.data.image_rate > 0 and not config.data.static_images


def train_step(state, batch, rng, *, model, disc, tx, disc_tx, config, adversarial: bool):
  step = state["step"]
  rng = jax.random.fold_in(rng, step)
  dropout_rng, restart_rng = jax.random.split(rng)
  video = cvivit.to_model_range(batch["video"])                   # [B, F, H, W, 3] in [-1, 1]
  w = config.losses
  # 1-frame images in the batch (zero-padded to F frames, flagged is_image) train as 1-frame
  # videos: their loss sees only frame 0 and the first time step's codes, which the causal
  # encoder and decoder compute from frame 0 alone; the discriminator sees their real padding.
  masked = first_frame_images(config)
  if masked:
    t = 1 + (video.shape[1] - 1) // model.temporal_patch             # time steps
    image = batch["is_image"].astype(bool)[:, None]                       # [B, 1]
    frame_keep = ~image | (jnp.arange(video.shape[1]) == 0)[None]         # [B, F]
    step_keep = ~image | (jnp.arange(t) == 0)[None]                       # [B, t]

  def disc_fn(params, x):
    return disc.apply({"params": params}, x)

  def frame_mean(values, keep):  # values [B, F', H, W, 3], mean over the frames keep [B, F'] holds
    return masking.masked_mean(values, jnp.broadcast_to(keep[:, :, None, None, None],
                                                        values.shape))

  def code_keep(codes):  # [B, t, h, w]: the positions whose codes are the data's
    return jnp.broadcast_to(step_keep[:, :, None, None], codes.shape)

  def disc_input(recon):
    return jnp.where(frame_keep[:, :, None, None, None], recon, video) if masked else recon

  def generator_loss(params):
    recon, q = model.apply({"params": params}, video, train=True, rngs={"dropout": dropout_rng})
    if masked:
      sq = (recon.astype(jnp.float32) - video) ** 2                       # [B, F, H, W, 3]
      l2 = frame_mean(sq, frame_keep)
      e = jnp.take(quantizer_lib.l2_normalize(params["quantizer"]["codebook"]), q.codes, axis=0)
      vq = quantizer_lib.vq_loss(q.z, e, model.commitment_cost, code_keep(q.codes))
    else:
      l2, vq = losses.l2_loss(recon, video), q.loss
    loss = w.l2 * l2 + w.vq * vq
    metrics = {"l2": l2, "vq_loss": vq}
    if w.temporal_l2 > 0:  # L2 of the frame-to-frame changes (within and across tubelets)
      d = jnp.diff(recon.astype(jnp.float32), axis=1) - jnp.diff(video, axis=1)
      tl2 = (frame_mean(d * d, frame_keep[:, 1:] & frame_keep[:, :-1]) if masked
             else jnp.mean(d * d))                                        # pairs of data frames
      loss = loss + w.temporal_l2 * tl2
      metrics["temporal_l2"] = tl2
    if adversarial:
      g_adv = losses.generator_adversarial_loss(disc_fn(state["disc_params"], disc_input(recon)))
      loss = loss + w.adversarial * g_adv
      metrics["g_adversarial"] = g_adv
    return loss, (recon, q, metrics)

  (loss, (recon, q, metrics)), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)

  # Dead-code restarts (first call initialises the codebook from encoder outputs).
  qc = config.quantizer
  counts = (quantizer_lib.code_counts(q.codes, model.codebook_size, code_keep(q.codes)) if masked
            else q.counts)  # the padding frames' codes are not the data's
  usage = qc.usage_decay * state["code_usage"] + (1 - qc.usage_decay) * counts
  do_restart = (step % qc.restart_every == 0) & (step < qc.restart_until)
  codebook = params["quantizer"]["codebook"]
  z = jax.lax.stop_gradient(q.z).reshape(-1, q.z.shape[-1])
  restarted = quantizer_lib.restart_dead_codes(codebook, usage, z, restart_rng,
                                               qc.restart_threshold)
  codebook = jnp.where(do_restart, restarted, codebook)
  dead = usage < qc.restart_threshold
  usage = jnp.where(do_restart & dead, 2 * qc.restart_threshold, usage)
  params = {**params, "quantizer": {**params["quantizer"], "codebook": codebook}}

  new_state = dict(state, params=params, opt_state=opt_state, code_usage=usage)
  if common.uses_ema(config):
    ema = common.ema_update(state["ema_params"], params, step, config.ema_decay)
    # A restarted code jumps to an encoder output: its average starts there, not as a blend.
    ema_codebook = jnp.where((do_restart & dead)[:, None], codebook,
                             ema["quantizer"]["codebook"])
    new_state["ema_params"] = {**ema, "quantizer": {**ema["quantizer"],
                                                     "codebook": ema_codebook}}
  metrics.update(quantizer_lib.codebook_metrics(counts))
  metrics["codes_restarted"] = jnp.where(do_restart, jnp.sum(dead), 0).astype(jnp.float32)

  if adversarial:
    fake = jax.lax.stop_gradient(disc_input(recon))

    def d_loss_fn(disc_params):
      d = losses.discriminator_loss(disc_fn(disc_params, video), disc_fn(disc_params, fake))
      r1 = losses.r1_penalty(lambda x: disc_fn(disc_params, x), video)
      return d + 0.5 * w.r1_gamma * r1, (d, r1)

    (_, (d_loss, r1)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state["disc_params"])
    d_updates, d_opt_state = disc_tx.update(d_grads, state["disc_opt_state"], state["disc_params"])
    new_state["disc_params"] = optax.apply_updates(state["disc_params"], d_updates)
    new_state["disc_opt_state"] = d_opt_state
    metrics.update(d_loss=d_loss, r1=r1)

  # A finite loss can still give a non-finite update (overflowing gradients, a bad learning
  # rate): check the new parameters too, so that no checkpoint ever holds them.
  ok = (jnp.isfinite(loss) & jnp.isfinite(metrics.get("d_loss", 0.0))
        & common.all_finite((new_state["params"], new_state["disc_params"])))
  new_state = common.guard_update(ok, new_state, state)
  new_state["step"] = step + 1
  new_state["first_bad_step"] = jnp.where(
      ok | (state["first_bad_step"] >= 0), state["first_bad_step"], step)
  metrics.update(loss=loss, psnr=10 * jnp.log10(4.0 / jnp.maximum(metrics["l2"], 1e-10)),
                 grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                 lr=optim.make_schedule(config.optim)(step))
  return new_state, metrics


# ---- Evaluation ----------------------------------------------------------------------------------
def make_eval_fn(model):
  @jax.jit
  def reconstruct(params, video_uint8):
    video = cvivit.to_model_range(video_uint8)
    recon, q = model.apply({"params": params}, video)
    return cvivit.to_uint8(recon), q.counts
  return reconstruct


def evaluate(params, clips: np.ndarray, reconstruct, batch_size: int) -> tuple:
  """Held-out PSNR / SSIM (all frames and first frame alone) and codebook usage."""
  recons, counts = [], 0.0
  for i in range(0, len(clips), batch_size):
    r, c = reconstruct(params, clips[i:i + batch_size])
    recons.append(np.asarray(r))
    counts = counts + np.asarray(c)
  recon = np.concatenate(recons)
  a, b = clips.astype(np.float32) / 255.0, recon.astype(np.float32) / 255.0
  per_clip_psnr = np.asarray(recon_metrics.psnr(a, b, axis=(1, 2, 3, 4)))
  metrics = {
      "eval/psnr": float(np.mean(per_clip_psnr)),
      "eval/psnr_first_frame": float(np.mean(recon_metrics.psnr(a[:, 0], b[:, 0], axis=(1, 2, 3)))),
      "eval/ssim": float(recon_metrics.ssim(a, b)),
      "eval/codebook_usage": float(np.mean(counts > 0)),
  }
  metrics["eval/codebook_perplexity"] = float(
      quantizer_lib.codebook_metrics(jnp.asarray(counts))["codebook_perplexity"])
  return metrics, recon


def write_eval_media(workdir, step, clips, recon, writer, num_videos):
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  n = min(num_videos, len(clips))
  pairs = np.stack([video_io.side_by_side(clips[i], recon[i]) for i in range(n)])
  video_io.write_gif(os.path.join(out, f"recon_{step:07d}.gif"), np.concatenate(list(pairs), 1),
                     fps=4, scale=4)
  sheet = os.path.join(out, f"recon_{step:07d}.png")
  video_io.contact_sheet(pairs, sheet, scale=3)
  grid = np.concatenate([np.concatenate(list(p), axis=1) for p in pairs], axis=0)  # rows: clips
  writer.write_images(step, {"eval/reconstructions": grid[None]})


# ---- Main ----------------------------------------------------------------------------------------
def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  model = validate_config(config)
  common.setup_workdir(config, workdir)
  writer = common.metric_writer(workdir)  # TensorBoard, or metrics.jsonl without TensorFlow

  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

  # ---- Input pipeline ----
  batches = make_batches(config)
  clips = eval_clips(config)

  # ---- Model & optimizer ----
  disc = discriminator.VideoDiscriminator(tuple(config.disc.channels))
  tx, disc_tx = make_optimizers(config)
  init_fn = make_init_fn(config, model, disc, tx, disc_tx)

  # ---- Shard & transfer ----
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  state, state_shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("C-ViViT %s: %.2fM parameters", config.model_size, n_params / 1e6)

  # ---- Load checkpoint ----
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.checkpoint_every,
                                 keep=config.keep_checkpoints)
  ckpt.install_signal_handlers()
  if ckpt.latest_step() is not None:
    state, meta = common.restore_state(ckpt, state)
    logging.info("resumed from step %d (%s)", int(state["step"]), meta)

  # ---- Update step ----
  batch_shardings = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def jit_step(adversarial):
    fn = functools.partial(train_step, model=model, disc=disc, tx=tx, disc_tx=disc_tx,
                           config=config, adversarial=adversarial)
    return jax.jit(fn, in_shardings=(state_shardings, batch_shardings, repl),
                   out_shardings=(state_shardings, repl), donate_argnums=0)
  step_fns = {False: jit_step(False), True: jit_step(True)}
  use_adv = config.losses.adversarial > 0
  reconstruct = make_eval_fn(model)

  # ---- Train loop ----
  step = int(state["step"])
  total = config.total_steps
  report = common.progress_reporter(total, writer)
  history, eval_metrics, train_metrics = [], {}, {}
  start_time = time.time()
  logging.info("training from step %d to %d", step, total)
  with jax.set_mesh(mesh), common.flushing(writer):
    for step, batch in batches.iterate(step):
      if step >= total:
        break
      adversarial = use_adv and step >= config.losses.adversarial_start_step
      global_batch = sharding.put_global_batch(
          {"video": batch["video"], "is_image": batch["is_image"]}, mesh)
      state, metrics = step_fns[adversarial](state, global_batch, train_rng)
      history.append(metrics)
      done = step + 1
      report(done, time.time())
      last = (done >= total or (config.stop_after_steps and done >= config.stop_after_steps)
              or (config.max_train_seconds and time.time() - start_time > config.max_train_seconds))
      preempted = ckpt.preempted(done)

      if done % config.log_every == 0 or last or preempted:
        common.raise_if_bad(int(state["first_bad_step"]), ckpt.latest_step())
        train_metrics = common.mean_metrics(history)
        writer.write_scalars(done, train_metrics)
        history = []
      if done % config.eval_every == 0 or last:
        eval_metrics, recon = evaluate(state[common.params_key(config)], clips, reconstruct,
                                       config.eval.batch_size)
        writer.write_scalars(done, eval_metrics)
        write_eval_media(workdir, done, clips, recon, writer, config.eval.num_videos)
      if ckpt.should_save(done, final=last or preempted):
        common.raise_if_bad(int(state["first_bad_step"]), ckpt.latest_step())
        ckpt.save(done, state, {"step": done, "data_seed": config.data.seed,
                                "data_position": done})
      if last or preempted:
        break
  ckpt.close()
  if eval_metrics:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump({"step": int(state["step"]), **eval_metrics}, f, indent=2)
  return {"state": state, "eval": eval_metrics, "train": train_metrics,
          "seconds": time.time() - start_time}
