"""The demo's stage plans: --stageN_steps set the schedule, the caps scale, a started run is kept."""

import pytest

from phenaki_jax import config_io, demo
from phenaki_jax.trainers import common


def test_default_plans_are_the_configs():
  c1 = demo.stage_config("cvivit_b", "/nonexistent/cvivit", 0, 10.0, minutes_given=False)
  c2 = demo.stage_config("maskgit_b", "/nonexistent/maskgit", 0, 18.0, minutes_given=False)
  tiny1, tiny2 = config_io.from_file("cvivit_b", "tiny"), config_io.from_file("maskgit_b", "tiny")
  for c, tiny, minutes in ((c1, tiny1, 10.0), (c2, tiny2, 18.0)):
    assert c.total_steps == c.optim.decay_steps == tiny.total_steps
    assert c.max_train_seconds == pytest.approx(60 * minutes)


def test_more_steps_stretch_the_schedule_and_the_cap():
  steps = 3 * config_io.from_file("maskgit_b", "tiny").total_steps
  c = demo.stage_config("maskgit_b", "/nonexistent/maskgit", steps, 18.0, minutes_given=False)
  assert c.total_steps == c.optim.decay_steps == steps
  assert c.max_train_seconds == pytest.approx(3 * 18 * 60)  # 3× the steps, 3× the cap
  c = demo.stage_config("maskgit_b", "/nonexistent/maskgit", 30, 18.0, minutes_given=False)
  assert c.total_steps == c.optim.decay_steps == 30
  assert c.max_train_seconds == pytest.approx(18 * 60)  # fewer steps: the cap is not cut
  c = demo.stage_config("cvivit_b", "/nonexistent/cvivit", 4500, 25.0, minutes_given=True)
  assert c.total_steps == c.optim.decay_steps == 4500
  assert c.max_train_seconds == pytest.approx(25 * 60)  # a cap given is kept


def test_a_started_run_keeps_its_steps(tmp_path):
  workdir = str(tmp_path / "maskgit")
  common.setup_workdir(demo.stage_config("maskgit_b", workdir, 0, 18.0), workdir)
  steps = config_io.from_file("maskgit_b", "tiny").total_steps
  assert demo.stage_config("maskgit_b", workdir, 0, 18.0).total_steps == steps  # resumes
  with pytest.raises(ValueError, match=f"--stage2_steps={steps}"):
    demo.stage_config("maskgit_b", workdir, 3 * steps, 18.0)
  workdir = str(tmp_path / "cvivit")
  common.setup_workdir(demo.stage_config("cvivit_b", workdir, 4500, 10.0), workdir)
  with pytest.raises(ValueError, match="--stage1_steps=4500"):
    demo.stage_config("cvivit_b", workdir, 0, 10.0)


def test_seed_retrains_with_other_streams_and_a_started_run_keeps_its_seed(tmp_path):
  base = [demo.stage_config(n, "/nonexistent", 0, 10.0) for n in ("cvivit_b", "maskgit_b")]
  for seed in (1, 2):
    moved = [
      demo.stage_config(n, "/nonexistent", 0, 10.0, seed=seed) for n in ("cvivit_b", "maskgit_b")
    ]
    for b, m in zip(base, moved):
      assert m.seed == b.seed + seed and m.data.seed == b.data.seed + 2 * seed
  data_seeds = [
    demo.stage_config(n, "/nonexistent", 0, 10.0, seed=s).data.seed
    for s in range(3)
    for n in ("cvivit_b", "maskgit_b")
  ]
  assert len(set(data_seeds)) == 6  # no two stages or retrainings share a stream
  workdir = str(tmp_path / "cvivit")
  common.setup_workdir(demo.stage_config("cvivit_b", workdir, 0, 10.0, seed=1), workdir)
  assert demo.stage_config("cvivit_b", workdir, 0, 10.0, seed=1).seed == base[0].seed + 1
  with pytest.raises(ValueError, match="--seed"):
    demo.stage_config("cvivit_b", workdir, 0, 10.0)
