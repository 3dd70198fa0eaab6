"""Tests of MaskGIT parallel decoding and classifier-free guidance (paper §4.2.2)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax import decode
from phenaki_jax.models import maskgit

import conftest

K = 16
GRID = (3, 4, 4)
HW = GRID[1] * GRID[2]
N = GRID[0] * HW
BATCH, TEXT_LEN, TEXT_DIM = 2, 5, 8


@pytest.fixture(scope="module")
def tiny():
  model = maskgit.MaskGIT(codebook_size=K, grid=GRID, width=32, depth=2, num_heads=4, mlp_dim=64)
  rng = np.random.default_rng(0)
  text = jnp.asarray(rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)), jnp.float32)
  text_mask = jnp.asarray([[True] * TEXT_LEN, [True] * 3 + [False] * 2])
  _, params = conftest.numpy_init(model, jnp.zeros((BATCH, N), jnp.int32), text, text_mask)
  return model, params, text, text_mask


NUM_STEPS = 6


@pytest.fixture(scope="module")
def decoder(tiny):
  """The tiny model's decoder, jitted once; every test that uses it must reuse its shapes."""
  model, _, text, text_mask = tiny

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(params, init, fixed, valid, rng):
    logits_fn = lambda tokens: model.apply({"params": params}, tokens, text, text_mask, valid)
    return decode.decode(
      logits_fn,
      init,
      fixed,
      rng,
      num_steps=NUM_STEPS,
      mask_token_id=K,
      valid=valid,
      return_trace=True,
    )

  return run


def _expected_trace(num_generate, num_steps):
  """The cosine schedule, computed independently in numpy (float32, like the decoder)."""
  counts, masked = [], np.asarray(num_generate)
  for i in range(num_steps):
    ratio = np.float32(max(np.cos(np.pi / 2 * (i + 1) / num_steps), 0.0))
    target = np.floor(ratio * np.float32(num_generate)).astype(np.int64)
    masked = np.maximum(np.minimum(target, masked - 1), 0)
    counts.append(masked)
  return np.stack(counts)  # [S, B]


def test_fixed_positions_and_schedule(tiny, decoder):
  _, params, _, _ = tiny
  rng = np.random.default_rng(1)
  init = jnp.asarray(rng.integers(0, K, (BATCH, N)), jnp.int32)
  fixed = np.zeros((BATCH, N), bool)
  fixed[0, :HW] = True  # example 0: continuation, first time step given
  valid = np.ones((BATCH, N), bool)
  valid[1, 2 * HW :] = False  # example 1: only two time steps exist
  out, trace = decoder(params, init, jnp.asarray(fixed), jnp.asarray(valid), jax.random.key(0))
  out, trace, init = np.asarray(out), np.asarray(trace), np.asarray(init)
  np.testing.assert_array_equal(out[fixed], init[fixed])  # fixed tokens never change
  np.testing.assert_array_equal(out[~valid], init[~valid])  # invalid positions untouched
  generated = out[valid & ~fixed]
  assert ((generated >= 0) & (generated < K)).all()  # no [MASK] left
  assert out.dtype == np.int32 and trace.shape == (NUM_STEPS, BATCH)
  num_generate = (valid & ~fixed).sum(-1)  # [32, 32]
  np.testing.assert_array_equal(trace, _expected_trace(num_generate, NUM_STEPS))
  assert (trace[-1] == 0).all()
  assert (np.diff(np.concatenate([num_generate[None], trace]), axis=0) < 0).all()


def test_seed_determinism_and_no_recompilation(tiny, decoder):
  _, params, _, _ = tiny
  init = jnp.zeros((BATCH, N), jnp.int32)
  fixed = jnp.zeros((BATCH, N), bool)
  valid = jnp.ones((BATCH, N), bool)
  a, _ = decoder(params, init, fixed, valid, jax.random.key(7))
  b, _ = decoder(params, init, fixed, valid, jax.random.key(7))
  c, _ = decoder(params, init, fixed.at[:, :HW].set(True), valid, jax.random.key(8))
  a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
  np.testing.assert_array_equal(a, b)
  assert (a[:, HW:] != c[:, HW:]).any()
  np.testing.assert_array_equal(c[:, :HW], 0)
  # `decoder` carries chex.assert_max_traces(n=1): a retrace on these calls would have raised.


def test_decode_follows_the_logits_and_commits_a_token_per_step():
  """A logits_fn certain of code (position mod K) is reproduced at every generated position
  (through top-k/top-p filtering); with more steps than tokens to generate, at least one token
  is committed per step until none is left."""
  target = jnp.arange(N) % K  # [N]
  logits_fn = lambda tokens: jnp.broadcast_to(30.0 * jax.nn.one_hot(target, K), tokens.shape + (K,))
  num_generate = np.array([5, N])
  fixed = jnp.arange(N)[None, :] >= jnp.asarray(num_generate)[:, None]  # [B, N]
  init = jnp.full((BATCH, N), K - 1, jnp.int32)
  run = jax.jit(
    functools.partial(
      decode.decode, logits_fn, num_steps=8, mask_token_id=K, top_k=3, top_p=0.9, return_trace=True
    )
  )
  out, trace = run(init, fixed, jax.random.key(0))
  out, trace = np.asarray(out), np.asarray(trace)
  np.testing.assert_array_equal(out, np.where(fixed, K - 1, np.broadcast_to(target, (BATCH, N))))
  np.testing.assert_array_equal(trace, _expected_trace(num_generate, 8))
  counts = trace[:, 0]  # 5 tokens over 8 steps
  assert counts[-1] == 0 and (np.diff(np.concatenate([[5], counts]))[counts > 0] < 0).all()


def test_temperature_decay():
  """The sampling temperature of step i is temperature · (1 − decay · (i+1)/S): one step with
  decay 0 samples at the given temperature, decay 0.5 at half of it, decay 1 at 0 (the most
  likely code, every time); frequencies within 5 standard errors."""
  probs = np.zeros(K)
  probs[[3, 7]] = [0.6, 0.4]
  logits_fn = lambda tokens: jnp.broadcast_to(
    jnp.log(jnp.asarray(probs, jnp.float32)), tokens.shape + (K,)
  )
  init = jnp.zeros((BATCH, N), jnp.int32)
  fixed = jnp.zeros((BATCH, N), bool)

  def share_of_3(decay, temperature=1.0, seeds=64):
    run = jax.jit(
      jax.vmap(
        lambda key: decode.decode(
          logits_fn,
          init,
          fixed,
          key,
          num_steps=1,
          mask_token_id=K,
          temperature=temperature,
          temperature_decay=decay,
        )
      )
    )
    out = np.asarray(run(jax.random.split(jax.random.PRNGKey(0), seeds)))
    assert set(np.unique(out)) <= {3, 7}
    return (out == 3).mean(), out.size

  for decay, temperature, expected in [
    (0.0, 1.0, 0.6),
    (0.5, 1.0, 0.36 / 0.52),
    (0.0, 0.5, 0.36 / 0.52),
  ]:
    share, n = share_of_3(decay, temperature)
    assert abs(share - expected) < 5 * np.sqrt(expected * (1 - expected) / n), (decay, share)
  assert share_of_3(1.0)[0] == 1.0
  assert share_of_3(1.0, temperature=5.0)[0] == 1.0


def test_pseudo_log_likelihood(tiny):
  """Every scored token is read once, with its own chunk masked and the rest given: with one
  chunk per scored token it is the leave-one-out log-probability; unscored positions are never
  masked nor counted; the chunks are random but the score of a context-free model is not."""
  model, params, text, text_mask = tiny
  logits_fn = functools.partial(model.apply, {"params": params}, text=text, text_mask=text_mask)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, K, (BATCH, N)), jnp.int32)
  scored = np.zeros((BATCH, N), bool)
  scored[0, :7] = True  # row 0: seven positions; row 1: all
  scored[1] = True
  pll = functools.partial(decode.pseudo_log_likelihood, logits_fn, mask_token_id=K)
  # Leave one out, by hand: mask position n alone and read the log-probability of its token.
  loo = np.zeros((BATCH, N))
  for n in range(N):
    hidden = tokens.at[:, n].set(K)
    log_probs = jax.nn.log_softmax(logits_fn(hidden), axis=-1)
    loo[:, n] = np.asarray(log_probs[jnp.arange(BATCH), n, tokens[:, n]])
  expected = (loo * scored).sum(1) / scored.sum(1)
  got = pll(tokens, jnp.asarray(scored), jax.random.key(0), num_chunks=N)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Fewer chunks: another value (more is masked at once), still a mean log-probability.
  coarse = np.asarray(pll(tokens, jnp.asarray(scored), jax.random.key(0), num_chunks=3))
  assert (coarse < 0).all() and np.abs(coarse - expected).max() > 1e-4
  # A model that ignores its input: every chunking gives the mean of the scored tokens' log p.
  table = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(N, K)), jnp.float32))
  flat = lambda t: jnp.broadcast_to(table, t.shape + (K,))
  exact = np.array(
    [np.asarray(table)[np.arange(N), np.asarray(tokens[b])][scored[b]].mean() for b in range(BATCH)]
  )
  for key in range(3):
    out = decode.pseudo_log_likelihood(
      flat, tokens, jnp.asarray(scored), jax.random.key(key), num_chunks=4, mask_token_id=K
    )
    np.testing.assert_allclose(out, exact, rtol=1e-6)


def test_token_log_likelihoods_and_lowest(tiny):
  """token_log_likelihoods: per token the reads whose mean per row is pseudo_log_likelihood
  (the same chunks), 0 where not scored; with one chunk per token, leave-one-out. `lowest`
  picks the round(fraction × eligible) least likely eligible tokens of each row."""
  model, params, text, text_mask = tiny
  logits_fn = functools.partial(model.apply, {"params": params}, text=text, text_mask=text_mask)
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, K, (BATCH, N)), jnp.int32)
  scored = np.ones((BATCH, N), bool)
  scored[0, 7:] = False
  kw = dict(num_chunks=3, mask_token_id=K)
  per_token = np.asarray(
    decode.token_log_likelihoods(logits_fn, tokens, jnp.asarray(scored), jax.random.key(2), **kw)
  )
  pll = decode.pseudo_log_likelihood(
    logits_fn, tokens, jnp.asarray(scored), jax.random.key(2), **kw
  )
  np.testing.assert_allclose(per_token.sum(1) / scored.sum(1), pll, rtol=1e-5)
  assert (per_token[~scored] == 0).all() and (per_token[scored] < 0).all()
  one_each = decode.token_log_likelihoods(
    logits_fn, tokens, jnp.ones((BATCH, N), bool), jax.random.key(0), num_chunks=N, mask_token_id=K
  )
  hidden = tokens.at[:, 5].set(K)
  log_probs = jax.nn.log_softmax(logits_fn(hidden), axis=-1)
  np.testing.assert_allclose(
    one_each[:, 5], log_probs[jnp.arange(BATCH), 5, tokens[:, 5]], rtol=1e-5
  )

  scores = jnp.asarray([[0.5, -3.0, 1.0, -3.0, -1.0, 2.0], [4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
  eligible = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])
  got = np.asarray(decode.lowest(scores, eligible, 0.5))
  assert got.tolist() == [
    [False, True, False, True, True, False],  # the 3 lowest of 6
    [False, False, True, True, False, False],  # the 2 lowest of the 4 eligible
  ]
  assert not np.asarray(decode.lowest(scores, eligible, 0.0)).any()
  with pytest.raises(ValueError, match="fraction"):
    decode.lowest(scores, eligible, 1.5)


def test_lattice_phases_partition_the_grid_without_neighbours():
  """lattice_phases: four phases, every position in exactly one, and no two positions of a
  phase touching in space (diagonals included); every time step has the same pattern."""
  phases = decode.lattice_phases((3, 4, 5))
  assert phases.shape == (4, 3, 4, 5) and phases.dtype == bool
  np.testing.assert_array_equal(phases.sum(0), 1)
  for phase in phases:
    np.testing.assert_array_equal(phase, np.broadcast_to(phase[0], phase.shape))
    ys, xs = np.nonzero(phase[0])
    for y, x in zip(ys, xs):
      near = phase[0, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
      assert near.sum() == 1, (y, x)  # itself alone among its 8 neighbours
  assert [int(p[0].sum()) for p in phases] == [6, 4, 6, 4]
  assert [int(p.sum()) for p in decode.lattice_phases((1, 1, 3))] == [2, 1, 0, 0]


def test_restricted_logits_fn():
  logits = jnp.arange(12.0).reshape(1, 3, 4)
  allowed = jnp.array([[True, False, True, False], [False] * 3 + [True], [True] * 4])
  out = decode.restricted_logits_fn(lambda tokens: logits, allowed[None])(jnp.zeros((1, 3)))
  low = jnp.finfo(jnp.float32).min
  np.testing.assert_array_equal(out, jnp.where(allowed[None], logits, low))
  assert (out[0, 1, :3] == low).all() and out[0, 1, 3] == 7.0


def test_sticky_logits_fn_keeps_codes_nearly_as_likely_as_the_best():
  """A position keeps its current code (one-hot logits) unless the best code is more than
  exp(log_odds) times as likely; otherwise the logits pass through. log_odds 0 leaves argmax
  decoding as it was."""
  # Probabilities per position: [0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.4, 0.4, 0.2].
  probs = jnp.array([[[0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]])
  logits = jnp.log(probs) + 3.0  # unnormalised: the rule reads the softmax
  current = jnp.array([[1, 1, 1]])
  low = jnp.finfo(jnp.float32).min
  out = decode.sticky_logits_fn(lambda t: logits, current, np.log(2.0))(jnp.zeros((1, 3)))
  # 0.5 / 0.3 < 2: kept; 0.7 / 0.2 > 2: free; 0.4 / 0.4: kept.
  np.testing.assert_array_equal(out[0, 0], jnp.array([low, 0.0, low]))
  np.testing.assert_array_equal(out[0, 1], logits[0, 1])
  np.testing.assert_array_equal(out[0, 2], jnp.array([low, 0.0, low]))
  plain = decode.sticky_logits_fn(lambda t: logits, current, 0.0)(jnp.zeros((1, 3)))
  assert [int(i) for i in plain.argmax(-1)[0]] == [0, 0, 1]  # argmax, ties kept as they are
  np.testing.assert_array_equal(plain[0, :2], logits[0, :2])


def test_kth_largest_matches_lax_top_k():
  """The argmax passes give lax.top_k's k-th value, ties counted (k ≤ 16) and beyond."""
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (3, 7, 40)) * 2)  # many ties
  x = x.at[0, 0].set(-jnp.inf).at[0, 0, 5].set(1.0)  # one finite value
  for k in (1, 2, 3, 5, 16, 17, 40):
    np.testing.assert_array_equal(decode.kth_largest(x, k), jax.lax.top_k(x, k)[0][..., -1:])


def test_categorical_draws_from_the_softmax():
  """Frequencies match the softmax (a chi-square bound), codes of logit -inf are never drawn,
  also beside a rounded-up cumulative mass (u clamped), and rows draw independently."""
  probs = np.array([[0.0, 0.1, 0.2, 0.0, 0.3, 0.4, 0.0], [0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  n = 40_000
  draws = np.asarray(
    jax.jit(jax.vmap(lambda k: decode.categorical(k, logits)))(
      jax.random.split(jax.random.PRNGKey(3), n)
    )
  )
  assert draws.shape == (n, 2) and draws.dtype == np.int32
  for row in range(2):
    counts = np.bincount(draws[:, row], minlength=7)
    assert (counts[probs[row] == 0] == 0).all()
    live = probs[row] > 0
    expected = n * probs[row][live]
    chi2 = np.sum((counts[live] - expected) ** 2 / expected)
    assert chi2 < 20.0, (row, counts, chi2)  # df ≤ 3: p < 0.001 past ~16
  assert abs(np.corrcoef(draws[:, 0] == 5, draws[:, 1] == 0)[0, 1]) < 0.03
  # A one-hot row always draws its code; large, shifted logits behave like small ones.
  one_hot = jnp.full((1, 512), -jnp.inf).at[0, 511].set(0.0)
  keys = jax.random.split(jax.random.PRNGKey(0), 500)
  assert (jax.vmap(lambda k: decode.categorical(k, one_hot))(keys) == 511).all()
  shifted = decode.categorical(jax.random.PRNGKey(5), logits + 1e4)
  np.testing.assert_array_equal(shifted, decode.categorical(jax.random.PRNGKey(5), logits))


def test_categorical_in_blocks_draws_from_the_softmax():
  """K = 12 is drawn in two levels (4 blocks of 3 codes): a block of zero mass, blocks with
  zero-mass codes at either end, and one-hot rows at block edges keep their frequencies and
  never draw a code of logit -inf; a prime K (7, above) takes one level."""
  assert decode._block_size(12) == 3 and decode._block_size(512) == 16
  assert decode._block_size(7) == 1
  probs = np.array(
    [
      [0.0, 0.0, 0.0, 0.1, 0.2, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.4],
      [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
  )
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  n = 40_000
  draws = np.asarray(
    jax.jit(jax.vmap(lambda k: decode.categorical(k, logits)))(
      jax.random.split(jax.random.PRNGKey(7), n)
    )
  )
  for row in range(2):
    counts = np.bincount(draws[:, row], minlength=12)
    assert (counts[probs[row] == 0] == 0).all(), (row, counts)
    live = probs[row] > 0
    expected = n * probs[row][live]
    chi2 = np.sum((counts[live] - expected) ** 2 / expected)
    assert chi2 < 20.0, (row, counts, chi2)
  keys = jax.random.split(jax.random.PRNGKey(1), 300)
  for code in (0, 15, 16, 255, 496):
    one_hot = jnp.full((2, 512), -jnp.inf).at[:, code].set(0.0)
    assert (jax.vmap(lambda k, h=one_hot: decode.categorical(k, h))(keys) == code).all()


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert kept(decode.filter_logits(logits, top_k=2)) == [True, True, False, False]
  assert kept(decode.filter_logits(logits, top_p=0.7)) == [True, True, False, False]
  assert kept(decode.filter_logits(logits, top_p=0.5)) == [True, False, False, False]
  assert kept(decode.filter_logits(logits, top_p=0.95)) == [True, True, True, False]
  assert kept(decode.filter_logits(logits)) == [True] * 4
  with pytest.raises(ValueError, match="top_p"):
    decode.filter_logits(logits, top_p=0.0)


def test_classifier_free_guidance(tiny):
  model, params, text, text_mask = tiny
  apply_fn = jax.jit(functools.partial(model.apply, {"params": params}))
  null_text = jnp.zeros((1, TEXT_LEN, TEXT_DIM))
  null_mask = jnp.zeros((1, TEXT_LEN), bool).at[:, 0].set(True)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, K + 1, (BATCH, N)), jnp.int32)
  valid = jnp.ones((BATCH, N), bool).at[0, HW:].set(False)

  cond = np.asarray(apply_fn(tokens, text, text_mask, valid))
  uncond = np.asarray(
    apply_fn(
      tokens,
      jnp.broadcast_to(null_text, text.shape),
      jnp.broadcast_to(null_mask, text_mask.shape),
      valid,
    )
  )
  assert np.abs(cond - uncond).max() > 1e-4

  @jax.jit
  def guided(tokens, scale):  # a traced scale: one compile for every value
    return decode.guided_logits_fn(
      apply_fn, text, text_mask, null_text, null_mask, scale, token_valid=valid
    )(tokens)

  np.testing.assert_allclose(guided(tokens, 0.0), uncond, atol=1e-5)
  np.testing.assert_allclose(guided(tokens, 1.0), cond, atol=1e-5)
  np.testing.assert_allclose(guided(tokens, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-4)
  conditional_only = decode.guided_logits_fn(
    apply_fn, text, text_mask, null_text, null_mask, 1.0, token_valid=valid
  )  # Python 1.0: one call
  np.testing.assert_allclose(conditional_only(tokens), cond, atol=1e-5)
  with pytest.raises(ValueError, match="broadcast"):
    decode.guided_logits_fn(apply_fn, text, text_mask, jnp.zeros((1, 3, TEXT_DIM)), null_mask, 2.0)

  # cfg_support: guided logits survive only where the conditional probability is at least
  # cfg_support × the conditional's highest probability at that position.
  @jax.jit
  def supported(tokens, support):
    return decode.guided_logits_fn(
      apply_fn, text, text_mask, null_text, null_mask, 3.0, support, token_valid=valid
    )(tokens)

  plain = uncond + 3.0 * (cond - uncond)
  np.testing.assert_allclose(supported(tokens, 0.0), plain, atol=1e-4)
  unsupported = decode.guided_logits_fn(
    apply_fn, text, text_mask, null_text, null_mask, 3.0, 0.0, token_valid=valid
  )  # a Python 0: no support test in the program
  np.testing.assert_allclose(jax.jit(unsupported)(tokens), supported(tokens, 0.0), atol=1e-6)
  out = np.asarray(supported(tokens, 0.2))
  relative = cond - cond.max(axis=-1, keepdims=True)  # log p / p_max
  keep = relative >= np.log(0.2)
  assert keep.any(axis=-1).all() and (~keep).any()
  np.testing.assert_allclose(out[keep], plain[keep], atol=1e-4)
  assert (out[~keep] == np.finfo(np.float32).min).all()
