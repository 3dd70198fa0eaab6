"""Pre-tokenised stage-2 batches: C-ViViT codes + captions, addressed by training step.

`python -m phenaki_jax.tokenize` writes, for training steps [0, num_steps), exactly the batches
the MaskGIT trainer would draw, as chunks `chunk_{first_step:08d}.npz` (no pickle) of `CHUNK`
steps each — codes int32 [S, B, t, h, w], is_image bool [S, B], caption str [S, B] and
context_frames int32 [S, B] (a turn clip's given frames, 0 for the rest) — plus `meta.json`,
which records what the batches depend on (`expected_meta`). The trainer reads them with
`PretokenizedBatches` when `config.data.pretokenized` names the directory; resuming stays exact
because batches are addressed by step (docs/design.md, invariant 6).
"""

import json
import os

import numpy as np

CHUNK = 100
# What a meta.json written before a key existed holds for it (the key's old, fixed behaviour).
_META_DEFAULTS = {"turn_rate": 0.0, "static_images": False}


class PretokenizedBatches:
  """Reads what `write_chunk` and `write_meta` wrote: `batch(step)` → dict(codes, is_image, caption, context_frames)."""

  def __init__(self, directory: str, expect: dict):
    path = os.path.join(directory, "meta.json")
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"config.data.pretokenized={directory!r} has no meta.json: write it "
        f"with `python -m phenaki_jax.tokenize`"
      )
    with open(path) as f:
      self.meta = json.load(f)
    for key, value in expect.items():
      written = self.meta.get(key, _META_DEFAULTS.get(key))
      if written != value:
        raise ValueError(
          f"config.data.pretokenized={directory!r} was written with {key}="
          f"{written!r}, but this run has {value!r}"
        )
    self.directory = directory
    self._cache = (None, None)

  def batch(self, step: int) -> dict:
    if step >= self.meta["num_steps"]:
      raise ValueError(
        f"step {step} is past the {self.meta['num_steps']} pre-tokenised steps in "
        f"{self.directory}: write more with --num_steps"
      )
    first = step - step % self.meta["chunk"]
    if self._cache[0] != first:
      with np.load(os.path.join(self.directory, f"chunk_{first:08d}.npz")) as z:
        self._cache = (first, {k: z[k] for k in z.files})
    chunk = self._cache[1]
    return {k: v[step - first] for k, v in chunk.items()}

  def iterate(self, start_step: int = 0):
    step = start_step
    while True:
      yield step, self.batch(step)
      step += 1


def expected_meta(config) -> dict:
  meta = {
    "tokenizer_workdir": os.path.abspath(config.tokenizer.workdir),
    "batch_size": config.data.batch_size,
    "seed": config.data.seed,
    "video_rate": config.data.video_rate,
    "image_rate": config.data.image_rate,
    "turn_rate": config.data.turn_rate,
    "static_images": bool(config.data.static_images),
  }
  if config.data.turn_rate > 0:
    meta["turn_context_frames"] = config.data.turn_context_frames
  if config.data.get("source", "shapes") != "shapes" or config.data.get("mixture", ""):
    # The data itself: which files (or registered mixture), decoded how.
    keys = {
      k: v for k, v in dict(config.data).items() if k not in ("prefetch", "threads", "pretokenized")
    }
    meta["data"] = json.loads(json.dumps(keys, sort_keys=True, default=str))
  return meta


def write_chunk(directory: str, first_step: int, batches: list) -> str:
  """Writes the batches of steps first_step, first_step + 1, ... (dicts of codes, is_image,
  caption, context_frames) as one chunk, atomically; returns its path."""
  path = os.path.join(directory, f"chunk_{first_step:08d}.npz")
  stacked = {
    k: np.stack([np.asarray(b[k], dtype=str if k == "caption" else None) for b in batches])
    for k in ("codes", "is_image", "caption", "context_frames")
  }
  np.savez(path + ".tmp.npz", **stacked)
  os.replace(path + ".tmp.npz", path)
  return path


def write_meta(directory: str, config, num_steps: int) -> None:
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump({**expected_meta(config), "num_steps": num_steps, "chunk": CHUNK}, f, indent=2)
