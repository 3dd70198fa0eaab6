"""Device mesh and parameter/activation shardings, declared once.

A mesh has the axes ('data', 'fsdp', 'model'). Parameters carry logical axis names (see
`models/layers.py`); `LOGICAL_RULES` maps them to mesh axes. State is never materialised on one
device: `create_sharded_state` evaluates the init function abstractly, derives shardings, and
runs the real init under `jax.jit(..., out_shardings=...)`.
"""

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")

# logical axis → mesh axis (t5x/MaxText style). Unlisted names are replicated.
LOGICAL_RULES = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("mlp", "model"),
  ("heads", "model"),
  ("kv", None),
  ("vocab", "model"),
  ("layers", None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """Mesh over ('data', 'fsdp', 'model'); one entry may be -1 (all remaining devices)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"config.mesh must have 3 entries (data, fsdp, model), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh may have at most one -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if devices.size % known:
      raise ValueError(f"config.mesh {shape} does not divide {devices.size} devices")
    shape[shape.index(-1)] = devices.size // known
  if int(np.prod(shape)) != devices.size:
    raise ValueError(
      f"config.mesh {shape} needs {int(np.prod(shape))} devices, have {devices.size}"
    )
  return Mesh(devices.reshape(shape), MESH_AXES)


@contextlib.contextmanager
def rules_in_force(mesh: Mesh, rules=LOGICAL_RULES):
  """The mesh and the logical rules under which a step is traced: inside, the activation
  constraints of `models/layers.py` (`nn.with_logical_constraint`) become real sharding
  constraints; outside either, Flax returns the activation unchanged."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def local_mesh() -> Mesh:
  """This process's devices alone, all on the 'fsdp' axis: where a frozen model that runs
  outside the train step (the text encoder) is sharded, so that no other host takes part in
  its forward passes."""
  return make_mesh((1, -1, 1), devices=jax.local_devices())


def param_shardings(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=LOGICAL_RULES) -> Any:
  """The shardings of `init_fn(*args)["params"]` (a Flax `model.init`; `args` may be
  ShapeDtypeStructs) by their logical axes: where a frozen model's parameters go on `mesh`.
  Parameters that declare no axes are replicated."""
  return logical_shardings(jax.eval_shape(init_fn, *args)["params"], mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data×fsdp; other axes replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def divisible(sharding: NamedSharding, shape: Sequence[int]) -> NamedSharding:
  """`sharding` with each dimension that its mesh axes do not divide evenly left whole
  (replicated over those axes). E.g. the MaskGIT's token table has codebook + 1 rows (the
  [MASK] token): 8193 rows cannot be split over 'model', its width still is over 'fsdp'."""
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  kept = []
  for dim, axes in zip(shape, spec):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    split = int(np.prod([sharding.mesh.shape[n] for n in names]))
    kept.append(axes if dim % split == 0 else None)
  if tuple(kept) == spec:
    return sharding
  return NamedSharding(sharding.mesh, P(*kept))


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """Shardings for a tree that may hold `nn.Partitioned` boxes (unboxed structure). A
  dimension the rules would split unevenly stays whole (`divisible`)."""
  # A box around a subtree without arrays (optax's MaskedNode, e.g. Muon's state for the
  # parameters AdamW updates) has nothing to shard: keep it unboxed, as `nn.unbox` does.
  is_box = lambda x: isinstance(x, nn.Partitioned)
  abstract_boxed_tree = jax.tree.map(
    lambda x: x.value if is_box(x) and not jax.tree.leaves(x.value) else x,
    abstract_boxed_tree,
    is_leaf=is_box,
  )
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  return jax.tree.map(
    lambda s, x: divisible(s, x.shape) if hasattr(x, "shape") else s,
    shardings,
    box_values(abstract_boxed_tree),
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )


def box_values(tree: Any) -> Any:
  """`tree` with each `nn.Partitioned` box replaced by its value. Unlike `nn.unbox`, which
  under logical rules and a mesh (`rules_in_force`) constrains each value's sharding — an
  error on abstract values outside a trace — this only takes the boxes off."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def create_sharded_state(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=LOGICAL_RULES):
  """Runs `init_fn(*args)` straight into its shardings. Returns (state, shardings).

  `init_fn` may return boxed (`nn.Partitioned`) leaves; the state returned is unboxed.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  with rules_in_force(mesh, rules):
    lowered = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings).lower(*args)
    # Init runs once: on CPU, skip XLA's backend optimisations (halves its compile time, which
    # many random initialisers otherwise dominate). The values are the same.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    state = lowered.compile(options)(*args)
  return state, shardings


def abstract_state(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=LOGICAL_RULES):
  """ShapeDtypeStructs (with shardings) of the state, allocating nothing."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  unboxed = box_values(abstract)
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings
  ), shardings


def put_global_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy rows → global jax.Arrays split over data×fsdp (multi-host ready)."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
