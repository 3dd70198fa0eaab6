r"""Pre-tokenise stage-2 training data with the frozen C-ViViT (saves compute at scale).

  python -m phenaki_jax.tokenize --config=configs/maskgit_b.py:tiny --out=workdirs/tokens \
      --num_steps=4000 [--config.tokenizer.workdir=...]

Writes, for training steps [0, num_steps), exactly the batches the MaskGIT trainer would draw
(same mixture, seed and order), as chunks `chunk_{first_step:08d}.npz` (no pickle) holding
codes int32 [S, B, t, h, w], is_image bool [S, B], caption str [S, B] and context_frames int32
[S, B] (a turn clip's given frames, 0 for the rest), plus `meta.json`. The
trainer reads them when `config.data.pretokenized` names the directory; resuming stays exact
because batches are addressed by step.
"""
import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

CHUNK = 100
# What a meta.json written before a key existed holds for it (the key's old, fixed behaviour).
_META_DEFAULTS = {"turn_rate": 0.0, "static_images": False}



class PretokenizedBatches:
  """Reads what `main` wrote: `batch(step)` → dict(codes, is_image, caption, context_frames)."""

  def __init__(self, directory: str, expect: dict):
    path = os.path.join(directory, "meta.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.data.pretokenized={directory!r} has no meta.json: write it "
                              f"with `python -m phenaki_jax.tokenize`")
    with open(path) as f:
      self.meta = json.load(f)
    for key, value in expect.items():
      written = self.meta.get(key, _META_DEFAULTS.get(key))
      if written != value:
        raise ValueError(f"config.data.pretokenized={directory!r} was written with {key}="
                         f"{written!r}, but this run has {value!r}")
    self.directory = directory
    self._cache = (None, None)

  def batch(self, step: int) -> dict:
    if step >= self.meta["num_steps"]:
      raise ValueError(f"step {step} is past the {self.meta['num_steps']} pre-tokenised steps in "
                       f"{self.directory}: write more with --num_steps")
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
  meta = {"tokenizer_workdir": os.path.abspath(config.tokenizer.workdir),
          "batch_size": config.data.batch_size, "seed": config.data.seed,
          "video_rate": config.data.video_rate, "image_rate": config.data.image_rate,
          "turn_rate": config.data.turn_rate, "static_images": bool(config.data.static_images)}
  if config.data.turn_rate > 0:
    meta["turn_context_frames"] = config.data.turn_context_frames
  return meta


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from phenaki_jax.models import cvivit  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import maskgit as trainer  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  out, num_steps = flags.FLAGS.out, flags.FLAGS.num_steps
  trainer.validate_config(config)
  tok = trainer.load_tokenizer(config)
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  os.makedirs(out, exist_ok=True)
  encode = jax.jit(lambda p, v: tok.model.apply({"params": p}, cvivit.to_model_range(v),
                                                method=cvivit.CViViT.encode))
  for first in range(0, num_steps, CHUNK):
    codes, is_image, captions, context = [], [], [], []
    for step in range(first, min(first + CHUNK, num_steps)):
      b = batches.batch(step)
      codes.append(np.asarray(encode(tok.params, b["video"])))
      is_image.append(b["is_image"])
      captions.append(np.asarray(b["caption"], dtype=str))
      context.append(b["context_frames"])
    path = os.path.join(out, f"chunk_{first:08d}.npz")
    np.savez(path + ".tmp.npz", codes=np.stack(codes), is_image=np.stack(is_image),
             caption=np.stack(captions), context_frames=np.stack(context))
    os.replace(path + ".tmp.npz", path)
    print(f"wrote steps {first}..{first + len(codes) - 1} to {path}", flush=True)
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump({**expected_meta(config), "num_steps": num_steps, "chunk": CHUNK}, f, indent=2)


if __name__ == "__main__":
  # Flags are defined here, not at import: the trainer imports this module beside train.py's.
  config_flags.DEFINE_config_file("config", None, "A MaskGIT config.", lock_config=True)
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("num_steps", None, "Training steps to pre-tokenise.")
  flags.mark_flags_as_required(["config", "out", "num_steps"])
  app.run(main)
