r"""Decoder polish: fine-tune a trained C-ViViT's decoder on Shapes, its codes untouched.

  python -m phenaki_jax.trainers.decoder_polish --tokenizer_dir=workdirs/demo/cvivit \
      --out_dir=workdirs/demo/cvivit_polished [--steps=1000] [--refine_channels=32]

`make demo` runs it between its two training stages (`--polish_steps`). The encoder and the
codebook are frozen, so every clip encodes to the same codes as before and a MaskGIT trained on
the source tokenizer samples through the polished one unchanged
(`python -m phenaki_jax.evaluate shapes --tokenizer_dir=OUT --maskgit_dir=...`). Only the
decoder trains, with two changes aimed at how generated objects are drawn (docs/experiments.md,
"The decoder's share"):
  * a per-frame convolutional refinement after the patch projections (`refine_channels`; the
    C-ViViT's `refine_channels` field, zero-initialised, so training starts from the source
    decoder exactly);
  * mixed codes: for a clip, a share r ~ U(0, mix_max) of its tokens (none for a
    `clean_fraction` of the clips) is taken from the encoding of the same clip translated by a
    sub-pixel offset (uniform in ±shift_px on each axis, bilinear), and the decoder is asked for
    the untranslated clip. A generated clip's edge tokens disagree by about that much; the
    decoder learns to draw one object from them.
Training clips are the Shapes training stream at the tokenizer's frames and resolution (AdamW,
warm-up and cosine, L2). The report (JSON) holds held-out PSNR of the plain round trip and of
codes with 30% mixed, before and after, on `eval`-split clips.
"""

import json
import os
import sys
import time

from absl import app, flags
import numpy as np


# The parameters `CViViT.decode` reads; everything else (the encoder, the codebook) stays frozen.
DECODER_PARAMS = (
  "from_code",
  "dec_pos_space",
  "dec_pos_time",
  "dec_temporal",
  "dec_spatial",
  "to_first",
  "to_tubelet",
  "refine_in",
  "refine_out",
)
DEFAULT_SEED = 123
EVAL_CLIPS = 32
EVAL_MIX = 0.3


def translate(video, shifts):
  """Sub-pixel translation of float clips [B, F, H, W, C] by `shifts` [B, 2] (x, y) pixels,
  bilinear (`jax.image.scale_and_translate`): content moves right / down by a positive shift."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def one(clip, shift):
    return jax.image.scale_and_translate(
      clip,
      clip.shape,
      spatial_dims=(1, 2),
      scale=jnp.ones(2),
      translation=jnp.stack([shift[1], shift[0]]),  # (y, x), the spatial_dims' order
      method="linear",
      antialias=False,
    )

  return jax.vmap(one)(video, shifts)


def polish(
  tokenizer_dir: str,
  out_dir: str,
  *,
  steps: int = 1000,
  batch: int = 8,
  lr: float = 1e-3,
  refine_channels: int = 32,
  mix_max: float = 0.5,
  shift_px: float = 1.5,
  clean_fraction: float = 0.25,
  seed: int = DEFAULT_SEED,
  max_seconds: float = 0.0,
  log=print,
) -> dict:
  """Trains the decoder of the C-ViViT in `tokenizer_dir` (module docstring) for `steps` steps,
  or fewer if `max_seconds` (> 0) of training pass first, and writes the polished C-ViViT to
  `out_dir` (config.json and a checkpoint); returns the report."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from phenaki_jax import checkpoint, config_io  # pylint: disable=g-import-not-at-top
  from phenaki_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from phenaki_jax.evaluators import recon  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import cvivit  # pylint: disable=g-import-not-at-top

  if not 0.0 <= mix_max <= 1.0 or not 0.0 <= clean_fraction <= 1.0:
    raise ValueError(
      f"mix_max and clean_fraction must be in [0, 1], got {mix_max}, {clean_fraction}"
    )
  if os.path.abspath(out_dir) == os.path.abspath(tokenizer_dir):
    raise ValueError("out_dir must be a new directory, not the source tokenizer's")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} is not empty: choose a new --out_dir or remove it")
  source = tokenizer_lib.Tokenizer.from_workdir(tokenizer_dir)
  config = config_io.from_workdir(tokenizer_dir)
  spec = shapes.spec_from_config(config)
  with config.unlocked():
    config.model.refine_channels = int(refine_channels)
    config.ema_decay = 0.0  # the polished parameters are stored as the run's 'params'
  model = cvivit.get_model(config.model_size, **config.model)
  params = dict(source.params)
  if refine_channels:
    video = jnp.zeros((1, model.max_frames, model.image_size, model.image_size, 3))

    @jax.jit  # one program whose other parameters and forward pass XLA leaves out
    def init_refinement(rng):
      fresh = flax.core.meta.unbox(model.init(rng, video)["params"])
      return {k: fresh[k] for k in ("refine_in", "refine_out")}

    params.update(init_refinement(jax.random.PRNGKey(seed)))
  else:
    params = {k: v for k, v in params.items() if not k.startswith("refine_")}
  decoder = {k: v for k, v in params.items() if k in DECODER_PARAMS}
  frozen = {k: v for k, v in params.items() if k not in DECODER_PARAMS}

  def clips(split: str, start: int, n: int) -> np.ndarray:
    return np.stack(
      [shapes.video_example(spec, seed, i, split=split)["video"] for i in range(start, start + n)]
    )

  def encode(dec, video):  # the module's setup binds every parameter, the decoder's too
    return model.apply({"params": {**frozen, **dec}}, video, method=cvivit.CViViT.encode)

  def decode(dec, codes):
    return model.apply({"params": {**frozen, **dec}}, codes, method=cvivit.CViViT.decode)

  def mixed_codes(dec, rng, video, codes, rate):
    """`codes` (the encoding of `video`) with a share `rate` [B] of each clip's tokens taken
    from the encoding of the clip translated by a random sub-pixel offset."""
    shift_rng, pick_rng = jax.random.split(rng)
    shifts = jax.random.uniform(shift_rng, (video.shape[0], 2), minval=-shift_px, maxval=shift_px)
    shifted = encode(dec, translate(video, shifts))
    take = jax.random.uniform(pick_rng, codes.shape) < rate.reshape(-1, 1, 1, 1)
    return jnp.where(take, shifted, codes)

  warmup = min(100, steps // 5)
  tx = optax.adamw(
    optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), 0.05 * lr),
    weight_decay=0.0,
  )

  @jax.jit
  def train_step(dec, opt_state, video_uint8, rng):
    video = cvivit.to_model_range(video_uint8)
    rate_rng, clean_rng, mix_rng = jax.random.split(rng, 3)
    b = video.shape[0]
    rate = jax.random.uniform(rate_rng, (b,), maxval=mix_max)
    rate = jnp.where(jax.random.uniform(clean_rng, (b,)) < clean_fraction, 0.0, rate)
    codes = mixed_codes(dec, mix_rng, video, encode(dec, video), rate)
    loss, grads = jax.value_and_grad(lambda d: jnp.mean((decode(d, codes) - video) ** 2))(dec)
    updates, opt_state = tx.update(grads, opt_state, dec)
    return optax.apply_updates(dec, updates), opt_state, loss

  @jax.jit
  def eval_psnr(dec, video_uint8):
    video = cvivit.to_model_range(video_uint8)
    rate = jnp.full((video.shape[0],), EVAL_MIX)
    codes = encode(dec, video)
    mixed = mixed_codes(dec, jax.random.PRNGKey(0), video, codes, rate)
    truth = (video + 1.0) / 2.0  # recon.psnr takes [0, 1]
    return {
      name: recon.psnr((jnp.clip(decode(dec, c), -1.0, 1.0) + 1.0) / 2.0, truth)
      for name, c in (("round_trip", codes), (f"mixed_{int(EVAL_MIX * 100)}", mixed))
    }

  held_out = clips("eval", 0, EVAL_CLIPS)
  before = {k: round(float(v), 3) for k, v in eval_psnr(decoder, held_out).items()}
  opt_state = tx.init(decoder)
  rng = jax.random.PRNGKey(seed)
  t0, loss, done = time.time(), float("nan"), 0
  for step in range(steps):
    rng, step_rng = jax.random.split(rng)
    decoder, opt_state, loss = train_step(
      decoder, opt_state, clips("train", step * batch, batch), step_rng
    )
    done = step + 1
    out_of_time = bool(max_seconds) and time.time() - t0 > max_seconds and done < steps
    if step % 200 == 0 or done == steps or out_of_time:
      if not np.isfinite(float(loss)):  # stop at the first check, not after every step
        raise FloatingPointError(f"the decoder's loss at step {step} is {loss}: lower --lr")
      log(f"step {step}: loss {float(loss):.5f} ({time.time() - t0:.0f} s)")
    if out_of_time:
      log(f"stopped after {done} of {steps} steps: the {max_seconds:.0f} s cap was reached")
      break
  seconds = time.time() - t0
  after = {k: round(float(v), 3) for k, v in eval_psnr(decoder, held_out).items()}

  os.makedirs(out_dir, exist_ok=True)
  config_io.write_to_workdir(config, out_dir)
  ckpt = checkpoint.Checkpointer(os.path.join(out_dir, "checkpoints"), async_save=False)
  try:
    ckpt.save(done, {"params": {**frozen, **decoder}}, {"polished_from": tokenizer_dir})
  finally:
    ckpt.close()
  return dict(
    tokenizer_dir=tokenizer_dir,
    out_dir=out_dir,
    steps=done,
    planned_steps=steps,
    batch=batch,
    lr=lr,
    refine_channels=refine_channels,
    mix_max=mix_max,
    shift_px=shift_px,
    clean_fraction=clean_fraction,
    train_seconds=round(seconds, 1),
    held_out_psnr_before=before,
    held_out_psnr_after=after,
    eval_clips=EVAL_CLIPS,
  )


def _define_flags() -> dict:
  """The command's flags (defined only when run as a script: importing the module, as the tests
  do, must not add flags that clash with other modules')."""
  return dict(
    tokenizer_dir=flags.DEFINE_string("tokenizer_dir", None, "The trained C-ViViT's workdir."),
    out_dir=flags.DEFINE_string("out_dir", None, "Where the polished C-ViViT is written (new)."),
    steps=flags.DEFINE_integer("steps", 1000, "Decoder training steps.", lower_bound=1),
    batch=flags.DEFINE_integer("batch", 8, "Clips per step.", lower_bound=1),
    lr=flags.DEFINE_float("lr", 1e-3, "Peak learning rate (AdamW)."),
    refine_channels=flags.DEFINE_integer(
      "refine_channels", 32, "Channels of the refinement convolution (0: none).", lower_bound=0
    ),
    mix_max=flags.DEFINE_float("mix_max", 0.5, "Largest share of tokens taken from the shift."),
    shift_px=flags.DEFINE_float("shift_px", 1.5, "Largest translation on each axis, pixels."),
    clean_fraction=flags.DEFINE_float(
      "clean_fraction", 0.25, "Share of clips decoded from true codes."
    ),
    seed=flags.DEFINE_integer("seed", DEFAULT_SEED, "Data stream and mixing seed."),
    max_seconds=flags.DEFINE_float(
      "max_seconds", 0.0, "Wall-clock cap on training, seconds (0: none).", lower_bound=0.0
    ),
  )


def main(argv, flag_values: dict):
  del argv
  values = {name: flag.value for name, flag in flag_values.items()}
  report = polish(
    values.pop("tokenizer_dir"),
    values.pop("out_dir"),
    **values,
    log=lambda s: print(s, file=sys.stderr, flush=True),
  )
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  flags.mark_flags_as_required(["tokenizer_dir", "out_dir"])
  app.run(lambda argv: main(argv, _FLAGS))
