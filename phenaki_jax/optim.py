"""Optimizers: AdamW (the paper's) or Muon, with warm-up + cosine decay and global-norm clipping.

`name="adamw"` is Phenaki's optimizer (appendix A/B). `name="muon"` (optax.contrib.muon) updates
the transformer blocks' weight matrices — attention query/key/value/out and MLP kernels — with
orthogonalised Nesterov momentum, and everything else (embeddings, codebook, input/output
projections, biases, norms) with AdamW (also with Nesterov momentum, as optax's Muon does). The
Muon updates are scaled to AdamW's typical RMS (`muon_rms` · √max(fan_in, fan_out); "Muon is
Scalable for LLM Training", Liu et al. 2025), so one lr and weight decay serve both parts.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib as optax_contrib

OPTIMIZERS = ("adamw", "muon")
_ATTENTION = ("self_attention", "cross_attention")


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """cfg: lr, warmup_steps, decay_steps (total steps of the cosine), end_lr_fraction."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.lr,
    warmup_steps=cfg.warmup_steps,
    decay_steps=max(cfg.decay_steps, cfg.warmup_steps + 1),
    end_value=cfg.lr * cfg.end_lr_fraction,
  )


def muon_dimension_numbers(params, per_head: bool = False):
  """Which parameters Muon orthogonalises, and as which matrix (None = AdamW).

  Attention projections [..., d_in, heads, head_dim] are [d_in] → [heads·head_dim] matrices and
  output projections [..., heads, head_dim, d_out] are [heads·head_dim] → [d_out]; with
  `per_head`, each head's [d_in] → [head_dim] and [head_dim] → [d_out] is its own matrix (the
  head axis a batch axis: less Newton–Schulz work when head_dim < d). MLP kernels
  [..., d_in, d_out]. Leading axes (layers stacked by `nn.scan`) are batch axes: one matrix per
  layer.
  """

  def rule(path, x):
    # Dict keys only: at init the parameters may still be boxed (`nn.Partitioned`), which adds
    # an attribute entry (`.value`) to the path.
    names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    parent, leaf = (names[-2] if len(names) > 1 else ""), names[-1]
    n = x.ndim
    if parent in _ATTENTION and leaf in ("query", "key", "value") and n >= 3:
      return optax_contrib.MuonDimensionNumbers(
        reduction_axis=n - 3, output_axis=n - 1 if per_head else (n - 2, n - 1)
      )
    if parent in _ATTENTION and leaf == "out" and n >= 3:
      return optax_contrib.MuonDimensionNumbers(
        reduction_axis=n - 2 if per_head else (n - 3, n - 2), output_axis=n - 1
      )
    if parent in ("fc1", "fc2") and leaf == "kernel" and n >= 2:
      return optax_contrib.MuonDimensionNumbers(reduction_axis=n - 2, output_axis=n - 1)
    return None

  return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """cfg: name, lr, warmup_steps, decay_steps, end_lr_fraction, b1, b2, weight_decay, clip_norm
  (muon also muon_beta, muon_rms, muon_ns_steps: Newton–Schulz iterations, muon_per_head)."""
  name = cfg.get("name", "adamw")
  schedule = make_schedule(cfg)
  if name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  elif name == "muon":
    opt = optax_contrib.muon(
      schedule,
      ns_steps=cfg.muon_ns_steps,
      beta=cfg.muon_beta,
      weight_decay=cfg.weight_decay,
      adam_b1=cfg.b1,
      adam_b2=cfg.b2,
      adam_weight_decay=cfg.weight_decay,
      consistent_rms=cfg.muon_rms,
      muon_weight_dimension_numbers=functools.partial(
        muon_dimension_numbers, per_head=cfg.get("muon_per_head", False)
      ),
    )
  else:
    raise ValueError(
      f"config.optim.name={name!r} is not an optimizer here; use one of {OPTIMIZERS}"
    )
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The paper's optimizer (C-ViViT: lr 1e-4, 100K warm-up, cosine to 1M steps)."""
  cfg = ml_collections.ConfigDict(
    dict(
      name="adamw",
      lr=1e-4,
      warmup_steps=100_000,
      decay_steps=1_000_000,
      end_lr_fraction=0.0,
      b1=0.9,
      b2=0.99,
      weight_decay=1e-4,
      clip_norm=10.0,
      muon_beta=0.95,
      muon_rms=0.2,
      muon_ns_steps=5,
      muon_per_head=False,
    )
  )
  cfg.update(overrides)
  return cfg


# ---- Gradient accumulation -----------------------------------------------------------------------
def check_accum_steps(config: ml_collections.ConfigDict) -> int:
  """config.grad_accum_steps (default 1), checked to divide config.data.batch_size."""
  k = config.get("grad_accum_steps", 1)
  if k < 1 or config.data.batch_size % k:
    raise ValueError(
      f"config.grad_accum_steps={k} must be >= 1 and divide "
      f"config.data.batch_size={config.data.batch_size}"
    )
  return k


def micro_batches(tree, k: int):
  """Leaves [B, ...] → [k, B/k, ...]. Micro-batch j holds rows j, j+k, j+2k, ...: on a mesh
  whose devices hold contiguous rows of the batch, every micro-batch is spread over all the
  devices (contiguous chunks would each sit on a few of them)."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, k) + x.shape[1:]), 0, 1), tree)


def merge_micro_batches(tree):
  """The inverse of `micro_batches`: leaves [k, B/k, ...] → [B, ...] in the batch's row order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]), tree)


def accumulate_gradients(loss_fn, params, chunks, weights):
  """Σ_j w_j · ∇ loss_fn(params, chunk_j, j), one micro-batch at a time (`lax.scan`: the
  activations of one micro-batch live at once).

  `chunks`: a tree of leaves [k, B/k, ...] (`micro_batches`); `weights` [k]: each micro-batch's
  share of the batch's loss (1/k for means over equal-sized micro-batches). `loss_fn` returns
  (loss, (scalars, rows)): a dict of scalar metrics, averaged with the same weights, and a tree
  of per-row outputs [B/k, ...], returned merged to [B, ...].

  Returns (loss, grads, scalars, rows) — the whole batch's loss and gradient when each term is
  a mean over its micro-batch weighted by that micro-batch's share."""

  def micro(carry, xs):
    i, chunk, w = xs

    def weighted(p):
      value, aux = loss_fn(p, chunk, i)
      return value * w, aux

    (value, (scalars, rows)), grads = jax.value_and_grad(weighted, has_aux=True)(params)
    loss_sum, grad_sum, scalar_sum = carry
    carry = (
      loss_sum + value,
      jax.tree.map(jnp.add, grad_sum, grads),
      jax.tree.map(lambda a, s: a + w * s, scalar_sum, scalars),
    )
    return carry, rows

  first = jax.tree.map(lambda x: x[0], chunks)
  _, (scalar_shapes, _) = jax.eval_shape(lambda p: loss_fn(p, first, 0), params)
  zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
  k = jnp.shape(weights)[0]
  init = (jnp.float32(0), jax.tree.map(jnp.zeros_like, params), zeros(scalar_shapes))
  (loss, grads, scalars), rows = jax.lax.scan(micro, init, (jnp.arange(k), chunks, weights))
  return loss, grads, scalars, merge_micro_batches(rows)
