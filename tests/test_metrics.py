"""phenaki_jax/metrics.py and `python -m phenaki_jax.evaluate {fvd,recon}`: sets of videos,
FVD with the real I3D weights, reconstruction PSNR/SSIM/LPIPS, cached reference statistics."""

import json
import os

import numpy as np
import pytest

from phenaki_jax import metrics
from phenaki_jax.data import fixture
from phenaki_jax.models import i3d

from conftest import run_module


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  return fixture.build(tmp_path_factory.mktemp("fx") / "media", include_broken=False)


@pytest.fixture(scope="module")
def i3d_params():
  return i3d.load_i3d_params()


def test_sets_of_videos_from_shapes_shards_and_files(media):
  p = media["paths"]
  videos, captions = metrics.load_videos("shapes:eval", num_frames=5, resolution=32, limit=3)
  assert videos.shape == (3, 5, 32, 32, 3) and videos.dtype == np.uint8 and len(captions) == 3
  videos, captions = metrics.load_videos(
    ",".join(p["video_train"]), num_frames=5, resolution=24, fps=8.0
  )
  assert videos.shape == (media["counts"]["video_train"], 5, 24, 24, 3)
  assert all(isinstance(c, str) and c for c in captions)
  videos, captions = metrics.load_videos(p["webvid_videos"], num_frames=3, resolution=16, limit=2)
  assert videos.shape == (2, 3, 16, 16, 3) and captions is None
  with pytest.raises(ValueError, match="no video files match"):
    metrics.load_videos(str(media["out_dir"]) + "/nothing/*.mp4", num_frames=3, resolution=16)


def test_fvd_of_a_set_with_itself_is_zero_and_the_cache_is_reused(media, i3d_params, tmp_path):
  videos, _ = metrics.load_videos(
    ",".join(media["paths"]["video_train"]), num_frames=9, resolution=32
  )
  shuffled = videos[::-1]
  cache = str(tmp_path / "ref.npz")
  same = metrics.fvd(videos, shuffled, i3d_params, real_stats=cache)
  assert abs(same["fvd"]) < 1e-3 and same["num_real"] == len(videos)
  assert same["protocol"]["num_frames"] == 9 and "224" in json.dumps(same["protocol"])
  assert os.path.exists(cache)
  noisy = np.clip(videos.astype(np.int16) + 60, 0, 255).astype(np.uint8)
  cached = metrics.fvd(None, noisy, i3d_params, real_stats=cache)  # the reference from the cache
  fresh = metrics.fvd(videos, noisy, i3d_params)
  assert cached["fvd"] == pytest.approx(fresh["fvd"], rel=1e-9) and fresh["fvd"] > 1.0
  with pytest.raises(ValueError, match="made otherwise"):  # 5-frame clips against 9-frame ones
    metrics.fvd(None, noisy[:, :5], i3d_params, real_stats=cache)


def test_reconstruction_metrics():
  from phenaki_jax.models import vgg  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
  params = vgg.load_lpips_vgg16_params()
  same = metrics.reconstruction(videos, videos, params)
  assert same["psnr"] == pytest.approx(100.0) and same["ssim"] == pytest.approx(1.0)
  assert abs(same["lpips"]) < 1e-6
  worse = metrics.reconstruction(videos, videos // 2, params)
  assert worse["psnr"] < 15 and worse["lpips"] > 0.05 and "lpips_protocol" in worse


def test_fvd_and_recon_from_the_cli(tiny_cvivit_dir, tiny_maskgit_dir, tmp_path):
  """The model's samples for the real set's captions against the real Shapes clips (again with
  the reference statistics cached: the captions still come from the real set; and with a
  sampling flag, which the samples follow), and the tokenizer's reconstructions of held-out
  clips."""
  results = []
  for extra in ([], [], ["--steps=2"]):
    proc = run_module(
      "phenaki_jax.evaluate",
      "fvd",
      "--real=shapes:train",
      "--num_videos=4",
      f"--tokenizer_dir={tiny_cvivit_dir}",
      f"--maskgit_dir={tiny_maskgit_dir}",
      f"--real_stats={tmp_path / 'real.npz'}",
      f"--out={tmp_path}",
      *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results.append(json.loads(proc.stdout[proc.stdout.index("{") :]))
  result, cached, two_steps = results
  assert result["command"] == "fvd" and np.isfinite(result["fvd"]) and result["fvd"] > 0
  assert result["num_fake"] == result["num_real"] == 4
  assert cached["fvd"] == pytest.approx(result["fvd"], rel=1e-6)  # same prompts and seed
  assert np.isfinite(two_steps["fvd"]) and abs(two_steps["fvd"] - result["fvd"]) > 1e-3
  assert os.path.exists(tmp_path / "fvd.json") and os.path.exists(tmp_path / "real.npz")
  proc = run_module(
    "phenaki_jax.evaluate", "recon", f"--tokenizer_dir={tiny_cvivit_dir}", "--num_videos=4"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout[proc.stdout.index("{") :])
  assert 3 < result["psnr"] < 60 and 0 < result["lpips"] < 1  # a 30-step tokenizer
