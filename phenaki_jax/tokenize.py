r"""Pre-tokenise stage-2 training data with the frozen C-ViViT (saves compute at scale).

  python -m phenaki_jax.tokenize --config=configs/maskgit_b.py:tiny --out=workdirs/tokens \
      --num_steps=4000 [--config.tokenizer.workdir=...]

Writes, for training steps [0, num_steps), exactly the batches the MaskGIT trainer would draw
(same mixture, seed and order) in the format of `phenaki_jax.data.pretokenized`; the trainer
reads them when `config.data.pretokenized` names the directory. A pass that was stopped (or
killed) resumes when the same command is rerun: the chunks it finished are kept, and the
directory is readable only once every chunk is written.
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from phenaki_jax.data import pretokenized
from phenaki_jax.trainers import maskgit as trainer


def main(argv):
  del argv
  config = flags.FLAGS.config
  out, num_steps, chunk = flags.FLAGS.out, flags.FLAGS.num_steps, flags.FLAGS.chunk_steps
  trainer.validate_config(config)
  meta = pretokenized.pass_meta(config, num_steps, chunk)
  kept = pretokenized.start_pass(out, meta)
  tok = trainer.load_tokenizer(config)
  batches = trainer.make_batches(config, trainer.tokenizer_config(config))
  for first in range(0, num_steps, chunk):
    last = min(first + chunk, num_steps) - 1
    if first in kept:
      print(f"kept steps {first}..{last} (written by an interrupted pass)", flush=True)
      continue
    steps = []
    for step in range(first, last + 1):
      b = batches.batch(step)
      steps.append(
        dict(
          codes=np.asarray(tok.encode(b["video"])),
          is_image=b["is_image"],
          caption=b["caption"],
          context_frames=b["context_frames"],
        )
      )
    path = pretokenized.write_chunk(out, first, steps)
    print(f"wrote steps {first}..{last} to {path}", flush=True)
  pretokenized.finish_pass(out, meta)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A MaskGIT config.", lock_config=True)
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("num_steps", None, "Training steps to pre-tokenise.")
  flags.DEFINE_integer(
    "chunk_steps", pretokenized.CHUNK, "Steps per file (the unit a stopped pass resumes by).", 1
  )
  flags.mark_flags_as_required(["config", "out", "num_steps"])
  app.run(main)
