"""C-ViViT: the causal video tokenizer of Phenaki (paper §4.1, Figure 2 left).

Encoder: the first frame is cut into p×p patches alone; the following frames into t_p×p×p
tubelets; each is linearly embedded. A spatial transformer attends over all tokens of one time
step, then a *causal* temporal transformer lets each spatial position attend to its own past.
A linear projection to `code_dim` (32) and an ℓ2-normalised codebook give the codes
[B, 1 + T/t_p, H/p, W/p]. The decoder mirrors it (causal temporal, then spatial, then a linear
map to pixels with no activation), optionally followed by a per-frame 3×3 conv refinement that
removes patch seams without breaking causality.

Videos enter as float in [-1, 1], shape [B, 1 + T, H, W, 3], for any T = k·t_p with
1 + k ≤ `max_time_steps` (k = 0 is a single image).
"""

import dataclasses

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models import layers
from phenaki_jax.models import quantizer as quantizer_lib

Array = jax.Array

# Size table. `B` is the paper's configuration (appendix A); `tiny` is the CPU demo default.
SIZES = {
  "B": dict(
    image_size=128,
    patch_size=8,
    temporal_patch=2,
    max_time_steps=6,
    width=512,
    spatial_depth=4,
    temporal_depth=4,
    num_heads=8,
    mlp_dim=2048,
    codebook_size=8192,
    code_dim=32,
  ),
  "S": dict(
    image_size=64,
    patch_size=8,
    temporal_patch=2,
    max_time_steps=6,
    width=256,
    spatial_depth=2,
    temporal_depth=2,
    num_heads=4,
    mlp_dim=1024,
    codebook_size=4096,
    code_dim=32,
  ),
  "tiny": dict(
    image_size=32,
    patch_size=4,
    temporal_patch=2,
    max_time_steps=9,
    width=64,
    spatial_depth=2,
    temporal_depth=2,
    num_heads=4,
    mlp_dim=256,
    codebook_size=512,
    code_dim=16,
  ),
}


class CViViT(nn.Module):
  """Causal ViViT tokenizer. All fields are plain values; see `SIZES`."""

  image_size: int
  patch_size: int
  temporal_patch: int
  max_time_steps: int
  width: int
  spatial_depth: int
  temporal_depth: int
  num_heads: int
  mlp_dim: int
  codebook_size: int
  code_dim: int = 32
  commitment_cost: float = 0.25
  refine_channels: int = 0
  # -1: the encoder's spatial transformer attends over the whole frame (the paper). r >= 0: each
  # patch attends only to patches within Chebyshev distance r in each of the spatial_depth layers,
  # so a code depends on the patches within spatial_depth·r of it (and, through the causal
  # temporal transformer, on their past); at r = 0 the encoder also drops its spatial position
  # embedding, so equal tubelet histories get equal codes wherever they are (its enc_pos_space
  # parameter stays in the tree, unused, and the spatial layers' query/key get a zero gradient:
  # each query has one allowed key). The decoder stays global.
  encoder_spatial_radius: int = -1
  dropout: float = 0.0
  scan: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  # ---- geometry ---------------------------------------------------------------------------
  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def max_frames(self) -> int:
    return 1 + (self.max_time_steps - 1) * self.temporal_patch

  def time_steps(self, num_frames: int) -> int:
    return 1 + (num_frames - 1) // self.temporal_patch

  def num_frames(self, time_steps: int) -> int:
    return 1 + (time_steps - 1) * self.temporal_patch

  def token_grid(self, num_frames: int) -> tuple[int, int, int]:
    """(t, h, w): the code grid of a `num_frames`-frame clip."""
    return (self.time_steps(num_frames), self.grid_size, self.grid_size)

  def check_video_shape(self, shape: tuple) -> None:
    """Raises ValueError unless shape is [B, 1 + k·t_p, image_size, image_size, 3]."""
    if len(shape) != 5 or shape[-1] != 3:
      raise ValueError(f"expected a video [B, frames, H, W, 3], got shape {tuple(shape)}")
    frames, height, width = shape[1], shape[2], shape[3]
    if (frames - 1) % self.temporal_patch or frames < 1:
      raise ValueError(
        f"C-ViViT takes 1 + k·{self.temporal_patch} frames (1, {1 + self.temporal_patch}, "
        f"{1 + 2 * self.temporal_patch}, ...), got {frames}"
      )
    if self.time_steps(frames) > self.max_time_steps:
      raise ValueError(
        f"{frames} frames exceed the maximum of {self.max_frames} "
        f"(max_time_steps={self.max_time_steps})"
      )
    if (height, width) != (self.image_size, self.image_size):
      raise ValueError(f"expected {self.image_size}×{self.image_size} frames, got {height}×{width}")

  # ---- modules ----------------------------------------------------------------------------
  def setup(self):
    d, p, tp = self.width, self.patch_size, self.temporal_patch
    self.embed_first = layers.dense(d, (None, "embed"), dtype=self.dtype)
    self.embed_tubelet = layers.dense(d, (None, "embed"), dtype=self.dtype)
    pos_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
    n = self.grid_size**2
    self.enc_pos_space = self.param("enc_pos_space", pos_init, (n, d))
    self.enc_pos_time = self.param("enc_pos_time", pos_init, (self.max_time_steps, d))
    self.dec_pos_space = self.param("dec_pos_space", pos_init, (n, d))
    self.dec_pos_time = self.param("dec_pos_time", pos_init, (self.max_time_steps, d))
    kw = dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      dropout=self.dropout,
      scan=self.scan,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.enc_spatial = layers.Transformer(self.spatial_depth, **kw)
    self.enc_temporal = layers.Transformer(self.temporal_depth, **kw)
    self.dec_temporal = layers.Transformer(self.temporal_depth, **kw)
    self.dec_spatial = layers.Transformer(self.spatial_depth, **kw)
    self.to_code = layers.dense(self.code_dim, ("embed", None), dtype=self.dtype)
    self.quantizer = quantizer_lib.VectorQuantizer(
      self.codebook_size, self.code_dim, self.commitment_cost
    )
    self.from_code = layers.dense(d, (None, "embed"), dtype=self.dtype)
    self.to_first = layers.dense(p * p * 3, ("embed", None), dtype=self.dtype)
    self.to_tubelet = layers.dense(tp * p * p * 3, ("embed", None), dtype=self.dtype)
    if self.refine_channels:
      self.refine_in = nn.Conv(self.refine_channels, (3, 3), dtype=self.dtype)
      self.refine_out = nn.Conv(3, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)

  # ---- shared pieces ----------------------------------------------------------------------
  def _space_time(
    self,
    x: Array,
    pos_space: Array,
    pos_time: Array,
    spatial: nn.Module,
    temporal: nn.Module,
    spatial_first: bool,
    deterministic: bool,
    spatial_radius: int = -1,
  ) -> Array:
    """Spatial and causal temporal transformers over x [B, t, h, w, D]."""
    b, t, h, w, d = x.shape
    x = x + pos_time[:t].reshape(1, t, 1, 1, d)
    if spatial_radius != 0:
      x = x + pos_space.reshape(1, 1, h, w, d)
    spatial_mask = None
    if spatial_radius > 0:
      rows, cols = np.divmod(np.arange(h * w), w)
      near = (np.abs(rows[:, None] - rows[None, :]) <= spatial_radius) & (
        np.abs(cols[:, None] - cols[None, :]) <= spatial_radius
      )
      spatial_mask = jnp.asarray(near)[None, None]  # [1, 1, h·w, h·w]
    # At radius 0 each patch's only allowed key is itself, so the layers run on sequences of one
    # patch: the same values and parameters as the masked h·w attention, without its (h·w)²
    # scores (without them the tiny C-ViViT's train step is ~9% faster on a 2-core CPU).
    seq = 1 if spatial_radius == 0 else h * w

    def run_spatial(x):
      y = spatial(
        x.reshape(-1, seq, d), mask=spatial_mask, deterministic=deterministic
      )  # [B·t·h·w/seq, seq, D]
      return y.reshape(b, t, h, w, d)

    def run_temporal(x):
      # The temporal view needs a transpose, not a bare reshape (docs/design.md, "Known pitfalls").
      y = einops.rearrange(x, "b t h w d -> (b h w) t d")
      causal = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, t, t]
      y = temporal(y, mask=causal, deterministic=deterministic)  # [B·h·w, t, D]
      return einops.rearrange(y, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    if spatial_first:
      return run_temporal(run_spatial(x))
    return run_spatial(run_temporal(x))

  # ---- encoder ----------------------------------------------------------------------------
  def encode_to_z(self, video: Array, deterministic: bool = True) -> Array:
    """video [B, 1+T, H, W, 3] in [-1, 1] → pre-quantisation codes z [B, t, h, w, code_dim]."""
    self.check_video_shape(video.shape)
    p, tp = self.patch_size, self.temporal_patch
    video = video.astype(self.dtype)
    first = einops.rearrange(
      video[:, :1], "b t (h p1) (w p2) c -> b t h w (p1 p2 c)", p1=p, p2=p
    )  # [B, 1, h, w, p²·3]
    x = self.embed_first(first)
    if video.shape[1] > 1:
      rest = einops.rearrange(
        video[:, 1:], "b (t pt) (h p1) (w p2) c -> b t h w (pt p1 p2 c)", pt=tp, p1=p, p2=p
      )  # [B, T/tp, h, w, tp·p²·3]
      x = jnp.concatenate([x, self.embed_tubelet(rest)], axis=1)  # [B, t, h, w, D]
    x = self._space_time(
      x,
      self.enc_pos_space,
      self.enc_pos_time,
      self.enc_spatial,
      self.enc_temporal,
      spatial_first=True,
      deterministic=deterministic,
      spatial_radius=self.encoder_spatial_radius,
    )
    return self.to_code(x).astype(jnp.float32)  # [B, t, h, w, C]

  def quantize(self, z: Array) -> quantizer_lib.QuantizerOutput:
    return self.quantizer(z)

  def encode(self, video: Array) -> Array:
    """video [B, 1+T, H, W, 3] in [-1, 1] → codes int32 [B, 1 + T/t_p, h, w]."""
    return self.quantizer(self.encode_to_z(video)).codes

  # ---- decoder ----------------------------------------------------------------------------
  def decode_quantized(self, quantized: Array, deterministic: bool = True) -> Array:
    """quantized [B, t, h, w, C] → video [B, 1 + (t−1)·t_p, H, W, 3] (float, ~[-1, 1])."""
    b, t = quantized.shape[:2]
    if t > self.max_time_steps:
      raise ValueError(f"{t} time steps exceed max_time_steps={self.max_time_steps}")
    p, tp = self.patch_size, self.temporal_patch
    x = self.from_code(quantized.astype(self.dtype))
    x = self._space_time(
      x,
      self.dec_pos_space,
      self.dec_pos_time,
      self.dec_spatial,
      self.dec_temporal,
      spatial_first=False,
      deterministic=deterministic,
    )
    first = einops.rearrange(
      self.to_first(x[:, :1]), "b t h w (p1 p2 c) -> b t (h p1) (w p2) c", p1=p, p2=p, c=3
    )  # [B, 1, H, W, 3]
    frames = [first]
    if t > 1:
      rest = einops.rearrange(
        self.to_tubelet(x[:, 1:]),
        "b t h w (pt p1 p2 c) -> b (t pt) (h p1) (w p2) c",
        pt=tp,
        p1=p,
        p2=p,
        c=3,
      )  # [B, T, H, W, 3]
      frames.append(rest)
    video = jnp.concatenate(frames, axis=1)
    if self.refine_channels:
      f = video.shape[1]
      flat = video.reshape((b * f,) + video.shape[2:])  # per frame: stays causal
      flat = flat + self.refine_out(nn.gelu(self.refine_in(flat)))
      video = flat.reshape(video.shape)
    return video.astype(jnp.float32)

  def decode(self, codes: Array) -> Array:
    """codes int [B, t, h, w] → video [B, 1 + (t−1)·t_p, H, W, 3] (float, ~[-1, 1])."""
    return self.decode_quantized(self.quantizer.lookup(codes))

  # ---- training forward -------------------------------------------------------------------
  def __call__(self, video: Array, train: bool = False):
    """Returns (reconstruction [B, F, H, W, 3], QuantizerOutput)."""
    z = self.encode_to_z(video, deterministic=not train)
    q = self.quantizer(z)
    recon = self.decode_quantized(q.quantized, deterministic=not train)
    return recon, q


def get_model(size: str, **overrides) -> CViViT:
  """A C-ViViT of a named size (`SIZES`) with fields overridden; `dtype` may be a name."""
  if size not in SIZES:
    raise ValueError(f"unknown C-ViViT size {size!r}; choose one of {sorted(SIZES)}")
  kwargs = dict(SIZES[size])
  unknown = set(overrides) - {f.name for f in dataclasses.fields(CViViT)}
  if unknown:
    raise ValueError(f"unknown C-ViViT field(s) {sorted(unknown)}")
  kwargs.update(overrides)
  if "dtype" in kwargs:
    kwargs["dtype"] = layers.compute_dtype(kwargs["dtype"])
  return CViViT(**kwargs)


def to_model_range(video_uint8: Array) -> Array:
  """uint8 [0, 255] → float32 [-1, 1]."""
  return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(video: Array) -> Array:
  """float ~[-1, 1] → uint8, clipped."""
  return jnp.clip(jnp.round((video + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
