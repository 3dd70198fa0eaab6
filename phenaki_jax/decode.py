"""MaskGIT parallel decoding with classifier-free guidance (paper §4.2.2; MaskGIT §3.2, MUSE).

`decode` is a pure, jittable function with static shapes (one `lax.fori_loop` over the steps):

  start: positions to generate (`valid & ~fixed`) are [MASK]; fixed positions hold their given
         tokens (e.g. the re-encoded context frames of a story continuation) and never change.
  step i = 0..S-1:
    1. logits = logits_fn(tokens)                                    # [B, N, K]
    2. every masked position samples a code from softmax(logits / t_i), after optional
       top-k / top-p filtering, where t_i = temperature · (1 − temperature_decay · (i+1)/S):
       constant with decay 0, falling linearly to 0 (the most likely code) at the last step
       with decay 1;
    3. confidence = log p(sampled code) under the raw logits (no temperature, no filtering)
                    + choice_temperature · (1 − (i+1)/S) · Gumbel noise   (annealed to 0);
       positions that were not masked get +inf;
    4. n_next = ⌊cos(π/2 · (i+1)/S) · n_generate⌋, capped at (currently masked − 1) so at least
       one new token is committed per step while any remain; it is 0 after the last step;
    5. the n_next least confident positions are re-masked, all others keep their sample.

Randomness: step i uses `fold_in(rng, i)`, so the same rng gives the same output.

Classifier-free guidance is composed outside `decode` by `guided_logits_fn`, which evaluates the
conditional and unconditional model in one batched call and returns
`uncond + cfg_scale · (cond − uncond)`: cfg_scale = 1 is the conditional model alone, 0 the
unconditional model alone, > 1 extrapolates away from the unconditional prediction (the paper's videos
use 12). With `cfg_support` > 0 the guided
logits are kept only for tokens the conditional model itself finds plausible — probability at
least `cfg_support` times that of its most likely token — and the rest are excluded, so that
guidance cannot promote a token merely because the unconditional model finds it even less
likely (on Shapes, guidance otherwise put the later-frame background code into the first frame).

`pseudo_log_likelihood` scores finished tokens under a model (each scored token masked once, in
one of a few chunks, and read from the logits given the rest): the sampler's choice among
several candidates of one prompt (option `candidates`). `token_log_likelihoods` gives the same
reads per token, and `lowest` picks the least likely of them: the tokens the sampler re-masks
and decodes again after a clip is sampled (option `refine_fraction`). `lattice_phases` splits
a clip's token grid into the four phases of a 2×2 lattice, so that no two tokens of a phase
touch in space: the sampler's sweeps (option `refine_sweeps`) decode one phase at a time again,
each token by its most likely code given all its neighbours (iterated conditional modes).
"""

import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def mask_schedule(num_steps: int) -> np.ndarray:
  """Fraction of the to-be-generated tokens still masked after each step: f32 [num_steps]."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  progress = np.arange(1, num_steps + 1, dtype=np.float64) / num_steps
  return np.maximum(np.cos(np.pi / 2 * progress), 0.0).astype(np.float32)


def _rank(scores: Array) -> Array:
  """Rank (0 = smallest) along the last axis; ties broken by position."""
  order = jnp.argsort(scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def kth_largest(x: Array, k: int) -> Array:
  """The k-th largest value along the last axis, counting ties ([..., 1]; = the last value of
  `jax.lax.top_k(x, k)`). Small k takes k − 1 argmax passes, each masking one entry: on a CPU
  `lax.top_k` sorts and costs ~20× more over a [64, 320, 512] decode step's logits."""
  if k > 16:
    return jax.lax.top_k(x, k)[0][..., -1:]
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  for _ in range(k - 1):
    x = jnp.where(iota == jnp.argmax(x, axis=-1, keepdims=True), -jnp.inf, x)
  return jnp.max(x, axis=-1, keepdims=True)


def _block_size(num_codes: int) -> int:
  """The largest divisor of `num_codes` up to its square root (1 when it is prime)."""
  return max(d for d in range(1, math.isqrt(num_codes) + 1) if num_codes % d == 0)


def _draw_index(cdf: Array, u: Array) -> Array:
  """The first index whose cumulative mass `cdf` [..., n] exceeds `u` [..., 1], with `u` clamped
  into [0, cdf[-1]) first: a rounded-up or rounded-down `u` can neither run past the last code
  of positive mass nor stop before the first."""
  total = cdf[..., -1:]
  u = jnp.clip(u, 0.0, jnp.nextafter(total, jnp.zeros_like(total)))
  return jnp.sum(cdf <= u, axis=-1)


def categorical(rng: Array, logits: Array) -> Array:
  """One draw per row of `logits` [..., K] from softmax(logits): int32 [...].

  The same distribution as `jax.random.categorical`, drawn by inverting the cumulative
  distribution with one uniform number per row rather than by Gumbel noise on every logit
  and an argmax: on a CPU the threefry bits for [B, N, K] noise and the index-carrying argmax
  cost ~4× the inversion here. The inversion runs in two levels, K = blocks × b with b the
  largest divisor of K up to √K: a cumulative sum over the blocks' masses picks the block, one
  over the b codes of that block picks the code. A cumulative sum over all K codes cost more
  than the rest of the draw on a CPU ([4, 80, 512]: 0.30 against 0.77 ms; [128, 80, 512]: 8.5
  against 45 ms). Codes of zero probability (logits of -inf) are never drawn.
  """
  k = logits.shape[-1]
  probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  b = _block_size(k)  # 1 for a prime K: every code its own block, the inner draw trivial
  blocks = probs.reshape(probs.shape[:-1] + (k // b, b))  # [..., K/b, b]
  mass = jnp.sum(blocks, axis=-1)  # [..., K/b]
  block_cdf = jnp.cumsum(mass, axis=-1)
  u = jax.random.uniform(rng, block_cdf.shape[:-1] + (1,)) * block_cdf[..., -1:]
  j = _draw_index(block_cdf, u)  # [...]: a block of positive mass
  before = jnp.take_along_axis(block_cdf - mass, j[..., None], axis=-1)  # mass of blocks < j
  inner = jnp.take_along_axis(blocks, j[..., None, None], axis=-2)[..., 0, :]  # [..., b]
  i = _draw_index(jnp.cumsum(inner, axis=-1), u - before)
  return (j * b + i).astype(jnp.int32)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Sets logits outside the top-k codes and/or the top-p nucleus to -inf (last axis).

  `top_k` (0 = off) must be a Python int and `top_p` (1.0 = off) a Python float.
  """
  num_codes = logits.shape[-1]
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if 0 < top_k < num_codes:
    kth = kth_largest(logits, top_k)  # [..., 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-logits, axis=-1)  # [..., K]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_keep = (mass_before < top_p).sum(-1, keepdims=True)  # >= 1: the top code is kept
    threshold = jnp.take_along_axis(sorted_desc, num_keep - 1, axis=-1)  # [..., 1]
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def decode(
  logits_fn: LogitsFn,
  init_tokens: Array,
  fixed: Array,
  rng: Array,
  *,
  num_steps: int,
  mask_token_id: int,
  temperature: Union[float, Array] = 1.0,
  choice_temperature: Union[float, Array] = 4.5,
  temperature_decay: Union[float, Array] = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  valid: Optional[Array] = None,
  return_trace: bool = False,
):
  """Generates the non-fixed tokens by MaskGIT parallel decoding (see the module docstring).

  Args:
    logits_fn: tokens int32 [B, N] -> logits [B, N, K] (a closure over params and text; wrap
      it with `guided_logits_fn` for classifier-free guidance).
    init_tokens: int32 [B, N]; the values at fixed positions are kept, the rest ignored.
    fixed: bool [B, N], positions whose tokens are given and never changed.
    rng: PRNG key.
    num_steps: number of decoding steps S (static).
    mask_token_id: the [MASK] id (= K, the codebook size).
    temperature: sampling temperature (> 0; may be a traced scalar).
    choice_temperature: scale of the annealed Gumbel noise on the confidences (may be traced).
    temperature_decay: in [0, 1]; the sampling temperature falls by this fraction of itself
      over the steps (1: to 0 at the last step, whose samples are then the most likely codes;
      may be traced).
    top_k: keep only the k most likely codes when sampling (0 = off; static).
    top_p: nucleus sampling mass (1.0 = off; static).
    valid: bool [B, N] or None (all valid). Invalid positions are neither generated nor
      changed (like fixed ones); the model-side masking of them is up to `logits_fn`.
    return_trace: also return the number of still-masked tokens after each step.
  Returns:
    tokens int32 [B, N] with no [MASK] left at valid positions, or with `return_trace`
    (tokens, counts int32 [num_steps, B]).
  """
  if init_tokens.ndim != 2:
    raise ValueError(f"init_tokens must be [B, N], got shape {init_tokens.shape}")
  if fixed.shape != init_tokens.shape:
    raise ValueError(f"fixed must be {init_tokens.shape}, got {fixed.shape}")
  if valid is not None and valid.shape != init_tokens.shape:
    raise ValueError(f"valid must be {init_tokens.shape}, got {valid.shape}")
  ratios = jnp.asarray(mask_schedule(num_steps))  # [S]
  progress = jnp.asarray(np.arange(1, num_steps + 1) / num_steps, jnp.float32)  # [S]
  noise_scale = 1.0 - progress
  temperatures = temperature * (1.0 - temperature_decay * progress)  # [S]
  batch, num_tokens = init_tokens.shape

  generate = ~fixed.astype(bool)
  if valid is not None:
    generate &= valid.astype(bool)  # [B, N]
  tokens = jnp.where(generate, mask_token_id, init_tokens).astype(jnp.int32)  # [B, N]
  num_generate = generate.sum(-1).astype(jnp.float32)  # [B]
  trace = jnp.zeros((num_steps, batch), jnp.int32)

  def step(i, carry):
    tokens, masked, trace = carry  # [B, N], [B, N], [S, B]
    rng_sample, rng_choice = jax.random.split(jax.random.fold_in(rng, i))
    logits = logits_fn(tokens).astype(jnp.float32)  # [B, N, K]
    if logits.shape[:2] != (batch, num_tokens):
      raise ValueError(f"logits_fn returned {logits.shape}, expected [{batch}, {num_tokens}, K]")
    # A temperature of 0 (the last step of a full decay) is held at 1e-6: softmax(logits / t)
    # is then one-hot on the most likely code, which the top-k and top-p filters always keep.
    scaled = logits / jnp.maximum(temperatures[i], 1e-6)
    sampled = categorical(rng_sample, filter_logits(scaled, top_k, top_p))  # [B, N]
    sampled = jnp.where(masked, sampled.astype(jnp.int32), tokens)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]  # [B, N]
    gumbel = jax.random.gumbel(rng_choice, confidence.shape)
    confidence = confidence + choice_temperature * noise_scale[i] * gumbel
    confidence = jnp.where(masked, confidence, jnp.inf)

    num_masked = masked.sum(-1)  # [B]
    num_next = jnp.floor(ratios[i] * num_generate).astype(jnp.int32)
    num_next = jnp.maximum(jnp.minimum(num_next, num_masked - 1), 0)  # [B]
    still_masked = (_rank(confidence) < num_next[:, None]) & masked  # [B, N]
    tokens = jnp.where(still_masked, mask_token_id, sampled)
    return tokens, still_masked, trace.at[i].set(still_masked.sum(-1).astype(jnp.int32))

  tokens, _, trace = jax.lax.fori_loop(0, num_steps, step, (tokens, generate, trace))
  return (tokens, trace) if return_trace else tokens


def pseudo_log_likelihood(logits_fn: LogitsFn, tokens: Array, scored: Array, rng: Array, **kw):
  """Mean log-probability of the `scored` tokens, each read with its own chunk masked: f32 [B].

  The scored positions of each row are split at random into `num_chunks` chunks of (nearly)
  equal size; for each chunk one call of `logits_fn` sees those positions as [MASK] and every
  other token as given, and the chunk's tokens are read from its log-softmax. The sum over all
  scored tokens, over their number, is the row's pseudo-log-likelihood per token (a masked
  model's stand-in for the likelihood it cannot compute). Unscored positions (fixed context,
  padding) are never masked. Arguments: those of `token_log_likelihoods`.
  """
  reads = token_log_likelihoods(logits_fn, tokens, scored, rng, **kw)
  return reads.sum(-1) / jnp.maximum(scored.astype(bool).sum(-1), 1).astype(jnp.float32)


def token_log_likelihoods(
  logits_fn: LogitsFn,
  tokens: Array,
  scored: Array,
  rng: Array,
  *,
  num_chunks: int,
  mask_token_id: int,
) -> Array:
  """The log-probability of each `scored` token, read with its chunk masked (as described in
  `pseudo_log_likelihood`, whose mean per row these are): f32 [B, N], 0 where not scored.

  Args:
    logits_fn: tokens int32 [B, N] -> logits [B, N, K] (e.g. the conditional model).
    tokens: int32 [B, N] without [MASK].
    scored: bool [B, N], the positions to score (at least one per row).
    rng: PRNG key of the random chunks.
    num_chunks: model calls (static); more chunks give each token more context.
    mask_token_id: the [MASK] id.
  """
  if num_chunks < 1:
    raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
  if scored.shape != tokens.shape:
    raise ValueError(f"scored must be {tokens.shape}, got {scored.shape}")
  scored = scored.astype(bool)
  count = scored.sum(-1)  # [B]
  # Scored positions first, in random order; chunk c holds ranks [c·n/C, (c+1)·n/C).
  keys = jnp.where(scored, jax.random.uniform(rng, tokens.shape), 2.0)
  chunk = (_rank(keys) * num_chunks) // jnp.maximum(count, 1)[:, None]  # [B, N]
  out = jnp.zeros(tokens.shape, jnp.float32)
  for c in range(num_chunks):
    hidden = scored & (chunk == c)
    logits = logits_fn(jnp.where(hidden, mask_token_id, tokens)).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    read = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]  # [B, N]
    out = jnp.where(hidden, read, out)
  return out


def lowest(scores: Array, eligible: Array, fraction: float) -> Array:
  """bool [B, N]: in each row, the round(`fraction` × its eligible count) eligible positions of
  lowest `scores` [B, N] (the first position on ties)."""
  if isinstance(fraction, (int, float)) and not 0.0 <= fraction <= 1.0:  # (traced: unchecked)
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  eligible = eligible.astype(bool)
  k = jnp.round(fraction * eligible.sum(-1)).astype(jnp.int32)  # [B]
  return (_rank(jnp.where(eligible, scores, jnp.inf)) < k[:, None]) & eligible


def lattice_phases(grid: tuple) -> np.ndarray:
  """bool [4, t, h, w] for a token grid (t, h, w): phase 2·(y mod 2) + (x mod 2) of every time
  step. Each position is in exactly one phase, and no two positions of a phase are neighbours in
  the spatial grid (not even diagonally), so each phase can be decoded again with the whole of
  every masked token's spatial neighbourhood given."""
  t, h, w = (int(n) for n in grid)
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  phase = 2 * (y % 2) + x % 2  # [h, w]
  return np.stack([np.broadcast_to(phase == k, (t, h, w)) for k in range(4)])


def guided_logits_fn(
  apply_fn: Callable[..., Array],
  text: Array,
  text_mask: Array,
  null_text: Array,
  null_mask: Array,
  cfg_scale: Union[float, Array],
  cfg_support: Union[float, Array] = 0.0,
  **apply_kwargs,
) -> LogitsFn:
  """Classifier-free guidance: a `logits_fn` returning uncond + cfg_scale · (cond − uncond).

  Args:
    apply_fn: (tokens [B', N], text [B', L, D], text_mask [B', L], **apply_kwargs) -> logits,
      e.g. `functools.partial(model.apply, params)`.
    text, text_mask: the conditioning prompt embeddings [B, L, D] and mask [B, L].
    null_text, null_mask: the null (empty-prompt) embedding, broadcastable to text / text_mask
      (e.g. [1, L, D] and [1, L]).
    cfg_scale: guidance scale; 1 = conditional only, 0 = unconditional only. A Python 1.0 skips
      the unconditional half (one call of batch B); otherwise one call of batch 2B.
    cfg_support: in [0, 1). Guided logits of tokens whose conditional probability is below
      `cfg_support` × the conditional's highest probability (at that position) are set to the
      lowest float, so they are never sampled. 0 keeps every token (plain guidance; a Python 0
      skips the test).
    **apply_kwargs: passed to `apply_fn`; array values are per-example [B, ...] and are
      duplicated along the batch for the doubled call (e.g. `token_valid`), others passed as is.
  """
  try:
    null_text = jnp.broadcast_to(null_text, text.shape)
    null_mask = jnp.broadcast_to(null_mask, text_mask.shape)
  except ValueError as e:
    raise ValueError(
      f"null text {jnp.shape(null_text)} / mask {jnp.shape(null_mask)} do not "
      f"broadcast to text {text.shape} / mask {text_mask.shape}"
    ) from e

  if isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0:
    return lambda tokens: apply_fn(tokens, text, text_mask, **apply_kwargs)

  both_text = jnp.concatenate([text, null_text], axis=0)  # [2B, L, D]
  both_mask = jnp.concatenate([text_mask, null_mask], axis=0)  # [2B, L]
  both_kwargs = {
    k: jnp.concatenate([v, v], axis=0) if isinstance(v, (jax.Array, np.ndarray)) else v
    for k, v in apply_kwargs.items()
  }

  def logits_fn(tokens: Array) -> Array:
    batch = tokens.shape[0]
    logits = apply_fn(
      jnp.concatenate([tokens, tokens], axis=0), both_text, both_mask, **both_kwargs
    )  # [2B, N, K]
    cond, uncond = logits[:batch], logits[batch:]
    guided = uncond + cfg_scale * (cond - uncond)
    if isinstance(cfg_support, (int, float)) and cfg_support == 0.0:
      return guided  # plain guidance, without a pass over the conditional's maxima
    # log p_cond(k) - max_k' log p_cond(k') = cond_k - max cond (the normaliser cancels).
    relative = cond - jnp.max(cond, axis=-1, keepdims=True)
    keep = relative >= jnp.log(cfg_support)  # log 0 = -inf: every token at cfg_support 0
    return jnp.where(keep, guided, jnp.finfo(guided.dtype).min)

  return logits_fn


def sticky_logits_fn(
  logits_fn: LogitsFn, current: Array, log_odds: Union[float, Array]
) -> LogitsFn:
  """`logits_fn` under which a position keeps its `current` code (int32 [B, N]) unless the
  most likely code is more than exp(`log_odds`) times as likely as it: there the logits become
  one-hot on the current code (0 on it, the lowest float elsewhere). At log_odds 0 a code is
  kept only where it is already the most likely, i.e. argmax decoding is unchanged; larger
  values leave codes the model finds nearly as likely as its favourite alone."""

  def sticky(tokens: Array) -> Array:
    logits = logits_fn(tokens)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    held = jnp.take_along_axis(log_probs, current[..., None], axis=-1)  # [B, N, 1]
    keep = held >= jnp.max(log_probs, axis=-1, keepdims=True) - log_odds
    iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    low = jnp.finfo(logits.dtype).min
    one_hot = jnp.where(iota == current[..., None], jnp.zeros((), logits.dtype), low)
    return jnp.where(keep, one_hot, logits)

  return sticky


def restricted_logits_fn(logits_fn: LogitsFn, allowed: Array) -> LogitsFn:
  """`logits_fn` with the codes that `allowed` (bool [N, K], or broadcastable to the logits
  [B, N, K]) forbids at a position set to the lowest float, so they are never sampled."""

  def restricted(tokens: Array) -> Array:
    logits = logits_fn(tokens)
    return jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)

  return restricted
