"""Set metrics of videos (paper §5): FVD, FID, CLIP score, and reconstruction PSNR/SSIM/LPIPS.

Each metric takes uint8 videos [N, T, H, W, 3] and returns a dict of JSON-able figures that
carries its protocol (the facts that commonly make such numbers disagree: resize filter, value
range, feature layer, clip length, covariance normalisation), so that every printed score says
how it was made:

  * FVD: I3D logits of whole clips (`evaluators/frechet.py`, `FVD_PROTOCOL`). The standard
    protocol scores 16-frame clips; a score on clips of another length (the tiny models' 9) is
    comparable only to scores of that length.
  * FID: InceptionV3 pool3 features of every frame (`models/inception.py`, `PROTOCOL`), the same
    Fréchet distance.
  * CLIP score: 100·max(cos, 0) between each frame's CLIP image embedding and its caption's text
    embedding, averaged over frames and videos (`models/clip.py`, `PROTOCOL`).
  * Reconstruction: PSNR and SSIM over frames, LPIPS (VGG16, `models/vgg.py`) over frames.

`load_videos` reads a set from the forms the CLI accepts; reference statistics of FVD and FID
are cached as `.npz` (`RunningStats.save`). The CLI is `python -m phenaki_jax.evaluate
{fvd,fid,clip,recon}`.
"""

import functools
import glob
import os
from typing import Optional, Sequence

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".mpg", ".gif")


# ---- Sets of videos ------------------------------------------------------------------------------
def load_videos(
  spec: str,
  *,
  num_frames: int,
  resolution: int,
  fps: float = 8.0,
  limit: int = 0,
  seed: int = 0,
) -> tuple:
  """(uint8 videos [N, num_frames, resolution, resolution, 3], captions [N] or None) of a set:

  * ``shapes:SPLIT`` — Shapes clips of that split ('train', 'eval', 'heldout', 'image_only'),
    ``limit`` of them (default 64);
  * webdataset shards (a pattern ending in ``.tar``, braces and globs allowed) — one centred clip
    per video, with its caption;
  * video files: a glob, a directory (every video file inside), or one file — one centred clip
    per file, decoded at ``fps``, no captions.

  Unusable files are skipped and counted in the log (`media.SkipExample`).
  """
  from absl import logging  # pylint: disable=g-import-not-at-top

  from phenaki_jax.data import media  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import shapes as shapes_lib  # pylint: disable=g-import-not-at-top

  if spec.startswith("shapes:"):
    split = spec.split(":", 1)[1]
    shape_spec = shapes_lib.ShapesSpec(resolution=resolution, num_frames=num_frames)
    n = limit or 64
    examples = [shapes_lib.video_example(shape_spec, seed, i, split=split) for i in range(n)]
    return np.stack([e["video"] for e in examples]), [e["caption"] for e in examples]
  clip = media.ClipSpec(num_frames=num_frames, fps=fps, resolution=resolution)
  videos, captions, skipped = [], [], {}
  if spec.endswith(".tar") or ".tar," in spec:
    from phenaki_jax.data import sources  # pylint: disable=g-import-not-at-top

    source = sources.WebDatasetSource(spec, kind="video", clip=clip)
    for i in range(source.num_examples):
      if limit and len(videos) == limit:
        break
      try:
        example = source.example(i)
      except media.SkipExample as e:
        skipped[e.reason] = skipped.get(e.reason, 0) + 1
        continue
      videos.append(example["video"])
      captions.append(example["caption"])
  else:
    if os.path.isdir(spec):
      paths = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(spec)
        for f in files
        if f.lower().endswith(VIDEO_SUFFIXES)
      )
    else:
      paths = sorted(glob.glob(spec))
    if not paths:
      raise ValueError(f"no video files match {spec!r}")
    for path in paths:
      if limit and len(videos) == limit:
        break
      try:
        videos.append(media.decode_video(path, clip))
      except media.SkipExample as e:
        skipped[e.reason] = skipped.get(e.reason, 0) + 1
    captions = None
  if skipped:
    logging.warning("%s: skipped %s", spec, skipped)
  if not videos:
    raise ValueError(f"{spec!r} gave no usable video (skipped: {skipped})")
  return np.stack(videos), captions


def generate_videos(
  tokenizer_dir: str, maskgit_dir: str, prompts: Sequence[str], seed: int = 0, **sample_kw
):
  """uint8 videos [N, T, H, W, 3] the trained models generate for `prompts` (batches of 8),
  with the sampling options `sample_kw` (the others: the MaskGIT run's defaults)."""
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  sampler = sample.Sampler.from_workdirs(tokenizer_dir, maskgit_dir)
  out = []
  for start in range(0, len(prompts), 8):
    batch = list(prompts[start : start + 8])
    out.append(np.asarray(sampler.generate(batch, seed=seed + start, **sample_kw)))
  return np.concatenate(out)


# ---- FVD and FID ---------------------------------------------------------------------------------
def _cached(path: Optional[str], compute):
  from phenaki_jax.evaluators import frechet  # pylint: disable=g-import-not-at-top

  if path and os.path.exists(path):
    return frechet.RunningStats.load(path)
  stats = compute()
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stats.save(path)
  return stats


def _check_reference(a, b) -> None:
  """Raises when the reference statistics `a` (perhaps a cache) were made otherwise than `b`."""
  from phenaki_jax.evaluators import frechet  # pylint: disable=g-import-not-at-top

  keys = frechet.protocol_mismatch(a, b)
  if keys:
    raise ValueError(
      f"the reference statistics were made otherwise (they differ in {keys}): {a.meta} vs {b.meta}"
    )


def fvd(real, fake, i3d_params, *, real_stats: str = "", batch_size: int = 8) -> dict:
  """FVD between uint8 video sets (``real`` may be None when ``real_stats`` holds its cache)."""
  from phenaki_jax.evaluators import frechet  # pylint: disable=g-import-not-at-top

  a = _cached(real_stats, lambda: frechet.video_statistics(i3d_params, real, batch_size))
  b = frechet.video_statistics(i3d_params, fake, batch_size)
  _check_reference(a, b)
  return {
    "fvd": frechet.frechet_distance_from_stats(a, b),
    "num_real": a.count,
    "num_fake": b.count,
    "protocol": b.meta,
  }


def frame_statistics(inception_params, videos, batch_size: int = 32):
  """Inception pool3 statistics of every frame of uint8 videos [N, T, H, W, 3]."""
  from phenaki_jax.evaluators import frechet  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import inception  # pylint: disable=g-import-not-at-top

  frames = np.asarray(videos).reshape((-1,) + np.shape(videos)[-3:])
  stats = frechet.RunningStats(inception.FEATURES, dict(inception.PROTOCOL))
  for start in range(0, len(frames), batch_size):
    chunk = frames[start : start + batch_size]
    n = len(chunk)
    padded = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], np.uint8)])
    stats.update(inception.inception_features(inception_params, padded)[:n])
  return stats


def fid(real, fake, inception_params, *, real_stats: str = "", batch_size: int = 32) -> dict:
  """FID between the frames of two uint8 video (or 1-frame image) sets."""
  from phenaki_jax.evaluators import frechet  # pylint: disable=g-import-not-at-top

  a = _cached(real_stats, lambda: frame_statistics(inception_params, real, batch_size))
  b = frame_statistics(inception_params, fake, batch_size)
  _check_reference(a, b)
  return {
    "fid": frechet.frechet_distance_from_stats(a, b),
    "num_real_frames": a.count,
    "num_fake_frames": b.count,
    "protocol": b.meta,
  }


# ---- CLIP score ----------------------------------------------------------------------------------
def clip_score(videos, captions: Sequence[str], model, params, tokenizer) -> dict:
  """Mean CLIP score of each video's frames against its caption (`models/clip.py`)."""
  from phenaki_jax.models import clip  # pylint: disable=g-import-not-at-top

  videos = np.asarray(videos)
  if len(captions) != len(videos):
    raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
  text = clip.clip_text_features(model, params, tokenizer(list(captions)))  # [N, E]
  frames = videos.reshape((-1,) + videos.shape[-3:])
  image = np.concatenate(
    [clip.clip_image_features(model, params, frames[i : i + 32]) for i in range(0, len(frames), 32)]
  )
  scores = clip.clip_score(image, np.repeat(text, videos.shape[1], axis=0))
  return {
    "clip_score": float(scores.mean()),
    "num_videos": len(videos),
    "num_frames": int(len(frames)),
    "protocol": dict(clip.PROTOCOL),
  }


# ---- Reconstruction ------------------------------------------------------------------------------
def reconstruction(videos, recon, lpips_params=None, batch_size: int = 16) -> dict:
  """PSNR and SSIM (all frames) and, given the VGG16 weights, LPIPS between uint8 videos and
  their reconstructions [N, T, H, W, 3]."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from phenaki_jax.evaluators import recon as recon_lib  # pylint: disable=g-import-not-at-top

  a = np.asarray(videos, np.float32) / 255.0
  b = np.asarray(recon, np.float32) / 255.0
  out = {
    "psnr": float(np.mean(recon_lib.psnr(a, b, axis=(1, 2, 3, 4)))),
    "ssim": float(recon_lib.ssim(a, b)),
    "num_videos": len(a),
  }
  if lpips_params is not None:
    from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

    distance = _jitted_lpips()
    distances = [
      np.asarray(
        distance(
          lpips_params,
          jnp.asarray(a[i : i + batch_size] * 2 - 1),
          jnp.asarray(b[i : i + batch_size] * 2 - 1),
        )
      ).ravel()
      for i in range(0, len(a), batch_size)
    ]
    out["lpips"] = float(np.mean(np.concatenate(distances)))
    out["lpips_protocol"] = dict(vgg.PROTOCOL)
  return out


@functools.lru_cache(maxsize=1)
def _jitted_lpips():
  import jax  # pylint: disable=g-import-not-at-top

  from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

  return jax.jit(vgg.lpips_distance)
