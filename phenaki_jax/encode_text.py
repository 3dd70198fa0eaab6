r"""Pre-computes text embeddings for a caption file (how a T5-XXL run is prepared).

  python -m phenaki_jax.encode_text --config=configs/maskgit_b.py --captions=captions.txt \
      --out=/data/text_cache

`--config` is an experiment config (its `text_encoder` field is used) or a text-encoder config
itself. Captions are read one per line (blank lines included: the empty caption is the
classifier-free-guidance null prompt and is always encoded). Embeddings go to the on-disk cache
format of `phenaki_jax.text`: `OUT/<encoder identity>/part-*.safetensors`. Give the trainer the
same directory as its text cache and it encodes nothing; with
`--config.text_encoder.cache_only=True` it does not load the encoder either. Prints a JSON
summary.
"""

import json
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from phenaki_jax import text

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config (with .text_encoder) or a text-encoder config.",
  lock_config=True,
)
_CAPTIONS = flags.DEFINE_string("captions", None, "Text file, one caption per line.")
_OUT = flags.DEFINE_string("out", None, "Cache directory to write the embeddings to.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per encode call.")


def main(argv):
  del argv
  config = _CONFIG.value
  cfg = config.text_encoder if "text_encoder" in config else config
  if cfg.get("cache_only", False):
    raise ValueError(
      "config.text_encoder.cache_only=True: encode_text runs the encoder; set "
      "--config.text_encoder.cache_only=False"
    )
  with open(_CAPTIONS.value, encoding="utf-8") as f:
    captions = list(dict.fromkeys([line.rstrip("\r\n") for line in f] + [""]))
  start = time.perf_counter()
  encoder = text.TextEncoder.from_config(cfg, cache_dir=_OUT.value)
  loaded = time.perf_counter()
  for i in range(0, len(captions), _BATCH.value):
    encoder.encode(captions[i : i + _BATCH.value])
  done = time.perf_counter()
  print(
    json.dumps(
      dict(
        identity=encoder.identity,
        out=f"{_OUT.value}/{encoder.identity}",
        captions=len(captions),
        dim=encoder.dim,
        max_length=encoder.max_length,
        forward_batches=encoder.forward_batches,
        load_s=round(loaded - start, 3),
        encode_s=round(done - loaded, 3),
      )
    )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "captions", "out"])
  app.run(main)
