"""The pre-tokenise pass (`python -m phenaki_jax.tokenize`) and the trainer reading it.

The CLI writes, for steps [0, num_steps), the codes of exactly the batches the MaskGIT trainer
would draw; a run with `config.data.pretokenized` pointing at them must train exactly as the run
that tokenises inside its step (same codes, same captions, same order), and a directory written
for another run is refused with the differing key named.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest

from phenaki_jax.data import pretokenized
from phenaki_jax.trainers import maskgit as trainer

import conftest

STEPS = 12
REPO = str(conftest.REPO)


def _config(tokenizer_dir, pretokenized="", total_steps=STEPS, batch_size=None):
  c = conftest.tiny_maskgit_config(tokenizer_dir, total_steps=STEPS)
  c.sample.num_videos = 0
  c.total_steps = total_steps
  c.data.pretokenized = pretokenized
  c.data.batch_size = batch_size or c.data.batch_size
  return c


@pytest.fixture(scope="module")
def tokens_dir(tiny_cvivit_dir, tmp_path_factory):
  """STEPS batches written by the CLI, with the fixture MaskGIT config's data settings."""
  out = str(tmp_path_factory.mktemp("tokens") / "tokens")
  c = _config(tiny_cvivit_dir)
  proc = conftest.run_module(
    "phenaki_jax.tokenize",
    "--config=configs/maskgit_b.py:tiny",
    f"--config.tokenizer.workdir={tiny_cvivit_dir}",
    f"--config.data.batch_size={c.data.batch_size}",
    f"--config.data.static_images={c.data.static_images}",
    f"--out={out}",
    f"--num_steps={STEPS}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote steps 0..11" in proc.stdout
  return out


def test_tokens_are_the_trainers_batches(tokens_dir, tiny_cvivit_dir):
  c = _config(tiny_cvivit_dir)
  with open(os.path.join(tokens_dir, "meta.json")) as f:
    meta = json.load(f)
  assert meta["num_steps"] == STEPS and meta["batch_size"] == c.data.batch_size
  assert len(glob.glob(os.path.join(tokens_dir, "chunk_*.npz"))) == 1
  stored = pretokenized.PretokenizedBatches(tokens_dir, pretokenized.expected_meta(c))
  batches = trainer.make_batches(c, trainer.tokenizer_config(c))
  tok = trainer.load_tokenizer(c)
  for step in (0, 5, STEPS - 1):
    want, got = batches.batch(step), stored.batch(step)
    np.testing.assert_array_equal(got["codes"], np.asarray(tok.encode(want["video"])))
    np.testing.assert_array_equal(got["is_image"], want["is_image"])
    np.testing.assert_array_equal(got["context_frames"], want["context_frames"])
    assert list(got["caption"]) == list(want["caption"])
  # The tiny config trains on turn clips; their given frames travel with the codes.
  assert c.data.turn_rate > 0 and meta["turn_context_frames"] == c.data.turn_context_frames
  context = np.concatenate([stored.batch(step)["context_frames"] for step in range(STEPS)])
  assert set(np.unique(context)) == {0, c.data.turn_context_frames}
  with pytest.raises(ValueError, match="past the 12 pre-tokenised steps"):
    stored.batch(STEPS)


def test_trainer_on_tokens_matches_tokenising_inside_the_step(
  tokens_dir, tiny_cvivit_dir, tmp_path
):
  inline = trainer.main(_config(tiny_cvivit_dir), str(tmp_path / "inline"))
  from_disk = trainer.main(
    _config(tiny_cvivit_dir, pretokenized=tokens_dir), str(tmp_path / "pretokenized")
  )
  assert int(from_disk["state"]["step"]) == STEPS
  a, b = jax.device_get(inline["state"]["params"]), jax.device_get(from_disk["state"]["params"])
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The step count past the written steps fails with what to do.
  with pytest.raises(ValueError, match="write more with --num_steps"):
    trainer.main(
      _config(tiny_cvivit_dir, total_steps=STEPS + 2, pretokenized=tokens_dir),
      str(tmp_path / "pretokenized"),
    )


def test_tokens_of_another_run_are_refused(tokens_dir, tiny_cvivit_dir, tmp_path):
  c = _config(tiny_cvivit_dir, pretokenized=tokens_dir, batch_size=4)
  with pytest.raises(ValueError, match="batch_size=8, but this run has 4"):
    trainer.main(c, str(tmp_path / "other"))
  plain = _config(tiny_cvivit_dir, pretokenized=tokens_dir)
  plain.data.turn_rate = 0.0
  with pytest.raises(ValueError, match="turn_rate=0.2, but this run has 0.0"):
    trainer.main(plain, str(tmp_path / "plain"))
  # A directory written before turn clips could be pre-tokenised (no turn_rate in its meta.json)
  # holds plain clips: it serves a run without turn clips and is refused to one with them.
  old = tmp_path / "old_tokens"
  old.mkdir()
  with open(os.path.join(tokens_dir, "meta.json")) as f:
    meta = json.load(f)
  del meta["turn_rate"], meta["turn_context_frames"]
  (old / "meta.json").write_text(json.dumps(meta))
  pretokenized.PretokenizedBatches(str(old), pretokenized.expected_meta(plain))
  with pytest.raises(ValueError, match="turn_rate=0.0, but this run has 0.2"):
    pretokenized.PretokenizedBatches(str(old), pretokenized.expected_meta(_config(tiny_cvivit_dir)))
  with pytest.raises(FileNotFoundError, match="has no meta.json"):
    trainer.main(_config(tiny_cvivit_dir, pretokenized=str(tmp_path)), str(tmp_path / "other2"))
