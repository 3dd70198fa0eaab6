r"""Seconds per generated clip for 12/24/48 decoding steps, with and without CFG, and per story
segment (continuations decoded at once and stepwise). Prints JSON.

  python benchmarks/sampling.py --tokenizer_dir=workdirs/demo/cvivit \
      --maskgit_dir=workdirs/demo/maskgit
"""

import json
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, __import__("os").path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top

_TOK = flags.DEFINE_string("tokenizer_dir", "workdirs/demo/cvivit", "C-ViViT workdir.")
_MG = flags.DEFINE_string("maskgit_dir", "workdirs/demo/maskgit", "MaskGIT workdir.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per setting (median reported).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k of every call (default: the run's).")
_TEXT_CACHE_ONLY = flags.DEFINE_bool(
  "text_cache_only",
  False,
  "Load no text-encoder weights: the prompts below must be in the "
  "MaskGIT workdir's text cache (a machine without the encoder package).",
)


def median_seconds(fn, repeats):
  fn()  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv):
  del argv
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  sampler = sample.Sampler.from_workdirs(
    _TOK.value, _MG.value, text_cache_only=_TEXT_CACHE_ONLY.value
  )
  if _TOP_K.value is not None:
    sampler.defaults["top_k"] = _TOP_K.value
  prompts = ["a red circle moves left"] * _BATCH.value
  results = {}
  for steps in (12, 24, 48):
    for cfg in (1.0, 3.0):
      s = median_seconds(
        lambda: sampler.generate(prompts, steps=steps, cfg_scale=cfg), _REPEATS.value
      )
      results[f"steps{steps}_cfg{cfg:g}_s_per_clip"] = round(s / _BATCH.value, 4)
  story = [prompts[0], "a red circle moves up", "a red circle moves right"]
  new = sampler.max_frames - 5  # 5 context frames
  # Continuations in one decode, one new time step after another (continue_stepwise), and
  # stepwise with 4 candidates per continuation (continue_candidates, the most typical kept).
  for name, kw in (
    ("at_once", dict(continue_stepwise=False, continue_candidates=1)),
    ("stepwise", dict(continue_stepwise=True, continue_candidates=1)),
    ("stepwise_4_candidates", dict(continue_stepwise=True, continue_candidates=4)),
  ):
    s = median_seconds(
      lambda kw=kw: sampler.story([story] * _BATCH.value, [sampler.max_frames, new, new], **kw), 3
    )
    results[f"story_3_segments_{name}_s_per_story"] = round(s / _BATCH.value, 4)
    results[f"story_{name}_s_per_segment"] = round(s / _BATCH.value / 3, 4)
  print(
    json.dumps(
      {
        "benchmark": "sampling",
        "batch": _BATCH.value,
        "results": results,
        "sampling_defaults": sampler._options(),  # pylint: disable=protected-access
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
