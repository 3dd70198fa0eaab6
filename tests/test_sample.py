"""Tests of the sampling API and CLI (`phenaki_jax/sample.py`, paper §4.2.2).

The models are the barely trained fixture runs (conftest.py): these tests pin the mechanics —
shapes, frame counts, determinism, story continuation with fixed context codes, image-to-video,
classifier-free guidance at scale 0, argument errors — not sample quality.

Geometry of the fixtures: 9 frames of 32², t_p = 2, so a window holds 5 time steps
(1 + 4 tubelets) of 8×8 tokens. Nearly every call below uses a batch of 1 and the full 5-step
window, so the jitted decode compiles once for the whole module.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax import decode as decode_lib
from phenaki_jax import sample as sample_lib
from phenaki_jax.data import shapes as shapes_lib

import conftest

P1 = "a red circle moves left"
P2 = "a red circle moves up"
P3 = "a red circle moves right"
FRAMES, H = 9, 32


def test_geometry(tiny_sampler):
  s = tiny_sampler
  assert s.temporal_patch == 2
  assert s.model.grid == (5, 8, 8)
  assert s.max_frames == FRAMES == 1 + (s.model.grid[0] - 1) * s.temporal_patch
  assert s.model.codebook_size == s.tokenizer.codebook_size == 64


def test_generate_one_prompt(tiny_sampler):
  video = tiny_sampler.generate(P1)
  assert video.shape == (FRAMES, H, H, 3) and video.dtype == np.uint8


def test_generate_a_batch_of_prompts(tiny_sampler):
  videos = tiny_sampler.generate([P1, "a blue square moves down"])
  assert videos.shape == (2, FRAMES, H, H, 3) and videos.dtype == np.uint8


def test_num_frames_off_the_tubelet_grid(tiny_sampler):
  """8 frames need the same 5 time steps as 9: exactly 8 come back, the first 8 of the 9."""
  full = tiny_sampler.generate(P1, seed=11)
  eight = tiny_sampler.generate(P1, num_frames=8, seed=11)
  assert eight.shape == (8, H, H, 3)
  np.testing.assert_array_equal(eight, full[:8])


def test_same_seed_same_video_and_no_recompile(tiny_sampler):
  a = tiny_sampler.generate(P1, seed=5)
  b = tiny_sampler.generate(P1, seed=5)
  c = tiny_sampler.generate(P1, seed=6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  compiled = lambda: sum(f._cache_size() for f in tiny_sampler._fns.values())
  # cfg_support 0 leaves its test out of the program (a second program for any value > 0).
  tiny_sampler.generate(P2, seed=7, cfg_scale=2.0, cfg_support=0.01)
  before = compiled()
  tiny_sampler.generate(
    P2, seed=7, cfg_scale=2.0, temperature=0.5, temperature_decay=1.0, cfg_support=0.05
  )  # traced options
  assert compiled() == before


def test_text_cache_only_sampler_matches_and_names_missing_prompts(
  tiny_sampler, tiny_cvivit_dir, tiny_maskgit_dir
):
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  tiny_sampler.text_encoder.encode([P1, P2])  # into the MaskGIT workdir's text cache
  cached = sample.Sampler.from_workdirs(tiny_cvivit_dir, tiny_maskgit_dir, text_cache_only=True)
  assert cached.text_encoder.cache_only and cached.text_encoder.params is None
  np.testing.assert_array_equal(
    cached.generate([P1, P2], seed=3), tiny_sampler.generate([P1, P2], seed=3)
  )
  with pytest.raises(ValueError, match="'a violet hexagon spins'.*encode_text"):
    cached.generate("a violet hexagon spins")


def test_options_left_out_of_the_program_leave_the_samples_unchanged(tiny_sampler, monkeypatch):
  """cfg_support 0 and codes not restricted are left out of the jitted decode; the program
  that keeps both (a support of 0 keeps every code, every code allowed) samples the same."""
  kw = dict(seed=4, cfg_scale=2.0, cfg_support=0.0, restrict_codes=False)
  calls = []
  lean_fn = tiny_sampler._generate_fn

  def full_fn(*a, **k):
    calls.append((k["support"], k["restrict"]))
    return lean_fn(*a, **{**k, "support": True, "restrict": True})

  lean = tiny_sampler.generate([P1, P2], **kw)
  monkeypatch.setattr(tiny_sampler, "_generate_fn", full_fn)
  np.testing.assert_array_equal(tiny_sampler.generate([P1, P2], **kw), lean)
  assert calls and set(calls) == {(False, False)}  # the lean program was the one replaced


def test_cfg_support_must_be_a_fraction(tiny_sampler):
  with pytest.raises(ValueError, match="cfg_support must be in"):
    tiny_sampler.generate(P1, cfg_support=1.0)


def test_cfg_scale_zero_ignores_the_prompt(tiny_sampler):
  """cfg_scale 0 is the unconditional model alone: two prompts give the same video."""
  a = tiny_sampler.generate(P1, cfg_scale=0.0, seed=4)
  b = tiny_sampler.generate("a white triangle moves down", cfg_scale=0.0, seed=4)
  np.testing.assert_array_equal(a, b)
  # ...whereas with guidance the prompt matters (so the check above can fail).
  c = tiny_sampler.generate(P1, cfg_scale=3.0, seed=4)
  d = tiny_sampler.generate("a white triangle moves down", cfg_scale=3.0, seed=4)
  assert not np.array_equal(c, d)


def test_restrict_codes_samples_only_the_codes_seen_at_each_time_step(tiny_sampler):
  """With a code support allowing code a at the first time step and b, c later, every sampled
  token obeys it; restrict_codes=False ignores it; the fixture's own support was loaded."""
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  s = tiny_sampler
  k = s.model.codebook_size
  assert s.code_support is not None and s.code_support.shape == (2, k)
  assert s.code_support[0].any() and s.code_support[1].any()
  support = np.zeros((2, k), np.int64)
  support[0, 5] = 3
  support[1, [7, 9]] = 1
  r = sample.Sampler(s.tokenizer, s.model, s.params, s.text_encoder, s.defaults, support)
  h, w = s.model.grid[1:]
  init = np.zeros((2,) + s.model.grid, np.int32)
  fixed = np.zeros(init.shape, bool)
  codes, _ = r._run([P1, P2], init, fixed, 0, r._options())
  assert (codes[:, 0] == 5).all()
  assert np.isin(codes[:, 1:], [7, 9]).all() and len(np.unique(codes[:, 1:])) == 2
  free, _ = r._run([P1, P2], init, fixed, 0, r._options(restrict_codes=False))
  assert len(np.unique(free)) > 3
  # A row with no code at all allows every code (nothing to restrict to); a wrong shape fails.
  empty_later = support.copy()
  empty_later[1] = 0
  e = sample.Sampler(s.tokenizer, s.model, s.params, s.text_encoder, s.defaults, empty_later)
  assert e.code_support[1].all() and e.code_support[0].sum() == 1
  with pytest.raises(ValueError, match="code_support must be"):
    sample.Sampler(s.tokenizer, s.model, s.params, s.text_encoder, s.defaults, support[:1])


def _window(sampler, prompt, context_codes, seed, scramble=False, **opts):
  """`Sampler._continue_window` (what continue_video decodes) on a 5-step window whose first
  time steps are the fixed context codes (sampling options: the sampler's defaults updated by
  `opts`)."""
  b, t_c, h, w = context_codes.shape
  init = np.zeros((b, sampler.model.grid[0], h, w), np.int32)
  if scramble:  # what the non-fixed positions hold must not matter
    init = np.random.default_rng(0).integers(
      0, sampler.model.codebook_size, init.shape, dtype=np.int32
    )
  init[:, :t_c] = context_codes
  return sampler._continue_window([prompt] * b, init, t_c, seed, sampler._options(**opts))


def _continue_scale(sampler):
  """The guidance scale continue_video uses by default (multi-frame context)."""
  opts = sampler._options()
  return opts["cfg_scale"] if opts["continue_cfg_scale"] is None else opts["continue_cfg_scale"]


def test_continuation_holds_the_context_codes_fixed(tiny_sampler):
  """continue_video re-encodes the last 5 frames (3 time steps), keeps their codes fixed at the
  first time steps of the window and appends the window's frames after the context."""
  s = tiny_sampler
  video = s.generate(P1, seed=0)  # [9, H, W, 3]
  context_codes = np.asarray(s.tokenizer.encode(video[None, -5:]))  # [1, 3, 8, 8]
  assert context_codes.shape == (1, 3, 8, 8)

  codes, window = _window(s, P2, context_codes, seed=7, cfg_scale=_continue_scale(s))
  np.testing.assert_array_equal(codes[:, :3], context_codes)  # fixed positions unchanged
  assert codes.min() >= 0 and codes.max() < s.model.codebook_size  # no [MASK] left
  for stepwise in (False, True):  # in one decode or one time step after another
    kw = dict(cfg_scale=_continue_scale(s), continue_stepwise=stepwise)
    codes_plain, window_plain = _window(s, P2, context_codes, seed=7, **kw)
    codes_scrambled, window_scrambled = _window(s, P2, context_codes, seed=7, scramble=True, **kw)
    np.testing.assert_array_equal(codes_scrambled, codes_plain)
    np.testing.assert_array_equal(window_scrambled, window_plain)

  out = s.continue_video(video, P2, num_new_frames=4, context_frames=5, seed=7)
  assert out.shape == (FRAMES + 4, H, H, 3)
  np.testing.assert_array_equal(out[:FRAMES], video)  # the given video is kept
  np.testing.assert_array_equal(out[FRAMES:], window[0, 5:9])  # = that window's new frames
  # The window's frames are the tokenizer's decoding of its codes (up to rounding).
  decoded = np.asarray(s.tokenizer.decode(codes))
  assert np.abs(decoded.astype(int) - window.astype(int)).max() <= 1


def test_story_has_the_requested_frames_and_is_a_chain_of_continuations(tiny_sampler):
  s = tiny_sampler
  story = s.story([P1, P2, P3], frames_per_prompt=[9, 4, 4], context_frames=5, seed=0)
  assert story.shape == (17, H, H, 3) and story.dtype == np.uint8
  # Segment i is continue_video of the story so far under prompt i with seed + i.
  expected = s.generate(P1, 9, seed=0)
  expected = s.continue_video(expected, P2, 4, context_frames=5, seed=1)
  expected = s.continue_video(expected, P3, 4, context_frames=5, seed=2)
  np.testing.assert_array_equal(story, expected)
  # Its last segment's context codes are the re-encoding of the 5 frames before it.
  context_codes = np.asarray(s.tokenizer.encode(story[None, 8:13]))
  codes, window = _window(s, P3, context_codes, seed=2, cfg_scale=_continue_scale(s))
  np.testing.assert_array_equal(codes[:, :3], context_codes)
  np.testing.assert_array_equal(story[13:], window[0, 5:9])


def test_story_default_lengths_fit_the_window(tiny_sampler):
  """Without frames_per_prompt the first segment is a whole clip and each later one what a
  window holds after the context (9, then 4 frames after 5 or 6 after 3) — the README's call;
  a context that leaves no room fails with the key named."""
  s = tiny_sampler
  story = s.story([P1, P2, P3], seed=0)
  np.testing.assert_array_equal(story, s.story([P1, P2, P3], [9, 4, 4], seed=0))
  assert s.story([P1, P2], context_frames=3, seed=0).shape == (15, H, H, 3)
  assert s.story([P1], context_frames=9, seed=0).shape == (FRAMES, H, H, 3)  # no continuation
  with pytest.raises(ValueError, match="context_frames=9 leaves no room"):
    s.story([P1, P2], context_frames=9)


def test_continuations_use_continue_cfg_scale(tiny_sampler):
  """A multi-frame context is continued with guidance `continue_cfg_scale` (None: cfg_scale);
  the first story segment and image-to-video (one context frame) keep `cfg_scale`."""
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  s = tiny_sampler
  assert s.defaults["continue_cfg_scale"] == 1.0  # the tiny config's (configs/maskgit_b.py)
  video = s.generate(P1, seed=0)
  context_codes = np.asarray(s.tokenizer.encode(video[None, -5:]))
  windows = {
    scale: _window(s, P2, context_codes, seed=5, cfg_scale=scale)[1][0, 5:9] for scale in (0.0, 3.0)
  }
  assert not np.array_equal(windows[0.0], windows[3.0])  # the scale matters here
  # A sampler whose default is None continues at cfg_scale (same jitted functions).
  plain = sample.Sampler(
    s.tokenizer,
    s.model,
    s.params,
    s.text_encoder,
    {**s.defaults, "continue_cfg_scale": None},
    s.code_support,
  )
  plain._fns = s._fns  # pylint: disable=protected-access
  for scale in (0.0, 3.0):
    out = s.continue_video(video, P2, 4, context_frames=5, seed=5, continue_cfg_scale=scale)
    np.testing.assert_array_equal(out[FRAMES:], windows[scale])
    out = plain.continue_video(video, P2, 4, context_frames=5, seed=5, cfg_scale=scale)
    np.testing.assert_array_equal(out[FRAMES:], windows[scale])
  # A story: the first segment at cfg_scale, the next at continue_cfg_scale.
  story = s.story([P1, P2], [9, 4], context_frames=5, seed=0, cfg_scale=3.0, continue_cfg_scale=0.0)
  np.testing.assert_array_equal(story[:9], s.generate(P1, 9, seed=0, cfg_scale=3.0))
  story_context = np.asarray(s.tokenizer.encode(story[None, 4:9]))
  np.testing.assert_array_equal(
    story[9:], _window(s, P2, story_context, seed=1, cfg_scale=0.0)[1][0, 5:9]
  )
  # Image-to-video (a 1-frame context) ignores continue_cfg_scale.
  image_codes = np.asarray(s.tokenizer.encode(video[None, :1]))
  guided = _window(s, P2, image_codes, seed=4, cfg_scale=3.0)[1][0, 1:]
  assert not np.array_equal(guided, _window(s, P2, image_codes, seed=4, cfg_scale=0.0)[1][0, 1:])
  np.testing.assert_array_equal(
    s.image_to_video(video[0], P2, seed=4, cfg_scale=3.0, continue_cfg_scale=0.0)[1:], guided
  )


def test_stepwise_continuation_decodes_one_time_step_after_another(tiny_sampler):
  """continue_stepwise (the tiny default): decode j leaves only new time step j free, holds the
  later ones at [MASK] and keeps the context and every time step decoded before; off, one
  decode generates all new time steps with just the context fixed."""
  s = tiny_sampler
  assert s.defaults["continue_stepwise"] is True  # the tiny config's (configs/maskgit_b.py)
  mask_id = s.model.mask_token_id
  video = s.generate(P1, seed=0)
  context_codes = np.asarray(s.tokenizer.encode(video[None, -5:]))  # [1, 3, 8, 8]
  calls, real_run = [], s._run

  def spy(prompts, init, fixed, seed, opts, stream=None, frames=True):
    codes, window = real_run(prompts, init, fixed, seed, opts, stream=stream, frames=frames)
    calls.append(
      dict(
        init=np.array(init),
        fixed=np.array(fixed),
        seed=seed,
        stream=stream,
        codes=codes,
        window=window,
      )
    )
    return codes, window

  s._run = spy
  try:
    out = s.continue_video(video, P2, 4, context_frames=5, seed=3)
    compiled = lambda: sum(f._cache_size() for f in s._fns.values())
    before = compiled()
    assert [c["stream"] for c in calls] == [0, 1] and {c["seed"] for c in calls} == {3}
    done = context_codes
    for j, call in enumerate(calls):
      step = 3 + j  # the time step this decode generates
      expected_fixed = np.ones(call["fixed"].shape, bool)
      expected_fixed[:, step] = False
      np.testing.assert_array_equal(call["fixed"], expected_fixed)
      np.testing.assert_array_equal(call["init"][:, :step], done)  # context + earlier steps
      assert (call["init"][:, step + 1 :] == mask_id).all()  # the later ones [MASK]
      np.testing.assert_array_equal(call["codes"][:, :step], done)
      assert (call["codes"][:, step] < s.model.codebook_size).all()  # generated, no [MASK]
      done = call["codes"][:, : step + 1]
    # Only the last decode runs the C-ViViT decoder: its frames are the continuation.
    assert calls[0]["window"] is None and calls[-1]["window"] is not None
    decoded = np.asarray(s.tokenizer.decode(calls[-1]["codes"]))[0, 5:9]
    np.testing.assert_array_equal(out[FRAMES:], decoded)
    np.testing.assert_array_equal(s.continue_video(video, P2, 4, context_frames=5, seed=3), out)

    calls.clear()
    once = s.continue_video(video, P2, 4, context_frames=5, seed=3, continue_stepwise=False)
    assert len(calls) == 1 and calls[0]["stream"] is None
    expected_fixed = np.zeros(calls[0]["fixed"].shape, bool)
    expected_fixed[:, :3] = True
    np.testing.assert_array_equal(calls[0]["fixed"], expected_fixed)
    assert not np.array_equal(once[FRAMES:], out[FRAMES:])
    assert compiled() == before  # the masks are traced: one jitted decode for all calls
  finally:
    del s._run


def test_mbr_choice_picks_the_typical_candidate():
  """The candidate with the least summed squared distance to the others, per row (the one
  nearest the row's mean); a single candidate is its own choice."""
  base = np.zeros((4, 2, 3), np.uint8)
  row0 = np.stack([base, base + 100, base + 45, base + 60])  # mean 51.25: 45 is nearest
  row1 = np.stack([base + 10, base + 12, base + 11, base + 90])  # mean 30.75: 12 is nearest
  np.testing.assert_array_equal(sample_lib.mbr_choice(np.stack([row0, row1])), [2, 1])
  np.testing.assert_array_equal(sample_lib.mbr_choice(row0[None, :1]), [0])
  # Against the plain definition on random floats.
  x = np.random.default_rng(0).normal(size=(3, 5, 7))
  plain = ((x[:, :, None] - x[:, None]) ** 2).sum(-1).sum(-1).argmin(-1)
  np.testing.assert_array_equal(sample_lib.mbr_choice(x), plain)


def _square_clip(positions, size=16, side=4):
  """uint8 [T, size, size, 3]: a white side×side square whose top-left corner is at each
  (x, y) of `positions` (whole pixels)."""
  clip = np.zeros((len(positions), size, size, 3), np.uint8)
  for t, (x, y) in enumerate(positions):
    clip[t, y : y + side, x : x + side] = 255
  return clip


def test_steady_choice_picks_the_continuation_at_the_context_speed():
  """A square moving right 1 px a frame: of a continuation that jumps 3 px and then moves on,
  one that stalls, and one that turns down at 1 px a frame, the turn is chosen (the change
  does not depend on the direction); without the turn, the least uneven of the others."""
  context = _square_clip([(1, 6), (2, 6), (3, 6), (4, 6), (5, 6)])
  jump = _square_clip([(8, 6), (9, 6)])
  stall = _square_clip([(5, 6), (5, 6)])
  turn = _square_clip([(5, 7), (5, 8)])
  candidates = np.stack([jump, stall, turn])[None]
  np.testing.assert_array_equal(sample_lib.steady_choice(context[None], candidates), [2])
  # Two rows at once; a 1-px jump then steady beats a 3-px one and a stall.
  small_jump = _square_clip([(7, 6), (8, 6)])
  rows = np.stack([np.stack([jump, stall, turn]), np.stack([jump, small_jump, stall])])
  np.testing.assert_array_equal(
    sample_lib.steady_choice(np.stack([context, context]), rows), [2, 1]
  )
  # Against the plain definition on random frames.
  rng = np.random.default_rng(0)
  ctx = rng.integers(0, 256, (2, 3, 4, 4, 3))
  cand = rng.integers(0, 256, (2, 5, 2, 4, 4, 3))
  for b in range(2):
    change = lambda u, v: np.abs(u.astype(float) - v).mean()
    m = np.median([change(ctx[b, i], ctx[b, i - 1]) for i in (1, 2)])
    scores = [
      abs(change(cand[b, n, 0], ctx[b, -1]) - m) + abs(change(cand[b, n, 1], cand[b, n, 0]) - m)
      for n in range(5)
    ]
    assert sample_lib.steady_choice(ctx, cand)[b] == int(np.argmin(scores))
  with pytest.raises(ValueError, match="C >= 2"):
    sample_lib.steady_choice(context[None, :1], candidates)


def test_continuation_candidates_steady_choice(tiny_sampler):
  """continue_choice='steady': the new frames are the steady_choice among the same N
  continuations the 'mbr' choice picks from, measured from the given context frames."""
  s = tiny_sampler
  video = s.generate(P1, seed=0)
  copies = s.continue_video(
    np.stack([video] * 4), P2, 4, context_frames=5, seed=3, continue_candidates=1
  )
  new = copies[:, FRAMES:]  # [4, 4, H, W, 3]
  out = s.continue_video(
    video, P2, 4, context_frames=5, seed=3, continue_candidates=4, continue_choice="steady"
  )
  np.testing.assert_array_equal(out[:FRAMES], video)
  pick = sample_lib.steady_choice(video[None, FRAMES - 5 :], new[None])[0]
  np.testing.assert_array_equal(out[FRAMES:], new[pick])
  with pytest.raises(ValueError, match="continue_choice"):
    s.continue_video(video, P2, 4, context_frames=5, continue_choice="likeliest")


def test_continuation_candidates_keep_the_typical_one(tiny_sampler):
  """continue_candidates=N: the new frames are the mbr_choice among the N continuations that
  the same call samples as one batch (the same as continuing N copies of the video); not for
  image-to-video."""
  s = tiny_sampler
  video = s.generate(P1, seed=0)
  copies = s.continue_video(
    np.stack([video] * 3), P2, 4, context_frames=5, seed=3, continue_candidates=1
  )
  new = copies[:, FRAMES:]  # [3, 4, H, W, 3]
  assert not (np.array_equal(new[0], new[1]) and np.array_equal(new[1], new[2]))
  out = s.continue_video(video, P2, 4, context_frames=5, seed=3, continue_candidates=3)
  np.testing.assert_array_equal(out[:FRAMES], video)
  np.testing.assert_array_equal(out[FRAMES:], new[sample_lib.mbr_choice(new[None])[0]])
  story = s.story([P1, P2, P3], context_frames=5, seed=1, continue_candidates=3)
  assert story.shape == (FRAMES + 4 + 4, H, H, 3)
  with pytest.raises(ValueError, match="continue_candidates"):
    s.continue_video(video, P2, 4, context_frames=5, continue_candidates=0)
  # Image-to-video (one context frame) samples once whatever the option says.
  np.testing.assert_array_equal(
    s.image_to_video(video[0], P2, seed=3, continue_candidates=3),
    s.image_to_video(video[0], P2, seed=3, continue_candidates=1),
  )


def test_refine_decodes_the_least_likely_tokens_again(tiny_sampler):
  """refine_fraction=f: the sampled clip's f least likely tokens (under the conditional model)
  are re-masked and decoded again by their most likely codes, every other token kept; 0 is
  plain sampling."""
  s = tiny_sampler
  plain = s.generate([P1, P2], seed=4)
  np.testing.assert_array_equal(plain, s.generate([P1, P2], seed=4, refine_fraction=0.0))
  opts = s._options(refine_fraction=0.25)
  init = np.zeros((2,) + tuple(s.model.grid), np.int32)
  codes, _ = s._run([P1, P2], init, np.zeros(init.shape, bool), 4, opts, frames=False)
  every = np.ones(codes.shape, bool)
  reads = s._token_scores(
    [P1, P2], codes, every, jax.random.fold_in(jax.random.PRNGKey(4), 0x2EF1), opts
  )
  k = round(0.25 * codes[0].size)
  remask = np.zeros(reads.shape, bool)
  remask[np.arange(2)[:, None], np.argsort(reads, axis=1, kind="stable")[:, :k]] = True
  remask = remask.reshape(codes.shape)
  assert (remask.reshape(2, -1).sum(1) == round(0.25 * remask[0].size)).all()
  refined, video = s._refine([P1, P2], codes, 4, opts)
  np.testing.assert_array_equal(refined[~remask], codes[~remask])  # the rest is kept
  assert (refined[remask] != codes[remask]).any()
  np.testing.assert_array_equal(s.generate([P1, P2], seed=4, refine_fraction=0.25), video)
  # Most likely codes: in one step the temperature cannot change them.
  one_step = [
    s._refine([P1, P2], codes, 4, dict(opts, refine_steps=1, temperature=t))[0] for t in (0.2, 5.0)
  ]
  np.testing.assert_array_equal(*one_step)
  for bad in (dict(refine_fraction=1.0), dict(refine_fraction=-0.1), dict(refine_steps=0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      s.generate(P1, **bad)


def test_refine_cfg_scale_guides_the_second_decode_alone(tiny_sampler, monkeypatch):
  """refine_cfg_scale=g: the refinement's second decode runs at guidance g, the first decode at
  cfg_scale; not given, the second decode keeps the first's guidance. (The tiny model's codes
  barely depend on its text, so the decodes' guidance is read where they are run.)"""
  s = tiny_sampler
  run, scales = s._run, []

  def spy(prompts, init_codes, fixed, seed, opts, **kw):
    scales.append(opts["cfg_scale"])
    return run(prompts, init_codes, fixed, seed, opts, **kw)

  monkeypatch.setattr(s, "_run", spy)
  kw = dict(seed=4, refine_fraction=0.25, cfg_scale=3.0)
  video = s.generate([P1, P2], refine_cfg_scale=1.0, **kw)
  assert scales == [3.0, 1.0]  # the decode, then the refinement
  # Not given (the library's default; the tiny config sets 1): the first decode's guidance.
  plain = sample_lib.Sampler(s.tokenizer, s.model, s.params, s.text_encoder, None, s.code_support)
  assert plain.defaults["refine_cfg_scale"] is None
  monkeypatch.setattr(plain, "_run", spy)
  scales.clear()
  plain.generate([P1, P2], **kw)
  assert scales == [3.0, 3.0]
  opts = s._options(refine_fraction=0.25, cfg_scale=3.0)
  init = np.zeros((2,) + tuple(s.model.grid), np.int32)
  codes, _ = run([P1, P2], init, np.zeros(init.shape, bool), 4, opts, frames=False)
  _, by_hand = s._refine([P1, P2], codes, 4, dict(opts, cfg_scale=1.0))
  np.testing.assert_array_equal(video, by_hand)
  with pytest.raises(ValueError, match="refine_cfg_scale"):
    s.generate(P1, refine_fraction=0.25, refine_cfg_scale=-1.0)


def _checked_sweep(s, prompts, codes, opts, monkeypatch):
  """`s._sweep` run with its decodes (`_run`) recorded; each phase's decode is then checked
  against the model's log-probabilities read by hand with that phase masked: the other phases
  are given, a token keeps its code unless the best code is more than the option
  `sweep_switch_odds` times as likely, and then takes a best code. Float rounding may order
  near-ties either way, so margins allow 1e-4. Returns the swept codes and the counts of tokens
  (kept though another code was likelier, changed)."""
  calls = []
  run = s._run

  def recorded(*args, **kwargs):
    out = run(*args, **kwargs)
    calls.append((args[1], np.asarray(args[2], bool), out[0]))
    return out

  monkeypatch.setattr(s, "_run", recorded)
  swept = s._sweep(list(prompts), codes, 4, opts)
  monkeypatch.undo()
  phases = [p for p in decode_lib.lattice_phases(codes.shape[1:]) if p.any()]
  assert len(calls) == len(phases) * opts["refine_sweeps"]
  text, text_mask = s.text_encoder.encode(list(prompts))
  apply = jax.jit(s.model.apply)  # eagerly, each call is op by op
  b, tol, log_odds = len(prompts), 1e-4, np.log(opts["sweep_switch_odds"])
  kept = changed = 0
  for (before, fixed, after), phase in zip(calls, phases * opts["refine_sweeps"]):
    np.testing.assert_array_equal(fixed, np.broadcast_to(~phase, codes.shape))
    old, new = np.asarray(before).reshape(b, -1), after.reshape(b, -1)
    hidden = ~fixed.reshape(b, -1)
    logits = apply(
      {"params": s.params}, jnp.where(hidden, s.model.mask_token_id, old), text, text_mask
    )
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1))
    best = log_probs.max(-1)
    own = np.take_along_axis(log_probs, old[..., None], -1)[..., 0]
    took = np.take_along_axis(log_probs, new[..., None], -1)[..., 0]
    np.testing.assert_array_equal(new[~hidden], old[~hidden])  # the other phases are given
    moved = hidden & (new != old)
    assert (took[moved] >= best[moved] - tol).all()  # a change takes a most likely code
    assert (own[moved] <= best[moved] - log_odds + tol).all()  # ... only past the odds
    stay = hidden & (new == old)
    assert (own[stay] >= best[stay] - log_odds - tol).all()  # kept codes are within them
    kept += int((stay & (own < best - tol)).sum())
    changed += int(moved.sum())
  np.testing.assert_array_equal(swept, calls[-1][2])
  np.testing.assert_array_equal(calls[0][0], codes)
  return swept, kept, changed


def test_refine_sweeps_decode_each_lattice_phase_by_its_most_likely_codes(tiny_sampler):
  """refine_sweeps=n: after sampling, n sweeps over the four lattice phases; each phase is
  re-masked and every one of its tokens takes its most likely code given all the others (at
  refine_cfg_scale), the other phases unchanged; 0 is plain sampling."""
  s = tiny_sampler
  plain = s.generate([P1, P2], seed=4)
  np.testing.assert_array_equal(plain, s.generate([P1, P2], seed=4, refine_sweeps=0))
  opts = s._options(
    refine_sweeps=1, refine_cfg_scale=1.0, restrict_codes=False, sweep_switch_odds=1.0
  )
  init = np.zeros((2,) + tuple(s.model.grid), np.int32)
  codes, _ = s._run([P1, P2], init, np.zeros(init.shape, bool), 4, opts, frames=False)
  text, text_mask = s.text_encoder.encode([P1, P2])
  apply = jax.jit(s.model.apply)  # eagerly, each call is op by op
  by_hand = codes.reshape(2, -1)
  for phase in decode_lib.lattice_phases(codes.shape[1:]):
    hidden = np.broadcast_to(phase.reshape(-1), by_hand.shape)
    logits = apply(
      {"params": s.params}, jnp.where(hidden, s.model.mask_token_id, by_hand), text, text_mask
    )
    by_hand = np.where(hidden, np.asarray(logits).argmax(-1), by_hand)
  swept = s._sweep([P1, P2], codes, 4, opts)
  np.testing.assert_array_equal(swept.reshape(2, -1), by_hand)
  assert (swept != codes).any()
  np.testing.assert_array_equal(
    s.generate(
      [P1, P2],
      seed=4,
      refine_sweeps=1,
      refine_cfg_scale=1.0,
      restrict_codes=False,
      sweep_switch_odds=1.0,
    ),
    np.asarray(s.tokenizer.decode(swept)),
  )
  with pytest.raises(ValueError, match="refine_sweeps"):
    s.generate(P1, refine_sweeps=-1)


def test_sweep_switch_odds_keep_codes_the_model_nearly_prefers(tiny_sampler, monkeypatch):
  """sweep_switch_odds=r: a sweep changes a token only where the most likely code is more than
  r times as likely as the token's own code (read with its phase masked); 1 is plain argmax.
  Checked phase by phase against the model's probabilities; a huge r changes nothing."""
  s = tiny_sampler
  odds = 4.0
  opts = s._options(
    refine_sweeps=1, refine_cfg_scale=1.0, restrict_codes=False, sweep_switch_odds=odds
  )
  init = np.zeros((2,) + tuple(s.model.grid), np.int32)
  codes, _ = s._run([P1, P2], init, np.zeros(init.shape, bool), 4, opts, frames=False)
  _, kept, changed = _checked_sweep(s, [P1, P2], codes, opts, monkeypatch)
  assert kept > 0 and changed > 0, (kept, changed)  # the rule both held and let go
  never = s._sweep([P1, P2], codes, 4, dict(opts, sweep_switch_odds=1e30))
  np.testing.assert_array_equal(never, codes)
  with pytest.raises(ValueError, match="sweep_switch_odds"):
    s.generate(P1, refine_sweeps=1, sweep_switch_odds=0.5)


def test_continue_refine_decodes_new_tokens_again(tiny_sampler):
  """continue_refine_fraction=f: each continuation candidate's f least likely new tokens are
  re-masked and decoded again by their most likely codes; the context is neither scored nor
  changed, and 0 is plain continuation."""
  s = tiny_sampler
  video = s.generate([P1, P2], seed=0)
  plain = s.continue_video(video, P2, 4, context_frames=5, seed=3)
  np.testing.assert_array_equal(
    plain, s.continue_video(video, P2, 4, context_frames=5, seed=3, continue_refine_fraction=0.0)
  )
  opts = s._options(continue_refine_fraction=0.3)
  ctx = np.asarray(s.tokenizer.encode(video[:, -5:]))  # [2, 3, h, w]
  t_c = ctx.shape[1]
  init = np.zeros((2,) + tuple(s.model.grid), np.int32)
  init[:, :t_c] = ctx
  codes, _ = s._continue_window([P2, P2], init, t_c, 3, opts, frames=False)
  new_steps = np.zeros(codes.shape, bool)
  new_steps[:, t_c:] = True
  refined, window = s._refine([P2, P2], codes, 3, opts, eligible=new_steps, fraction=0.3)
  changed = refined != codes
  assert changed.any() and not changed[:, :t_c].any()  # only new tokens move
  assert (changed.reshape(2, -1).sum(1) <= round(0.3 * new_steps[0].sum())).all()
  out = s.continue_video(video, P2, 4, context_frames=5, seed=3, continue_refine_fraction=0.3)
  np.testing.assert_array_equal(out[:, :FRAMES], video)
  np.testing.assert_array_equal(out[:, FRAMES:], window[:, 5:9])
  assert not np.array_equal(out, plain)
  with pytest.raises(ValueError, match="continue_refine_fraction"):
    s.continue_video(video, P2, 4, continue_refine_fraction=1.0)


def test_candidates_keep_the_most_likely_one(tiny_sampler):
  """candidates=N: the clip is the one of the N that the same call samples as one batch (the
  same as generating N copies of the prompt) with the highest pseudo-log-likelihood under the
  conditional model; N=1 is plain sampling."""
  s = tiny_sampler
  n = 3
  plain = s.generate([P1, P2], seed=4)
  np.testing.assert_array_equal(plain, s.generate([P1, P2], seed=4, candidates=1))
  every = [P1] * n + [P2] * n
  copies = s.generate(every, seed=4)  # the very candidates of the call below, decoded
  opts = s._options()
  init = np.zeros((2 * n,) + tuple(s.model.grid), np.int32)
  codes, _ = s._run(every, init, np.zeros(init.shape, bool), 4, opts, frames=False)
  text = tuple(map(jnp.asarray, s.text_encoder.encode(every)))
  score = jax.jit(  # eagerly, each model pass is op by op
    lambda params, tokens: decode_lib.pseudo_log_likelihood(
      lambda t: s.model.apply({"params": params}, t, *text),
      tokens,
      jnp.ones(tokens.shape, bool),
      jax.random.fold_in(jax.random.PRNGKey(4), 0x5C0E),
      num_chunks=opts["score_chunks"],
      mask_token_id=s.model.mask_token_id,
    )
  )
  scores = score(s.params, jnp.asarray(codes).reshape(2 * n, -1))
  scores = np.asarray(scores).reshape(2, n)
  assert np.ptp(scores, axis=1).min() > 0  # the candidates differ in likelihood
  out = s.generate([P1, P2], seed=4, candidates=n)
  assert out.shape == plain.shape
  for i in range(2):
    np.testing.assert_array_equal(out[i], copies[i * n + int(np.argmax(scores[i]))])
  with pytest.raises(ValueError, match="candidates"):
    s.generate(P1, candidates=0)


def test_image_to_video(tiny_sampler):
  """The image is the first frame (kept as given); the rest is generated after its codes."""
  s = tiny_sampler
  spec = shapes_lib.ShapesSpec(resolution=H, num_frames=FRAMES)
  image = shapes_lib.image_example(spec, 0, 3)["video"][0]  # [H, W, 3] uint8
  out = s.image_to_video(image, P1, seed=3)
  assert out.shape == (FRAMES, H, H, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0], image)
  image_codes = np.asarray(s.tokenizer.encode(image[None, None]))  # [1, 1, 8, 8]
  codes, window = _window(s, P1, image_codes, seed=3)
  np.testing.assert_array_equal(codes[:, :1], image_codes)
  np.testing.assert_array_equal(out[1:], window[0, 1:])
  # The window's first frame is the image's reconstruction through the (causal) tokenizer.
  recon = np.asarray(s.tokenizer.decode(image_codes))[0, 0]
  assert np.abs(window[0, 0].astype(int) - recon.astype(int)).max() <= 1


def test_argument_errors(tiny_sampler):
  s = tiny_sampler
  video = s.generate(P1, seed=0)
  with pytest.raises(ValueError, match="context_frames"):
    s.continue_video(video, P2, 4, context_frames=4)  # not 1 + k·t_p
  with pytest.raises(ValueError, match="time steps.*at most 4 new frames fit after 5"):
    s.continue_video(video, P2, 5, context_frames=5)  # 3 + 3 steps > 5
  with pytest.raises(ValueError, match="fewer than context_frames"):
    s.continue_video(video[:3], P2, 2, context_frames=5)
  with pytest.raises(ValueError, match="time steps"):
    s.generate(P1, num_frames=FRAMES + 1)
  with pytest.raises(ValueError, match="num_frames"):
    s.generate(P1, num_frames=0)
  with pytest.raises(ValueError, match="time steps"):
    s.story([P1, P2], frames_per_prompt=[9, 9], context_frames=5)
  with pytest.raises(ValueError, match="frames_per_prompt"):
    s.story([P1, P2], frames_per_prompt=[9])
  with pytest.raises(ValueError, match="prompts"):
    s.continue_video(np.stack([video, video]), [P1], 2, context_frames=5)


def test_cli_story_writes_videos(tiny_cvivit_dir, tiny_maskgit_dir, tmp_path):
  def sample_cli(out, *args):
    return conftest.run_module(
      "phenaki_jax.sample",
      "--tokenizer_dir",
      tiny_cvivit_dir,
      "--maskgit_dir",
      tiny_maskgit_dir,
      *args,
      "--out",
      str(out),
    )

  out = tmp_path / "story"
  proc = sample_cli(
    out, "--prompt", P1, "--prompt", P2, "--frames_per_prompt", "5", "--context_frames", "3",
    "--save_npy",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "segment 1/2" in proc.stdout and "segment 2/2" in proc.stdout
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["frames"] == 10 and summary["prompts"] == [P1, P2]
  for name in ("video.mp4", "video.gif", "contact_sheet.png", "video.npy"):
    assert (out / name).stat().st_size > 0, name
  video = np.load(out / "video.npy")
  assert video.shape == (10, H, H, 3) and video.dtype == np.uint8
  from phenaki_jax.data import video_io  # pylint: disable=g-import-not-at-top

  assert video_io.read_video(str(out / "video.gif")).shape[0] == 10
  assert video_io.read_video(str(out / "video.mp4")).shape[0] == 10
  # --text_cache_only loads no text encoder: a prompt never encoded fails, naming the remedy.
  proc = sample_cli(tmp_path / "none", "--prompt", "a violet hexagon spins", "--text_cache_only")
  assert proc.returncode != 0 and "encode_text" in proc.stderr, proc.stderr[-3000:]
  # --ema asks for a moving average this run does not keep (its config.ema_decay is 0).
  proc = sample_cli(tmp_path / "e", "--prompt", P1, "--ema")
  assert proc.returncode != 0 and "ema_decay" in proc.stderr, proc.stderr[-3000:]
  # A sampling option out of range fails naming it (here one the CLI passes through).
  proc = sample_cli(tmp_path / "t", "--prompt", P1, "--temperature_decay", "1.5")
  assert "temperature_decay must be in [0, 1]" in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode != 0


def test_tokenizer_reconstruct_is_encode_then_decode(tiny_sampler):
  """One compiled round trip equals the two calls (to one grey level where XLA fuses the float
  ops differently), fits frames of another size as `encode` does, and refuses float video."""
  tok = tiny_sampler.tokenizer
  clip = shapes_lib.video_example(shapes_lib.ShapesSpec(resolution=H, num_frames=FRAMES), 0, 3)
  video = np.stack([clip["video"], clip["video"][:, ::-1]])  # [2, 9, 32, 32, 3]
  once = np.asarray(tok.reconstruct(video))
  twice = np.asarray(tok.decode(tok.encode(video)))
  assert once.shape == video.shape and once.dtype == np.uint8
  diff = np.abs(once.astype(int) - twice.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
  assert not np.array_equal(once[0], once[1])  # each clip its own round trip
  big = np.repeat(np.repeat(video, 2, axis=2), 2, axis=3)  # 64² frames, fitted to 32²
  assert np.asarray(tok.reconstruct(big)).shape == video.shape
  with pytest.raises(ValueError, match="reconstruct's video must be uint8"):
    tok.reconstruct(video.astype(np.float32))
