r"""Pre-tokenise stage-2 training data with the frozen C-ViViT (saves compute at scale).

  python -m phenaki_jax.tokenize --config=configs/maskgit_b.py:tiny --out=workdirs/tokens \
      --num_steps=4000 [--config.tokenizer.workdir=...]

Writes, for training steps [0, num_steps), exactly the batches the MaskGIT trainer would draw
(same mixture, seed and order) in the format of `phenaki_jax.data.pretokenized`; the trainer
reads them when `config.data.pretokenized` names the directory.
"""

import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from phenaki_jax.data import pretokenized
from phenaki_jax.trainers import maskgit as trainer


def main(argv):
  del argv
  config = flags.FLAGS.config
  out, num_steps = flags.FLAGS.out, flags.FLAGS.num_steps
  trainer.validate_config(config)
  tok = trainer.load_tokenizer(config)
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  os.makedirs(out, exist_ok=True)
  for first in range(0, num_steps, pretokenized.CHUNK):
    chunk = []
    for step in range(first, min(first + pretokenized.CHUNK, num_steps)):
      b = batches.batch(step)
      chunk.append(
        dict(
          codes=np.asarray(tok.encode(b["video"])),
          is_image=b["is_image"],
          caption=b["caption"],
          context_frames=b["context_frames"],
        )
      )
    path = pretokenized.write_chunk(out, first, chunk)
    print(f"wrote steps {first}..{first + len(chunk) - 1} to {path}", flush=True)
  pretokenized.write_meta(out, config, num_steps)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A MaskGIT config.", lock_config=True)
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("num_steps", None, "Training steps to pre-tokenise.")
  flags.mark_flags_as_required(["config", "out", "num_steps"])
  app.run(main)
