"""Storage faults: a work directory that cannot be written, or too small, fails before the
first step with a message that says what to do; a checkpoint save that fails mid-run stops the
run, naming the last complete checkpoint, which stays restorable and resumes."""

import errno
import os

import orbax.checkpoint as ocp
import pytest

from phenaki_jax import checkpoint
from phenaki_jax.trainers import cvivit as trainer

from conftest import tiny_cvivit_config


def test_a_workdir_that_cannot_be_written_fails_at_start_up(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match=r"cannot write to the work directory .*a_file/run"):
    trainer.main(tiny_cvivit_config(), str(blocker / "run"))


def test_a_full_disk_fails_before_the_first_step(tmp_path, monkeypatch):
  """The file system shim reports 1 MiB free: less than the tiny C-ViViT's checkpoints need."""
  usage = type("Usage", (), {"total": 2**20, "used": 0, "free": 2**20})
  monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage())
  workdir = tmp_path / "run"
  with pytest.raises(OSError, match=r"1\.0 MiB free, and the run's checkpoints need") as e:
    trainer.main(tiny_cvivit_config(), str(workdir))
  assert e.value.errno == errno.ENOSPC
  assert not os.listdir(workdir / "checkpoints")  # nothing trained, nothing half-written


def test_a_failing_save_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  """The save of step 4 fails (ENOSPC from the storage): the run stops naming step 4 and the
  last complete checkpoint, step 2, which restores; a rerun resumes from it and finishes."""
  config = tiny_cvivit_config()
  config.total_steps, config.checkpoint_every, config.log_every = 6, 2, 2
  config.eval_every = 1000
  clean_save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return clean_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  workdir = str(tmp_path / "run")
  with pytest.raises(OSError, match=r"checkpoint of step 4 .*last complete checkpoint is step 2"):
    trainer.main(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  abstract = trainer.abstract_state(config)["params"]
  checkpoint.load_params(workdir, abstract, step=2)  # restorable
  monkeypatch.setattr(ocp.CheckpointManager, "save", clean_save)
  out = trainer.main(config, workdir)
  assert int(out["state"]["step"]) == 6
