"""Tests of the stage-2 trainer (`phenaki_jax/trainers/maskgit.py`, paper §4.2).

End to end through `main()` (the session fixture run `tiny_maskgit_dir` and a resumed copy):
a short run learns (the masked-token loss falls well below the uniform baseline log K, and below
the codes' unigram entropy), its logged text-dropout and image shares are the configured ones,
and a run stopped and resumed ends bit-identical to the uninterrupted one. Through `train_step`
directly: the text-dropout rate follows the config, the mixture draws its configured rates, and
an image example's padded later frames change nothing. Plus the config checks at start-up.
"""

import functools
import glob
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax import checkpoint, config_io, optim, sharding
from phenaki_jax import sample as sample_lib
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.models import maskgit as maskgit_lib
from phenaki_jax.trainers import common
from phenaki_jax.trainers import maskgit as trainer

import conftest


def _read_scalars(workdir: str) -> dict:
  """{tag: [(step, value)]} of the scalars in the run's TensorBoard event file(s)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    if all(v.ndim == 0 for _, v in values):  # not the sample images
      out[tag] = [(step, float(v)) for step, v in values]
  for tag in acc.Tags()["scalars"]:
    out[tag] = [(e.step, float(e.value)) for e in acc.Scalars(tag)]
  return out


def _restore_state(workdir: str, config, text_dim: int, step=None):
  """(state, meta) of a run's checkpoint, as numpy."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  state, meta = ckpt.restore(
    trainer.abstract_state(config, config.text_encoder.max_length, text_dim), step
  )
  ckpt.close()
  return jax.device_get(state), meta


# ---- a short run learns; stop + resume is bit-identical ------------------------------------------
# The run is the session fixture `tiny_maskgit_dir`: 120 steps at lr 3e-3, batch 8, default text
# dropout (10%) and mixture (80% video / 20% image); see conftest.tiny_maskgit_config.
STEPS = conftest.MASKGIT_STEPS


def test_short_run_lowers_masked_token_loss(tiny_maskgit_dir, tiny_cvivit_dir):
  config = config_io.from_workdir(tiny_maskgit_dir)
  scalars = _read_scalars(tiny_maskgit_dir)
  loss = scalars["loss"]
  assert [s for s, _ in loss] == list(range(20, STEPS + 1, 20))
  first, last = loss[0][1], loss[-1][1]  # means over steps 1–20 and 101–120
  tok = tokenizer_lib.Tokenizer.from_workdir(tiny_cvivit_dir)
  uniform = math.log(tok.codebook_size)  # the loss of a uniform guess
  assert np.isfinite(last)
  assert last < 0.6 * uniform, (first, last, uniform)
  assert last < 0.6 * first, (first, last)
  acc = scalars["masked_accuracy"]
  assert acc[-1][1] > acc[0][1] + 0.2, acc

  # Stronger than "below uniform": on videos the model beats the codes' unigram entropy, i.e.
  # it predicts masked codes from their context, not only from how frequent each code is.
  video_only = config.copy_and_resolve_references()
  video_only.data.image_rate = 0.0
  batches = trainer.make_batches(video_only, trainer.tokenizer_config(config))
  counts = np.zeros(tok.codebook_size)
  for step in range(4):
    codes = np.asarray(tok.encode(batches.batch(1000 + step)["video"]))  # [8, t, h, w]
    counts += np.bincount(codes.ravel(), minlength=tok.codebook_size)
  p = counts[counts > 0] / counts.sum()
  unigram_entropy = float(-(p * np.log(p)).sum())
  last_video = scalars["loss_video"][-1][1]
  assert last_video < 0.9 * unigram_entropy, (last_video, unigram_entropy)


def test_run_uses_the_configured_rates(tiny_maskgit_dir):
  """Over the run's 120 steps × 8 examples, the logged share of null captions and of images is
  the config's 10% and 20% (4σ binomial tolerance; 0.1 and 0.2 are 8σ apart)."""
  config = config_io.from_workdir(tiny_maskgit_dir)
  assert (config.text_dropout, config.data.video_rate, config.data.image_rate) == (0.1, 0.8, 0.2)
  scalars = _read_scalars(tiny_maskgit_dir)
  n = STEPS * config.data.batch_size
  dropped = np.mean([v for _, v in scalars["text_dropped"]])  # equal-length log windows
  images = np.mean([v for _, v in scalars["image_fraction"]])
  assert _within(dropped, 0.1, n) and not _within(dropped, 0.2, n), dropped
  assert _within(images, 0.2, n) and not _within(images, 0.1, n), images


def test_resume_is_bit_identical(tiny_maskgit_dir, tiny_cvivit_dir, tmp_path):
  """Run B stops after 50 steps (checkpoint + exit) and is resumed to 120 by the same command:
  it ends in the state of the fixture run, never interrupted (docs/design.md, invariant 6)."""
  workdir = str(tmp_path / "resumed")

  def config_b(**overrides):
    c = conftest.tiny_maskgit_config(tiny_cvivit_dir)
    c.sample.num_videos = 0  # sampling reads the params only; skip it here
    c.update(overrides)
    return c

  first = trainer.main(config_b(stop_after_steps=50), workdir)
  assert int(first["state"]["step"]) == 50
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  assert ckpt.latest_step() == 50
  ckpt.close()
  second = trainer.main(config_b(), workdir)
  state_b = jax.device_get(second["state"])
  assert int(state_b["step"]) == STEPS

  config_a = config_io.from_workdir(tiny_maskgit_dir)
  text_dim = state_b["params"]["text_proj"]["kernel"].shape[0]  # MiniLM's width
  state_a, meta_a = _restore_state(tiny_maskgit_dir, config_a, text_dim)
  assert meta_a["step"] == STEPS

  def assert_identical(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)

  assert_identical(state_a["params"], state_b["params"])
  assert_identical(state_a["opt_state"], state_b["opt_state"])
  # What a further restart of B would load agrees too.
  disk_b, _ = _restore_state(workdir, config_a, text_dim)
  assert_identical(disk_b["params"], state_a["params"])


def _within(estimate, p, n, sigmas=4.0):
  """|estimate − p| within `sigmas` binomial standard deviations of n draws."""
  return abs(estimate - p) < sigmas * math.sqrt(p * (1 - p) / n)


# ---- train_step directly --------------------------------------------------------------------------
BATCH = 64
TEXT_LEN, TEXT_DIM = 4, 8  # synthetic text embeddings: what they are does not matter here


def jitted_train_step(config, tok):
  """The trainer's update step for `config` over the frozen tokenizer `tok`, jitted (no mesh)."""
  return jax.jit(
    functools.partial(
      trainer.train_step,
      model=trainer.build_model(config),
      tok_model=tok.model,
      tx=optim.make_optimizer(config.optim),
      config=config,
    )
  )


@pytest.fixture(scope="module")
def step_env(tiny_cvivit_dir):
  """The pieces `train_step` takes, for a batch of 64 (no MiniLM: synthetic text tokens).

  The config differs from the default in its text-dropout rate (0.3, so that the measured rate
  is known to follow the config) and its warm-up (1 step, so that updates are not zero).
  """
  config = conftest.tiny_maskgit_config(tiny_cvivit_dir)
  config.data.batch_size = BATCH
  config.text_dropout = 0.3
  config.optim.warmup_steps = 1
  tok_config = trainer.tokenizer_config(config)
  tok = tokenizer_lib.Tokenizer.from_workdir(tiny_cvivit_dir)
  model = trainer.build_model(config, tok_config)
  tx = optim.make_optimizer(config.optim)
  mesh = sharding.make_mesh((-1, 1, 1))
  state, _ = sharding.create_sharded_state(
    trainer.make_init_fn(model, tx, TEXT_LEN, TEXT_DIM, ema=False), mesh, jax.random.PRNGKey(0)
  )
  null_text = (jnp.zeros((TEXT_LEN, TEXT_DIM)), jnp.asarray([True] + [False] * (TEXT_LEN - 1)))
  batches = trainer.make_batches(config, tok_config)
  rows = batches.batch(0)
  rng = np.random.default_rng(0)
  batch = dict(
    video=rows["video"],
    is_image=rows["is_image"],
    text=rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)).astype(np.float32),
    text_mask=np.ones((BATCH, TEXT_LEN), bool),
  )
  step_fn = jitted_train_step(config, tok)
  return dict(
    config=config,
    tok=tok,
    state=state,
    null_text=null_text,
    rows=rows,
    batch=jax.tree.map(jnp.asarray, batch),
    step=step_fn,
  )


def _step(env, state, batch, seed):
  return env["step"](state, batch, env["null_text"], env["tok"].params, jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def warm_steps(step_env):
  """The state after 8 steps on one batch, and each step's metrics."""
  state, history = step_env["state"], []
  for _ in range(8):
    state, metrics = _step(step_env, state, step_env["batch"], 1)
    history.append(jax.device_get(metrics))
  assert int(state["step"]) == 8
  return state, history


def test_text_dropout_rate_follows_the_config(warm_steps):
  """train_step at text_dropout=0.3: 8 steps × 64 examples get the null caption 30% of the time
  (and that is not the default's 10%)."""
  _, history = warm_steps
  rate, n = float(np.mean([m["text_dropped"] for m in history])), len(history) * BATCH
  assert _within(rate, 0.3, n), rate
  assert not _within(rate, 0.1, n), rate
  # A different draw every step (fold_in(rng, step)), not one fixed subset.
  assert len({float(m["text_dropped"]) for m in history}) > 1


@pytest.mark.parametrize("video_rate,image_rate", [(0.8, 0.2), (0.5, 0.5), (1.0, 0.0)])
def test_mixture_rates_are_the_configured_ones(step_env, video_rate, image_rate):
  config = step_env["config"].copy_and_resolve_references()
  config.data.video_rate, config.data.image_rate = video_rate, image_rate
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  # Which source fills each slot (cheap: nothing is rendered) over 100 batches of 64.
  sources = [batches.slot(step, slot)[0] for step in range(100) for slot in range(BATCH)]
  is_image = np.asarray([batches.is_image[s] for s in sources])
  if image_rate == 0:
    assert not is_image.any()
  else:
    assert _within(is_image.mean(), image_rate, len(is_image)), is_image.mean()
    assert not _within(is_image.mean(), 0.35, len(is_image))  # tells 0.2 from 0.5


def test_static_images_config(step_env):
  """config.data.static_images: the trainer's images become static clips trained as videos
  (every frame the image, not flagged, so their loss and code support cover every time step)."""
  config = step_env["config"].copy_and_resolve_references()
  config.data.static_images = True
  rows = trainer.make_batches(config, trainer.tokenizer_config(config)).batch(0)
  images = np.array(["moves" not in c for c in rows["caption"]])
  np.testing.assert_array_equal(rows["caption"], step_env["rows"]["caption"])
  assert images.any() and not rows["is_image"].any()
  static = rows["video"][images]  # [N, F, H, W, 3]
  np.testing.assert_array_equal(
    static, np.repeat(step_env["rows"]["video"][images][:, :1], static.shape[1], axis=1)
  )
  assert static[:, -1].any()


def test_image_fraction_metric_and_image_examples(step_env, warm_steps):
  """A rendered batch: images are 1-frame videos padded with zeros, with image captions; the
  step's image_fraction is the batch's share of images and images have their own loss."""
  rows = step_env["rows"]
  images = rows["is_image"]
  assert 0 < images.sum() < BATCH
  assert not rows["video"][images, 1:].any()  # padding is zeros
  assert rows["video"][images, 0].any()
  assert all("moves" not in c for c in rows["caption"][images])  # "a {color} {shape}"
  assert all("moves" in c for c in rows["caption"][~images])
  for metrics in warm_steps[1]:
    assert float(metrics["image_fraction"]) == pytest.approx(images.mean())
    assert np.isfinite(metrics["loss_image"]) and metrics["loss_image"] > 0


def test_ema_params_follow_the_warmed_up_average(step_env):
  """config.ema_decay: each step sets ema ← d·ema + (1 − d)·params with d = min(decay,
  (1 + step) / (10 + step)), starting from the initial parameters; the raw parameters train as
  without it (the EMA is read by nothing in the update)."""
  env = step_env
  config = env["config"].copy_and_resolve_references()
  config.ema_decay = 0.5
  model = trainer.build_model(config, trainer.tokenizer_config(config))
  tx = optim.make_optimizer(config.optim)
  mesh = sharding.make_mesh((-1, 1, 1))
  state, _ = sharding.create_sharded_state(
    trainer.make_init_fn(model, tx, TEXT_LEN, TEXT_DIM, ema=True), mesh, jax.random.PRNGKey(0)
  )
  jax.tree.map(np.testing.assert_array_equal, state["ema_params"], state["params"])
  step_fn = jitted_train_step(config, env["tok"])
  expected = jax.device_get(state["params"])
  plain = env["state"]
  for step in range(3):
    state, _ = step_fn(
      state, env["batch"], env["null_text"], env["tok"].params, jax.random.PRNGKey(1)
    )
    plain, _ = _step(env, plain, env["batch"], 1)
    d = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25: the warm-up, then 0.5
    params = jax.device_get(state["params"])
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, params)
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
      jax.device_get(state["ema_params"]),
      expected,
    )
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(plain["params"]))
  moved = [
    float(np.abs(e - p).max())
    for e, p in zip(jax.tree.leaves(jax.device_get(state["ema_params"])), jax.tree.leaves(params))
  ]
  assert max(moved) > 1e-4  # the average lags the parameters
  assert common.ema_update(1.0, 0.0, 10**6, 0.5) == pytest.approx(0.5)  # capped at `decay`


def test_norm_and_finite_flags_any_nan_or_infinity():
  """The guard's test of new parameters: the global norm, and False for a NaN or an infinity
  in any leaf, however small the leaf."""
  tree = {"a": jnp.full((3, 4), 2.0), "b": {"c": jnp.array([3.0])}}
  norm, ok = common.norm_and_finite(tree)
  assert bool(ok) and float(norm) == pytest.approx(np.sqrt(12 * 4 + 9))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    _, ok = jax.jit(common.norm_and_finite)({**tree, "b": {"c": jnp.array([bad])}})
    assert not bool(ok), bad
  assert not bool(common.norm_and_finite({"big": jnp.array([1e20], jnp.float32)})[1])


def test_prefix_rate_leaves_first_time_steps_of_videos_unmasked(step_env):
  """prefix_rate=1: every video keeps its first 1..t-1 time steps given, so about half of the
  valid tokens can be masked (mask fraction ≈ 0.637 × 0.5 + the images' share) instead of the
  cosine schedule's 0.637 mean; the step still trains (finite loss)."""
  env = step_env
  config = env["config"].copy_and_resolve_references()
  config.prefix_rate = 1.0
  step_fn = jitted_train_step(config, env["tok"])
  plain, prefixed = [], []
  for seed in range(4):
    _, m = _step(env, env["state"], env["batch"], seed)
    plain.append(float(m["mask_fraction"]))
    _, m = step_fn(
      env["state"], env["batch"], env["null_text"], env["tok"].params, jax.random.PRNGKey(seed)
    )
    prefixed.append(float(m["mask_fraction"]))
    assert np.isfinite(m["loss"])
  assert np.mean(prefixed) < np.mean(plain) - 0.15, (prefixed, plain)


def test_given_time_steps_of_context_frames():
  np.testing.assert_array_equal(trainer.given_time_steps([0, 5, 1, 3, 7], 2, 9), [0, 3, 1, 2, 4])
  for bad in ([4], [9], [11]):  # not whole time steps / nothing left to predict
    with pytest.raises(ValueError, match="turn_context_frames"):
      trainer.given_time_steps(bad, 2, 9)


def test_turn_clips_are_in_the_batches_and_their_context_is_never_masked(step_env):
  """turn_rate=0.5: about half of the video slots are turn clips, whose rows carry their
  context_frames; a step whose videos all have t-1 given time steps can mask at most one time
  step of them (mask fraction bounded by the exact share), instead of ≈ 0.64 of all tokens."""
  env = step_env
  config = env["config"].copy_and_resolve_references()
  config.data.turn_rate = 0.5
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  turn_source = [s.split for s in batches.sources].index("turn")
  slots = [batches.slot(step, slot)[0] for step in range(50) for slot in range(BATCH)]
  videos = [s for s in slots if not batches.is_image[s]]
  assert _within(np.mean([s == turn_source for s in videos]), 0.5, len(videos))
  rows = batches.batch(0)
  turned = rows["context_frames"] > 0
  assert turned.any() and not (turned & rows["is_image"]).any()
  assert set(rows["context_frames"][turned].tolist()) == {config.data.turn_context_frames}

  t, h, w = trainer.build_model(config).grid
  step_fn = jitted_train_step(config, env["tok"])
  is_image = np.asarray(env["batch"]["is_image"])
  given = np.where(is_image, 0, t - 1).astype(np.int32)
  bound = (is_image.size * h * w) / (((~is_image).sum() * t + is_image.sum()) * h * w)
  for seed in range(3):
    _, m = step_fn(
      env["state"],
      dict(env["batch"], given_steps=jnp.asarray(given)),
      env["null_text"],
      env["tok"].params,
      jax.random.PRNGKey(seed),
    )
    assert 0 < float(m["mask_fraction"]) <= bound + 1e-6, (float(m["mask_fraction"]), bound)
    assert np.isfinite(m["loss"])
    _, plain = _step(env, env["state"], env["batch"], seed)
    assert float(plain["mask_fraction"]) > bound + 0.1

  # With frame prediction on as well, the turn context stays given (prefix_rate adds to it).
  config.prefix_rate = 1.0
  both_fn = jitted_train_step(config, env["tok"])
  for seed in range(3):
    _, m = both_fn(
      env["state"],
      dict(env["batch"], given_steps=jnp.asarray(given)),
      env["null_text"],
      env["tok"].params,
      jax.random.PRNGKey(seed),
    )
    assert 0 < float(m["mask_fraction"]) <= bound + 1e-6, (float(m["mask_fraction"]), bound)


def test_image_padded_frames_change_nothing(step_env, warm_steps):
  """Noise in the padded later frames of the image examples leaves the step's metrics and the
  updated parameters bit-identical; the same noise in one video example's frames does not."""
  env, (state, _) = step_env, warm_steps
  video = np.asarray(env["batch"]["video"])
  is_image = np.asarray(env["batch"]["is_image"])
  noise = np.random.default_rng(3).integers(0, 256, video[0, 1:].shape, np.uint8)

  def run(v):
    new_state, metrics = _step(env, state, dict(env["batch"], video=jnp.asarray(v)), 4)
    return jax.device_get(new_state["params"]), jax.device_get(metrics)

  params0, metrics0 = run(video)
  padded = video.copy()
  padded[is_image, 1:] = noise  # every image example
  params1, metrics1 = run(padded)
  for key in metrics0:
    np.testing.assert_array_equal(metrics0[key], metrics1[key], err_msg=key)
  jax.tree.map(np.testing.assert_array_equal, params0, params1)

  changed = video.copy()
  changed[np.flatnonzero(~is_image)[0], 1:] = noise  # one video example
  params2, metrics2 = run(changed)
  assert float(metrics2["loss"]) != float(metrics0["loss"])
  assert not all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(params2))
  )


# ---- config checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "key,value,named",
  [
    ("tokenizer.workdir", "/nonexistent/cvivit", "tokenizer.workdir"),
    ("data.video_rate", 0.0, "video_rate"),
    ("data.image_rate", -0.5, "image_rate"),
    ("text_dropout", 1.0, "text_dropout"),
    ("data.source", "webvid", "data.source"),
    ("model.head", "untied", "model.head"),
    ("model.group", 3, "model.group"),
    ("model.group", 0, "model.group"),
    ("code_support_clips", -1, "code_support_clips"),
    ("prefix_rate", 1.5, "prefix_rate"),
    ("data.turn_rate", 1.0, "turn_rate"),
    ("ema_decay", 1.0, "ema_decay"),
    ("ema_decay", -0.1, "ema_decay"),
  ],
)
def test_config_errors_name_the_key(tiny_cvivit_dir, tmp_path, key, value, named):
  config = conftest.tiny_maskgit_config(tiny_cvivit_dir)
  parent, _, leaf = key.rpartition(".")
  (config[parent] if parent else config)[leaf] = value
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    trainer.main(config, str(tmp_path / "run"))
  assert not glob.glob(str(tmp_path / "run" / "checkpoints" / "*"))


@pytest.mark.parametrize("frames", [0, 2, 99])
def test_turn_context_that_is_not_whole_time_steps_fails_at_start(
  tiny_cvivit_dir, tmp_path, frames
):
  """0 frames, a context that splits a time step, and one that leaves nothing to predict."""
  config = conftest.tiny_maskgit_config(tiny_cvivit_dir)
  config.data.turn_rate, config.data.turn_context_frames = 0.2, frames
  with pytest.raises(ValueError, match=r"turn_context_frames"):
    trainer.main(config, str(tmp_path / "run"))
  assert not glob.glob(str(tmp_path / "run" / "checkpoints" / "*"))


def test_code_counts_split_first_and_later_time_steps():
  codes = np.array(
    [
      [[[1, 2]], [[3, 3]]],  # a video: first step 1, 2; later 3, 3
      [[[4, 4]], [[0, 0]]],
    ]
  )  # an image: its later step is padding
  counts = trainer.code_counts(codes, np.array([False, True]), 5)
  np.testing.assert_array_equal(counts, [[0, 1, 1, 0, 2], [0, 0, 0, 2, 0]])


def test_finished_run_writes_its_code_support(tiny_maskgit_dir, tiny_cvivit_dir, tmp_path):
  """code_support.npz counts the codes of the run's first `code_support_clips` examples: every
  first-step token of every clip, every later-step token of the videos only — the same counts
  as encoding that stream again."""
  config = config_io.from_workdir(tiny_maskgit_dir)
  tok = tokenizer_lib.Tokenizer.from_workdir(tiny_cvivit_dir)
  with np.load(os.path.join(tiny_maskgit_dir, sample_lib.CODE_SUPPORT_FILE)) as z:
    counts, clips = z["counts"], int(z["clips"])
  assert counts.shape == (2, tok.codebook_size) and clips == config.code_support_clips
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  steps = clips // config.data.batch_size
  expected = np.zeros_like(counts)
  images = 0
  for step in range(steps):
    batch = batches.batch(step)
    codes = np.asarray(tok.encode(batch["video"]))  # [8, t, h, w]
    is_image = np.asarray(batch["is_image"], bool)
    images += int(is_image.sum())
    np.add.at(expected[0], codes[:, 0].ravel(), 1)
    np.add.at(expected[1], codes[~is_image, 1:].ravel(), 1)
  np.testing.assert_array_equal(counts, expected)
  t, h, w = trainer.build_model(config).grid
  assert counts[0].sum() == clips * h * w
  assert counts[1].sum() == (clips - images) * (t - 1) * h * w and 0 < images < clips


def test_ema_run_checkpoints_the_average_and_the_sampler_uses_it(
  tiny_maskgit_dir, tiny_cvivit_dir, tmp_path
):
  """A run with ema_decay checkpoints `ema_params` beside `params`; Sampler.from_workdirs
  samples with the average by default and with the raw parameters when ema=False; asking a
  run without an EMA for one is an error that names the option."""
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "ema")
  config = conftest.tiny_maskgit_config(tiny_cvivit_dir, total_steps=20)
  config.ema_decay = 0.9
  config.sample.num_videos = 0
  config.code_support_clips = 0
  trainer.main(config, workdir)
  saved = config_io.from_workdir(workdir)
  ema = sample.Sampler.from_workdirs(tiny_cvivit_dir, workdir)
  raw = sample.Sampler.from_workdirs(
    tiny_cvivit_dir, workdir, text_encoder=ema.text_encoder, ema=False
  )
  state, _ = _restore_state(workdir, saved, ema.text_encoder.dim)
  assert set(state) >= {"params", "ema_params"}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ema.params), state["ema_params"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(raw.params), state["params"])
  gap = max(
    float(np.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(state["ema_params"]), jax.tree.leaves(state["params"]))
  )
  assert gap > 1e-4
  with pytest.raises(ValueError, match="ema_decay"):
    sample.Sampler.from_workdirs(
      tiny_cvivit_dir, tiny_maskgit_dir, text_encoder=ema.text_encoder, ema=True
    )


def test_resuming_with_ema_turned_on_or_off(tmp_path):
  """common.restore_state: checkpoints without an EMA resumed with one start the average at the
  restored parameters; checkpoints with one resumed without fail, naming ema_decay; any other
  mismatch is orbax's own error."""
  params = {"w": jnp.arange(3.0)}
  fresh = {"params": {"w": jnp.zeros(3)}, "step": jnp.zeros((), jnp.int32)}
  plain_dir, ema_dir = str(tmp_path / "plain"), str(tmp_path / "ema")
  for directory, state in (
    (plain_dir, {"params": params, "step": jnp.array(7)}),
    (ema_dir, {"params": params, "ema_params": {"w": jnp.ones(3)}, "step": jnp.array(7)}),
  ):
    ckpt = checkpoint.Checkpointer(directory, every_steps=1)
    ckpt.save(7, state, {"step": 7})
    ckpt.close()
  ckpt = checkpoint.Checkpointer(plain_dir, read_only=True)
  state, meta = common.restore_state(ckpt, dict(fresh, ema_params={"w": jnp.zeros(3)}))
  assert meta["step"] == 7 and int(state["step"]) == 7
  np.testing.assert_array_equal(state["ema_params"]["w"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(state["params"]["w"], [0.0, 1.0, 2.0])
  with pytest.raises(ValueError, match="do not match"):
    common.restore_state(ckpt, dict(fresh, other=jnp.zeros(2)))
  ckpt.close()
  ckpt = checkpoint.Checkpointer(ema_dir, read_only=True)
  with pytest.raises(ValueError, match="ema_decay"):
    common.restore_state(ckpt, fresh)
  state, _ = common.restore_state(ckpt, dict(fresh, ema_params={"w": jnp.zeros(3)}))
  np.testing.assert_array_equal(state["ema_params"]["w"], [1.0, 1.0, 1.0])
  ckpt.close()


def test_token_embeddings_can_start_from_the_codebook():
  """token_embed_init="codebook": the K code rows are one linear map of the code vectors (so
  alike codes start alike); the [MASK] row is not; the default init is not such a map."""
  model = maskgit_lib.get_model(
    "tiny", codebook_size=32, grid=(2, 2, 2), width=16, depth=1, num_heads=2, mlp_dim=32
  )
  k, c = model.codebook_size, 4
  codebook = np.array(jax.random.normal(jax.random.key(1), (k, c)))
  codebook /= np.linalg.norm(codebook, axis=-1, keepdims=True)
  tx = optim.make_optimizer(conftest.load_config("maskgit_b", "tiny").optim)

  def table(cb):
    state = jax.jit(lambda r: nn.unbox(trainer.make_init_fn(model, tx, 3, 8, cb, ema=False)(r)))(
      jax.random.key(0)
    )
    return np.asarray(state["params"]["token_embed"]["embedding"])

  def residual(rows):
    proj, res, *_ = np.linalg.lstsq(codebook, rows, rcond=None)
    return float(np.abs(codebook @ proj - rows).max()), proj

  from_codebook = table(codebook)
  assert from_codebook.shape == (k + 1, model.width)
  err, proj = residual(from_codebook[:k])
  assert err < 1e-5 and 0.005 < proj.std() < 0.05, (err, proj.std())
  assert not np.allclose(from_codebook[k], codebook[:1] @ proj, atol=1e-3)  # [MASK] row
  assert residual(table(None)[:k])[0] > 1e-2


def test_gradient_accumulation_equals_the_whole_batch(step_env):
  """config.grad_accum_steps=4: four passes of 16 examples give the update of one pass of 64
  (the tiny MaskGIT has no dropout), its loss, accuracy and per-source losses; a count that does
  not divide the batch fails naming the key."""
  config = step_env["config"].copy_and_resolve_references()
  config.grad_accum_steps = 4
  accumulated = jitted_train_step(config, step_env["tok"])
  args = (step_env["batch"], step_env["null_text"], step_env["tok"].params, jax.random.PRNGKey(5))
  state = step_env["state"]
  one, m_one = step_env["step"](state, *args)
  four, m_four = accumulated(state, *args)
  for key in ("loss", "masked_accuracy", "loss_video", "loss_image", "grad_norm"):
    np.testing.assert_allclose(m_four[key], m_one[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(four["params"])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6)
  config.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r"config\.grad_accum_steps=3 must .* divide"):
    trainer.validate_config(config)
