r"""Paper Table 2 on Shapes: image/video mixture rates 0/100, 20/80, 50/50. For each, train the
tiny MaskGIT on the same frozen C-ViViT for the same budget and report held-out and image-only
prompt-following (the Shapes evaluator). Prints JSON. Takes 3 × (budget + ~2 min).

  python benchmarks/mixture_ablation.py --tokenizer_dir=workdirs/demo/cvivit --seconds=660
  python benchmarks/mixture_ablation.py --tokenizer_dir=workdirs/demo/cvivit --steps=650

--steps fixes the number of updates instead (and plans the cosine over them), so that the
comparison does not depend on how busy the machine is.
"""

import json
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # pylint: disable=g-import-not-at-top
from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

_TOK = flags.DEFINE_string("tokenizer_dir", "workdirs/demo/cvivit", "A trained C-ViViT workdir.")
_SECONDS = flags.DEFINE_float("seconds", 660.0, "Training budget per mixture.")
_STEPS = flags.DEFINE_integer("steps", 0, "> 0: train this many steps per mixture instead.")
_RATES = flags.DEFINE_list("image_rates", ["0.0", "0.2", "0.5"], "Image fractions to compare.")
_STATIC = flags.DEFINE_bool(
  "static_images",
  None,
  "Images as static clips (true) or as the "
  "paper's 1-frame videos (false); unset = the tiny config's (static).",
)


def main(argv):
  del argv
  from phenaki_jax import evaluate, sample  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import maskgit  # pylint: disable=g-import-not-at-top

  spec = evaluate.shapes_spec(_TOK.value)
  rows = []
  for rate in map(float, _RATES.value):
    config = config_io.from_file("maskgit_b", "tiny")
    with config.unlocked():
      config.tokenizer.workdir = _TOK.value
      if _STEPS.value > 0:
        config.total_steps = config.optim.decay_steps = _STEPS.value
      else:
        config.max_train_seconds = _SECONDS.value
      config.sample.num_videos = 0
      config.data.image_rate, config.data.video_rate = rate, 1.0 - rate
      if _STATIC.value is not None:
        config.data.static_images = _STATIC.value
    workdir = tempfile.mkdtemp(prefix=f"mix_{rate}_")
    out = maskgit.main(config, workdir)
    sampler = sample.Sampler.from_workdirs(_TOK.value, workdir)
    res = evaluate.evaluate_shapes(sampler, spec, split="val", num_stories=4)
    rows.append(
      {
        "video_pct": round(100 * (1 - rate)),
        "image_pct": round(100 * rate),
        "static_images": bool(config.data.static_images),
        "steps": int(out["state"]["step"]),
        "train_seconds": round(out["seconds"], 1),
        "seen_all": res["seen"]["all_accuracy"],
        "heldout_color": res["heldout"]["color_accuracy"],
        "heldout_all": res["heldout"]["all_accuracy"],
        "image_only_all": res["image_only"]["all_accuracy"],
        "image_only_color": res["image_only"]["color_accuracy"],
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  print(
    json.dumps(
      {"benchmark": "mixture_ablation", "rows": rows, "machine": _common.machine()}, indent=2
    )
  )


if __name__ == "__main__":
  app.run(main)
