r"""C-ViViT tokenizer (Phenaki §4.1, appendix A).

Variants:
  configs/cvivit_b.py        the paper: 11 frames of 128², p=8, t_p=2, width 512, 4+4 layers,
                             codebook 8192, VQ + 0.1 adv + 0.1 image-perceptual + 1.0 video-
                             perceptual + 1.0 L2. Needs VGG/I3D weights (set the checkpoints).
  configs/cvivit_b.py:tiny   the CPU demo on the embedded Shapes data (32², 9 frames, p=4).
  configs/cvivit_b.py:real   the tiny model on real files at 64², 11 frames at 8 fps, p=8
                             (data.source="files": set the shards or index and the held-out
                             eval_ ones; data/tasks.default_config lists the keys).

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit_tiny
  python -m phenaki_jax.train --config=configs/cvivit_b.py:real --workdir=workdirs/cvivit_real \
      --config.data.video_shards='videos/train-{00000..00127}.tar' \
      --config.data.eval_video_shards='videos/heldout-00000.tar'

The evidence behind the tiny variant's choices is in docs/experiments.md, "Stage 1".
"""

import ml_collections

from phenaki_jax import optim
from phenaki_jax.data import tasks


def get_config(arg: str = "B"):
  variant = arg or "B"
  if variant not in ("B", "tiny", "real"):
    raise ValueError(f"unknown variant {variant!r} of configs/cvivit_b.py; use B, tiny or real")
  c = ml_collections.ConfigDict()
  c.trainer = "cvivit"
  c.seed = 0
  c.mesh = (-1, 1, 1)  # (data, fsdp, model); -1 = all remaining devices

  c.model_size = "B"
  c.model = ml_collections.ConfigDict(
    dict(dropout=0.0, scan=False, remat=False, dtype="float32", encoder_spatial_radius=-1)
  )

  c.data = tasks.default_config()
  c.data.resolution = 128
  c.data.num_frames = 11
  c.data.batch_size = 128
  c.data.image_rate = 0.0  # share of image examples (0 = video only, the paper's stage 1)
  # Micro-batches per step: the batch's gradient (generator and discriminator) summed over this
  # many passes of batch/k clips (the same update, dropout apart, while batch/k >= 4: the
  # discriminator's minibatch-stddev groups; a k-th of the activation memory).
  c.grad_accum_steps = 1

  c.losses = ml_collections.ConfigDict(
    dict(
      l2=1.0,
      vq=1.0,
      # L2 of the frame-to-frame differences (not in the paper; 0 = off): a cheap motion
      # term for configs without the I3D term; docs/experiments.md, "Temporal L2".
      temporal_l2=0.0,
      adversarial=0.1,
      adversarial_start_step=20_000,
      r1_gamma=10.0,
      # Frames of each clip the discriminator and LPIPS read: 0 = every frame (the paper's
      # video discriminator); k = k frames drawn at random per clip and step, which the
      # discriminator scores one by one as images (losses.pick_frames): ~F/k times cheaper.
      adversarial_frames=0,
      image_perceptual_frames=0,
      image_perceptual=0.1,
      image_perceptual_network="vgg16",
      image_perceptual_checkpoint="",
      video_perceptual=1.0,
      video_perceptual_network="i3d",
      video_perceptual_checkpoint="",
    )
  )
  c.disc = ml_collections.ConfigDict(dict(channels=(64, 128, 256, 512), lr=1e-4, b1=0.0, b2=0.99))

  # Dead-code restarts: a code whose EMA assignment count falls below `threshold` is moved
  # onto a random encoder output of the batch every `every` steps, until `until`.
  c.quantizer = ml_collections.ConfigDict(
    dict(restart_every=100, restart_until=100_000, usage_decay=0.99, restart_threshold=0.03)
  )

  c.total_steps = 1_000_000
  c.max_train_seconds = 0.0  # > 0: stop (and checkpoint) after this wall-clock budget
  # A step whose loss or update is not finite is never applied; then "stop" the run (naming
  # the step and what was not finite) or "skip" it and go on, counted (nonfinite/skipped_steps).
  c.nonfinite = "stop"
  # An exponential moving average of the generator's parameters (state["ema_params"]): what the
  # held-out evaluation and the frozen tokenizer (stage 2, sampling) use when on; 0 = off.
  c.ema_decay = 0.0
  c.optim = optim.default_config()
  c.log_every = 50
  c.eval_every = 5000
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.eval = ml_collections.ConfigDict(dict(num_clips=64, batch_size=16, num_videos=8))
  c.stop_after_steps = 0  # > 0: leave the loop after this step (tests, preemption drills)

  if variant in (
    "tiny",
    "real",
  ):  # the CPU demo; docs/experiments.md, "Stage 1: the C-ViViT on Shapes"
    c.model_size = "tiny"
    # Patch-local codes (background is one code wherever it is): stage 2 learns far more per
    # step for ~0.6 dB of reconstruction; "Patch-local codes".
    c.model.encoder_spatial_radius = 0
    c.data.resolution, c.data.num_frames, c.data.batch_size = 32, 9, 8
    # 10% static images of every colour, so that the tubelet codes can render the image-only
    # colour; "Images in stage 1".
    c.data.image_rate, c.data.static_images = 0.1, True
    # No perceptual networks on the CPU; the adversarial term (~1 s per step here, 3x the rest)
    # is left out of the demo's budget: --config.losses.adversarial=0.1 turns it on;
    # "The adversarial term on a CPU".
    c.losses.image_perceptual = c.losses.video_perceptual = c.losses.adversarial = 0.0
    c.losses.adversarial_start_step = 2_000
    c.disc.channels, c.disc.lr = (16, 32, 64), 2e-4
    # Muon at peak lr 8e-3 ("Optimizer and learning rate (stage 1)") for 3000 steps (≈ 7 min on
    # a quiet 2-core CPU): a sharper round trip than 1500 steps give, ~1 IoU point in the
    # samples ("Compute: longer training of both stages").
    c.total_steps = 3_000
    c.optim = optim.default_config(
      name="muon",
      lr=8e-3,
      warmup_steps=200,
      decay_steps=3_000,
      end_lr_fraction=0.05,
      weight_decay=1e-4,
    )
    c.eval_every = 1000
    c.checkpoint_every = 500
  if variant == "real":  # the tiny model on files; docs/experiments.md, "Real footage"
    c.data.source = "files"
    # 64² and the paper's 11 frames at 8 fps; p=8 keeps the tiny model's 8×8 token grid.
    c.data.resolution, c.data.num_frames = 64, 11
    c.model.update(dict(image_size=64, patch_size=8))
    c.data.image_rate, c.data.static_images = 0.0, False  # videos only (the paper's stage 1)
    c.eval.num_clips = 16
    # ≈ 2.6 steps/s with decoding on the 2-core CPU: 2000 steps fit 15 minutes.
    c.total_steps = c.optim.decay_steps = 2_000
  return c.lock()
