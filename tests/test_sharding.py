"""docs/design.md, invariant 5: a train step of each trainer on a mesh of 8 (fake CPU) devices
gives the same loss and updated parameters as on one device, up to float tolerance; the
activation constraints act when the step is traced; the frozen networks are sharded.

The 8 devices need `XLA_FLAGS` set before jax is imported, so the meshes run in a subprocess
(with a timeout: XLA's CPU collectives can deadlock, and a hang must fail, not stall the suite).
Meshes ('data', 'fsdp', 'model'): (1, 1, 1) on one device, (8, 1, 1) pure data parallel,
(2, 4, 1) data parallel × FSDP and (2, 2, 2), which also splits heads, MLP and codebook rows
(model). Two steps each (the warm-up makes step 0's learning rate 0; step 1 moves every
parameter).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phenaki_jax import sharding

from conftest import REPO, _shared_run

MESHES = ((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2))
LR = 2e-3  # conftest.tiny_cvivit_config's peak learning rate
DATA_SEED = 1

SCRIPT = r"""
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_cvivit_config, tiny_maskgit_config
from phenaki_jax import optim, sharding, text
from phenaki_jax import tokenizer as tokenizer_lib
from phenaki_jax.models import discriminator, t5
from phenaki_jax.trainers import cvivit as trainer
from phenaki_jax.trainers import maskgit as maskgit_trainer

assert jax.device_count() == 8, jax.devices()
meshes, out, lr, data_seed, tok_dir = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
results = {"cvivit": {}, "maskgit": {}}

def shards(x):
  return len({tuple((s.start, s.stop) for s in idx)
              for idx in x.sharding.devices_indices_map(x.shape).values()})

# ---- C-ViViT ----
config = tiny_cvivit_config()
config.model.num_heads = 2            # divisible by the model axis (2)
# Whole-frame encoder attention: at the tiny default (radius 0) the encoder's spatial query/key
# get an exactly zero gradient (one allowed key per query), which Adam turns into noise-sized
# steps, so they could not be compared to float tolerance.
config.model.encoder_spatial_radius = -1
config.data.batch_size = 8
# Data whose encoder outputs have no near-tie between two codes: a tie (to float noise) may go
# either way under another summation order, and the step would then differ by design.
config.data.seed = data_seed
config.optim.warmup_steps = 1         # lr 0 at step 0, the peak at step 1
assert config.optim.lr == lr
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
for shape in meshes:
  mesh = sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
  state, shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  kernel = state["params"]["enc_spatial"]["block_0"]["mlp"]["fc1"]["kernel"]
  info = {"init": jax.device_get(state["params"]), "fc1_kernel_shards": shards(kernel)}
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
  results["cvivit"][str(tuple(shape))] = info
  print("cvivit", shape, losses[-1]["loss"], flush=True)

# ---- MaskGIT, over the trained tiny C-ViViT in tok_dir ----
TEXT_LEN, TEXT_DIM = 4, 8
config = tiny_maskgit_config(tok_dir)
config.optim.warmup_steps = 1
tok_config = maskgit_trainer.tokenizer_config(config)
tok = tokenizer_lib.Tokenizer.from_workdir(tok_dir)
model = maskgit_trainer.build_model(config, tok_config)
tx = optim.make_optimizer(config.optim)
init_fn = maskgit_trainer.make_init_fn(model, tx, TEXT_LEN, TEXT_DIM, ema=False)
mg_batches = maskgit_trainer.make_batches(config, tok_config)
rng = np.random.default_rng(0)
text_rows = [rng.normal(size=(config.data.batch_size, TEXT_LEN, TEXT_DIM)).astype(np.float32)
             for _ in range(2)]
null_text = (np.zeros((TEXT_LEN, TEXT_DIM), np.float32), np.array([True] + [False] * (TEXT_LEN - 1)))
mg_step = functools.partial(maskgit_trainer.train_step, model=model, tok_model=tok.model, tx=tx,
                            config=config)
hlo = {}
for shape in meshes:
  mesh = sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
  state, shardings = sharding.create_sharded_state(init_fn, mesh, init_rng)
  repl = sharding.replicated(mesh)
  tok_shardings = maskgit_trainer.tokenizer_shardings(tok.model, mesh)
  tok_params = jax.device_put(tok.params, tok_shardings)
  step = jax.jit(mg_step,
                 in_shardings=(shardings, sharding.batch_sharding(mesh), repl, tok_shardings, repl),
                 out_shardings=(shardings, repl))
  kernel = tok_params["enc_spatial"]["block_0"]["mlp"]["fc1"]["kernel"]
  info = {"init": jax.device_get(state["params"]), "tok_fc1_kernel_shards": shards(kernel)}
  losses = []
  with sharding.rules_in_force(mesh):
    for i in range(2):
      rows = mg_batches.batch(i)
      batch = sharding.put_global_batch(
        {"video": rows["video"], "is_image": rows["is_image"], "text": text_rows[i],
         "text_mask": np.ones((config.data.batch_size, TEXT_LEN), bool)}, mesh)
      args = (state, batch, jax.device_put(null_text, repl), tok_params, train_rng)
      if i == 0 and shape == [2, 2, 2]:
        hlo["rules"] = step.lower(*args).as_text()
      state, metrics = step(*args)
      losses.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  if shape == [2, 2, 2]:  # the same step traced without the rules: the constraints are inert
    with jax.set_mesh(mesh):
      # (a new function: jax caches traces by function, and the rules are not in its key)
      hlo["no_rules"] = jax.jit(lambda *a: mg_step(*a)).lower(*args).as_text()
  info.update(metrics=losses, state=jax.device_get(state))
  results["maskgit"][str(tuple(shape))] = info
  print("maskgit", shape, losses[-1]["loss"], flush=True)
results["hlo"] = hlo

# ---- T5 text encoder sharded over a host's devices ----
class Tok:  # a stand-in tokenizer: what the ids are does not matter here
  max_length = 16
  def __call__(self, texts):
    ids, mask = np.zeros((len(texts), 16), np.int32), np.zeros((len(texts), 16), bool)
    for i, t in enumerate(texts):
      codes = [3 + ord(c) % 90 for c in t[:15]] + [1]
      ids[i, :len(codes)], mask[i, :len(codes)] = codes, True
    return ids, mask
t5_model = t5.get_model("tiny")
t5_params = t5.random_params(t5_model)
captions = ["a red square moves left", "a cyan triangle moves up", "x"]
one = text.TextEncoder(t5_model, t5_params, Tok(), identity="t5")
split = text.TextEncoder(t5_model, t5_params, Tok(), identity="t5", mesh=sharding.local_mesh())
results["t5"] = {
  "one": one.encode(captions)[0], "split": split.encode(captions)[0],
  "shards": {jax.tree_util.keystr(p): shards(x)
             for p, x in jax.tree_util.tree_leaves_with_path(split.params)},
}
np.save(out, results, allow_pickle=True)
"""


def run_on_devices(devices: int, script: str, *args, timeout: int = 600) -> str:
  """`python -c script args...` in a process that sees `devices` fake CPU devices; its stdout
  (fails with its stderr if it fails)."""
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  proc = subprocess.run(
    [sys.executable, "-c", script, *map(str, args)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc.stdout


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_cvivit_dir):
  """Every mesh's steps, run once per pytest run (the xdist workers share it)."""

  def run(workdir):
    os.makedirs(workdir, exist_ok=True)
    meshes = json.dumps([list(m) for m in MESHES])
    out = os.path.join(workdir, "results.npy")
    run_on_devices(8, SCRIPT, meshes, out, LR, DATA_SEED, tiny_cvivit_dir)

  workdir = _shared_run(tmp_path_factory, "sharding_results", run)
  return np.load(os.path.join(workdir, "results.npy"), allow_pickle=True).item()


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


def _assert_states_close(ref, got, atol):
  ref_leaves, got_leaves = list(_leaves(ref)), list(_leaves(got))
  assert [p for p, _ in ref_leaves] == [p for p, _ in got_leaves]
  for (path, a), (_, b) in zip(ref_leaves, got_leaves):
    # Attention key biases have an exactly zero gradient in exact arithmetic (softmax ignores a
    # shift shared by all keys); Adam's first steps scale their float noise up to ~lr, so they
    # agree only to within one step's size. Everything else agrees to float tolerance.
    tol = LR if "key_bias" in path else atol
    np.testing.assert_allclose(b, a, atol=tol, rtol=1e-4, err_msg=path)


def _moved(ref) -> float:
  return max(
    np.abs(a - b).max()
    for (_, a), (_, b) in zip(_leaves(ref["init"]), _leaves(ref["state"]["params"]))
  )


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_cvivit_step_on_a_mesh_matches_one_device(results, mesh):
  ref, got = results["cvivit"][str(MESHES[0])], results["cvivit"][str(mesh)]
  # The parameters really are split: the MLP kernel [width, mlp] over fsdp × model.
  assert got["fc1_kernel_shards"] == mesh[1] * mesh[2]
  # Sharded initialisation draws the same parameters.
  for (path, a), (_, b) in zip(_leaves(ref["init"]), _leaves(got["init"])):
    np.testing.assert_array_equal(b, a, err_msg=path)
  for i in range(2):
    for key in ("loss", "l2", "vq_loss", "grad_norm", "param_norm"):
      np.testing.assert_allclose(
        got["metrics"][i][key], ref["metrics"][i][key], rtol=1e-5, err_msg=f"step {i} {key}"
      )
    assert got["metrics"][i]["codebook_usage"] == ref["metrics"][i]["codebook_usage"]
  _assert_states_close(ref["state"], got["state"], atol=1e-5)
  assert _moved(ref) > 1e-3  # step 1 moved the parameters by much more than the tolerance


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_maskgit_step_on_a_mesh_matches_one_device(results, mesh):
  """The MaskGIT step, its frozen C-ViViT encoding the videos inside it, sharded by the same
  rules (the tokenizer's parameters split over fsdp × model, not copied to every device)."""
  ref, got = results["maskgit"][str(MESHES[0])], results["maskgit"][str(mesh)]
  assert got["tok_fc1_kernel_shards"] == mesh[1] * mesh[2]
  for (path, a), (_, b) in zip(_leaves(ref["init"]), _leaves(got["init"])):
    np.testing.assert_array_equal(b, a, err_msg=path)
  for i in range(2):
    for key in ("loss", "masked_accuracy", "loss_video", "grad_norm", "param_norm"):
      np.testing.assert_allclose(
        got["metrics"][i][key], ref["metrics"][i][key], rtol=1e-5, err_msg=f"step {i} {key}"
      )
  _assert_states_close(ref["state"], got["state"], atol=1e-5)
  assert _moved(ref) > 1e-3


def _sharding_constraints(hlo: str) -> list:
  """The mesh axes of every sharding constraint in the lowered StableHLO (Shardy dialect:
  `sdy.sharding_constraint %x <@mesh, [{"data", "fsdp"}, {}, {"model"}]>`)."""
  import re  # pylint: disable=g-import-not-at-top

  return re.findall(r"sdy\.sharding_constraint %\S+ <@\w+, (\[.*?\])>", hlo)


def test_activation_constraints_act_under_the_rules(results):
  """Traced with the rules in force, the MaskGIT step carries its blocks' activation
  constraints: the MLP hidden activation ('batch', 'length', 'mlp') split over data×fsdp and
  model, the residual stream ('batch', 'length', 'embed') over data×fsdp alone ('embed' would
  take fsdp, which 'batch' holds); traced without the rules, Flax leaves them out."""
  with_rules = _sharding_constraints(results["hlo"]["rules"])
  assert '[{"data", "fsdp"}, {}, {"model"}]' in with_rules, sorted(set(with_rules))
  assert '[{"data", "fsdp"}, {}, {}]' in with_rules, sorted(set(with_rules))
  assert _sharding_constraints(results["hlo"]["no_rules"]) == []


def test_text_encoder_sharded_over_a_hosts_devices(results):
  """T5 with `mesh=sharding.local_mesh()`: its kernels split over the host's 8 devices (the
  width over fsdp), the embeddings equal one device's."""
  t5 = results["t5"]
  np.testing.assert_allclose(t5["split"], t5["one"], rtol=1e-5, atol=1e-5)
  kernels = {p: n for p, n in t5["shards"].items() if p.endswith("['kernel']")}
  assert kernels and all(n == 8 for n in kernels.values()), kernels


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


# ---- Checkpoints move between meshes ---------------------------------------------------------
RUN = r"""
import json, sys
import jax
sys.path.insert(0, "tests")
from conftest import tiny_cvivit_config
from phenaki_jax.trainers import cvivit as trainer

for workdir, mesh, total, stop in json.loads(sys.argv[1]):
  config = tiny_cvivit_config()
  config.model.num_heads = 2  # divisible by the model axis
  config.model.encoder_spatial_radius = -1  # as above: no exactly-zero gradients
  config.data.batch_size = 8
  config.data.seed = int(sys.argv[2])
  config.optim.warmup_steps = 1
  config.mesh = tuple(mesh)
  config.total_steps, config.stop_after_steps = total, stop
  config.checkpoint_every, config.eval_every, config.log_every = 2, 1000, 2
  trainer.main(config, workdir)
  print("trained on", jax.device_count(), "devices, mesh", mesh, flush=True)
"""


def _train(devices: int, runs) -> None:
  """Trains each (workdir, mesh, total_steps, stop_after_steps) of `runs` in one process that
  sees `devices` fake CPU devices (one process: the runs share their compiled steps)."""
  run_on_devices(devices, RUN, json.dumps([[str(w), *r] for w, *r in runs]), DATA_SEED, timeout=400)


def test_a_checkpoint_resumes_on_another_mesh(tmp_path):
  """Saved at step 2 by a run on 8 devices as (8, 1, 1), resumed on 4 devices as (1, 2, 2)
  (another device count, its state now split over fsdp and model): step 4 equals the run that
  stayed on the first mesh, to float tolerance."""
  from phenaki_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from phenaki_jax.trainers import cvivit as trainer  # pylint: disable=g-import-not-at-top

  from conftest import tiny_cvivit_config  # pylint: disable=g-import-not-at-top

  stayed, moved = tmp_path / "stayed", tmp_path / "moved"
  _train(8, [(stayed, (8, 1, 1), 4, 0), (moved, (8, 1, 1), 4, 2)])
  assert sorted(os.listdir(moved / "checkpoints")) == ["2"]
  _train(4, [(moved, (1, 2, 2), 4, 0)])
  config = tiny_cvivit_config()
  config.model.num_heads, config.model.encoder_spatial_radius = 2, -1
  abstract = trainer.abstract_state(config)["params"]
  params = {
    name: jax_to_numpy(checkpoint.load_params(str(path), abstract, step=step))
    for name, path, step in (("stayed", stayed, 4), ("moved", moved, 4), ("start", moved, 2))
  }
  _assert_states_close(params["stayed"], params["moved"], atol=2e-5)
  moved_by = max(
    np.abs(a - b).max()
    for (_, a), (_, b) in zip(_leaves(params["start"]), _leaves(params["moved"]))
  )
  assert moved_by > 1e-3  # steps 3 and 4 moved the parameters by much more than the tolerance


def jax_to_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree.map(np.asarray, jax.device_get(tree))


SAVE_CHECK = r"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax import monitoring
from phenaki_jax import checkpoint

mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
# 24 replicated arrays of distinct shapes, as a model's leaves are.
state = {f"w{i}": jax.device_put(jnp.full((4 + i, 16), float(i)), replicated) for i in range(24)}
state = jax.block_until_ready(state)
compiles = []
monitoring.register_event_duration_secs_listener(
  lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None
)
ckpt = checkpoint.Checkpointer(sys.argv[1])
ckpt.save(1, state, {"step": 1})
ckpt.wait()
assert not compiles, f"{len(compiles)} programs compiled to save"
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
restored, meta = ckpt.restore(abstract)
assert meta == {"step": 1}
for k, v in state.items():
  np.testing.assert_array_equal(restored[k], v)
  assert restored[k].sharding == v.sharding
print("OK")
"""


def test_saving_replicated_arrays_on_cpu_devices_compiles_nothing(tmp_path):
  """On 8 CPU devices a save writes each replicated array from one replica: no sliced copy per
  replica (orbax's replica-parallel default compiles one per shape and device: ~16 s for a
  tiny model's first save), and the checkpoint restores exactly."""
  out = run_on_devices(8, SAVE_CHECK, tmp_path / "checkpoints", timeout=300)
  assert out.strip().endswith("OK"), out
