"""Helpers shared by the benchmark scripts: machine facts, real-footage windows and scores."""

import os
import platform

import jax
import numpy as np


def machine() -> dict:
  return {
    "platform": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "load_average_1min": round(os.getloadavg()[0], 2),
  }


def windows(path: str, clip, stride: int) -> np.ndarray:
  """Every `clip.num_frames`-frame window (stride `stride`) of the whole video at `clip.fps`,
  centre-cropped to `clip.resolution`²: uint8 [N, F, S, S, 3]."""
  from phenaki_jax.data import media  # pylint: disable=g-import-not-at-top

  total = int(media.video_duration(path) * clip.fps)
  whole = media.decode_video(path, media.ClipSpec(total, clip.fps, clip.resolution))
  starts = range(0, total - clip.num_frames + 1, stride)
  return np.stack([whole[s : s + clip.num_frames] for s in starts])


def round_trip(tok, clips: np.ndarray) -> np.ndarray:
  """uint8 reconstructions of uint8 `clips` [N, F, H, W, 3] by a `Tokenizer`, one clip a call."""
  return np.concatenate([np.asarray(tok.reconstruct(c[None])) for c in clips])


def psnr_ssim(clips: np.ndarray, out: np.ndarray) -> tuple:
  """(PSNR dB per window, SSIM per window) of uint8 reconstructions `out` of uint8 `clips`."""
  from phenaki_jax.evaluators import recon  # pylint: disable=g-import-not-at-top

  a, b = clips.astype(np.float32) / 255, out.astype(np.float32) / 255
  psnr = np.asarray(recon.psnr(a, b, axis=(1, 2, 3, 4)))
  ssim = np.array([float(recon.ssim(x, y)) for x, y in zip(a, b)])
  return psnr, ssim


def summary(psnr: np.ndarray, ssim: np.ndarray) -> dict:
  return {
    "windows": len(psnr),
    "psnr_db": round(float(psnr.mean()), 2),
    "psnr_db_min": round(float(psnr.min()), 2),
    "ssim": round(float(ssim.mean()), 3),
  }
