"""Tests of the C-ViViT tokenizer (Phenaki §4.1): docs/design.md, invariants 1-3.

1. Causality: codes (and pre-quantisation z) of frames 0..n are bit-identical whether or not the
   frames after n change; decoded frames of step s depend only on codes of steps <= s.
2. Variable length: 1 + k·t_p frames encode to 1 + k time steps and decode back, k = 0 included.
3. Token count: the paper's `B` model maps 11×128² to 6×16×16 = 1536 codes (via eval_shape).

A small C-ViViT (width 32, one spatial and two temporal layers, a refinement conv so that its
per-frame causality is covered too) with numpy-drawn weights; one jitted function per frame count
(compiles dominate on this CPU).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import cvivit

import conftest

BATCH = 2
TP = 2  # temporal patch of the tiny size
SMALL = dict(
  width=32, mlp_dim=64, spatial_depth=1, temporal_depth=2, codebook_size=64, refine_channels=4
)


def make_run(model):
  """jit(params, video, codes) -> (z, codes of video, decode(codes)); one compile per shape."""

  @jax.jit
  def run(params, video, codes):
    variables = {"params": params}
    z = model.apply(variables, video, method=cvivit.CViViT.encode_to_z)
    q = model.apply(variables, z, method=cvivit.CViViT.quantize)
    decoded = model.apply(variables, codes, method=cvivit.CViViT.decode)
    return z, q.codes, decoded

  return run


def random_video(frames, seed=0, size=32):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (BATCH, frames, size, size, 3)), jnp.float32)


@pytest.fixture(scope="module")
def small():
  model = cvivit.get_model("tiny", **SMALL)
  abstract, params = conftest.numpy_init(model, random_video(1 + 2 * TP))
  return model, abstract, params, make_run(model)


@pytest.fixture(scope="module")
def encode(small):
  """encode(frames, video=None) -> (video, z, codes), memoised for the default videos."""
  model, _, params, run = small
  cache = {}

  def fn(frames, video=None):
    key = frames if video is None else None
    if key is not None and key in cache:
      return cache[key]
    video = random_video(frames) if video is None else video
    dummy = jnp.zeros(
      (BATCH, model.time_steps(frames), model.grid_size, model.grid_size), jnp.int32
    )
    z, codes, _ = run(params, video, dummy)
    out = video, np.asarray(z), np.asarray(codes)
    if key is not None:
      cache[key] = out
    return out

  return fn


# ---- Invariant 1: causality ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 2, 4])
def test_encoder_is_causal_bit_exact(encode, n):
  """Perturbing the frames after frame n changes no code or z of the steps covering frames <= n."""
  frames = 1 + 4 * TP  # 9 frames, 5 time steps
  video, z, codes = encode(frames)
  noise = random_video(frames, seed=100 + n)
  perturbed = video.at[:, n + 1 :].set(noise[:, n + 1 :])
  _, z2, codes2 = encode(frames, perturbed)
  kept = n // TP + 1  # steps 0..n/t_p see frames <= n
  np.testing.assert_array_equal(z2[:, :kept], z[:, :kept])
  np.testing.assert_array_equal(codes2[:, :kept], codes[:, :kept])
  # The later steps do see the change (the check above is meaningful).
  for step in range(kept, z.shape[1]):
    assert np.abs(z2[:, step] - z[:, step]).max() > 1e-3, step
  assert (codes2[:, kept:] != codes[:, kept:]).any()


@pytest.mark.parametrize("s", [0, 1, 3])
def test_decoder_is_causal_bit_exact(small, encode, s):
  """Changing the codes of steps > s leaves the decoded frames of steps <= s (0..s·t_p) intact."""
  model, _, params, run = small
  frames = 1 + 4 * TP
  video, _, codes = encode(frames)
  other = np.random.default_rng(s).integers(0, model.codebook_size, codes.shape)
  changed = codes.copy()
  changed[:, s + 1 :] = other[:, s + 1 :]
  assert (changed != codes).any()
  _, _, a = run(params, video, jnp.asarray(codes))
  _, _, b = run(params, video, jnp.asarray(changed))
  a, b = np.asarray(a), np.asarray(b)
  last = s * TP  # last frame of step s
  np.testing.assert_array_equal(b[:, : last + 1], a[:, : last + 1])
  assert np.abs(b[:, last + 1 :] - a[:, last + 1 :]).max() > 1e-3


# ---- Invariant 2: variable length ----------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_variable_length(small, encode, k):
  """1 + k·t_p frames → codes [B, 1+k, h, w] → 1 + k·t_p frames; a short clip's codes are the
  first steps of the long clip's codes (the long clip starts with the same frames)."""
  model, _, params, run = small
  frames = 1 + k * TP
  long_video, long_z, long_codes = encode(1 + 4 * TP)
  video = long_video[:, :frames]
  _, z, codes = encode(frames, video)
  assert codes.shape == (BATCH, 1 + k, 8, 8) and codes.dtype == np.int32
  assert z.shape == (BATCH, 1 + k, 8, 8, model.code_dim)
  np.testing.assert_array_equal(codes, long_codes[:, : 1 + k])
  np.testing.assert_allclose(
    z, long_z[:, : 1 + k], atol=1e-5, rtol=0
  )  # other shapes, other kernels
  _, _, decoded = run(params, video, jnp.asarray(codes))
  assert decoded.shape == (BATCH, frames, 32, 32, 3) and decoded.dtype == jnp.float32
  assert np.isfinite(np.asarray(decoded)).all()
  # Decoding is causal too, so the short decode is the start of the long clip's decode.
  _, _, long_decoded = run(params, long_video, jnp.asarray(long_codes))
  np.testing.assert_allclose(decoded, np.asarray(long_decoded)[:, :frames], atol=1e-4, rtol=0)


def test_geometry_helpers():
  model = cvivit.get_model("tiny", **SMALL)
  assert model.grid_size == 8 and model.max_frames == 17
  assert [model.time_steps(f) for f in (1, 3, 5, 17)] == [1, 2, 3, 9]
  assert [model.num_frames(t) for t in (1, 2, 3, 9)] == [1, 3, 5, 17]


# ---- Invariant 3: token count --------------------------------------------------------------------
def test_paper_config_gives_1536_codes():
  """11 frames of 128² → 6×16×16 = 1536 codes, abstractly (no compile of the 8192-code model)."""
  model = cvivit.get_model("B")
  video = jax.ShapeDtypeStruct((1, 11, 128, 128, 3), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), video)
  params = nn.unbox(abstract)["params"]
  codes = jax.eval_shape(
    lambda p, v: model.apply({"params": p}, v, method=cvivit.CViViT.encode), params, video
  )
  assert codes.shape == (1, 6, 16, 16) and codes.dtype == jnp.int32
  assert int(np.prod(codes.shape[1:])) == 1536
  per_frame = (
    10 * 16 * 16
  )  # docs/design.md, invariant 3: a per-frame tokenizer needs 2560 for the same clip
  assert 1536 < per_frame == 2560
  recon = jax.eval_shape(
    lambda p, c: model.apply({"params": p}, c, method=cvivit.CViViT.decode), params, codes
  )
  assert recon.shape == (1, 11, 128, 128, 3)
  # The paper's sizes (appendix A): width 512, 4+4 layers, codebook 8192 × 32.
  assert params["quantizer"]["codebook"].shape == (8192, 32)
  assert params["embed_first"]["kernel"].shape == (8 * 8 * 3, 512)
  assert params["embed_tubelet"]["kernel"].shape == (2 * 8 * 8 * 3, 512)
  assert params["enc_spatial"]["block_3"]["mlp"]["fc1"]["kernel"].shape == (512, 2048)


# ---- Bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "shape, message",
  [
    ((1, 8, 32, 32, 3), r"1 \+ k·2 frames"),  # not 1 + k·t_p
    ((1, 4, 32, 32, 3), r"got 4"),
    ((1, 19, 32, 32, 3), r"exceed the maximum of 17"),  # more than max_time_steps
    ((1, 9, 30, 30, 3), r"expected 32×32 frames, got 30×30"),
    ((1, 9, 32, 32), r"expected a video"),
    ((1, 9, 32, 32, 1), r"expected a video"),
  ],
)
def test_bad_videos_raise(small, shape, message):
  model, _, params, _ = small
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(
      lambda p, v: model.apply({"params": p}, v, method=cvivit.CViViT.encode),
      params,
      jax.ShapeDtypeStruct(shape, jnp.float32),
    )


def test_too_many_code_steps_raise(small):
  model, _, params, _ = small
  codes = jax.ShapeDtypeStruct((1, 10, 8, 8), jnp.int32)
  with pytest.raises(ValueError, match="10 time steps exceed max_time_steps=9"):
    jax.eval_shape(
      lambda p, c: model.apply({"params": p}, c, method=cvivit.CViViT.decode), params, codes
    )


def test_unknown_size_and_field_raise():
  with pytest.raises(ValueError, match="unknown C-ViViT size 'XL'"):
    cvivit.get_model("XL")
  with pytest.raises(ValueError, match="widht"):
    cvivit.get_model("tiny", widht=3)


# ---- Gradients and the scanned/rematerialised variant --------------------------------------------
def _recon_grads(model, params, video):
  """Gradient of the L2 reconstruction loss alone: its only path to the encoder is the
  straight-through estimator of the quantiser."""

  def loss(p):
    recon, _ = model.apply({"params": p}, video)
    return jnp.mean((recon - video) ** 2)

  return jax.jit(jax.grad(loss))(params)


def _stack_layers(params, depths):
  """Unrolled block_i parameters → the scanned layout (one 'layers' subtree, layer axis 0)."""
  out = dict(params)
  for name, depth in depths.items():
    blocks = params[name]
    out[name] = {
      "layers": jax.tree.map(
        lambda *x: jnp.stack(x), *[blocks[f"block_{i}"] for i in range(depth)]
      ),
      "ln_final": blocks["ln_final"],
    }
  return out


@pytest.fixture(scope="module")
def scanned(small):
  model, abstract, params, _ = small
  scan_model = cvivit.get_model("tiny", **SMALL, scan=True, remat=True)
  scan_abstract = jax.eval_shape(scan_model.init, jax.random.key(0), random_video(1 + 2 * TP))
  kernel = scan_abstract["params"]["enc_temporal"]["layers"]["mlp"]["fc1"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp") and kernel.value.shape == (2, 32, 64)
  depths = {"enc_spatial": 1, "enc_temporal": 2, "dec_temporal": 2, "dec_spatial": 1}
  stacked = _stack_layers(params, depths)
  assert jax.tree.structure(stacked) == jax.tree.structure(nn.unbox(scan_abstract)["params"])
  return scan_model, stacked, depths


def test_straight_through_gradient_reaches_the_encoder(small):
  model, _, params, _ = small
  video = random_video(1 + TP)
  grads = _recon_grads(model, params, video)
  for name in ("embed_first", "embed_tubelet", "to_code"):
    assert np.abs(np.asarray(grads[name]["kernel"])).max() > 0, name
  assert np.abs(np.asarray(grads["enc_temporal"]["block_0"]["mlp"]["fc1"]["kernel"])).max() > 0
  # With the VQ loss absent, the codebook gets no gradient through the straight-through path.
  np.testing.assert_array_equal(np.asarray(grads["quantizer"]["codebook"]), 0.0)


def test_scan_and_remat_match_the_unrolled_model(small, encode, scanned):
  """`scan=True, remat=True` computes the same encode and decode with the same weights."""
  _, _, params, run = small
  scan_model, stacked, _ = scanned
  video, z, codes = encode(1 + 4 * TP)
  z2, codes2, decoded2 = make_run(scan_model)(stacked, video, jnp.asarray(codes))
  np.testing.assert_allclose(z2, z, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(codes2, codes)
  _, _, decoded = run(params, video, jnp.asarray(codes))
  np.testing.assert_allclose(decoded2, decoded, atol=1e-4, rtol=0)


def test_logical_axis_names(small):
  _, abstract, _, _ = small
  specs = nn.get_partition_spec(abstract)["params"]
  assert tuple(specs["quantizer"]["codebook"]) == ("vocab", None)
  assert tuple(specs["enc_spatial"]["block_0"]["self_attention"]["query"]) == (
    "embed",
    "heads",
    "kv",
  )
  assert tuple(specs["embed_tubelet"]["kernel"]) == (None, "embed")


@pytest.mark.parametrize("radius", [0, 1, -1])
def test_encoder_spatial_radius_bounds_where_a_change_reaches(radius):
  """Changing one first-frame patch moves the codes' inputs z only within the encoder's spatial
  radius (Chebyshev, in patches, times its one spatial layer) of it, at every time step (the
  temporal transformer is per position); at radius 0 equal tubelet histories also give equal z
  wherever they are."""
  model = cvivit.get_model("tiny", **SMALL, encoder_spatial_radius=radius)
  video = random_video(1 + TP, seed=3)
  _, params = conftest.numpy_init(model, video)
  z_fn = jax.jit(lambda p, v: model.apply({"params": p}, v, method=cvivit.CViViT.encode_to_z))
  p, (i, j) = model.patch_size, (3, 5)
  changed = video.at[:, 0, i * p : (i + 1) * p, j * p : (j + 1) * p].add(0.5)
  moved = np.abs(np.asarray(z_fn(params, changed) - z_fn(params, video))).max(axis=(0, 4))
  g = model.grid_size
  rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
  near = np.maximum(np.abs(rows - i), np.abs(cols - j)) <= (radius if radius >= 0 else g)
  assert (moved[0][near] > 1e-4).all()  # the change reaches its neighbourhood
  np.testing.assert_array_equal(moved[:, ~near], 0.0)  # and nothing beyond it, at any step
  if radius == -1:
    assert near.all()
  if radius == 0:
    # The same tubelet history at two places: copy patch (1, 1)'s pixels onto (6, 2).
    v = np.array(video)
    v[:, :, 6 * p : 7 * p, 2 * p : 3 * p] = v[:, :, p : 2 * p, p : 2 * p]
    z = np.asarray(z_fn(params, jnp.asarray(v)))
    np.testing.assert_allclose(z[:, :, 6, 2], z[:, :, 1, 1], rtol=1e-5, atol=1e-5)


def test_radius_zero_runs_one_patch_sequences_equal_to_the_masked_frame():
  """At radius 0 the encoder's spatial layers run on one-patch sequences; with the same
  parameters, the full-frame attention masked to each patch itself gives the same values."""
  model = cvivit.get_model("tiny", **SMALL, encoder_spatial_radius=0)
  video = random_video(1 + TP, seed=5)
  _, params = conftest.numpy_init(model, video)
  spatial = nn.Module.bind(model, {"params": params}).enc_spatial
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64, model.width)), jnp.float32)
  own = jnp.eye(64, dtype=bool)[None, None]  # each patch sees itself
  masked = spatial(x, mask=own)
  per_patch = spatial(x.reshape(-1, 1, model.width)).reshape(x.shape)
  np.testing.assert_allclose(per_patch, masked, rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(spatial(x) - masked).max()) > 1e-3  # unmasked attention differs


def test_negative_encoder_radius_fails_at_start_up():
  from phenaki_jax.trainers import cvivit as trainer  # pylint: disable=g-import-not-at-top

  config = conftest.load_config("cvivit_b", "tiny")
  config.model.encoder_spatial_radius = -2
  with pytest.raises(ValueError, match="config.model.encoder_spatial_radius=-2"):
    trainer.validate_config(config)
