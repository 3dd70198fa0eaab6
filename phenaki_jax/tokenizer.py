"""Public C-ViViT tokenizer API: a trained work directory → jitted encode/decode.

  tok = Tokenizer.from_workdir("workdirs/demo/cvivit")
  codes = tok.encode(video)      # uint8 [B, 1+T, H, W, 3] → int32 [B, 1 + T/t_p, H/p, W/p]
  video = tok.decode(codes)      # → uint8 [B, 1 + (t−1)·t_p, H, W, 3]

Any valid number of frames works (1 + k·t_p up to the model's maximum); each new shape
compiles once.
"""
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax import checkpoint
from phenaki_jax.models import cvivit


class Tokenizer:
  """A frozen C-ViViT: `params` plus jitted `encode`/`decode`."""

  def __init__(self, model: cvivit.CViViT, params):
    self.model = model
    self.params = params
    self._encode = jax.jit(lambda p, v: model.apply(
        {"params": p}, cvivit.to_model_range(v), method=cvivit.CViViT.encode))
    self._decode = jax.jit(lambda p, c: cvivit.to_uint8(model.apply(
        {"params": p}, c, method=cvivit.CViViT.decode)))
    self._decode_float = jax.jit(lambda p, c: model.apply(
        {"params": p}, c, method=cvivit.CViViT.decode))

  @classmethod
  def from_workdir(cls, workdir: str, step: Optional[int] = None,
                   ema: Optional[bool] = None) -> "Tokenizer":
    """Loads the C-ViViT trained in `workdir` (latest checkpoint unless `step`): the moving
    average of its parameters when the run keeps one (config.ema_decay; `ema`=False: the raw
    parameters)."""
    from phenaki_jax.trainers import common, cvivit as trainer  # pylint: disable=g-import-not-at-top
    config = common.load_config(workdir)
    if config.get("trainer") != "cvivit":
      raise ValueError(f"{workdir!r} holds a {config.get('trainer')!r} run, not a C-ViViT")
    model = trainer.build_model(config)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no C-ViViT checkpoint in {workdir}/checkpoints: train it first "
                              f"(python -m phenaki_jax.train --config=... --workdir={workdir})")
    key = common.params_key(config, ema)
    params = ckpt.restore_params(trainer.abstract_state(config)[key], step, key=key)
    ckpt.close()
    return cls(model, params)

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

  # ---- encode / decode --------------------------------------------------------------------
  def encode(self, video) -> jax.Array:
    """uint8 [B, 1+T, H, W, 3] → codes int32 [B, 1 + T/t_p, H/p, W/p]."""
    video = np.asarray(video) if not isinstance(video, jax.Array) else video
    if video.dtype != np.uint8:
      raise ValueError(f"Tokenizer.encode takes uint8 videos in [0, 255], got dtype {video.dtype}")
    self.model.check_video_shape(video.shape)
    return self._encode(self.params, video)

  def _check_codes(self, codes):
    if codes.ndim != 4 or codes.shape[2:] != (self.grid_size, self.grid_size):
      raise ValueError(f"codes must be [B, t, {self.grid_size}, {self.grid_size}], got "
                       f"{tuple(codes.shape)}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
      raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.shape[1] > self.model.max_time_steps:
      raise ValueError(f"{codes.shape[1]} time steps exceed max_time_steps="
                       f"{self.model.max_time_steps}")

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
