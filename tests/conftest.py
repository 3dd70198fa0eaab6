"""Shared fixtures: a shrunken C-ViViT and a MaskGIT trained on it for a few steps.

Both are trained once per pytest run. Under pytest-xdist every worker has its own fixtures, so
the runs go to a directory shared by all workers (the parent of each worker's basetemp) behind a
file lock: the first worker to need a run trains it and the others reuse its work directory.
The models are barely trained — enough for the mechanics of sampling, evaluation and resume,
not for quality.

No XLA device-count flags are set here: tests that need fake devices run in a subprocess.

XLA compilation dominates these tests on a CPU, and several of them compile the same programs
(the trainers' steps in resumed runs, the sampler's decode in-process and in the CLIs), so a
persistent compilation cache is enabled for this process and its subprocesses, under the system
temp directory (set PHENAKI_TEST_COMPILATION_CACHE=0 to disable it, or to a path to move it).
Entries are keyed by the exact program, compiler options and JAX version, so they are never stale.
"""

import getpass
import os
import pathlib
import subprocess
import sys
import tempfile

import filelock
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _enable_compilation_cache() -> None:
  setting = os.environ.get("PHENAKI_TEST_COMPILATION_CACHE", "")
  if setting == "0":
    return
  path = setting or os.path.join(
    tempfile.gettempdir(), f"phenaki_jax_test_xla_cache_{getpass.getuser()}"
  )
  # Environment first, so that the subprocesses (the CLIs under test) inherit it.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(1 << 30))  # LRU beyond 1 GiB
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
  )
  jax.config.update(
    "jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
  )


_enable_compilation_cache()


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root on the CPU, output captured."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def load_config(name: str, variant: str):
  """`configs/<name>.py:<variant>`, unlocked (tests shrink it)."""
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

  config = config_io.from_file(name, variant)
  config.unlock()
  return config


def tiny_cvivit_config():
  """configs/cvivit_b.py:tiny shrunken further (one layer each way, 64 codes), 30 steps."""
  c = load_config("cvivit_b", "tiny")
  c.model.update(
    dict(width=32, mlp_dim=64, num_heads=2, spatial_depth=1, temporal_depth=1, codebook_size=64)
  )
  c.data.batch_size = 4
  c.data.prefetch = 2
  c.eval.num_clips = 4
  c.eval.batch_size = 4
  c.eval.num_videos = 2
  c.losses.adversarial = 0.0
  # The tiny default's peak lr (8e-3) is tuned for its 3000 steps; the trainer and sampler tests
  # were sized on this 30-step tokenizer at 2e-3 (its codes' spread, which they rely on).
  c.optim.lr = 2e-3
  c.total_steps = 30
  c.checkpoint_every = 30
  c.eval_every = 30
  c.log_every = 10
  return c


def numpy_init(model, *inputs, seed=0):
  """(abstract boxed variables, params): `model.init`'s tree filled from numpy.

  Compiling `model.init` costs 20-30 s on this 2-core CPU (every random initializer is its own
  threefry + erfinv kernel), so the tests draw comparable weights on the host and keep
  `model.init` abstract (`jax.eval_shape`, which also yields the logical axis names).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['scale']"):  # LayerNorm scales
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)

  return abstract, jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract)["params"])


MASKGIT_STEPS = 120


def tiny_maskgit_config(tokenizer_dir: str, total_steps: int = MASKGIT_STEPS):
  """configs/maskgit_b.py:tiny shrunken (width 32, one block) on the C-ViViT in tokenizer_dir.

  120 steps at lr 3e-3 (10 warm-up steps, cosine to the end): long enough for the loss to fall
  well below log K (test_maskgit_trainer.py reads this run's logs), short enough to cost little
  more than its compilation. Text dropout and the image/video mixture are the defaults; images
  stay 1-frame videos (the paper's way, whose image path the trainer tests check), not the tiny
  default's static clips (tested on their own in test_pipeline.py and test_maskgit_trainer.py).
  """
  c = load_config("maskgit_b", "tiny")
  c.tokenizer.workdir = str(tokenizer_dir)
  c.model.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
  c.data.batch_size = 8
  c.data.prefetch = 2
  c.data.static_images = False
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 10
  c.optim.decay_steps = total_steps
  c.total_steps = total_steps
  c.checkpoint_every = total_steps
  c.eval_every = total_steps
  c.log_every = 20
  c.sample.num_videos = 1
  # One sample per clip and continuation, not refined: the sampler tests compare them with
  # single decodes (test_sample.py tests the tiny default's candidates, refinement and sweeps
  # on their own).
  c.sample.continue_candidates = 1
  c.sample.candidates = 1
  c.sample.refine_fraction = 0.0
  c.sample.refine_sweeps = 0
  c.code_support_clips = 128
  return c


def _shared_run(tmp_path_factory, name: str, train) -> str:
  """`train(workdir)` once across all xdist workers; returns the (finished) workdir."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # shared by the workers of this pytest run
  workdir = root / name
  done = root / f"{name}.done"
  with filelock.FileLock(str(root / f"{name}.lock")):
    if not done.exists():
      train(str(workdir))
      done.touch()
  return str(workdir)


@pytest.fixture(scope="session")
def tiny_cvivit_dir(tmp_path_factory) -> str:
  """Work directory of a 30-step shrunken C-ViViT (config.json + checkpoint at step 30)."""

  def train(workdir):
    from phenaki_jax.trainers import cvivit  # pylint: disable=g-import-not-at-top

    cvivit.main(tiny_cvivit_config(), workdir)

  return _shared_run(tmp_path_factory, "tiny_cvivit", train)


@pytest.fixture(scope="session")
def tiny_maskgit_dir(tmp_path_factory, tiny_cvivit_dir) -> str:
  """Work directory of a 120-step shrunken MaskGIT trained on `tiny_cvivit_dir`."""

  def train(workdir):
    from phenaki_jax.trainers import maskgit  # pylint: disable=g-import-not-at-top

    maskgit.main(tiny_maskgit_config(tiny_cvivit_dir), workdir)

  return _shared_run(tmp_path_factory, "tiny_maskgit", train)


@pytest.fixture(scope="session")
def tiny_sampler(tiny_cvivit_dir, tiny_maskgit_dir):
  """`phenaki_jax.sample.Sampler` over the two fixture runs (shared: its jitted decode is too)."""
  from phenaki_jax import sample  # pylint: disable=g-import-not-at-top

  return sample.Sampler.from_workdirs(tiny_cvivit_dir, tiny_maskgit_dir)
