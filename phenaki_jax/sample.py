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
exactly the number of frames asked for.
"""

import functools
import json
import math
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

  What each did on Shapes: docs/experiments.md, "Sampling".
  """
  config = ml_collections.ConfigDict(
    dict(
      steps=12,
      cfg_scale=3.0,
      temperature=1.0,
      choice_temperature=4.5,
      top_k=0,
      top_p=1.0,
      cfg_support=0.0,
      restrict_codes=True,
      continue_cfg_scale=ml_collections.config_dict.placeholder(float),
      continue_stepwise=False,
      continue_candidates=1,
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


def mbr_choice(candidates) -> np.ndarray:
  """int [B]: for each row of `candidates` [B, N, ...] (uint8 frames or floats), the index of
  the minimum-Bayes-risk candidate under squared error — the least summed squared difference to
  the row's other candidates, which is the candidate nearest their mean (the first on ties)."""
  x = np.asarray(candidates, np.float64)
  flat = x.reshape(x.shape[0], x.shape[1], -1)
  return np.argmin(((flat - flat.mean(axis=1, keepdims=True)) ** 2).sum(axis=-1), axis=-1)


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
        step=step,
        key=key,
        what="MaskGIT",
      )
    except ValueError as e:  # orbax: the stored arrays' shapes differ from this model's
      raise ValueError(
        f"the MaskGIT in {maskgit_dir} does not fit the tokenizer in "
        f"{tokenizer_dir} (codebook {tok.codebook_size}, grid {tok.token_grid}) "
        f"and text encoder ({text_encoder.dim}-d): {e}"
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
    opts = dict(self.defaults)
    opts.update({k: v for k, v in kw.items() if v is not None})
    return opts

  # ---- the jitted core --------------------------------------------------------------------
  def _generate_fn(self, steps: int, top_k: int, top_p: float, guided: bool):
    """guided=False: cfg_scale is 1 (conditional model only), one model call per step."""
    key = (steps, top_k, top_p, guided)
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
        choice_temperature,
        cfg_support,
        allowed,
      ):
        b, t, h, w = init_codes.shape
        apply_fn = functools.partial(model.apply, {"params": params})
        logits_fn = decode_lib.guided_logits_fn(
          apply_fn, text, text_mask, null_text, null_mask, cfg_scale if guided else 1.0, cfg_support
        )
        logits_fn = decode_lib.restricted_logits_fn(logits_fn, allowed[None])
        tokens = decode_lib.decode(
          logits_fn,
          init_codes.reshape(b, -1),
          fixed.reshape(b, -1),
          rng,
          num_steps=steps,
          mask_token_id=model.mask_token_id,
          temperature=temperature,
          choice_temperature=choice_temperature,
          top_k=top_k,
          top_p=top_p,
        )
        return tokens.reshape(b, t, h, w)

      self._fns[key] = jax.jit(generate)
    return self._fns[key]

  def _run(
    self,
    prompts: Sequence[str],
    init_codes,
    fixed,
    seed: int,
    opts: dict,
    stream: Optional[int] = None,
    frames: bool = True,
  ):
    """Generates codes [B, t, h, w] (fixed positions kept) and frames [B, F, H, W, 3].

    `stream` (optional): draw from random stream `stream` of `seed` (one per decode of a
    stepwise continuation) instead of `seed`'s own key. `frames=False` skips the C-ViViT
    decoder and returns (codes, None)."""
    if not 0.0 <= float(opts["cfg_support"]) < 1.0:
      raise ValueError(f"cfg_support must be in [0, 1), got {opts['cfg_support']}")
    text, text_mask = self.text_encoder.encode(list(prompts))
    fn = self._generate_fn(
      int(opts["steps"]), int(opts["top_k"]), float(opts["top_p"]), float(opts["cfg_scale"]) != 1.0
    )
    b = len(prompts)
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
      jnp.float32(opts["choice_temperature"]),
      jnp.float32(opts["cfg_support"]),
      jnp.asarray(self._allowed(np.shape(init_codes)[1], bool(opts["restrict_codes"]))),
    )
    video = np.asarray(self.tokenizer.decode(codes)) if frames else None
    return np.asarray(codes), video

  def _continue_window(self, prompts: Sequence[str], init_codes, t_c: int, seed: int, opts: dict):
    """Generates time steps t_c.. of `init_codes` [B, t, h, w] after its fixed first t_c (the
    context): in one decode, or with the option `continue_stepwise` one time step at a time in
    temporal order (decode j: time step t_c + j free, the later ones held at [MASK])."""
    t = init_codes.shape[1]
    if not opts["continue_stepwise"] or t - t_c < 2:
      fixed = np.zeros(init_codes.shape, bool)
      fixed[:, :t_c] = True
      return self._run(prompts, init_codes, fixed, seed, opts)
    codes = np.array(init_codes, np.int32)
    codes[:, t_c:] = self.model.mask_token_id
    for j in range(t - t_c):
      fixed = np.ones(codes.shape, bool)
      fixed[:, t_c + j] = False
      # Only the last decode's codes are complete: the C-ViViT decodes those alone.
      codes, video = self._run(prompts, codes, fixed, seed, opts, stream=j, frames=j == t - t_c - 1)
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
    """Text → video. A str gives uint8 [T, H, W, 3]; a list of prompts one batch [B, T, ...]."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    num_frames = self.max_frames if num_frames is None else int(num_frames)
    if num_frames < 1:
      raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    t = self._steps_for(num_frames)
    self._check_window(t, f"{num_frames} frames")
    opts = self._options(steps=steps, cfg_scale=cfg_scale, temperature=temperature, **kw)
    h = w = self.tokenizer.grid_size
    init = np.zeros((len(prompts), t, h, w), np.int32)
    _, video = self._run(prompts, init, np.zeros_like(init, bool), seed, opts)
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
    frame) the new frames are the minimum-Bayes-risk choice among N sampled ones (see
    `default_config`)."""
    video = self.tokenizer.fit(video)  # frames of another size: fitted as training's were
    single = video.ndim == 4
    videos = video[None] if single else video
    prompts = [prompt] * len(videos) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(videos):
      raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos")
    tp = self.temporal_patch
    if (context_frames - 1) % tp or context_frames < 1:
      raise ValueError(f"context_frames must be 1 + k·{tp}, got {context_frames}")
    if videos.shape[1] < context_frames:
      raise ValueError(
        f"the video has {videos.shape[1]} frames, fewer than context_frames={context_frames}"
      )
    t_c = self._steps_for(context_frames)
    t = t_c + math.ceil(num_new_frames / tp)
    self._check_window(
      t,
      f"{context_frames} context + {num_new_frames} new frames",
      f"at most {self._room_after(context_frames)} new frames fit after "
      f"{context_frames} context frames; for more, continue again (in a story, "
      f"repeat the prompt)",
    )
    opts = self._options(**kw)
    n = int(opts["continue_candidates"])
    if n < 1:
      raise ValueError(f"continue_candidates must be ≥ 1, got {n}")
    if context_frames == 1:  # image-to-video: no gain measured from candidates, N× the cost
      n = 1
    ctx_codes = np.asarray(self.tokenizer.encode(videos[:, -context_frames:]))  # [B, t_c, h, w]
    b, _, h, w = ctx_codes.shape
    init = np.zeros((b * n, t, h, w), np.int32)  # n candidates of each, one batch
    init[:, :t_c] = np.repeat(ctx_codes, n, axis=0)
    if context_frames > 1 and opts["continue_cfg_scale"] is not None:
      opts["cfg_scale"] = opts["continue_cfg_scale"]
    _, window = self._continue_window([p for p in prompts for _ in range(n)], init, t_c, seed, opts)
    new = window[:, context_frames : context_frames + num_new_frames]
    if n > 1:
      new = new.reshape((b, n) + new.shape[1:])
      new = new[np.arange(b), mbr_choice(new)]
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
    image = np.asarray(image)
    single = image.ndim == 3
    images = image[:, None] if not single else image[None, None]  # [B, 1, H, W, 3]
    num_frames = self.max_frames if num_frames is None else int(num_frames)
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
    batched = len(prompts) > 0 and not isinstance(prompts[0], str)
    stories = [list(p) for p in prompts] if batched else [list(prompts)]
    num_segments = len(stories[0])
    if num_segments == 0 or any(len(s) != num_segments for s in stories):
      raise ValueError("every story needs the same, non-zero number of prompts")
    if frames_per_prompt is None:
      room = self._room_after(context_frames)
      if num_segments > 1 and room < 1:
        raise ValueError(
          f"context_frames={context_frames} leaves no room for new frames in the "
          f"model's {self.max_frames}-frame window: lower context_frames"
        )
      frames_per_prompt = [self.max_frames] + [room] * (num_segments - 1)
    lengths = (
      [int(frames_per_prompt)] * num_segments
      if isinstance(frames_per_prompt, int)
      else [int(n) for n in frames_per_prompt]
    )
    if len(lengths) != num_segments or min(lengths) < 1:
      raise ValueError(
        f"frames_per_prompt must be a positive int or one per prompt, got {frames_per_prompt}"
      )
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
  flags.DEFINE_float("temperature", None, "Sampling temperature.")
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
    "top_k",
    "cfg_support",
    "restrict_codes",
    "continue_cfg_scale",
    "continue_stepwise",
    "continue_candidates",
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
