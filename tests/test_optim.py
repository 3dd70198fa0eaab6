"""Tests of `phenaki_jax/optim.py`: which parameters Muon updates, what its updates are, and that
a Muon state goes through the sharded init, a train step and a checkpoint like AdamW's."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phenaki_jax import checkpoint, optim, sharding
from phenaki_jax.models import maskgit as maskgit_lib

_DIMS = optax.contrib.MuonDimensionNumbers


def _selected(dims) -> dict:
  """{'a/b/c': MuonDimensionNumbers} of the parameters Muon takes."""
  leaves = jax.tree_util.tree_flatten_with_path(
    dims, is_leaf=lambda x: x is None or isinstance(x, _DIMS)
  )[0]
  return {
    "/".join(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)): d
    for path, d in leaves
    if d is not None
  }


def _tiny_maskgit(scan: bool):
  model = maskgit_lib.MaskGIT(
    codebook_size=16, grid=(2, 2, 2), width=16, depth=2, num_heads=2, mlp_dim=24, scan=scan
  )
  tokens = jnp.zeros((1, 8), jnp.int32)
  return model.init(jax.random.PRNGKey(0), tokens, jnp.zeros((1, 3, 8)), jnp.ones((1, 3), bool))[
    "params"
  ]


def _one_update(name: str, params, grads, lr=0.01, **overrides):
  """The first update at a constant lr, without weight decay or clipping."""
  cfg = optim.default_config(
    name=name,
    lr=lr,
    warmup_steps=0,
    decay_steps=10,
    end_lr_fraction=1.0,
    weight_decay=0.0,
    clip_norm=1e9,
    **overrides,
  )
  tx = optim.make_optimizer(cfg)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_muon_takes_the_transformer_matrices_and_nothing_else():
  """Attention query/key/value/out and MLP kernels of every block (self- and cross-attention);
  not embeddings, the head, biases or norms. The same whether the parameters are still boxed
  (`nn.Partitioned`, as `tx.init` sees them at init) or not (as every update sees them)."""
  boxed = _tiny_maskgit(scan=False)
  selected = _selected(optim.muon_dimension_numbers(boxed))
  assert selected == _selected(optim.muon_dimension_numbers(nn.unbox(boxed)))
  expected = set()
  for block in ("block_0", "block_1"):
    for attn in ("self_attention", "cross_attention"):
      expected |= {f"transformer/{block}/{attn}/{n}" for n in ("query", "key", "value", "out")}
    expected |= {f"transformer/{block}/mlp/{fc}/kernel" for fc in ("fc1", "fc2")}
  assert set(selected) == expected, sorted(set(selected) ^ expected)
  q, out = (
    selected["transformer/block_0/self_attention/query"],
    selected["transformer/block_0/self_attention/out"],
  )
  assert (q.reduction_axis, tuple(q.output_axis)) == (0, (1, 2))  # [d, heads, head_dim]
  assert (tuple(out.reduction_axis), out.output_axis) == ((0, 1), 2)  # [heads, head_dim, d]


def test_muon_per_head_makes_each_head_its_own_matrix():
  """per_head: query/key/value [d, heads, head_dim] are heads × [d → head_dim] matrices and out
  [heads, head_dim, d] is heads × [head_dim → d] (the head axis left to batch); MLP unchanged."""
  params = nn.unbox(_tiny_maskgit(scan=False))
  whole = _selected(optim.muon_dimension_numbers(params))
  heads = _selected(optim.muon_dimension_numbers(params, per_head=True))
  assert set(heads) == set(whole)
  q, out = (heads[f"transformer/block_0/cross_attention/{n}"] for n in ("query", "out"))
  assert (q.reduction_axis, q.output_axis) == (0, 2)
  assert (out.reduction_axis, out.output_axis) == (1, 2)
  fc1 = "transformer/block_0/mlp/fc1/kernel"
  assert heads[fc1] == whole[fc1]
  # Through the optimizer, on a query gradient whose two heads are nearly the same: per head,
  # each head's columns are orthonormal among themselves, so the two heads' updates stay alike;
  # as one matrix, all columns are made orthogonal, the heads' included.
  shape = params["transformer"]["block_0"]["self_attention"]["query"].shape  # [16, 2, 8]
  g0 = jax.random.normal(jax.random.PRNGKey(0), (shape[0], shape[2]))
  g = jnp.stack([g0, g0 + 0.1 * jax.random.normal(jax.random.PRNGKey(1), g0.shape)], axis=1)
  p = {"self_attention": {"query": jnp.zeros_like(g)}}

  def cross_head(per_head):
    u = _one_update("muon", p, {"self_attention": {"query": g}}, muon_per_head=per_head)
    m = np.asarray(u["self_attention"]["query"]).reshape(shape[0], -1)
    gram = m.T @ m / np.mean(np.diag(m.T @ m))
    return np.abs(gram[: shape[2], shape[2] :]).max(), np.abs(
      gram[: shape[2], : shape[2]] - np.eye(shape[2])
    ).max()

  cross, within = cross_head(True)
  assert cross > 0.9 and within < 0.35, (cross, within)
  cross, _ = cross_head(False)
  assert cross < 0.5, cross


def test_muon_on_scanned_layers_keeps_the_layer_axis_as_a_batch_axis():
  params = nn.unbox(_tiny_maskgit(scan=True))
  selected = _selected(optim.muon_dimension_numbers(params))
  assert selected, "nothing selected under nn.scan"
  for name, d in selected.items():
    leaf = params
    for key in name.split("/"):
      leaf = leaf[key]
    axes = np.atleast_1d(d.reduction_axis).tolist() + np.atleast_1d(d.output_axis).tolist()
    assert 0 not in axes and sorted(axes) == list(range(1, leaf.ndim)), (name, leaf.shape, d)


def test_muon_orthogonalises_matrix_updates_and_adamw_updates_the_rest():
  """A gradient whose singular values span 1..30: Muon's update of an MLP kernel has nearly
  equal singular values (orthogonalised momentum), AdamW's does not; its RMS is `muon_rms` of
  the lr scaled by √max(fan_in, fan_out) as in Liu et al.; the head (not a transformer matrix)
  gets exactly AdamW's update with Nesterov momentum."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(32, 32)))
  v, _ = np.linalg.qr(rng.normal(size=(64, 32)))
  g = (u * np.geomspace(30.0, 1.0, 32)) @ v.T  # [32, 64]
  params = {
    "mlp": {"fc1": {"kernel": jnp.zeros((32, 64))}},
    "head": {"kernel": jnp.zeros((32, 64))},
  }
  grads = {
    "mlp": {"fc1": {"kernel": jnp.asarray(g, jnp.float32)}},
    "head": {"kernel": jnp.asarray(g, jnp.float32)},
  }
  muon, adamw = _one_update("muon", params, grads), _one_update("adamw", params, grads)
  s_muon = np.linalg.svd(np.asarray(muon["mlp"]["fc1"]["kernel"]), compute_uv=False)
  s_adam = np.linalg.svd(np.asarray(adamw["mlp"]["fc1"]["kernel"]), compute_uv=False)
  assert s_muon.max() / s_muon.min() < 2.0, s_muon
  assert s_adam.max() / s_adam.min() > 4.0, s_adam
  # Orthogonalised: O with singular values ~1 has RMS 1/√64; the update is lr·0.2·√64·O.
  rms = float(np.sqrt(np.mean(np.asarray(muon["mlp"]["fc1"]["kernel"]) ** 2)))
  assert 0.6 * 0.2 * 0.01 < rms < 1.4 * 0.2 * 0.01, rms
  # The update descends: its inner product with the gradient is negative.
  assert float(jnp.sum(muon["mlp"]["fc1"]["kernel"] * g)) < 0
  # optax's Muon gives its AdamW part Nesterov momentum too (NAdamW); without Nesterov it is
  # the plain AdamW update, which is not what Muon gives.
  nadamw = optax.adamw(0.01, b1=0.9, b2=0.99, weight_decay=0.0, nesterov=True)
  head = params["head"]["kernel"]
  expected, _ = nadamw.update(grads["head"]["kernel"], nadamw.init(head), head)
  np.testing.assert_allclose(muon["head"]["kernel"], expected, rtol=1e-5)
  assert not np.allclose(muon["head"]["kernel"], adamw["head"]["kernel"], rtol=1e-3)


def test_unknown_optimizer_names_the_key():
  with pytest.raises(ValueError, match="config.optim.name"):
    optim.make_optimizer(optim.default_config(name="sgd"))


def test_muon_state_inits_sharded_trains_and_survives_a_checkpoint(tmp_path):
  """The Muon state holds optax's MaskedNode for the parameters AdamW updates (and vice versa):
  the sharded init, a jitted train step with those shardings, and an orbax save/restore all keep
  that structure, and the restored state continues exactly as the saved one."""
  model = maskgit_lib.MaskGIT(
    codebook_size=16, grid=(2, 2, 2), width=16, depth=1, num_heads=2, mlp_dim=24
  )
  cfg = optim.default_config(name="muon", lr=3e-3, warmup_steps=1, decay_steps=20)
  tx = optim.make_optimizer(cfg)
  text, text_mask = jnp.ones((4, 3, 8)), jnp.ones((4, 3), bool)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, 8), jnp.int32), text[:1], text_mask[:1])["params"]
    return dict(params=params, opt_state=tx.init(params))

  mesh = sharding.make_mesh((-1, 1, 1))
  state, shardings = sharding.create_sharded_state(init, mesh, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 8), 0, 16)

  @functools.partial(jax.jit, in_shardings=(shardings,), out_shardings=(shardings, None))
  def step(state):
    def loss_fn(params):
      inputs = jnp.where(jnp.arange(8) % 2 == 0, model.mask_token_id, tokens)
      logits = model.apply({"params": params}, inputs, text, text_mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state), loss

  losses = []
  for _ in range(6):
    state, loss = step(state)
    losses.append(float(loss))
  assert losses[-1] < losses[1] - 0.1, losses

  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(6, state, {"note": "muon"}, force=True)
  ckpt.wait()
  restored, _ = ckpt.restore(checkpoint.abstract_like(state))
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  a, _ = step(state)
  b, _ = step(restored)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
