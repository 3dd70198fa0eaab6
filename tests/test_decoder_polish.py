"""The decoder polish: the decoder trains, the codes do not move, the result loads and samples;
the demo's polish stage finishes atomically and keeps its plan."""

import json
import os

from absl import flags

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from phenaki_jax import config_io, demo, sample
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.data import shapes
from phenaki_jax.trainers import decoder_polish


def test_translate_moves_content_by_the_shift():
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(size=(2, 3, 16, 16, 3)), jnp.float32)
  out = np.asarray(decoder_polish.translate(video, jnp.array([[1.0, 0.0], [0.0, -2.0]])))
  # Whole pixels: a plain shift (right by 1; up by 2), away from the borders.
  np.testing.assert_allclose(out[0, :, :, 2:-2], np.asarray(video)[0, :, :, 1:-3], atol=1e-5)
  np.testing.assert_allclose(out[1, :, 2:-4], np.asarray(video)[1, :, 4:-2], atol=1e-5)
  # Half a pixel: the mean of the two neighbours.
  half = np.asarray(decoder_polish.translate(video, jnp.array([[0.5, 0.0], [0.0, 0.0]])))
  v = np.asarray(video)
  np.testing.assert_allclose(
    half[0, :, :, 3:-3], 0.5 * (v[0, :, :, 3:-3] + v[0, :, :, 2:-4]), atol=1e-5
  )


def test_importing_defines_no_flags():
  # The tests import the module beside others (phenaki_jax.demo has --seed too).
  assert decoder_polish.__name__ not in flags.FLAGS.flags_by_module_dict()


def test_polish_trains_the_decoder_and_keeps_the_codes(tiny_cvivit_dir, tmp_path):
  out_dir = str(tmp_path / "polished")
  result = conftest.run_module(
    "phenaki_jax.trainers.decoder_polish",
    f"--tokenizer_dir={tiny_cvivit_dir}",
    f"--out_dir={out_dir}",
    "--steps=6",
    "--batch=2",
    "--refine_channels=4",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report["steps"] == report["planned_steps"] == 6 and report["out_dir"] == out_dir
  for key in ("round_trip", "mixed_30"):
    assert np.isfinite(report["held_out_psnr_before"][key])
    assert np.isfinite(report["held_out_psnr_after"][key])

  source = tokenizer_lib.Tokenizer.from_workdir(tiny_cvivit_dir)
  polished = tokenizer_lib.Tokenizer.from_workdir(out_dir)
  assert config_io.from_workdir(out_dir).model.refine_channels == 4
  for name, value in source.params.items():
    same = jax.tree.all(
      jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), value, polished.params[name])
    )
    assert same == (name not in decoder_polish.DECODER_PARAMS), name
  assert "refine_in" in polished.params and "refine_out" in polished.params

  spec = shapes.spec_from_config(config_io.from_workdir(tiny_cvivit_dir))
  clip = np.stack([shapes.video_example(spec, 5, i, split="eval")["video"] for i in range(2)])
  np.testing.assert_array_equal(np.asarray(source.encode(clip)), np.asarray(polished.encode(clip)))
  assert not np.array_equal(
    np.asarray(source.reconstruct(clip)), np.asarray(polished.reconstruct(clip))
  )


def test_polish_refuses_to_overwrite(tiny_cvivit_dir, tmp_path):
  with pytest.raises(ValueError, match="new directory"):
    decoder_polish.polish(tiny_cvivit_dir, tiny_cvivit_dir, steps=1)
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "x").write_text("keep me")
  with pytest.raises(FileExistsError, match="not empty"):
    decoder_polish.polish(tiny_cvivit_dir, str(busy), steps=1)
  assert (busy / "x").read_text() == "keep me"
  with pytest.raises(ValueError, match="mix_max"):
    decoder_polish.polish(tiny_cvivit_dir, str(tmp_path / "new"), steps=1, mix_max=1.5)
  assert not os.path.exists(tmp_path / "new")


def test_demo_polish_stage_is_atomic_keeps_its_plan_and_samples(
  tiny_cvivit_dir, tiny_maskgit_dir, tmp_path
):
  polished = str(tmp_path / "cvivit_polished")
  (tmp_path / "cvivit_polished.partial").mkdir()  # an interrupted polish's leftovers
  (tmp_path / "cvivit_polished.partial" / "stale").write_text("")
  report = demo.polish_stage(tiny_cvivit_dir, polished, steps=3, minutes=5.0)
  assert report["steps"] == report["planned_steps"] == 3 and report["out_dir"] == polished
  assert not os.path.exists(polished + ".partial")
  assert os.path.exists(os.path.join(polished, "DONE"))
  assert not os.path.exists(os.path.join(polished, "stale"))
  assert demo.polish_stage(tiny_cvivit_dir, polished, steps=3, minutes=5.0) == report  # done
  with pytest.raises(ValueError, match="--polish_steps=3"):
    demo.polish_stage(tiny_cvivit_dir, polished, steps=1000, minutes=5.0)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  with pytest.raises(FileExistsError, match="no finished polish"):
    demo.polish_stage(tiny_cvivit_dir, str(foreign), steps=3, minutes=5.0)

  # The MaskGIT trained on the source tokenizer samples through the polished one: the same
  # prompt and seed, drawn by another decoder.
  prompt = "a red circle moves left"
  source = sample.Sampler.from_workdirs(tiny_cvivit_dir, tiny_maskgit_dir)
  sampler = sample.Sampler.from_workdirs(polished, tiny_maskgit_dir)
  a, b = np.asarray(source.generate(prompt, seed=0)), np.asarray(sampler.generate(prompt, seed=0))
  assert a.shape == b.shape and b.dtype == np.uint8 and b.shape[0] == sampler.max_frames
  assert not np.array_equal(a, b)
  assert np.abs(a.astype(int) - b.astype(int)).mean() < 30  # 3 steps move little


def test_polish_stops_at_its_time_cap(tiny_cvivit_dir, tmp_path):
  report = decoder_polish.polish(
    tiny_cvivit_dir,
    str(tmp_path / "capped"),
    steps=500,
    batch=1,
    max_seconds=1e-6,
    refine_channels=2,
    log=lambda s: None,
  )
  assert report["steps"] == 1 and report["planned_steps"] == 500
  polished = tokenizer_lib.Tokenizer.from_workdir(str(tmp_path / "capped"))
  assert "refine_in" in polished.params
