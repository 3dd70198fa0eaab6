r"""C-ViViT tokenizer (Phenaki §4.1, appendix A).

Variants:
  configs/cvivit_b.py        the paper: 11 frames of 128², p=8, t_p=2, width 512, 4+4 layers,
                             codebook 8192, VQ + 0.1 adv + 0.1 image-perceptual + 1.0 video-
                             perceptual + 1.0 L2. Needs VGG/I3D weights (set the checkpoints).
  configs/cvivit_b.py:tiny   the CPU demo on the embedded Shapes data (32², 9 frames, p=4).

  python -m phenaki_jax.train --config=configs/cvivit_b.py:tiny --workdir=workdirs/cvivit_tiny
"""
import ml_collections

from phenaki_jax import optim


def get_config(arg: str = "B"):
  variant = arg or "B"
  if variant not in ("B", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/cvivit_b.py; use B or tiny")
  c = ml_collections.ConfigDict()
  c.trainer = "cvivit"
  c.seed = 0
  c.mesh = (-1, 1, 1)               # (data, fsdp, model); -1 = all remaining devices

  c.model_size = variant
  c.model = ml_collections.ConfigDict(dict(dropout=0.0, scan=False, remat=False,
                                           dtype="float32", encoder_spatial_radius=-1))

  c.data = ml_collections.ConfigDict()
  c.data.source = "shapes"          # the embedded procedural data
  c.data.resolution = 128 if variant == "B" else 32
  c.data.num_frames = 11 if variant == "B" else 9
  c.data.batch_size = 128 if variant == "B" else 8
  # Fraction of image examples in stage 1 (0 = video only, the paper's stage-1 data), and whether
  # they enter as static clips (the image over every frame, trained as a video) instead of
  # 1-frame videos; see configs/maskgit_b.py. tiny: 10% static Shapes images of every colour,
  # so that the tubelet codes can render the image-only colour (with 1-frame images the decoder
  # drew it in the first frame only; BENCHMARKS.md).
  c.data.image_rate = 0.1 if variant == "tiny" else 0.0
  c.data.static_images = variant == "tiny"
  # Turn clips: this share of the video examples turns after its first turn_context_frames
  # frames (shapes.turn_example), the motion a story continuation produces. Plain Shapes clips
  # never change direction, so without them the tokenizer has never encoded a turn. 0 = off.
  # On Shapes 0.2 halves the centroid error of a turn's first frame through encode/decode
  # (0.31 -> 0.15 px, same PSNR), but its one end-to-end draw was no better (BENCHMARKS.md).
  c.data.turn_rate = 0.0
  c.data.turn_context_frames = 5
  c.data.seed = 0
  c.data.prefetch = 4

  c.losses = ml_collections.ConfigDict(dict(
      l2=1.0, vq=1.0,
      # L2 of the frame-to-frame differences (not in the paper; 0 = off): a cheap motion term
      # for configs without the I3D video-perceptual loss. On Shapes 1.0 halves the tubelet
      # stutter (motion squeezed inside a 2-frame tubelet) at 30.5 vs 30.9 dB, but MaskGITs
      # on it followed fewer prompts (seen 0.86 / 0.89, two draws; BENCHMARKS.md).
      temporal_l2=0.0,
      adversarial=0.1, adversarial_start_step=20_000 if variant == "B" else 2_000,
      r1_gamma=10.0,
      image_perceptual=0.1, image_perceptual_network="vgg16", image_perceptual_checkpoint="",
      video_perceptual=1.0, video_perceptual_network="i3d", video_perceptual_checkpoint=""))
  c.disc = ml_collections.ConfigDict(dict(
      channels=(64, 128, 256, 512) if variant == "B" else (16, 32, 64),
      lr=1e-4 if variant == "B" else 2e-4, b1=0.0, b2=0.99))

  # Dead-code restarts: a code whose EMA assignment count falls below `threshold` is moved
  # onto a random encoder output of the batch every `every` steps, until `until`.
  c.quantizer = ml_collections.ConfigDict(dict(
      restart_every=100, restart_until=100_000, usage_decay=0.99, restart_threshold=0.03))

  # tiny: 1500 Muon steps ≈ 7–8 min on a quiet 2-core CPU; AdamW needed 3000 (≈ 13 min) for
  # 30.3 dB, Muon reaches 30.3 dB at step 1000 and 32.7 dB at 2000 (BENCHMARKS.md). Peak lr 8e-3
  # (was AdamW's 2e-3): held-out PSNR 30.9 -> 33.5 dB at 1500 steps, less motion squeezed into
  # each tubelet, and story boundaries of MaskGITs on it ~0.2 px shorter (BENCHMARKS.md,
  # fifteenth session); 1.6e-2 gave 33.7 dB with fewer codes in use.
  c.total_steps = 1_000_000 if variant == "B" else 1_500
  c.max_train_seconds = 0.0         # > 0: stop (and checkpoint) after this wall-clock budget
  # An exponential moving average of the generator's parameters (state["ema_params"]): what the
  # held-out evaluation and the frozen tokenizer (stage 2, sampling) use when on; 0 = off.
  c.ema_decay = 0.0
  if variant == "B":
    c.optim = optim.default_config()
  else:
    # Muon (optim.py) on the transformer blocks' matrices, AdamW on the rest, both at this lr.
    c.optim = optim.default_config(name="muon", lr=8e-3, warmup_steps=200, decay_steps=1_500,
                                   end_lr_fraction=0.05, weight_decay=1e-4)
  c.log_every = 50
  c.eval_every = 1000 if variant == "tiny" else 5000
  c.checkpoint_every = 500 if variant == "tiny" else 5000
  c.keep_checkpoints = 3
  c.eval = ml_collections.ConfigDict(dict(num_clips=64, batch_size=16, num_videos=8))
  c.stop_after_steps = 0            # > 0: leave the loop after this step (tests, preemption drills)
  if variant == "tiny":
    # Patch-local codes: the encoder's spatial layers attend only to their own patch, so black
    # background is one code per time step wherever it is and an object part's code does not
    # depend on where the object is. The stage-2 MaskGIT then has far less to learn (Shapes, 1300
    # steps: masked accuracy 0.77 vs 0.63, story segments 0.56 vs 0.28); the reconstruction
    # costs ~0.6 dB at equal steps, made up by 300 more (BENCHMARKS.md).
    c.model.encoder_spatial_radius = 0
    c.losses.image_perceptual = 0.0
    c.losses.video_perceptual = 0.0
    # The adversarial term costs ~1 s per step on a 2-core CPU (3-D convolutions and R1), more
    # than the rest of the step three times over; the demo's stage-1 budget leaves it out.
    # Turn it on with --config.losses.adversarial=0.1 (it starts at adversarial_start_step).
    c.losses.adversarial = 0.0
  return c.lock()
