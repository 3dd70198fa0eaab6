"""docs/design.md, invariant 5: a C-ViViT train step on a mesh of 8 (fake CPU) devices gives the same
loss and updated parameters as on one device, up to float tolerance.

The 8 devices need `XLA_FLAGS` set before jax is imported, so the meshes run in a subprocess
(with a timeout: XLA's CPU collectives can deadlock, and a hang must fail, not stall the suite).
Meshes ('data', 'fsdp', 'model'): (1, 1, 1) on one device, (8, 1, 1) and (2, 2, 2) — the last
splits batch rows, the width (fsdp) and heads/MLP/codebook rows (model). Two steps each (the
warm-up makes step 0's learning rate 0; step 1 moves every parameter).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phenaki_jax import sharding

from conftest import REPO

MESHES = ((1, 1, 1), (8, 1, 1), (2, 2, 2))
LR = 2e-3  # conftest.tiny_cvivit_config's peak learning rate
DATA_SEED = 1

SCRIPT = r"""
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_cvivit_config
from phenaki_jax import sharding
from phenaki_jax.models import discriminator
from phenaki_jax.trainers import cvivit as trainer

assert jax.device_count() == 8, jax.devices()
config = tiny_cvivit_config()
config.model.num_heads = 2            # divisible by the model axis (2)
# Whole-frame encoder attention: at the tiny default (radius 0) the encoder's spatial query/key
# get an exactly zero gradient (one allowed key per query), which Adam turns into noise-sized
# steps, so they could not be compared to float tolerance.
config.model.encoder_spatial_radius = -1
config.data.batch_size = 8
# Data whose encoder outputs have no near-tie between two codes: a tie (to float noise) may go
# either way under another summation order, and the step would then differ by design.
config.data.seed = int(sys.argv[4])
config.optim.warmup_steps = 1         # lr 0 at step 0, the peak at step 1
assert config.optim.lr == float(sys.argv[3])
config.disc.channels = (4, 8)
model = trainer.build_model(config)
disc = discriminator.VideoDiscriminator(tuple(config.disc.channels))
tx, disc_tx = trainer.make_optimizers(config)
init_fn = trainer.make_init_fn(model, disc, tx, disc_tx, num_frames=config.data.num_frames,
                               ema=False)
init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
batches = trainer.make_batches(config)
step_fn = functools.partial(trainer.train_step, model=model, disc=disc, tx=tx, disc_tx=disc_tx,
                            config=config, adversarial=False)
results = {}
for shape in json.loads(sys.argv[1]):
  mesh = sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
  state, shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  kernel = state["params"]["enc_spatial"]["block_0"]["mlp"]["fc1"]["kernel"]
  info = {"init": jax.device_get(state["params"]),
          "fc1_kernel_shards": len({tuple((s.start, s.stop) for s in idx)
                                    for idx in kernel.sharding.devices_indices_map(
                                        kernel.shape).values()})}
  repl = sharding.replicated(mesh)
  step = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh), repl),
                 out_shardings=(shardings, repl))
  losses = []
  with sharding.rules_in_force(mesh):
    for i in range(2):
      batch = sharding.put_global_batch({"video": batches.batch(i)["video"]}, mesh)
      state, metrics = step(state, batch, train_rng)
      losses.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  info.update(metrics=losses, state=jax.device_get(state))
  results[str(tuple(shape))] = info
  print("done", shape, losses[-1]["loss"], flush=True)
np.save(sys.argv[2], results, allow_pickle=True)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding") / "results.npy"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      SCRIPT,
      json.dumps([list(m) for m in MESHES]),
      str(out),
      str(LR),
      str(DATA_SEED),
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=480,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return np.load(out, allow_pickle=True).item()


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}/{k}")
  elif isinstance(tree, (tuple, list)):
    for i, v in enumerate(tree):
      yield from _leaves(v, f"{prefix}[{i}]")
  elif hasattr(tree, "_fields"):
    for k in tree._fields:
      yield from _leaves(getattr(tree, k), f"{prefix}.{k}")
  elif tree is not None and not isinstance(tree, (int, float)) or isinstance(tree, np.ndarray):
    yield prefix, np.asarray(tree)


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_sharded_step_matches_one_device(results, mesh):
  ref, got = results[str(MESHES[0])], results[str(mesh)]
  # The parameters really are split on the model axis (2 shards of the MLP kernel), and not on
  # the pure data-parallel mesh.
  assert got["fc1_kernel_shards"] == (2 if mesh[2] == 2 else 1) * (2 if mesh[1] == 2 else 1)
  # Sharded initialisation draws the same parameters.
  for (path, a), (_, b) in zip(_leaves(ref["init"]), _leaves(got["init"])):
    np.testing.assert_array_equal(b, a, err_msg=path)
  for i in range(2):
    for key in ("loss", "l2", "vq_loss", "grad_norm", "param_norm"):
      np.testing.assert_allclose(
        got["metrics"][i][key], ref["metrics"][i][key], rtol=1e-5, err_msg=f"step {i} {key}"
      )
    assert got["metrics"][i]["codebook_usage"] == ref["metrics"][i]["codebook_usage"]
  ref_leaves, got_leaves = list(_leaves(ref["state"])), list(_leaves(got["state"]))
  assert [p for p, _ in ref_leaves] == [p for p, _ in got_leaves]
  for (path, a), (_, b) in zip(ref_leaves, got_leaves):
    # Attention key biases have an exactly zero gradient in exact arithmetic (softmax ignores a
    # shift shared by all keys); Adam's first steps scale their float noise up to ~lr, so they
    # agree only to within one step's size. Everything else agrees to float tolerance.
    atol = LR if "key_bias" in path else 1e-5
    np.testing.assert_allclose(b, a, atol=atol, rtol=1e-4, err_msg=path)
  # Meaningful: step 1 moved the parameters by much more than the tolerance.
  moved = max(
    np.abs(a - b).max()
    for (_, a), (_, b) in zip(_leaves(ref["init"]), _leaves(ref["state"]["params"]))
  )
  assert moved > 1e-3


def test_make_mesh_checks_its_shape():
  import jax  # pylint: disable=g-import-not-at-top

  n = jax.device_count()
  assert dict(sharding.make_mesh((-1, 1, 1)).shape) == {"data": n, "fsdp": 1, "model": 1}
  with pytest.raises(ValueError, match="3 entries"):
    sharding.make_mesh((1, 1))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match=r"needs \d+ devices"):
    sharding.make_mesh((n + 1, 1, 1))
