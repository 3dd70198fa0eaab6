"""Tests of the MaskGIT transformer (paper §4.2): shapes, image padding, text mask, sizes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import maskgit

import conftest

K = 16
GRID = (3, 4, 4)
HW = GRID[1] * GRID[2]
BATCH, TEXT_LEN, TEXT_DIM = 2, 5, 8


def _inputs(t, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, K + 1, (BATCH, t * HW)), jnp.int32)  # [B, N]
  text = jnp.asarray(rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)), jnp.float32)  # [B, L, Dt]
  text_mask = jnp.asarray([[True] * TEXT_LEN, [True] * 3 + [False] * 2])  # [B, L]
  return tokens, text, text_mask


@pytest.fixture(scope="module")
def tiny():
  model = maskgit.MaskGIT(codebook_size=K, grid=GRID, width=32, depth=2, num_heads=4, mlp_dim=64)
  abstract, params = conftest.numpy_init(model, *_inputs(GRID[0]))
  # Every test passes token_valid (all True where unused) so that shapes, not call patterns,
  # decide the compiles: one per time-step count t.
  apply = jax.jit(lambda params, *args: model.apply({"params": params}, *args))
  return model, abstract, params, apply


def _image_valid():
  """Example 0 is an image (only its first time step is real), example 1 a full video."""
  valid = np.ones((BATCH, GRID[0] * HW), bool)
  valid[0, HW:] = False
  return jnp.asarray(valid)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_output_shapes(tiny, t):
  model, _, params, apply = tiny
  tokens, text, text_mask = _inputs(t)
  logits = apply(params, tokens, text, text_mask, jnp.ones(tokens.shape, bool))
  assert logits.shape == (BATCH, t * HW, K) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert model.mask_token_id == K == maskgit.mask_token_id(K)


def test_rejects_bad_token_count(tiny):
  model, _, params, _ = tiny
  _, text, text_mask = _inputs(1)
  for n in (HW + 1, 4 * HW):  # not a whole number of time steps; more than max_time_steps
    with pytest.raises(ValueError, match="tokens"):
      jax.eval_shape(
        functools.partial(model.apply, {"params": params}),
        jnp.zeros((BATCH, n), jnp.int32),
        text,
        text_mask,
      )


@pytest.mark.parametrize("model_fixture", ["tiny", "grouped"])
def test_image_example_ignores_padded_frames(model_fixture, request):
  """Changing an image example's padded later-frame tokens changes none of its valid logits
  (also with the transformer over 2×2 groups)."""
  _, _, params, apply = request.getfixturevalue(model_fixture)
  tokens, text, text_mask = _inputs(GRID[0])
  valid = _image_valid()
  other = tokens.at[0, HW:].set((tokens[0, HW:] + 7) % (K + 1))
  a = np.asarray(apply(params, tokens, text, text_mask, valid))
  b = np.asarray(apply(params, other, text, text_mask, valid))
  np.testing.assert_allclose(a[0, :HW], b[0, :HW], atol=1e-6, rtol=0)
  np.testing.assert_array_equal(a[1], b[1])
  # With every position valid the later frames do reach the first (the check is meaningful).
  every = jnp.ones_like(valid)
  c = np.asarray(apply(params, tokens, text, text_mask, every))
  d = np.asarray(apply(params, other, text, text_mask, every))
  assert np.abs(c[0, :HW] - d[0, :HW]).max() > 1e-4


def test_text_padding_changes_nothing(tiny):
  _, _, params, apply = tiny
  tokens, text, text_mask = _inputs(GRID[0])
  valid = jnp.ones(tokens.shape, bool)
  text_mask = text_mask.at[0].set(False)  # example 0: all padding (a null prompt); 1: partly
  noise = jnp.asarray(np.random.default_rng(1).normal(size=text.shape) * 10, jnp.float32)
  text_changed = jnp.where(text_mask[..., None], text, noise)
  a = np.asarray(apply(params, tokens, text, text_mask, valid))
  b = np.asarray(apply(params, tokens, text_changed, text_mask, valid))
  np.testing.assert_array_equal(a, b)
  # Changing a real text token does change the logits.
  c = np.asarray(apply(params, tokens, text.at[1, 0].add(1.0), text_mask, valid))
  assert np.abs(a[1] - c[1]).max() > 1e-4


def test_scan_and_remat_match_the_unrolled_stack(tiny):
  """`scan=True, remat=True` computes the same function, with the layers stacked on axis 0."""
  _, _, params, apply = tiny
  model = maskgit.MaskGIT(
    codebook_size=K, grid=GRID, width=32, depth=2, num_heads=4, mlp_dim=64, scan=True, remat=True
  )
  tokens, text, text_mask = _inputs(GRID[0])
  abstract = jax.eval_shape(model.init, jax.random.key(0), tokens, text, text_mask)
  kernel = abstract["params"]["transformer"]["layers"]["mlp"]["fc1"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp") and kernel.value.shape == (2, 32, 64)
  blocks = params["transformer"]
  stacked = dict(
    params,
    transformer={
      "layers": jax.tree_util.tree_map(
        lambda *x: jnp.stack(x), blocks["block_0"], blocks["block_1"]
      ),
      "ln_final": blocks["ln_final"],
    },
  )
  valid = _image_valid()
  scanned = jax.jit(model.apply)({"params": stacked}, tokens, text, text_mask, valid)
  np.testing.assert_allclose(scanned, apply(params, tokens, text, text_mask, valid), atol=1e-5)


def test_logical_axis_names(tiny):
  _, abstract, _, _ = tiny
  specs = nn.get_partition_spec(abstract)["params"]
  assert tuple(specs["token_embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["pos_t"]) == (None, "embed")
  assert tuple(specs["head"]["kernel"]) == ("embed", "vocab")
  assert tuple(specs["text_proj"]["kernel"]) == (None, "embed")
  shapes = jax.tree_util.tree_map(jnp.shape, nn.unbox(abstract))["params"]
  assert shapes["token_embed"]["embedding"] == (K + 1, 32)
  assert shapes["pos_t"] == (GRID[0], 32) and shapes["head"]["kernel"] == (32, K)


def test_paper_size_has_1p8b_params():
  """The '1.8B' size with K=8192, grid (6,16,16), T5-XXL text (4096-d): 1.8B ± 5%."""
  model = maskgit.get_model("1.8B", scan=True)
  assert (model.codebook_size, model.grid) == (8192, (6, 16, 16))
  num_params = maskgit.count_params(model, text_dim=4096)  # jax.eval_shape: nothing allocated
  assert abs(num_params / 1.8e9 - 1) < 0.05, num_params


def test_get_model():
  model = maskgit.get_model("tiny", codebook_size=K, grid=GRID)
  assert (model.width, model.codebook_size, model.grid) == (maskgit.SIZES["tiny"]["width"], K, GRID)
  with pytest.raises(ValueError, match="unknown MaskGIT size"):
    maskgit.get_model("XXL")


def test_tied_head_scores_codes_by_their_token_embeddings():
  """head="tied": logits = f(x)·E[:K] + b, so two codes with equal embedding rows and biases get
  equal logits everywhere, and changing one code's row moves only that code's logit."""
  model = maskgit.MaskGIT(
    codebook_size=K, grid=GRID, width=32, depth=1, num_heads=4, mlp_dim=64, head="tied"
  )
  tokens, text, text_mask = _inputs(2)
  _, params = conftest.numpy_init(model, tokens, text, text_mask)
  assert "head" not in params and params["head_bias"].shape == (K,)
  table = np.array(params["token_embed"]["embedding"])
  table[5] = table[3]
  bias = np.array(params["head_bias"])
  bias[5] = bias[3]
  params = dict(params, token_embed={"embedding": jnp.asarray(table)}, head_bias=jnp.asarray(bias))
  # Codes 3 and 5 absent from the input, so only the head sees their rows.
  tokens = jnp.where((tokens == 3) | (tokens == 5), 0, tokens)
  apply = jax.jit(lambda p: model.apply({"params": p}, tokens, text, text_mask))
  logits = np.asarray(apply(params))
  assert logits.shape == (BATCH, 2 * HW, K)
  np.testing.assert_allclose(logits[..., 5], logits[..., 3], rtol=1e-6, atol=1e-6)
  table[7] += 1.0
  moved = np.asarray(apply(dict(params, token_embed={"embedding": jnp.asarray(table)})))
  changed = np.abs(moved - logits).max(axis=(0, 1)) > 1e-5
  assert changed[7] and changed.sum() == 1
  with pytest.raises(ValueError, match="head='untied'"):
    maskgit.MaskGIT(
      codebook_size=K, grid=GRID, width=32, depth=1, num_heads=4, mlp_dim=64, head="untied"
    ).init(jax.random.key(0), tokens, text, text_mask)


@pytest.fixture(scope="module")
def grouped():
  model = maskgit.MaskGIT(
    codebook_size=K, grid=GRID, width=32, depth=2, num_heads=4, mlp_dim=64, group=2
  )
  abstract, params = conftest.numpy_init(model, *_inputs(GRID[0]))
  apply = jax.jit(lambda params, *args: model.apply({"params": params}, *args))
  return model, abstract, params, apply


def test_grouped_tokens_round_trip_in_grid_order():
  x = jnp.arange(2 * 3 * 4 * 4 * 5, dtype=jnp.float32).reshape(2, 3 * 4 * 4, 5)  # [B, N, C]
  groups = maskgit._to_groups(x, 3, 4, 4, 2)  # pylint: disable=protected-access
  assert groups.shape == (2, 3 * 2 * 2, 4 * 5)
  # Time step 1, group (row 1, col 0) holds tokens (y, x) in {2, 3} x {0, 1}, row-major.
  expected = [16 + y * 4 + x_ for y in (2, 3) for x_ in (0, 1)]
  np.testing.assert_array_equal(groups[0, 4 + 2].reshape(4, 5), x[0, expected])
  np.testing.assert_array_equal(maskgit._from_groups(groups, 3, 2, 2, 2), x)  # pylint: disable=protected-access


@pytest.mark.parametrize("t", [1, 3])
def test_grouped_model_scores_every_token(grouped, t):
  """group=2: per-token logits [B, N, K]; the transformer sees N/4 positions; a token's logits
  depend on its own group's other tokens and on other groups (through attention)."""
  _, abstract, params, apply = grouped
  shapes = jax.tree_util.tree_map(jnp.shape, nn.unbox(abstract))["params"]
  assert shapes["pos_h"] == (GRID[1] // 2, 32) and shapes["head"]["kernel"] == (32, 4 * K)
  assert shapes["group_in"]["kernel"] == (4 * 32, 32)
  tokens, text, text_mask = _inputs(t)
  valid = jnp.ones(tokens.shape, bool)
  logits = np.asarray(apply(params, tokens, text, text_mask, valid))
  assert logits.shape == (BATCH, t * HW, K) and np.isfinite(logits).all()
  # Token (0, 0)'s group is tokens 0, 1, 4, 5 of each frame: changing token 5 changes the
  # logits of all four (same position), and those of other groups (attention).
  other = np.asarray(
    apply(params, tokens.at[:, 5].set((tokens[:, 5] + 3) % (K + 1)), text, text_mask, valid)
  )
  changed = np.abs(other - logits).max(axis=(0, 2)) > 1e-5  # [N]
  assert changed[[0, 1, 4, 5]].all() and changed[[2, 3, 8]].all()


@pytest.mark.parametrize("t", [1, 3])
def test_group_order_logits_are_the_token_order_logits_permuted(grouped, t):
  """token_order=False (the trainer's loss) returns the same logits as the default, in
  `group_order`; group_order puts each 2×2 group's tokens together, groups in raster order."""
  model, _, params, _ = grouped
  tokens, text, text_mask = _inputs(t)
  run = jax.jit(
    lambda p, order: model.apply({"params": p}, tokens, text, text_mask, token_order=order),
    static_argnums=1,
  )
  by_token, by_group = np.asarray(run(params, True)), np.asarray(run(params, False))
  np.testing.assert_array_equal(model.group_order(jnp.asarray(by_token)), by_group)
  ids = np.asarray(model.group_order(jnp.arange(t * HW)[None]))[0]
  w = GRID[2]
  assert list(ids[:8]) == [0, 1, w, w + 1, 2, 3, w + 2, w + 3]
  assert sorted(ids) == list(range(t * HW))
  assert not np.array_equal(by_token, by_group)


@pytest.mark.parametrize(
  "group, head, message",
  [
    (3, "dense", "group=3 must be >= 1 and divide"),
    (0, "dense", "group=0"),
    (2, "tied", "group=2 needs head='dense'"),
  ],
)
def test_bad_group_is_rejected(group, head, message):
  tokens, text, text_mask = _inputs(1)
  model = maskgit.MaskGIT(
    codebook_size=K, grid=GRID, width=32, depth=1, num_heads=4, mlp_dim=64, group=group, head=head
  )
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model.init, jax.random.key(0), tokens, text, text_mask)
