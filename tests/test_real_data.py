"""Real footage end to end: both trainers from every file format of the data fixture
(phenaki_jax/data/fixture.py: webdataset shards, a WebVid-style CSV or parquet index, a TFDS
dataset), broken files among them; the pre-tokenised round trip; two hosts; frames of any size
through the public API. docs/design.md, "Data"."""

import collections
import csv
import json
import os

import numpy as np
import pytest

from phenaki_jax.data import fixture, media, pipeline, pretokenized, tasks
from phenaki_jax.trainers import cvivit as cvivit_trainer
from phenaki_jax.trainers import maskgit as maskgit_trainer

from conftest import run_module, tiny_cvivit_config, tiny_maskgit_config

STEPS = 2


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  """The fixture (with broken/) and its TFDS dataset, built once per test worker."""
  root = tmp_path_factory.mktemp("real")
  built = fixture.build(root / "media")
  fixture.build_tfds(built["out_dir"], root / "tfds")
  return dict(built, tfds_dir=str(root / "tfds"))


def _short(config):
  config.total_steps = config.checkpoint_every = config.eval_every = STEPS
  config.log_every = 1
  return config


def _files(config, **data):
  config.data.source = "files"
  config.data.turn_rate = 0.0
  config.data.update(data)
  return config


def _cvivit_files(real, **data):
  config = _short(tiny_cvivit_config())
  config.data.image_rate = 0.0
  return _files(config, eval_video_shards=real["paths"]["video_eval"][0], **data)


def _skips(train_metrics) -> dict:
  prefix = "data/skipped_"
  return {k[len(prefix) :]: v for k, v in train_metrics.items() if k.startswith(prefix)}


def test_cvivit_from_webdataset_shards_with_broken_ones(real, tmp_path):
  """Video and image shards, the broken shards among them: trained, evaluated on the held-out
  video, and the broken files counted by reason in the metrics."""
  p = real["paths"]
  config = _cvivit_files(
    real,
    video_shards=",".join(p["video_train"] + p["broken_shards"]),
    image_shards=",".join(p["image_train"]),
    image_rate=0.25,
  )
  config.data.batch_size = 8
  out = cvivit_trainer.main(config, str(tmp_path))
  assert int(out["state"]["step"]) == STEPS
  assert np.isfinite(out["eval"]["eval/psnr"]) and out["eval"]["eval/psnr"] > 5
  skips = _skips(out["train"])
  # notatar-00002.tar and truncated-00001.tar (whose complete samples are kept), and some of
  # the broken samples of video-00000.tar.
  assert skips.pop("unreadable_shard") == 2 and skips, skips
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["data"]["source"] == "files"


@pytest.mark.parametrize("index", ["csv", "parquet"])
def test_cvivit_from_a_webvid_index(real, tmp_path, index):
  p = real["paths"]
  config = _cvivit_files(real, video_index=p[f"webvid_train_{index}"], video_dir=p["webvid_videos"])
  config.data.eval_video_shards = ""
  config.data.eval_video_index = p[f"webvid_eval_{index}"]
  out = cvivit_trainer.main(config, str(tmp_path))
  assert int(out["state"]["step"]) == STEPS and np.isfinite(out["eval"]["eval/psnr"])


def test_cvivit_from_tfds(real, tmp_path):
  config = _cvivit_files(
    real,
    tfds_name=fixture.TFDS_NAME,
    tfds_data_dir=real["tfds_dir"],
    tfds_caption_key="caption",
    tfds_fps=fixture.TFDS_FPS,
  )
  out = cvivit_trainer.main(config, str(tmp_path))
  assert int(out["state"]["step"]) == STEPS and np.isfinite(out["eval"]["eval/psnr"])


def test_file_sources_need_held_out_clips(real, tmp_path):
  config = _cvivit_files(real, video_shards=real["paths"]["video_train"][0])
  config.data.eval_video_shards = ""
  with pytest.raises(ValueError, match="eval_video_shards"):
    cvivit_trainer.main(config, str(tmp_path))
  config = _cvivit_files(real)
  with pytest.raises(ValueError, match="video_shards"):
    cvivit_trainer.main(config, str(tmp_path / "b"))


def _maskgit_files(real, tokenizer_dir, **data):
  p = real["paths"]
  config = _short(tiny_maskgit_config(tokenizer_dir, total_steps=STEPS))
  config.code_support_clips = 16
  config.sample.num_videos = 0
  config.data.static_images = False
  return _files(
    config,
    video_shards=",".join(p["video_train"]),
    image_shards=",".join(p["image_train"]),
    **data,
  )


def test_maskgit_from_shards_and_the_pretokenised_round_trip(real, tiny_cvivit_dir, tmp_path):
  """The MaskGIT trains from video and image shards and evaluates FVD (real I3D) on the captions
  of training clips; `python -m phenaki_jax.tokenize` writes the same batches' codes, and a run
  on them matches the run that decoded the files."""
  config = _maskgit_files(real, tiny_cvivit_dir)
  config.eval_metrics.fvd_videos = 4
  decoded = maskgit_trainer.main(config, str(tmp_path / "decoded"))
  assert int(decoded["state"]["step"]) == STEPS
  assert os.path.exists(tmp_path / "decoded" / "code_support.npz")
  assert np.isfinite(decoded["eval"]["eval/fvd"]) and decoded["eval"]["eval/fvd"] > 0
  assert os.path.exists(tmp_path / "decoded" / "fvd_reference.npz")
  config.eval_metrics.fvd_videos = 0

  tokens = tmp_path / "tokens"
  overrides = [
    f"--config.tokenizer.workdir={tiny_cvivit_dir}",
    "--config.data.source=files",
    "--config.data.turn_rate=0",
    "--config.data.static_images=False",
    f"--config.data.video_shards={config.data.video_shards}",
    f"--config.data.image_shards={config.data.image_shards}",
    f"--config.data.batch_size={config.data.batch_size}",
  ]
  proc = run_module(
    "phenaki_jax.tokenize",
    "--config=configs/maskgit_b.py:tiny",
    f"--out={tokens}",
    f"--num_steps={STEPS}",
    *overrides,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  stored = pretokenized.PretokenizedBatches(str(tokens), pretokenized.expected_meta(config))
  assert stored.meta["data"]["video_shards"] == config.data.video_shards

  tok_config = maskgit_trainer.tokenizer_config(config)
  batches = maskgit_trainer.make_batches(config, tok_config)
  from phenaki_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  tok = Tokenizer.from_workdir(tiny_cvivit_dir)
  for step in range(STEPS):
    want, got = batches.batch(step), stored.batch(step)
    np.testing.assert_array_equal(got["caption"], want["caption"])
    np.testing.assert_array_equal(got["is_image"], want["is_image"])
    codes = np.asarray(tok.encode(want["video"]))
    np.testing.assert_array_equal(got["codes"][~want["is_image"]], codes[~want["is_image"]])

  config.data.pretokenized = str(tokens)
  from_codes = maskgit_trainer.main(config, str(tmp_path / "codes"))
  for key in ("loss", "masked_accuracy"):
    if key in decoded["train"]:
      assert from_codes["train"][key] == pytest.approx(decoded["train"][key], rel=1e-4), key


def test_maskgit_cli_trains_from_files(real, tiny_cvivit_dir, tmp_path):
  """The command a user runs: `python -m phenaki_jax.train --config=configs/maskgit_b.py:real`
  with the data's shards on the command line."""
  p = real["paths"]
  proc = run_module(
    "phenaki_jax.train",
    "--config=configs/maskgit_b.py:real",
    f"--workdir={tmp_path}",
    f"--config.tokenizer.workdir={tiny_cvivit_dir}",
    f"--config.data.video_shards={p['video_train'][0]},{p['video_train'][1]}",
    f"--config.data.image_shards={os.path.dirname(p['image_train'][0])}/train-{{00000..00002}}.tar",
    f"--config.total_steps={STEPS}",
    f"--config.checkpoint_every={STEPS}",
    f"--config.eval_every={STEPS}",
    "--config.sample.num_videos=0",
    "--config.code_support_clips=8",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isdir(tmp_path / "checkpoints" / str(STEPS))


def test_two_hosts_read_every_file_once_and_the_mixture_rates(real):
  """Two simulated processes split the shards: together their rows of an epoch cover every
  training clip exactly once, and the 80/20 video/image mixture holds."""
  p = real["paths"]
  config = tasks.default_config(
    source="files",
    video_shards=",".join(p["video_train"]),
    image_shards=",".join(p["image_train"]),
  )
  captions, kinds = collections.Counter(), []
  for process in range(2):
    name = tasks.mixture_from_config(
      config,
      num_frames=5,
      resolution=16,
      video_rate=0.8,
      image_rate=0.2,
      process_index=process,
      process_count=2,
    )
    batches = pipeline.Batches(
      name, 8, num_frames=5, process_index=process, process_count=2, random_crops=False
    )
    videos = [s for s, im in zip(batches.sources, batches.is_image) if not im]
    per_epoch = sum(s.num_examples for s in videos)
    video_rows = [(s, r) for s in range(200) for r in range(4) if not batches.slot(s, r)[0]]
    kinds += [batches.is_image[batches.slot(s, r)[0]] for s in range(200) for r in range(4)]
    for step, row in video_rows[:per_epoch]:  # one epoch of this process's video draws
      captions[str(batches.batch(step)["caption"][row])] += 1
  with open(p["webvid_train_csv"], newline="") as f:
    want = {row["name"] for row in csv.DictReader(f)}  # the same segments' captions
  assert len(want) == real["counts"]["video_train"]
  assert set(captions) == want and set(captions.values()) == {1}
  assert np.mean(kinds) == pytest.approx(0.2, abs=0.02)


def test_sampler_takes_a_full_hd_frame(tiny_sampler):
  """A 1280×720 photograph-sized frame goes into image_to_video and continue_video as it is:
  fitted as training clips are (short side, centre crop), said in the log."""
  frame = np.zeros((720, 1280, 3), np.uint8)
  frame[:, 200:1080] = 200  # bright around the centre square (columns 280..999)
  tok = tiny_sampler.tokenizer
  fitted = tok.fit(frame[None, None])
  assert fitted.shape == (1, 1, tok.image_size, tok.image_size, 3)
  np.testing.assert_array_equal(fitted, media.fit_frames(frame[None, None], tok.image_size))
  assert fitted.min() > 150  # the centre crop, not a squeeze of the whole frame
  video = tiny_sampler.image_to_video(frame, "a red square moving right", seed=0)
  assert video.shape[-3:] == (tok.image_size, tok.image_size, 3)


def test_seqio_reads_the_files_mixture_a_trainer_reads(real):
  """The mixture a config's files describe is a seqio Mixture too: its tasks' datasets give the
  same clips as the trainer's sources (centre crops), the broken samples dropped."""
  import seqio  # pylint: disable=g-import-not-at-top

  p = real["paths"]
  config = tasks.default_config(
    source="files",
    video_shards=",".join(p["video_train"][:1] + p["broken_shards"][:1]),
    image_shards=p["image_train"][0],
  )
  name = tasks.mixture_from_config(
    config, num_frames=5, resolution=16, video_rate=0.8, image_rate=0.2
  )
  mixture = tasks.get_seqio(name)
  assert isinstance(mixture, seqio.Mixture)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert sum(rates.values()) == pytest.approx(1.0)
  video_task = next(t for t in mixture.tasks if "video" in t.name)
  assert rates[video_task.name] == pytest.approx(0.8)
  source = tasks.get_sources(video_task.name)[0][0]
  got = list(video_task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
  usable = []
  for i in range(source.num_examples):
    try:
      usable.append(source.example(i))
    except media.SkipExample:
      pass
  assert len(got) == len(usable) < source.num_examples  # the broken ones dropped
  for a, b in zip(got, usable):
    assert a["video"].shape == (5, 16, 16, 3) and not a["is_image"]
    np.testing.assert_array_equal(a["video"], b["video"])
    assert a["caption"].decode() == b["caption"]
