"""C-ViViT losses (paper §4.1):  L = L_VQ + 0.1·L_Adv + 0.1·L_IP + 1.0·L_VP + 1.0·L_2.

L_VQ comes from the quantizer. The adversarial term is the non-saturating GAN loss with a
StyleGAN-style discriminator, stabilised by an R1 penalty on real videos and a start step.
The perceptual terms need real pretrained feature networks (VGG for images, I3D for videos);
they are named in the config and `check_perceptual_config` fails at start-up when a weight is
positive but no weights file is named.
"""

import os

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


def r1_penalty(disc_fn, real: Array) -> Array:
  """E ||∇_x D(x)||² on real videos (Mescheder et al. 2018)."""
  grads = jax.grad(lambda x: jnp.sum(disc_fn(x)))(real)
  return jnp.mean(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1))


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
    if not checkpoint:
      raise ValueError(
        f"config.losses.{kind}_perceptual={weight} needs pretrained {network} weights, but "
        f"config.losses.{kind}_perceptual_checkpoint is empty. Name the weights file, or set "
        f"--config.losses.{kind}_perceptual=0 (the tiny configs do)."
      )
    if not os.path.exists(checkpoint):
      raise ValueError(f"config.losses.{kind}_perceptual_checkpoint={checkpoint!r} does not exist")
    raise NotImplementedError(
      f"the {network} perceptual network is not implemented yet (it arrives with the FID/FVD "
      f"feature networks); set --config.losses.{kind}_perceptual=0"
    )
