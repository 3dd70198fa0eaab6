r"""The shapes of the race against phenaki-pytorch 0.5.0 (benchmarks/vs_phenaki_pytorch.py).

Two sizes, each as a C-ViViT run and as a MaskGIT run over that C-ViViT's codes:

  configs/race.py:small                      C-ViViT: 9 frames of 32², p=8, t_p=2, width 64,
                                             2 spatial + 2 temporal layers, 4 heads × 16,
                                             codebook 512; batch 4
  configs/race.py:small.maskgit              MaskGIT: width 64, depth 2, 4 heads × 16; text
                                             8 MiniLM tokens × 384; batch 4
  configs/race.py:paper_like_small           C-ViViT: 11 frames of 64², p=8, t_p=2, width 128,
                                             2 + 2 layers, 4 heads × 32, codebook 1024; batch 2
  configs/race.py:paper_like_small.maskgit   MaskGIT: width 128, depth 4, 4 heads × 32; batch 2

Both sides use the same: MLP 4× the width, codes the width wide (the reference's cosine-
similarity VQ has no code projection), AdamW (lr 3e-4, weight decay 0.01, global-norm clip
0.5), float32, no grouping of tokens, videos only, 25% of captions dropped for guidance, and the
C-ViViT's perceptual and adversarial terms on one random frame of each clip (the reference's
design; ours reads every frame unless told otherwise).

  python -m phenaki_jax.train --config=configs/race.py:small --workdir=workdirs/race_small
  python -m phenaki_jax.train --config=configs/race.py:small.maskgit \
      --workdir=workdirs/race_small_maskgit --config.tokenizer.workdir=workdirs/race_small
"""

import os

import ml_collections

from phenaki_jax import config_io, optim

SIZES = {
  "small": dict(
    resolution=32,
    num_frames=9,
    width=64,
    heads=4,
    codebook=512,
    spatial_depth=2,
    temporal_depth=2,
    maskgit_width=64,
    maskgit_depth=2,
    batch=4,
  ),
  "paper_like_small": dict(
    resolution=64,
    num_frames=11,
    width=128,
    heads=4,
    codebook=1024,
    spatial_depth=2,
    temporal_depth=2,
    maskgit_width=128,
    maskgit_depth=4,
    batch=2,
  ),
}
PATCH, TEMPORAL_PATCH = 8, 2
TEXT_TOKENS = 8  # MiniLM, 384 wide
TEXT_DROPOUT = 0.25
LR, WEIGHT_DECAY, CLIP_NORM = 3e-4, 0.01, 0.5


def _optim():
  return optim.default_config(
    name="adamw",
    lr=LR,
    warmup_steps=0,
    decay_steps=100_000,
    end_lr_fraction=1.0,
    weight_decay=WEIGHT_DECAY,
    clip_norm=CLIP_NORM,
  )


def _sibling(name: str, variant: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
  return ml_collections.ConfigDict(config_io.from_file(path, variant).to_dict())


def cvivit_config(size: str) -> ml_collections.ConfigDict:
  s = SIZES[size]
  c = _sibling("cvivit_b", "B")
  c.model_size = "tiny"
  c.model.update(
    dict(
      image_size=s["resolution"],
      patch_size=PATCH,
      temporal_patch=TEMPORAL_PATCH,
      max_time_steps=1 + (s["num_frames"] - 1) // TEMPORAL_PATCH,
      width=s["width"],
      spatial_depth=s["spatial_depth"],
      temporal_depth=s["temporal_depth"],
      num_heads=s["heads"],
      mlp_dim=4 * s["width"],
      codebook_size=s["codebook"],
      code_dim=s["width"],
    )
  )
  c.data.resolution, c.data.num_frames, c.data.batch_size = (
    s["resolution"],
    s["num_frames"],
    s["batch"],
  )
  c.data.image_rate, c.data.static_images = 0.0, False
  # The reference's generator: L2 + VQ + VGG16 perceptual + adversarial (no I3D term), both
  # on one random frame of each clip, with an image discriminator on that frame; its
  # discriminator starts at once.
  c.losses.update(
    dict(
      image_perceptual=0.1,
      video_perceptual=0.0,
      adversarial=0.1,
      adversarial_start_step=0,
      image_perceptual_frames=1,
      adversarial_frames=1,
    )
  )
  c.disc.lr = LR
  c.optim = _optim()
  return c


def maskgit_config(size: str) -> ml_collections.ConfigDict:
  s = SIZES[size]
  c = _sibling("maskgit_b", "tiny")
  c.model.update(
    dict(
      width=s["maskgit_width"],
      depth=s["maskgit_depth"],
      num_heads=s["heads"],
      mlp_dim=4 * s["maskgit_width"],
      group=1,
    )
  )
  c.token_embed_init = "normal"
  c.tokenizer.workdir = f"workdirs/race_{size}"
  c.text_encoder.max_length = TEXT_TOKENS
  c.text_dropout = TEXT_DROPOUT
  c.data.batch_size = s["batch"]
  c.data.video_rate, c.data.image_rate = 1.0, 0.0
  c.data.turn_rate, c.data.static_images = 0.0, False
  c.optim = _optim()
  # One sample per clip, as the reference draws: one decode, no second pass over its tokens.
  c.sample.update(
    dict(
      steps=12,
      cfg_scale=3.0,
      top_k=0,
      restrict_codes=False,
      candidates=1,
      refine_fraction=0.0,
      refine_sweeps=0,
    )
  )
  return c


def get_config(arg: str = "small"):
  size, _, stage = (arg or "small").partition(".")
  if size not in SIZES or stage not in ("", "maskgit"):
    raise ValueError(
      f"unknown variant {arg!r} of configs/race.py; use small, paper_like_small, "
      "small.maskgit or paper_like_small.maskgit"
    )
  c = maskgit_config(size) if stage else cvivit_config(size)
  return c.lock()
