r"""Milliseconds to generate one Shapes example (docs/design.md, "The Shapes benchmark"), per kind
of example, on the host CPU. Prints JSON.

  python benchmarks/shapes_data.py [--examples=50] [--repeats=5] [--resolution=32]

For each kind (a video clip, an image, a turn clip, a three-segment story) it generates
`--examples` consecutive indices once as a warm-up, then `--repeats` more times, and reports the
median over the repeats of the mean milliseconds per example, with the fastest repeat. The data
is generated on the fly during training, so a 9-frame 32x32 clip is meant to take well under
10 ms (`target_ms_per_video`) on a 2-core CPU.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top

_EXAMPLES = flags.DEFINE_integer("examples", 50, "Examples (consecutive indices) per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per kind (median reported).")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "ShapesSpec.resolution (pixels).")
_FRAMES = flags.DEFINE_integer("num_frames", 9, "ShapesSpec.num_frames.")
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed.")

TARGET_MS_PER_VIDEO = 10.0


def ms_per_example(make, examples: int, repeats: int) -> dict:
  """Median and fastest mean ms per example of `make(index)` over `repeats` timed passes."""
  for index in range(examples):  # warm-up: imports, caches
    make(index)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for index in range(examples):
      make(index)
    times.append((time.perf_counter() - start) / examples)
  return {
    "ms_median": round(1e3 * float(np.median(times)), 3),
    "ms_min": round(1e3 * min(times), 3),
  }


def main(argv):
  del argv
  from phenaki_jax.data import shapes  # pylint: disable=g-import-not-at-top

  spec = shapes.ShapesSpec(resolution=_RESOLUTION.value, num_frames=_FRAMES.value)
  seed, frames = _SEED.value, spec.num_frames
  context = max(1, frames // 2)
  stories = [shapes.random_story_prompts(spec, seed, i, 3, frames) for i in range(_EXAMPLES.value)]
  kinds = {
    "video": lambda i: shapes.video_example(spec, seed, i),
    "image": lambda i: shapes.image_example(spec, seed, i),
    f"turn_context{context}": lambda i: shapes.turn_example(spec, seed, i, context),
    "story_3_segments": lambda i: shapes.story_example(spec, seed, i, stories[i], frames),
  }
  per_kind = {
    name: ms_per_example(make, _EXAMPLES.value, _REPEATS.value) for name, make in kinds.items()
  }
  print(
    json.dumps(
      {
        "benchmark": "shapes_data",
        "resolution": spec.resolution,
        "num_frames": frames,
        "examples": _EXAMPLES.value,
        "repeats": _REPEATS.value,
        "ms_per_example": per_kind,
        "target_ms_per_video": TARGET_MS_PER_VIDEO,
        "video_within_target": per_kind["video"]["ms_median"] < TARGET_MS_PER_VIDEO,
        "machine": _common.machine(),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
