"""Public C-ViViT tokenizer API: a trained work directory → jitted encode/decode.

  tok = Tokenizer.from_workdir("workdirs/demo/cvivit")
  codes = tok.encode(video)      # uint8 [B, 1+T, H, W, 3] → int32 [B, 1 + T/t_p, H/p, W/p]
  video = tok.decode(codes)      # → uint8 [B, 1 + (t−1)·t_p, H, W, 3]

Any valid number of frames works (1 + k·t_p up to the model's maximum); each new shape
compiles once.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from phenaki_jax import checkpoint, config_io
from phenaki_jax.data import media
from phenaki_jax.models import cvivit


class Tokenizer:
  """A frozen C-ViViT: `params` plus jitted `encode`/`decode`.

  `clip_frames`: the clip length it was trained on (config.data.num_frames), which sets the
  token grid of a MaskGIT trained on its codes; default: the model's maximum."""

  def __init__(self, model: cvivit.CViViT, params, clip_frames: Optional[int] = None):
    self.model = model
    self.params = params
    self.clip_frames = model.max_frames if clip_frames is None else int(clip_frames)
    self._fitted = set()  # frame sizes fitted so far (each logged once)
    self._encode = jax.jit(
      lambda p, v: model.apply({"params": p}, cvivit.to_model_range(v), method=cvivit.CViViT.encode)
    )
    self._decode = jax.jit(
      lambda p, c: cvivit.to_uint8(model.apply({"params": p}, c, method=cvivit.CViViT.decode))
    )
    self._decode_float = jax.jit(
      lambda p, c: model.apply({"params": p}, c, method=cvivit.CViViT.decode)
    )

  @classmethod
  def from_workdir(
    cls, workdir: str, step: Optional[int] = None, ema: Optional[bool] = None
  ) -> "Tokenizer":
    """Loads the C-ViViT trained in `workdir` (latest checkpoint unless `step`): the moving
    average of its parameters when the run keeps one (config.ema_decay; `ema`=False: the raw
    parameters)."""
    config = config_io.from_workdir(workdir)
    if config.get("trainer") != "cvivit":
      raise ValueError(f"{workdir!r} holds a {config.get('trainer')!r} run, not a C-ViViT")
    model = cvivit.get_model(config.model_size, **config.model)
    video = jax.ShapeDtypeStruct(
      (1, model.max_frames, model.image_size, model.image_size, 3), jnp.float32
    )
    key = config_io.params_key(config, ema)
    params = checkpoint.load_params(
      workdir, checkpoint.abstract_params(model.init, video), step=step, key=key, what="C-ViViT"
    )
    return cls(model, params, clip_frames=config.data.num_frames)

  # ---- geometry ---------------------------------------------------------------------------
  @property
  def temporal_patch(self) -> int:
    return self.model.temporal_patch

  @property
  def grid_size(self) -> int:
    return self.model.grid_size

  @property
  def codebook_size(self) -> int:
    return self.model.codebook_size

  @property
  def image_size(self) -> int:
    return self.model.image_size

  @property
  def max_frames(self) -> int:
    return self.model.max_frames

  def time_steps(self, num_frames: int) -> int:
    return self.model.time_steps(num_frames)

  def num_frames(self, time_steps: int) -> int:
    return self.model.num_frames(time_steps)

  @property
  def token_grid(self) -> tuple[int, int, int]:
    """(t, h, w) of a `clip_frames`-frame clip: the grid of a MaskGIT trained on these codes."""
    return self.model.token_grid(self.clip_frames)

  # ---- encode / decode --------------------------------------------------------------------
  def fit(self, video) -> np.ndarray:
    """uint8 frames [..., H, W, 3] of any size → [..., S, S, 3] at the model's image size S, as
    the training data was made (short side resized, centre crop: `media.fit_frames`); frames
    already S×S come back unchanged. The first fit of each size is logged."""
    video = np.asarray(video)
    if video.dtype != np.uint8:
      raise ValueError(f"expected uint8 frames in [0, 255], got dtype {video.dtype}")
    if video.ndim < 3 or video.shape[-1] != 3:
      raise ValueError(f"expected frames [..., H, W, 3], got shape {video.shape}")
    size = self.image_size
    if video.shape[-3:-1] == (size, size):
      return video
    if video.shape[-3:-1] not in self._fitted:
      self._fitted.add(video.shape[-3:-1])
      logging.info(
        "frames of %d×%d fitted to the C-ViViT's %d×%d (short side resized, centre crop)",
        video.shape[-2],
        video.shape[-3],
        size,
        size,
      )
    return media.fit_frames(video, size)

  def encode(self, video, fit: bool = True) -> jax.Array:
    """uint8 [B, 1+T, H, W, 3] → codes int32 [B, 1 + T/t_p, H/p, W/p]. With `fit`, frames of
    another size are first fitted to the model's (`fit`); without, they are an error."""
    if not isinstance(video, jax.Array):
      video = np.asarray(video)
    if video.dtype != np.uint8:
      raise ValueError(f"Tokenizer.encode takes uint8 videos in [0, 255], got dtype {video.dtype}")
    if fit and video.ndim == 5:
      video = self.fit(video)
    self.model.check_video_shape(video.shape)
    return self._encode(self.params, video)

  def _check_codes(self, codes):
    if codes.ndim != 4 or codes.shape[2:] != (self.grid_size, self.grid_size):
      raise ValueError(
        f"codes must be [B, t, {self.grid_size}, {self.grid_size}], got {tuple(codes.shape)}"
      )
    if not jnp.issubdtype(codes.dtype, jnp.integer):
      raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.shape[1] > self.model.max_time_steps:
      raise ValueError(
        f"{codes.shape[1]} time steps exceed max_time_steps={self.model.max_time_steps}"
      )

  def decode(self, codes) -> jax.Array:
    """codes int [B, t, h, w] → uint8 video [B, 1 + (t−1)·t_p, H, W, 3]."""
    codes = jnp.asarray(codes)
    self._check_codes(codes)
    return self._decode(self.params, codes.astype(jnp.int32))

  def decode_float(self, codes) -> jax.Array:
    """codes → float video in ~[-1, 1] (unclipped model output)."""
    codes = jnp.asarray(codes)
    self._check_codes(codes)
    return self._decode_float(self.params, codes.astype(jnp.int32))
