"""Pre-tokenised stage-2 batches: C-ViViT codes + captions, addressed by training step.

`python -m phenaki_jax.tokenize` writes, for training steps [0, num_steps), exactly the batches
the MaskGIT trainer would draw, as chunks `chunk_{first_step:08d}.npz` (no pickle) of `CHUNK`
steps each — codes int32 [S, B, t, h, w], is_image bool [S, B], caption str [S, B] and
context_frames int32 [S, B] (a turn clip's given frames, 0 for the rest) — plus `meta.json`,
which records what the batches depend on (`expected_meta`). The trainer reads them with
`PretokenizedBatches` when `config.data.pretokenized` names the directory; resuming stays exact
because batches are addressed by step (docs/design.md, invariant 6).

A pass may be killed at any moment and leave nothing a trainer reads: each chunk is renamed
into place once written, `meta.json` is written (atomically) only after the last chunk, and it
is removed before a pass changes any chunk. While a pass runs, `pending.json` records its
settings, so that the same command, rerun, keeps the chunks an interrupted pass finished
(`start_pass`) and a pass with other settings first deletes them.
"""

import glob
import json
import os
from typing import Optional

import numpy as np

CHUNK = 100
META = "meta.json"
PENDING = "pending.json"  # the settings of a pass under way (absent once it finished)
# What a meta.json written before a key existed holds for it (the key's old, fixed behaviour).
_META_DEFAULTS = {"turn_rate": 0.0, "static_images": False}


class PretokenizedBatches:
  """Reads what a finished pass wrote: `batch(step)` → dict(codes, is_image, caption, context_frames)."""

  def __init__(self, directory: str, expect: dict, num_steps: Optional[int] = None):
    """`num_steps`: the steps the run will train, checked against those written."""
    path = os.path.join(directory, META)
    if not os.path.exists(path):
      unfinished = os.path.exists(os.path.join(directory, PENDING))
      raise FileNotFoundError(
        f"config.data.pretokenized={directory!r} has no meta.json: "
        + (
          "its `python -m phenaki_jax.tokenize` pass did not finish; rerun that command"
          if unfinished
          else "write it with `python -m phenaki_jax.tokenize`"
        )
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
    if num_steps is not None and num_steps > self.meta["num_steps"]:
      raise ValueError(
        f"the run trains {num_steps} steps, past the {self.meta['num_steps']} pre-tokenised "
        f"steps in {directory}: write more with --num_steps"
      )

  def batch(self, step: int) -> dict:
    if step >= self.meta["num_steps"]:
      raise ValueError(
        f"step {step} is past the {self.meta['num_steps']} pre-tokenised steps in "
        f"{self.directory}: write more with --num_steps"
      )
    first = step - step % self.meta["chunk"]
    if self._cache[0] != first:
      with np.load(chunk_path(self.directory, first)) as z:
        self._cache = (first, {k: z[k] for k in z.files})
    chunk = self._cache[1]
    return {k: v[step - first] for k, v in chunk.items()}

  def iterate(self, start_step: int = 0):
    """(step, batch) from `start_step` to the last step written. It ends there rather than
    raise: a run resumed at its end (killed after its final checkpoint) asks for no batch,
    but a training loop opens the iterator all the same."""
    for step in range(start_step, self.meta["num_steps"]):
      yield step, self.batch(step)


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


def chunk_path(directory: str, first_step: int) -> str:
  return os.path.join(directory, f"chunk_{first_step:08d}.npz")


def pass_meta(config, num_steps: int, chunk: int = CHUNK) -> dict:
  """What `meta.json` holds once a pass of `num_steps` steps in chunks of `chunk` finished."""
  return {**expected_meta(config), "num_steps": num_steps, "chunk": chunk}


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):  # absent, or torn by a kill: not a pass to resume
    return None


def _write_json(path: str, value: dict) -> None:
  """Written whole or not at all (a kill mid-write leaves only the temporary file)."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def start_pass(directory: str, meta: dict) -> set:
  """Prepares `directory` for a pass that will write `meta` (`pass_meta`); returns the first
  steps of the chunks to keep.

  Kept are the chunks that an interrupted or finished pass with exactly these settings wrote
  (renamed into place, so complete); any other chunk is deleted, and `meta.json` goes before
  it, so that no trainer reads the directory until `finish_pass`. The order keeps one rule
  true wherever a kill lands: the chunks present are those of `pending.json` if it exists,
  else of `meta.json` (or of no known pass, and deleted)."""
  os.makedirs(directory, exist_ok=True)
  meta_path, pending_path = os.path.join(directory, META), os.path.join(directory, PENDING)
  meta = json.loads(json.dumps(meta))  # as read back (lists for tuples)
  same = meta in (_read_json(pending_path), _read_json(meta_path))
  if not same:
    if os.path.exists(meta_path):
      os.remove(meta_path)
    for path in glob.glob(os.path.join(directory, "chunk_*.npz")):
      os.remove(path)
  _write_json(pending_path, meta)
  if os.path.exists(meta_path):
    os.remove(meta_path)
  for pattern in ("chunk_*.tmp.npz", "*.json.tmp"):  # left by a kill mid-write
    for path in glob.glob(os.path.join(directory, pattern)):
      os.remove(path)
  firsts = range(0, meta["num_steps"], meta["chunk"])
  return {first for first in firsts if os.path.exists(chunk_path(directory, first))}


def finish_pass(directory: str, meta: dict) -> None:
  """Marks the pass whose chunks are all written as readable: `meta.json`, then no
  `pending.json`."""
  _write_json(os.path.join(directory, META), meta)
  os.remove(os.path.join(directory, PENDING))


def write_chunk(directory: str, first_step: int, batches: list) -> str:
  """Writes the batches of steps first_step, first_step + 1, ... (dicts of codes, is_image,
  caption, context_frames) as one chunk, atomically; returns its path."""
  path = chunk_path(directory, first_step)
  stacked = {
    k: np.stack([np.asarray(b[k], dtype=str if k == "caption" else None) for b in batches])
    for k in ("codes", "is_image", "caption", "context_frames")
  }
  np.savez(path + ".tmp.npz", **stacked)
  os.replace(path + ".tmp.npz", path)
  return path
