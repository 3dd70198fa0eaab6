"""AdamW with warm-up + cosine decay and global-norm clipping (Phenaki appendix A/B)."""
import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """cfg: lr, warmup_steps, decay_steps (total steps of the cosine), end_lr_fraction."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.decay_steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.end_lr_fraction)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """cfg: lr, warmup_steps, decay_steps, end_lr_fraction, b1, b2, weight_decay, clip_norm."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The paper's optimizer (C-ViViT: lr 1e-4, 100K warm-up, cosine to 1M steps)."""
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=100_000, decay_steps=1_000_000, end_lr_fraction=0.0,
      b1=0.9, b2=0.99, weight_decay=1e-4, clip_norm=10.0))
  cfg.update(overrides)
  return cfg
