r"""Text-to-video sampling: the public API and CLI (Phenaki §4.2.2).

  from phenaki_jax import sample
  s = sample.Sampler.from_workdirs("workdirs/demo/cvivit", "workdirs/demo/maskgit")
  video = s.generate("a red circle moves left")                    # uint8 [T, H, W, 3]
  story = s.story(["a red circle moves left", "a red circle moves up"])  # 9 + 4 frames
  clip = s.image_to_video(image, "a red circle moves down")
  more = s.continue_video(video, "a red circle moves right", num_new_frames=8)

CLI (repeat --prompt for a story, or --story_file with one prompt per line):
  python -m phenaki_jax.sample --tokenizer_dir=workdirs/demo/cvivit \
      --maskgit_dir=workdirs/demo/maskgit --prompt="a red circle moves left" \
      --prompt="a red circle moves up" --out=workdirs/demo/story

Story mode: the first segment is generated from all-[MASK]; for every next prompt the last
`context_frames` frames (1 + k·t_p) are re-encoded by C-ViViT, their codes are placed at the
first time steps as fixed tokens, and MaskGIT generates the remaining time steps under the new
prompt (guided with the option `continue_cfg_scale` when set, else `cfg_scale`; with the
option `continue_stepwise`, one time step after another, each with the later ones still
[MASK]; with `continue_candidates` N > 1, the typical one of N sampled continuations); the
decoded new frames are appended. Any number of segments; the returned video has
exactly the number of frames asked for. With the option `candidates` N > 1, a clip from text
(`generate`, a story's first segment) is the one of N samples that the conditional MaskGIT
finds most likely.
"""

import functools
import json
import math
import numbers
import operator
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phenaki_jax import checkpoint, config_io
from phenaki_jax import decode as decode_lib
from phenaki_jax import text as text_lib
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.models import maskgit as maskgit_lib


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The sampler's options: the one source of their defaults. A MaskGIT config's `sample` field
  starts from these (configs/maskgit_b.py:tiny overrides some), a Sampler built from a work
  directory takes that run's, and every call may override any of them.

    steps                parallel decoding steps (the paper's videos: 48)
    cfg_scale            classifier-free guidance scale (1 = the conditional model alone)
    temperature          temperature of the sampled codes
    temperature_decay    the temperature falls linearly over the steps by this fraction of
                         itself (0: constant; 1: to 0 at the last step, whose tokens are then
                         the most likely codes, as MaskGIT samplers that anneal do)
    choice_temperature   the confidence noise that picks which sampled tokens each step keeps
    top_k, top_p         sample each token from its k most likely codes / its nucleus
                         (0 and 1 = all codes)
    cfg_support          under guidance, sample only tokens whose conditional probability is at
                         least this fraction of the most likely one's (0 = off; decode.py)
    restrict_codes       sample at the first and at later time steps only the codes seen there
                         in training (the MaskGIT workdir's code_support.npz; no file: all codes)
    continue_cfg_scale   guidance of a continuation from two or more context frames (story
                         segments after the first, continue_video); None = cfg_scale. The
                         unconditional branch sees the context's motion too, so a high scale
                         pushes the new frames away from it.
    continue_stepwise    a continuation decodes its new time steps in temporal order, one
                         parallel decode each, the later ones still [MASK] (False: all at once,
                         as in the paper); one decode per new time step.
    continue_candidates  a continuation from two or more context frames samples this many
                         candidates in one batch and keeps the minimum-Bayes-risk one (the
                         candidate nearest their pixel mean: `mbr_choice`); 1 = one sample.
                         Image-to-video samples once.
    continue_choice      how a continuation's candidates are chosen among: 'mbr' (above) or
                         'steady', the one whose frame-to-frame change, from the last context
                         frame on, stays nearest the context's own (`steady_choice`)
    candidates           text-to-video (`generate`, a story's first segment) samples this many
                         candidates of each prompt in one batch and keeps the one the
                         conditional MaskGIT finds most likely (pseudo-log-likelihood per
                         token, `decode.pseudo_log_likelihood`, `score_chunks` model calls per
                         candidate); 1 = one sample.
    score_chunks         the chunks that pseudo-log-likelihood masks in turn (one model call
                         each, on every candidate)
    refine_fraction      after text-to-video sampling (and the choice among candidates), this
                         fraction of the clip's tokens, those the conditional MaskGIT finds
                         least likely (each read with its chunk masked, `score_chunks` calls:
                         `decode.token_log_likelihoods`), is re-masked and decoded again, the
                         rest given, each taking its most likely code; 0 = off
    continue_refine_fraction  the same for a continuation: this fraction of each candidate's
                         new tokens (the context given and never re-masked); 0 = off
    refine_steps         decoding steps of that second decode (both refinements)
    refine_cfg_scale     guidance of that second decode; None = the first decode's (cfg_scale,
                         or a continuation's continue_cfg_scale). At 1 the re-masked tokens take
                         the conditional model's most likely codes, not guidance's.
    refine_sweeps        after text-to-video sampling (and the refinement, if on), this many
                         sweeps of iterated conditional modes over the clip: the tokens of each
                         phase of a 2×2 lattice over every time step's grid
                         (`decode.lattice_phases`) re-masked in turn and decoded in one step,
                         each taking its most likely code given all its neighbours, at guidance
                         refine_cfg_scale (None: cfg_scale); four model calls per sweep; 0 = off
    sweep_switch_odds    a sweep changes a token's code only where the most likely code is more
                         than this many times as likely as it (`decode.sticky_logits_fn`);
                         1 = wherever another code is likelier (plain iterated conditional modes)

  What each did on Shapes: docs/experiments.md, "Sampling".
  """
  config = ml_collections.ConfigDict(
    dict(
      steps=12,
      cfg_scale=3.0,
      temperature=1.0,
      temperature_decay=0.0,
      choice_temperature=4.5,
      top_k=0,
      top_p=1.0,
      cfg_support=0.0,
      restrict_codes=True,
      continue_cfg_scale=ml_collections.config_dict.placeholder(float),
      continue_stepwise=False,
      continue_candidates=1,
      continue_choice="mbr",
      candidates=1,
      score_chunks=4,
      refine_fraction=0.0,
      continue_refine_fraction=0.0,
      refine_steps=2,
      refine_cfg_scale=ml_collections.config_dict.placeholder(float),
      refine_sweeps=0,
      sweep_switch_odds=1.0,
    )
  )
  config.update(overrides)
  return config


# Written by the MaskGIT trainer at the end of a run: which codes occur at the first and at
# later time steps of its training data (`restrict_codes`).
CODE_SUPPORT_FILE = "code_support.npz"


def save_code_support(workdir: str, counts: np.ndarray, clips: int) -> str:
  """Writes `workdir/code_support.npz` (`counts` int [2, K]: code occurrences at the first
  time step / at later ones, over `clips` training examples) atomically; returns its path."""
  path = os.path.join(workdir, CODE_SUPPORT_FILE)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, counts=counts, clips=np.int64(clips))
  os.replace(path + ".tmp", path)
  return path


def load_code_support(workdir: str) -> Optional[np.ndarray]:
  """The counts [2, K] of `save_code_support`, or None where the run wrote none."""
  path = os.path.join(workdir, CODE_SUPPORT_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    return z["counts"]


# ---- argument checks ---------------------------------------------------------------------------
# Every public method checks its arguments here, before any text is encoded or any program is
# compiled: a bad value then fails at once with a message that names it, instead of deep inside
# XLA, as a silent garbage sample (a NaN guidance scale), or as an allocation that never ends.

# JAX keys hold 32 bits of seed without x64: 2**32 and 0 would give the same video.
SEED_LIMIT = 2**32
# The memory one device may use, in bytes, when set (as for the trainers' fit check).
MEMORY_ENV = "PHENAKI_DEVICE_MEMORY_BYTES"


def _show(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _int(value, name: str, minimum: Optional[int] = None) -> int:
  """`value` as a Python int: an int or a numpy/JAX integer scalar. A float or a bool is
  refused, not rounded: `num_frames=2.5` is a mistake to report."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be an int, got {_show(value)}")
  try:
    out = operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must be an int, got {type(value).__name__} {_show(value)}") from None
  if minimum is not None and out < minimum:
    raise ValueError(f"{name} must be ≥ {minimum}, got {out}")
  return out


def _real(value, name: str) -> float:
  """`value` as a finite Python float (an int, a float or a numpy scalar; not a bool or str)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
  out = float(value)
  if not math.isfinite(out):
    raise ValueError(f"{name} must be finite, got {out}")
  return out


def _flag(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {_show(value)}")
  return bool(value)


def check_seed(seed, segments: int = 1) -> int:
  """`seed` as an int in [0, 2**32) (a story uses seed … seed + segments − 1)."""
  seed = _int(seed, "seed", minimum=0)
  if seed + segments - 1 >= SEED_LIMIT:
    raise ValueError(
      "seed must be below 2**32 (JAX keys keep 32 bits: larger seeds repeat smaller ones)"
      + (f" and so must seed + {segments - 1} for this story's segments" if segments > 1 else "")
      + f", got {seed}"
    )
  return seed


def check_prompts(prompt, what: str = "prompt") -> tuple[list, bool]:
  """(prompts as a list of str, whether `prompt` was a single str). A batch is any non-string
  iterable of str with at least one prompt; an empty string is the unconditional prompt."""
  if isinstance(prompt, str):
    return [prompt], True
  if isinstance(prompt, (bytes, bytearray)):
    raise TypeError(f"{what} must be a str or a list of str, got bytes: decode it first")
  try:
    prompts = list(prompt)
  except TypeError:
    raise TypeError(
      f"{what} must be a str or a list of str, got {type(prompt).__name__} {_show(prompt)}"
    ) from None
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      raise TypeError(f"{what}[{i}] must be a str, got {type(p).__name__} {_show(p)}")
  if not prompts:
    raise ValueError(f"{what} is an empty list: give at least one prompt")
  return prompts, False


def memory_budget() -> int:
  """The bytes one device may use: $PHENAKI_DEVICE_MEMORY_BYTES, an accelerator's own limit, or
  the host's physical memory for a CPU (the trainers' rule in trainers/common.py, which this
  inference layer may not import; total rather than available memory, since this is a bound
  against absurd requests, not a fit)."""
  if os.environ.get(MEMORY_ENV):
    return int(float(os.environ[MEMORY_ENV]))
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def mbr_choice(candidates) -> np.ndarray:
  """int [B]: for each row of `candidates` [B, N, ...] (uint8 frames or floats), the index of
  the minimum-Bayes-risk candidate under squared error — the least summed squared difference to
  the row's other candidates, which is the candidate nearest their mean (the first on ties)."""
  x = np.asarray(candidates, np.float64)
  flat = x.reshape(x.shape[0], x.shape[1], -1)
  return np.argmin(((flat - flat.mean(axis=1, keepdims=True)) ** 2).sum(axis=-1), axis=-1)


def steady_choice(context, candidates) -> np.ndarray:
  """int [B]: for each row, the index of the candidate whose motion continues its context's
  most steadily. `context` [B, C, H, W, 3] (C >= 2) holds the frames a continuation was given,
  `candidates` [B, N, F, H, W, 3] the N continuations' new frames. A frame-to-frame change is
  the mean absolute pixel difference; the context's typical change m is the median of its
  consecutive changes, and a candidate scores the summed |change − m| over its new frames, the
  step from the last context frame first. A jump at the boundary, or a stall, scores high;
  a turn at an unchanged speed does not (the change does not depend on the direction). The
  first on ties."""
  ctx = np.asarray(context, np.float64)
  cand = np.asarray(candidates, np.float64)
  if ctx.ndim != cand.ndim - 1 or ctx.shape[1] < 2:
    raise ValueError(
      f"steady_choice needs [B, C >= 2, ...] context frames and [B, N, F, ...] candidates, "
      f"got {ctx.shape} and {cand.shape}"
    )

  def change(a, b):
    return np.abs(a - b).mean(axis=(-3, -2, -1))

  typical = np.median(change(ctx[:, 1:], ctx[:, :-1]), axis=1)  # [B]
  last = np.broadcast_to(ctx[:, None, -1:], cand.shape[:2] + (1,) + cand.shape[3:])
  seq = np.concatenate([last, cand], axis=2)  # [B, N, 1 + F, ...]
  score = np.abs(change(seq[:, :, 1:], seq[:, :, :-1]) - typical[:, None, None]).sum(-1)
  return np.argmin(score, axis=-1)


CONTINUE_CHOICES = ("mbr", "steady")


class Sampler:
  """Frozen C-ViViT + MaskGIT + text encoder; one jitted decode per (batch, time steps)."""

  def __init__(
    self,
    tokenizer: tokenizer_lib.Tokenizer,
    model: maskgit_lib.MaskGIT,
    params,
    text_encoder: text_lib.TextEncoder,
    defaults: Optional[dict] = None,
    code_support=None,
  ):
    """`code_support` (optional, [2, K] counts or bools: codes seen at the first / at later time
    steps in training, e.g. the MaskGIT workdir's code_support.npz): with the option
    `restrict_codes`, each time step samples only codes of its row. A row with no code allows
    every code."""
    if code_support is not None:
      code_support = np.asarray(code_support) > 0
      if code_support.shape != (2, model.codebook_size):
        raise ValueError(
          f"code_support must be [2, {model.codebook_size}] (first / later time "
          f"steps × codes), got {code_support.shape}"
        )
      code_support = np.where(code_support.any(axis=1, keepdims=True), code_support, True)
    self.code_support = code_support
    self.tokenizer = tokenizer
    self.model = model
    self.params = params
    self.text_encoder = text_encoder
    self.defaults = dict(default_config())
    if defaults is not None:
      self.defaults.update({k: v for k, v in dict(defaults).items() if k in self.defaults})
    null_tokens, null_mask = text_encoder.null_embedding()
    self._null = (jnp.asarray(null_tokens)[None], jnp.asarray(null_mask)[None])
    self._fns = {}

  # ---- loading ----------------------------------------------------------------------------
  @classmethod
  def from_workdirs(
    cls,
    tokenizer_dir: str,
    maskgit_dir: str,
    text_encoder: Optional[text_lib.TextEncoder] = None,
    step: Optional[int] = None,
    text_cache_only: bool = False,
    ema: Optional[bool] = None,
  ) -> "Sampler":
    """Loads the C-ViViT in `tokenizer_dir` and the MaskGIT in `maskgit_dir` (latest steps).

    `text_cache_only`: load no text-encoder weights; prompts come from the MaskGIT workdir's
    text cache (its training captions and any pre-computed with encode_text), others fail.
    `ema`: sample with the MaskGIT's moving average of its parameters (config.ema_decay) or
    with its raw parameters; None = the average when the run keeps one.
    """
    tok = tokenizer_lib.Tokenizer.from_workdir(tokenizer_dir)
    config = config_io.from_workdir(maskgit_dir)
    if config.get("trainer") != "maskgit":
      raise ValueError(f"{maskgit_dir!r} holds a {config.get('trainer')!r} run, not a MaskGIT")
    if text_encoder is None:
      if text_cache_only:
        config.text_encoder.cache_only = True
      text_encoder = text_lib.TextEncoder.from_config(
        config.text_encoder, cache_dir=os.path.join(maskgit_dir, "text_cache")
      )
    model = maskgit_lib.get_model(
      config.model_size, codebook_size=tok.codebook_size, grid=tok.token_grid, **config.model
    )
    key = config_io.params_key(config, ema)
    try:
      params = checkpoint.load_params(
        maskgit_dir,
        checkpoint.abstract_params(model.init, *maskgit_lib.init_inputs(model, text_encoder.dim)),
        step=tokenizer_lib.check_step(step),
        key=key,
        what="MaskGIT",
      )
    except ValueError as e:  # orbax: the stored arrays' shapes differ from this model's
      raise ValueError(
        f"the MaskGIT in {maskgit_dir} does not fit the tokenizer in "
        f"{tokenizer_dir} (codebook {tok.codebook_size}, grid {tok.token_grid}) "
        f"and text encoder ({text_encoder.dim}-d): was it trained on another tokenizer "
        f"(its config.tokenizer.workdir: {config.get('tokenizer', {}).get('workdir')!r})? "
        f"{tokenizer_lib.shape_mismatch(e)}"
      ) from None
    code_support = load_code_support(maskgit_dir)
    return cls(tok, model, params, text_encoder, config.sample, code_support)

  # ---- geometry ---------------------------------------------------------------------------
  @property
  def max_frames(self) -> int:
    return self.tokenizer.num_frames(self.model.grid[0])

  @property
  def temporal_patch(self) -> int:
    return self.tokenizer.temporal_patch

  def _options(self, **kw) -> dict:
    """The defaults updated by `kw` (None: keep the default), every value checked: a misspelt
    option is an error rather than silently ignored."""
    unknown = sorted(set(kw) - set(self.defaults))
    if unknown:
      raise TypeError(
        f"unknown sampling option(s) {unknown}; the options are {sorted(self.defaults)}"
      )
    opts = dict(self.defaults)
    opts.update({k: v for k, v in kw.items() if v is not None})
    return self._check_options(opts)

  def _check_options(self, opts: dict) -> dict:
    """The options with their types and ranges checked (see `default_config`)."""
    k = self.model.codebook_size
    out = dict(opts)
    out["steps"] = _int(opts["steps"], "steps", minimum=1)
    for name in ("cfg_scale", "continue_cfg_scale", "refine_cfg_scale"):
      if name != "cfg_scale" and opts[name] is None:
        continue
      out[name] = _real(opts[name], name)
      if out[name] < 0:
        raise ValueError(
          f"{name} must be ≥ 0 (0: unconditional, 1: conditional model alone), got {out[name]}"
        )
    out["temperature"] = _real(opts["temperature"], "temperature")
    if out["temperature"] <= 0:
      raise ValueError(
        f"temperature must be > 0 (small values sample nearly greedily), got {out['temperature']}"
      )
    out["temperature_decay"] = _real(opts["temperature_decay"], "temperature_decay")
    if not 0.0 <= out["temperature_decay"] <= 1.0:
      raise ValueError(
        f"temperature_decay must be in [0, 1] (0: constant, 1: to 0 at the last step), "
        f"got {out['temperature_decay']}"
      )
    out["choice_temperature"] = _real(opts["choice_temperature"], "choice_temperature")
    if out["choice_temperature"] < 0:
      raise ValueError(f"choice_temperature must be ≥ 0, got {out['choice_temperature']}")
    out["top_k"] = _int(opts["top_k"], "top_k", minimum=0)
    if out["top_k"] > k:
      raise ValueError(f"top_k must be in [0, {k}] (0: all of the {k} codes), got {out['top_k']}")
    out["top_p"] = _real(opts["top_p"], "top_p")
    if not 0.0 < out["top_p"] <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1: all codes), got {out['top_p']}")
    out["cfg_support"] = _real(opts["cfg_support"], "cfg_support")
    if not 0.0 <= out["cfg_support"] < 1.0:
      raise ValueError(f"cfg_support must be in [0, 1) (0: off), got {out['cfg_support']}")
    out["restrict_codes"] = _flag(opts["restrict_codes"], "restrict_codes")
    out["continue_stepwise"] = _flag(opts["continue_stepwise"], "continue_stepwise")
    out["continue_candidates"] = _int(opts["continue_candidates"], "continue_candidates", minimum=1)
    out["continue_choice"] = str(opts["continue_choice"])
    if out["continue_choice"] not in CONTINUE_CHOICES:
      raise ValueError(
        f"continue_choice must be one of {CONTINUE_CHOICES}, got {opts['continue_choice']!r}"
      )
    out["candidates"] = _int(opts["candidates"], "candidates", minimum=1)
    out["score_chunks"] = _int(opts["score_chunks"], "score_chunks", minimum=1)
    for name in ("refine_fraction", "continue_refine_fraction"):
      out[name] = _real(opts[name], name)
      if not 0.0 <= out[name] < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (0: off), got {out[name]}")
    out["refine_steps"] = _int(opts["refine_steps"], "refine_steps", minimum=1)
    out["refine_sweeps"] = _int(opts["refine_sweeps"], "refine_sweeps", minimum=0)
    out["sweep_switch_odds"] = _real(opts["sweep_switch_odds"], "sweep_switch_odds")
    if not out["sweep_switch_odds"] >= 1.0:
      raise ValueError(
        f"sweep_switch_odds must be ≥ 1 (1: take the most likely code wherever it differs), "
        f"got {out['sweep_switch_odds']}"
      )
    return out

  def _bytes_per_video(self, time_steps: int, guided: bool) -> int:
    """A lower estimate of the float32 memory one video of `time_steps` takes to sample: the
    logits and their sampling copies, one block's attention scores and MLP activations (twice
    under guidance), and the decoded frames. Enough to refuse absurd batches before anything
    is allocated; a batch that passes may still be refused by XLA itself."""
    m = self.model
    tokens = time_steps * m.grid[1] * m.grid[2]
    positions = tokens // (m.group * m.group)
    model = 4 * (4 * tokens * m.codebook_size + positions * (m.num_heads * positions + m.mlp_dim))
    frames = 4 * 2 * self.tokenizer.num_frames(time_steps) * self.tokenizer.image_size**2 * 3
    return model * (2 if guided else 1) + frames

  def _check_batch(self, videos: int, time_steps: int, opts: dict, what: str) -> None:
    """Refuses, before any work, a batch whose sampling would not fit this device's memory."""
    need = videos * self._bytes_per_video(time_steps, opts["cfg_scale"] != 1.0)
    have = memory_budget()
    if need > have:
      fit = max(0, have // max(1, need // videos))
      raise ValueError(
        f"{what}: {videos} videos of {time_steps} time steps need about {need / 2**30:.1f} GiB "
        f"to sample, more than this device's {have / 2**30:.1f} GiB: give at most {fit} per "
        f"call (split the prompts into smaller batches)"
      )

  def _check_steps(self, steps: int, free_tokens: int) -> None:
    """A decode commits at least one token per step: more steps than the tokens it generates
    would only repeat work (and a huge count would run for ever)."""
    if steps > free_tokens:
      raise ValueError(
        f"steps={steps} exceeds the {free_tokens} tokens this decode generates (each step "
        f"commits at least one): use at most {free_tokens}"
      )

  # ---- the jitted core --------------------------------------------------------------------
  def _generate_fn(
    self,
    steps: int,
    top_k: int,
    top_p: float,
    guided: bool,
    switch_odds: float = 1.0,
    support: bool = True,
    restrict: bool = True,
  ):
    """guided=False: cfg_scale is 1 (conditional model only), one model call per step.
    switch_odds > 1: the free tokens keep their codes in `init_codes` unless another code is
    more than that many times as likely (`decode.sticky_logits_fn`). support=False: cfg_support
    is 0 and its test is left out of the program; restrict=False: every code is allowed and
    `allowed` is not read (each spares a pass over the [B, N, K] logits per step)."""
    key = (steps, top_k, top_p, guided, switch_odds, support, restrict)
    if key not in self._fns:
      model = self.model

      def generate(
        params,
        text,
        text_mask,
        null_text,
        null_mask,
        init_codes,
        fixed,
        rng,
        cfg_scale,
        temperature,
        temperature_decay,
        choice_temperature,
        cfg_support,
        allowed,
      ):
        b, t, h, w = init_codes.shape
        apply_fn = functools.partial(model.apply, {"params": params})
        logits_fn = decode_lib.guided_logits_fn(
          apply_fn,
          text,
          text_mask,
          null_text,
          null_mask,
          cfg_scale if guided else 1.0,
          cfg_support if support else 0.0,
        )
        if restrict:
          logits_fn = decode_lib.restricted_logits_fn(logits_fn, allowed[None])
        if switch_odds > 1.0:
          logits_fn = decode_lib.sticky_logits_fn(
            logits_fn, init_codes.reshape(b, -1), math.log(switch_odds)
          )
        tokens = decode_lib.decode(
          logits_fn,
          init_codes.reshape(b, -1),
          fixed.reshape(b, -1),
          rng,
          num_steps=steps,
          mask_token_id=model.mask_token_id,
          temperature=temperature,
          temperature_decay=temperature_decay,
          choice_temperature=choice_temperature,
          top_k=top_k,
          top_p=top_p,
        )
        return tokens.reshape(b, t, h, w)

      self._fns[key] = jax.jit(generate)
    return self._fns[key]

  def _token_scores_fn(self, num_chunks: int):
    """Jitted (params, text, text_mask, codes [B, t, h, w], scored, rng) -> f32 [B, t·h·w]: the
    log-probability of each `scored` token under the conditional model, read with its chunk
    masked (`decode.token_log_likelihoods`; 0 where not scored)."""
    key = ("token_scores", num_chunks)
    if key not in self._fns:
      model = self.model

      def token_scores(params, text, text_mask, codes, scored, rng):
        b = codes.shape[0]

        def logits_fn(tokens):
          return model.apply({"params": params}, tokens, text, text_mask)

        return decode_lib.token_log_likelihoods(
          logits_fn,
          codes.reshape(b, -1),
          scored.reshape(b, -1),
          rng,
          num_chunks=num_chunks,
          mask_token_id=model.mask_token_id,
        )

      self._fns[key] = jax.jit(token_scores)
    return self._fns[key]

  def _token_scores(self, prompts: Sequence[str], codes, scored, rng, opts: dict) -> np.ndarray:
    """f32 [B, t·h·w]: `_token_scores_fn` of `codes` [B, t, h, w] under their `prompts`."""
    text, text_mask = self.text_encoder.encode(list(prompts))
    return np.asarray(
      self._token_scores_fn(int(opts["score_chunks"]))(
        self.params,
        jnp.asarray(text),
        jnp.asarray(text_mask),
        jnp.asarray(codes, jnp.int32),
        jnp.asarray(scored, bool),
        rng,
      )
    )

  def _refine(
    self,
    prompts: Sequence[str],
    codes,
    seed: int,
    opts: dict,
    eligible=None,
    fraction: Optional[float] = None,
    frames: bool = True,
  ):
    """codes [B, t, h, w] → (codes, frames) with a `fraction` (default: the option
    `refine_fraction`) of each clip's `eligible` tokens (default: all), those least likely, re-masked
    and decoded again (`_second_decode` options, `refine_steps` steps), every other token given.
    `frames=False`: (codes, None), the C-ViViT decoder skipped."""
    eligible = np.ones(np.shape(codes), bool) if eligible is None else np.asarray(eligible, bool)
    fraction = opts["refine_fraction"] if fraction is None else fraction
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x2EF1)
    b = len(prompts)
    reads = self._token_scores(prompts, codes, eligible, rng, opts)
    remask = np.asarray(
      decode_lib.lowest(jnp.asarray(reads), jnp.asarray(eligible.reshape(b, -1)), fraction)
    ).reshape(np.shape(codes))
    free = int(remask.reshape(b, -1).sum(1).min())
    if free == 0:  # too few tokens for the fraction to pick one
      return codes, np.asarray(self.tokenizer.decode(codes)) if frames else None
    refine = self._second_decode(opts, min(int(opts["refine_steps"]), free))
    return self._run(prompts, codes, ~remask, seed, refine, stream=0x2EF1, frames=frames)

  @staticmethod
  def _second_decode(opts: dict, steps: int) -> dict:
    """The options of a decode after sampling (`_refine`, `_sweep`): `steps` steps, each token
    its most likely code, at guidance `refine_cfg_scale` when set."""
    out = dict(opts, steps=steps, top_k=1)
    if opts["refine_cfg_scale"] is not None:
      out["cfg_scale"] = opts["refine_cfg_scale"]
    return out

  def _sweep(self, prompts: Sequence[str], codes, seed: int, opts: dict):
    """codes [B, t, h, w] → codes after `refine_sweeps` sweeps of iterated conditional modes:
    in each sweep the four phases of `decode.lattice_phases` are re-masked one after another
    and decoded in one step (`_second_decode` options), every other token given; a token
    changes only where the new code is more than `sweep_switch_odds` times as likely."""
    sweep = self._second_decode(opts, 1)
    phases = [p for p in decode_lib.lattice_phases(np.shape(codes)[1:]) if p.any()]
    for i in range(int(opts["refine_sweeps"])):
      for k, phase in enumerate(phases):
        fixed = np.broadcast_to(~phase, np.shape(codes))
        codes, _ = self._run(
          prompts,
          codes,
          fixed,
          seed,
          sweep,
          stream=0x5EE0 + 4 * i + k,
          frames=False,
          switch_odds=opts["sweep_switch_odds"],
        )
    return codes

  def _most_likely(self, prompts: Sequence[str], codes, n: int, seed: int, opts: dict):
    """codes [B·n, t, h, w] (n candidates of each of the B prompts, candidate-minor) → the most
    likely candidate of each prompt, codes [B, t, h, w]: the highest pseudo-log-likelihood per
    token (the mean of `_token_scores` over all its tokens, `decode.pseudo_log_likelihood`)."""
    every = [p for p in prompts for _ in range(n)]
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5C0E)
    reads = self._token_scores(every, codes, np.ones(np.shape(codes), bool), rng, opts)
    best = np.argmax(reads.mean(-1).reshape(len(prompts), n), axis=1)
    return np.asarray(codes).reshape((len(prompts), n) + codes.shape[1:])[
      np.arange(len(prompts)), best
    ]

  def _run(
    self,
    prompts: Sequence[str],
    init_codes,
    fixed,
    seed: int,
    opts: dict,
    stream: Optional[int] = None,
    frames: bool = True,
    switch_odds: float = 1.0,
  ):
    """Generates codes [B, t, h, w] (fixed positions kept) and frames [B, F, H, W, 3].

    `stream` (optional): draw from random stream `stream` of `seed` (one per decode of a
    stepwise continuation) instead of `seed`'s own key. `frames=False` skips the C-ViViT
    decoder and returns (codes, None). `switch_odds` > 1: a free token keeps its code in
    `init_codes` unless another is more than that many times as likely (a sweep's rule)."""
    b = len(prompts)
    self._check_steps(opts["steps"], int((~np.asarray(fixed, bool)).reshape(b, -1).sum(1).max()))
    text, text_mask = self.text_encoder.encode(list(prompts))
    restrict = bool(opts["restrict_codes"]) and self.code_support is not None
    fn = self._generate_fn(
      int(opts["steps"]),
      int(opts["top_k"]),
      float(opts["top_p"]),
      float(opts["cfg_scale"]) != 1.0,
      switch_odds=float(switch_odds),
      support=float(opts["cfg_support"]) > 0.0,
      restrict=restrict,
    )
    null_text = jnp.broadcast_to(self._null[0], (b,) + self._null[0].shape[1:])
    null_mask = jnp.broadcast_to(self._null[1], (b,) + self._null[1].shape[1:])
    rng = jax.random.PRNGKey(seed)
    if stream is not None:
      rng = jax.random.fold_in(rng, stream)
    codes = fn(
      self.params,
      jnp.asarray(text),
      jnp.asarray(text_mask),
      null_text,
      null_mask,
      jnp.asarray(init_codes, jnp.int32),
      jnp.asarray(fixed, bool),
      rng,
      jnp.float32(opts["cfg_scale"]),
      jnp.float32(opts["temperature"]),
      jnp.float32(opts["temperature_decay"]),
      jnp.float32(opts["choice_temperature"]),
      jnp.float32(opts["cfg_support"]),
      jnp.asarray(self._allowed(np.shape(init_codes)[1], restrict)),
    )
    video = np.asarray(self.tokenizer.decode(codes)) if frames else None
    return np.asarray(codes), video

  def _continue_window(
    self, prompts: Sequence[str], init_codes, t_c: int, seed: int, opts: dict, frames: bool = True
  ):
    """Generates time steps t_c.. of `init_codes` [B, t, h, w] after its fixed first t_c (the
    context): in one decode, or with the option `continue_stepwise` one time step at a time in
    temporal order (decode j: time step t_c + j free, the later ones held at [MASK]).
    `frames=False`: (codes, None), the C-ViViT decoder skipped."""
    t = init_codes.shape[1]
    if not opts["continue_stepwise"] or t - t_c < 2:
      fixed = np.zeros(init_codes.shape, bool)
      fixed[:, :t_c] = True
      return self._run(prompts, init_codes, fixed, seed, opts, frames=frames)
    codes = np.array(init_codes, np.int32)
    codes[:, t_c:] = self.model.mask_token_id
    for j in range(t - t_c):
      fixed = np.ones(codes.shape, bool)
      fixed[:, t_c + j] = False
      # Only the last decode's codes are complete: the C-ViViT decodes those alone.
      last = j == t - t_c - 1
      codes, video = self._run(prompts, codes, fixed, seed, opts, stream=j, frames=frames and last)
    return codes, video

  def _allowed(self, time_steps: int, restrict: bool) -> np.ndarray:
    """bool [time_steps·h·w, K]: the codes each position may take (all without restriction)."""
    h, w = self.model.grid[1:]
    k = self.model.codebook_size
    if not restrict or self.code_support is None:
      return np.ones((time_steps * h * w, k), bool)
    rows = np.repeat(np.minimum(np.arange(time_steps), 1), h * w)  # 0 first, 1 later
    return self.code_support[rows]

  def _steps_for(self, num_frames: int) -> int:
    """Time steps covering `num_frames` frames (first frame + ceil(rest / t_p) tubelets)."""
    return 1 + math.ceil(max(num_frames - 1, 0) / self.temporal_patch)

  def _room_after(self, context_frames: int) -> int:
    """New frames that fit in one window after `context_frames` (1 + k·t_p) context frames."""
    t_c = self._steps_for(context_frames)
    return (self.model.grid[0] - t_c) * self.temporal_patch

  def _check_context(self, context_frames) -> int:
    """`context_frames` as an int 1 + k·t_p (whole time steps of the tokenizer)."""
    context_frames = _int(context_frames, "context_frames")
    tp = self.temporal_patch
    if (context_frames - 1) % tp or context_frames < 1:
      raise ValueError(
        f"context_frames must be 1 + k·{tp} (1, {1 + tp}, {1 + 2 * tp}, ...), got {context_frames}"
      )
    return context_frames

  def _check_window(self, time_steps: int, what: str, hint: str = "") -> None:
    if time_steps > self.model.grid[0]:
      raise ValueError(
        f"{what} needs {time_steps} time steps but the model was trained with at "
        f"most {self.model.grid[0]} ({self.max_frames} frames)" + (f": {hint}" if hint else "")
      )

  # ---- public API -------------------------------------------------------------------------
  def generate(
    self,
    prompt: Union[str, Sequence[str]],
    num_frames: Optional[int] = None,
    *,
    steps: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    temperature: Optional[float] = None,
    seed: int = 0,
    **kw,
  ) -> np.ndarray:
    """Text → video. A str gives uint8 [T, H, W, 3]; a list of prompts one batch [B, T, ...].

    With the option `candidates` N > 1, each prompt's clip is the most likely (to the
    conditional MaskGIT, `decode.pseudo_log_likelihood`) of N sampled in one batch; with
    `refine_fraction` > 0 its least likely tokens are then decoded again (`_refine`), and with
    `refine_sweeps` > 0 every token, one lattice phase at a time (`_sweep`)."""
    prompts, single = check_prompts(prompt)
    num_frames = self.max_frames if num_frames is None else _int(num_frames, "num_frames", 1)
    t = self._steps_for(num_frames)
    self._check_window(t, f"{num_frames} frames")
    opts = self._options(steps=steps, cfg_scale=cfg_scale, temperature=temperature, **kw)
    seed = check_seed(seed)
    n = opts["candidates"]
    self._check_batch(len(prompts) * n, t, opts, "generate")
    h = w = self.tokenizer.grid_size
    init = np.zeros((len(prompts) * n, t, h, w), np.int32)
    refine = opts["refine_fraction"] > 0 or opts["refine_sweeps"] > 0
    if n == 1:
      codes, video = self._run(
        prompts, init, np.zeros_like(init, bool), seed, opts, frames=not refine
      )
    else:  # n candidates of each prompt in one batch; the most likely one is decoded
      every = [p for p in prompts for _ in range(n)]
      codes, _ = self._run(every, init, np.zeros_like(init, bool), seed, opts, frames=False)
      codes = self._most_likely(prompts, codes, n, seed, opts)
      video = None if refine else np.asarray(self.tokenizer.decode(codes))
    sweeps = opts["refine_sweeps"] > 0
    if opts["refine_fraction"] > 0:
      codes, video = self._refine(prompts, codes, seed, opts, frames=not sweeps)
    if sweeps:
      video = np.asarray(self.tokenizer.decode(self._sweep(prompts, codes, seed, opts)))
    video = video[:, :num_frames]
    return video[0] if single else video

  def continue_video(
    self,
    video,
    prompt: Union[str, Sequence[str]],
    num_new_frames: int,
    *,
    context_frames: int = 5,
    seed: int = 0,
    **kw,
  ) -> np.ndarray:
    """Appends `num_new_frames` frames that follow `prompt`, conditioned on the last
    `context_frames` frames of `video` (uint8 [T, H, W, 3] or a batch [B, T, H, W, 3]; frames
    of another size than the model's are first fitted to it as the training data was:
    `Tokenizer.fit`, and the returned video holds the fitted frames).

    With more than one context frame the guidance scale is the option `continue_cfg_scale`
    when it is set (not None), else `cfg_scale`; a single frame (image-to-video) carries no
    motion and uses `cfg_scale`. With the option `continue_stepwise` the new time steps are
    decoded one after another, and with `continue_candidates` N > 1 (and more than one context
    frame) the new frames are the choice of the option `continue_choice` among N sampled ones
    (the minimum-Bayes-risk one, or the steadiest after the context); with
    `continue_refine_fraction` > 0 each candidate's least likely new tokens are first decoded
    again (`_refine`; see `default_config`)."""
    video = tokenizer_lib.check_frames(video, "video", ranks=(4, 5))
    video = self.tokenizer.fit(video)  # frames of another size: fitted as training's were
    single = video.ndim == 4
    videos = video[None] if single else video
    prompts, one = check_prompts(prompt)
    prompts = prompts * len(videos) if one else prompts
    if len(prompts) != len(videos):
      raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos")
    num_new_frames = _int(num_new_frames, "num_new_frames", minimum=1)
    context_frames = self._check_context(context_frames)
    seed = check_seed(seed)
    if videos.shape[1] < context_frames:
      raise ValueError(
        f"the video has {videos.shape[1]} frames, fewer than context_frames={context_frames}"
      )
    t_c = self._steps_for(context_frames)
    t = t_c + math.ceil(num_new_frames / self.temporal_patch)
    self._check_window(
      t,
      f"{context_frames} context + {num_new_frames} new frames",
      f"at most {self._room_after(context_frames)} new frames fit after "
      f"{context_frames} context frames; for more, continue again (in a story, "
      f"repeat the prompt)",
    )
    opts = self._options(**kw)
    n = opts["continue_candidates"]
    if context_frames == 1:  # image-to-video: no gain measured from candidates, N× the cost
      n = 1
    self._check_batch(len(videos) * n, t, opts, "continue_video")
    ctx_codes = np.asarray(self.tokenizer.encode(videos[:, -context_frames:]))  # [B, t_c, h, w]
    b, _, h, w = ctx_codes.shape
    init = np.zeros((b * n, t, h, w), np.int32)  # n candidates of each, one batch
    init[:, :t_c] = np.repeat(ctx_codes, n, axis=0)
    if context_frames > 1 and opts["continue_cfg_scale"] is not None:
      opts["cfg_scale"] = opts["continue_cfg_scale"]
    every = [p for p in prompts for _ in range(n)]
    refine = opts["continue_refine_fraction"]
    codes, window = self._continue_window(every, init, t_c, seed, opts, frames=not refine)
    if refine:  # the candidates' least likely new tokens, decoded again
      new_steps = np.zeros(codes.shape, bool)
      new_steps[:, t_c:] = True
      _, window = self._refine(every, codes, seed, opts, eligible=new_steps, fraction=refine)
    new = window[:, context_frames : context_frames + num_new_frames]
    if n > 1:
      new = new.reshape((b, n) + new.shape[1:])
      if opts["continue_choice"] == "steady":
        pick = steady_choice(videos[:, -context_frames:], new)
      else:
        pick = mbr_choice(new)
      new = new[np.arange(b), pick]
    out = np.concatenate([videos, new], axis=1)
    return out[0] if single else out

  def image_to_video(
    self,
    image,
    prompt: Union[str, Sequence[str]],
    num_frames: Optional[int] = None,
    *,
    seed: int = 0,
    **kw,
  ) -> np.ndarray:
    """A video whose first frame is `image` (uint8 [H, W, 3] or [B, H, W, 3], any size: fitted
    to the model's as in `continue_video`)."""
    image = tokenizer_lib.check_frames(image, "image", ranks=(3, 4))
    single = image.ndim == 3
    images = image[:, None] if not single else image[None, None]  # [B, 1, H, W, 3]
    num_frames = self.max_frames if num_frames is None else _int(num_frames, "num_frames")
    if not 2 <= num_frames <= self.max_frames:
      raise ValueError(
        f"num_frames must be in [2, {self.max_frames}] (the image and at least one new frame, "
        f"within the model's window; for more, continue_video the result), got {num_frames}"
      )
    out = self.continue_video(images, prompt, num_frames - 1, context_frames=1, seed=seed, **kw)
    return out[0] if single else out

  def story(
    self,
    prompts: Sequence,
    frames_per_prompt: Union[int, Sequence[int], None] = None,
    context_frames: int = 5,
    *,
    seed: int = 0,
    progress=None,
    **kw,
  ) -> np.ndarray:
    """One video following a list of prompts (a story) → uint8 [sum(frames_per_prompt), H, W, 3].

    `prompts` may also be a batch of stories (a list of equal-length prompt lists) → [B, T, ...].
    `frames_per_prompt` is an int or one int per prompt; by default the first segment has the
    model's clip length and every later one what a window holds after its `context_frames`
    (on the tiny models: 9, then 4 per prompt). For a longer segment, repeat its prompt.
    """
    if isinstance(prompts, (str, bytes)):
      raise TypeError(
        "story takes a list of prompts (one per segment) or a list of such lists, got a "
        f"{type(prompts).__name__}: for one prompt use generate, or wrap it in a list"
      )
    stories, batched = self._check_stories(prompts)
    num_segments = len(stories[0])
    context_frames = self._check_context(context_frames)
    seed = check_seed(seed, num_segments)
    if frames_per_prompt is None:
      room = self._room_after(context_frames)
      if num_segments > 1 and room < 1:
        raise ValueError(
          f"context_frames={context_frames} leaves no room for new frames in the "
          f"model's {self.max_frames}-frame window: lower context_frames"
        )
      frames_per_prompt = [self.max_frames] + [room] * (num_segments - 1)
    if isinstance(frames_per_prompt, (list, tuple)) or getattr(frames_per_prompt, "ndim", 0):
      lengths = [_int(n, "frames_per_prompt[i]") for n in frames_per_prompt]
    else:
      name = "frames_per_prompt (an int, or a list of one per prompt)"
      lengths = [_int(frames_per_prompt, name)] * num_segments
    if len(lengths) != num_segments or min(lengths) < 1:
      raise ValueError(
        f"frames_per_prompt must be a positive int or one per prompt, got {frames_per_prompt}"
      )
    if progress is not None and not callable(progress):
      raise TypeError(f"progress must be callable or None, got {type(progress).__name__}")
    video = self.generate([s[0] for s in stories], lengths[0], seed=seed, **kw)
    if progress:
      progress(0, num_segments, [s[0] for s in stories])
    for i in range(1, num_segments):
      if video.shape[1] < context_frames:
        raise ValueError(
          f"segment {i} needs {context_frames} context frames but the story has "
          f"{video.shape[1]}: lower context_frames or raise frames_per_prompt"
        )
      video = self.continue_video(
        video,
        [s[i] for s in stories],
        lengths[i],
        context_frames=context_frames,
        seed=seed + i,
        **kw,
      )
      if progress:
        progress(i, num_segments, [s[i] for s in stories])
    return video if batched else video[0]

  @staticmethod
  def _check_stories(prompts) -> tuple[list, bool]:
    """A story (a list of str) or a batch of them (a list of equal-length lists of str) →
    (a list of stories, whether `prompts` was a batch)."""
    try:
      items = list(prompts)
    except TypeError:
      raise TypeError(
        f"prompts must be a list of str (one per segment) or a list of such lists, got "
        f"{type(prompts).__name__} {_show(prompts)}"
      ) from None
    if not items:
      raise ValueError("prompts is empty: a story needs at least one prompt")
    if all(isinstance(p, str) for p in items):
      return [items], False
    if any(isinstance(p, str) for p in items):
      raise TypeError(
        "prompts mixes strings and lists: give one story (a list of str) or a batch of "
        "stories (a list of lists of str)"
      )
    stories = [check_prompts(p, f"prompts[{i}]")[0] for i, p in enumerate(items)]
    if any(len(s) != len(stories[0]) for s in stories):
      raise ValueError(
        f"every story of a batch needs the same number of prompts, got {[len(s) for s in stories]}"
      )
    return stories, True


# ---- CLI ---------------------------------------------------------------------------------------
def define_flags(required: bool = True) -> None:
  """The absl flags of the CLIs that load a Sampler (`sample`, `evaluate`): its work directories
  (`required`: both must be given) and every sampling option (not given: the run's default)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("tokenizer_dir", None, "C-ViViT work directory.")
  flags.DEFINE_string("maskgit_dir", None, "MaskGIT work directory.")
  flags.DEFINE_bool(
    "text_cache_only",
    False,
    "Load no text-encoder weights: prompts must be in "
    "the MaskGIT workdir's text cache (encode_text pre-computes them).",
  )
  flags.DEFINE_bool(
    "ema",
    None,
    "Sample with the MaskGIT's moving average of its parameters "
    "(--ema) or its raw parameters (--noema); not given: the average when the "
    "run keeps one (config.ema_decay).",
  )
  flags.DEFINE_integer("steps", None, "Decoding steps (12–48).")
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale.")
  flags.DEFINE_float(
    "continue_cfg_scale", None, "Guidance scale of the story segments after the first."
  )
  flags.DEFINE_boolean(
    "continue_stepwise", None, "Decode a continuation's new time steps one after another."
  )
  flags.DEFINE_integer(
    "continue_candidates",
    None,
    "Sample this many candidates of every story segment after the first and keep the most typical.",
  )
  flags.DEFINE_enum(
    "continue_choice",
    None,
    list(CONTINUE_CHOICES),
    "How a story segment's candidates are chosen among: the most typical (mbr) or the one "
    "whose motion continues the context's most steadily (steady).",
  )
  flags.DEFINE_integer(
    "candidates",
    None,
    "Sample this many candidates of every text-to-video clip and keep the one the model finds "
    "most likely.",
  )
  flags.DEFINE_float(
    "refine_fraction",
    None,
    "Re-mask this fraction of a text-to-video clip's least likely tokens and decode them again "
    "(0 = off).",
  )
  flags.DEFINE_float(
    "continue_refine_fraction",
    None,
    "Re-mask this fraction of a continuation's least likely new tokens and decode them again "
    "(0 = off).",
  )
  flags.DEFINE_integer("refine_steps", None, "Decoding steps of those second decodes.")
  flags.DEFINE_float(
    "refine_cfg_scale",
    None,
    "Guidance scale of those second decodes (not given: the first decode's).",
  )
  flags.DEFINE_integer(
    "refine_sweeps",
    None,
    "Then decode every token of a text-to-video clip again by its most likely code, one 2x2 "
    "lattice phase at a time, this many times (0 = off).",
  )
  flags.DEFINE_float(
    "sweep_switch_odds",
    None,
    "A sweep changes a token only where the most likely code is more than this many times "
    "as likely as its own (1 = wherever another is likelier).",
  )
  flags.DEFINE_float("temperature", None, "Sampling temperature.")
  flags.DEFINE_float(
    "temperature_decay",
    None,
    "The sampling temperature falls linearly by this fraction of itself over the steps "
    "(1: to 0 at the last step).",
  )
  flags.DEFINE_float(
    "choice_temperature",
    None,
    "Scale of the annealed noise on the confidences that choose which tokens each step keeps.",
  )
  flags.DEFINE_integer("top_k", None, "Sample each token from its k most likely codes (0 = all).")
  flags.DEFINE_float(
    "cfg_support",
    None,
    "With guidance, sample only tokens whose conditional "
    "probability is at least this fraction of the most likely one's.",
  )
  flags.DEFINE_boolean(
    "restrict_codes",
    None,
    "Sample at the first and at later time steps only "
    "codes seen there in training (the MaskGIT workdir's code_support.npz).",
  )
  flags.DEFINE_integer("seed", 0, "Random seed.")
  if required:
    flags.mark_flags_as_required(["tokenizer_dir", "maskgit_dir"])


def sampler_from_flags(f) -> "Sampler":
  return Sampler.from_workdirs(
    f.tokenizer_dir, f.maskgit_dir, text_cache_only=f.text_cache_only, ema=f.ema
  )


def options_from_flags(f) -> dict:
  """The sampling options given on the command line (the others keep the run's defaults)."""
  names = (
    "steps",
    "cfg_scale",
    "temperature",
    "temperature_decay",
    "choice_temperature",
    "top_k",
    "cfg_support",
    "restrict_codes",
    "continue_cfg_scale",
    "continue_stepwise",
    "continue_candidates",
    "continue_choice",
    "candidates",
    "refine_fraction",
    "continue_refine_fraction",
    "refine_steps",
    "refine_cfg_scale",
    "refine_sweeps",
    "sweep_switch_odds",
  )
  return {k: getattr(f, k) for k in names if getattr(f, k) is not None}


def _main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import video_io  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  prompts = list(f.prompt or [])
  if f.story_file:
    with open(f.story_file) as fh:
      prompts += [line.strip() for line in fh if line.strip()]
  if not prompts:
    raise SystemExit("give at least one --prompt (repeat it for a story) or --story_file")
  sampler = sampler_from_flags(f)
  kw = options_from_flags(f)

  def progress(i, n, p):
    logging.info("segment %d/%d done: %s", i + 1, n, p[0])
    print(f"segment {i + 1}/{n}: {p[0]}", flush=True)

  if len(prompts) == 1:
    video = sampler.generate(prompts[0], f.num_frames, seed=f.seed, **kw)
  else:
    video = sampler.story(
      prompts, f.frames_per_prompt, f.context_frames, seed=f.seed, progress=progress, **kw
    )
  os.makedirs(f.out, exist_ok=True)
  paths = {
    "mp4": video_io.write_mp4(os.path.join(f.out, "video.mp4"), video, fps=f.fps, scale=f.scale),
    "gif": video_io.write_gif(os.path.join(f.out, "video.gif"), video, fps=f.fps, scale=f.scale),
  }
  video_io.contact_sheet(video[None], os.path.join(f.out, "contact_sheet.png"), scale=f.scale)
  paths["png"] = os.path.join(f.out, "contact_sheet.png")
  if f.save_npy:
    paths["npy"] = os.path.join(f.out, "video.npy")
    np.save(paths["npy"], video)
  print(json.dumps({"prompts": prompts, "frames": int(video.shape[0]), "files": paths}))


def _define_cli_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  define_flags()
  flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for a story.")
  flags.DEFINE_string("story_file", None, "A file with one prompt per line.")
  flags.DEFINE_integer("num_frames", None, "Frames of a single-prompt video.")
  flags.DEFINE_integer(
    "frames_per_prompt",
    None,
    "Frames per story segment (default: the "
    "model's clip length for the first, what fits after the context frames "
    "for the others).",
  )
  flags.DEFINE_integer("context_frames", 5, "Frames re-encoded as context between segments.")
  flags.DEFINE_integer("fps", 4, "Frames per second of the written videos.")
  flags.DEFINE_integer("scale", 4, "Integer upscaling of the written videos.")
  flags.DEFINE_string("out", "samples", "Output directory.")
  flags.DEFINE_bool("save_npy", False, "Also save the frames as video.npy.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_cli_flags()
  app.run(_main)
