"""Text-encoder throughput on this machine, printed as JSON (results: BENCHMARKS.md).

  python benchmarks/text_encoders.py [--t5_size=base] [--captions=512]

Measures captions/s, after compilation, for:
  * MiniLM-L6 (the embedded default; real weights), batches of 256, max_length 16;
  * a T5-base-sized encoder with random weights (architecture cost only), batches of 64;
  * the cache: the same captions again from memory, and from disk in a fresh encoder.
Captions are unique per measurement so the encoder really runs. Runs in well under a minute on
the 2-core CPU.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import ml_collections
import numpy as np

from phenaki_jax import text

COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")


def captions(n: int, tag: str) -> list[str]:
  """n distinct Shapes-style captions (a number makes each unique)."""
  return [
    f"a {COLORS[i % 8]} {SHAPES[i // 8 % 3]} moves {DIRECTIONS[i // 24 % 4]} {tag}{i}"
    for i in range(n)
  ]


def throughput(encoder: text.TextEncoder, batch: int, n: int, tag: str) -> float:
  """captions/s over n fresh captions, in batches of `batch` (compiled beforehand)."""
  encoder.encode(captions(batch, tag + "warm"))  # compile this bucket
  todo = captions(n, tag)
  start = time.perf_counter()
  for i in range(0, n, batch):
    encoder.encode(todo[i : i + batch])
  return n / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--t5_size", default="base")
  parser.add_argument("--captions", type=int, default=512)
  parser.add_argument("--t5_captions", type=int, default=128)
  args = parser.parse_args()
  result = dict(
    device=str(jax.devices()[0]),
    jax=jax.__version__,
    cpus=os.cpu_count(),
    load_average_1min=round(os.getloadavg()[0], 2),
  )

  # MiniLM (default config).
  cfg = text.default_config()
  start = time.perf_counter()
  minilm = text.TextEncoder.from_config(cfg)
  result["minilm_load_s"] = round(time.perf_counter() - start, 2)
  start = time.perf_counter()
  minilm.encode(captions(256, "compile"))
  result["minilm_first_batch_256_s_incl_compile"] = round(time.perf_counter() - start, 2)
  result["minilm_captions_per_s_batch256"] = round(throughput(minilm, 256, args.captions, "m"), 1)
  result["minilm_captions_per_s_batch8"] = round(throughput(minilm, 8, 64, "s"), 1)
  minilm.tokenize(captions(args.captions, "tok"))  # warm-up
  start = time.perf_counter()
  minilm.tokenize(captions(args.captions, "tok"))
  result["minilm_tokenize_captions_per_s"] = round(args.captions / (time.perf_counter() - start))

  # Cache effect on the same captions.
  with tempfile.TemporaryDirectory() as cache_dir:
    writer = text.TextEncoder.from_config(cfg, cache_dir=cache_dir)
    todo = captions(args.captions, "cache")
    start = time.perf_counter()
    for i in range(0, len(todo), 256):
      writer.encode(todo[i : i + 256])
    miss = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(todo), 256):
      writer.encode(todo[i : i + 256])
    memory_hit = time.perf_counter() - start
    reader = text.TextEncoder.from_config(cfg, cache_dir=cache_dir)
    start = time.perf_counter()
    for i in range(0, len(todo), 256):
      reader.encode(todo[i : i + 256])
    disk_hit = time.perf_counter() - start
    assert reader.forward_batches == 0
  n = len(todo)
  result["cache"] = dict(
    encoder="minilm",
    captions=n,
    miss_captions_per_s_incl_disk_write=round(n / miss, 1),
    memory_hit_captions_per_s=round(n / memory_hit, 1),
    disk_hit_captions_per_s_fresh_encoder=round(n / disk_hit, 1),
    memory_speedup=round(miss / memory_hit, 1),
    disk_speedup=round(miss / disk_hit, 1),
  )

  # T5 of a given size, random weights (a tiny SentencePiece vocabulary trained here).
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions(200, "")),
      model_prefix=os.path.join(tmp, "sp"),
      vocab_size=64,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      hard_vocab_limit=False,
      minloglevel=2,
    )
    t5_cfg = ml_collections.ConfigDict(
      dict(
        name="t5",
        size=args.t5_size,
        checkpoint="",
        vocab=os.path.join(tmp, "sp.model"),
        max_length=16,
        dtype="float32",
      )
    )
    start = time.perf_counter()
    t5 = text.TextEncoder.from_config(t5_cfg, allow_random_init=True)
    result["t5_size"] = args.t5_size
    result["t5_params_millions"] = round(
      sum(np.size(x) for x in jax.tree.leaves(t5.params)) / 1e6, 1
    )
    result["t5_init_s"] = round(time.perf_counter() - start, 2)
    result["t5_captions_per_s_batch64"] = round(throughput(t5, 64, args.t5_captions, "t"), 1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
