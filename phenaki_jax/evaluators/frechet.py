"""The Fréchet distance between Gaussians fitted to features, and FVD (Unterthiner et al. 2018).

FID (Heusel et al. 2017, arXiv 1706.08500) and FVD (arXiv 1812.01717) fit a Gaussian to each set
of features and report

    d² = |mu1 - mu2|² + Tr(C1 + C2 - 2 (C1 C2)^½).

As the common FID/FVD code computes it: features in float64, the mean, the covariance normalised
by N - 1 (np.cov's default; TF-GAN's "unbiased" covariance), no clipping at 0 (equal sets give 0
up to rounding). The common code takes `scipy.linalg.sqrtm(C1 C2)` and keeps its trace; here the
trace comes from symmetric eigenvalue problems instead: C1 C2 = C1^½ (C1^½ C2) has the
eigenvalues of C1^½ C2 C1^½, which is symmetric positive semi-definite, so

    Tr (C1 C2)^½ = Σ sqrt(λ_i(C1^½ C2 C1^½))

with C1^½ from the eigendecomposition of C1 and the rounding's tiny negative eigenvalues taken
as 0. The value is the same to rounding (1e-15 relative at full rank; where the covariances are
singular, as with fewer videos than features, within sqrtm's own rounding, ~1e-5 relative), it
is never complex, and at 2048 features it takes ~2 s instead of sqrtm's ~13 s on a 2-core CPU.
A matrix that is not a covariance (not symmetric, or with a clearly negative eigenvalue) is an
error.

`RunningStats` accumulates the mean and covariance over batches (Chan et al.'s pairwise update,
exact up to float64 rounding) and saves them as .npz, so a reference set is embedded once.

FVD (`FVD_PROTOCOL`, printed with every score): I3D logits of the videos (`i3d.PROTOCOL`: 224x224
TF1-bilinear, [-1, 1], the 400 time-averaged Kinetics logits of the TF-Hub module the original
FVD code uses), clips of 16 frames in the standard protocol, and the distance above. Statistics
carry the protocol and clip length with them (`RunningStats.meta`); two statistics made under
different ones are not compared. Like FID, FVD is biased by the number of videos: compare scores
made with equal numbers (2048 is common).
"""

import json
import os
from typing import Iterable, Optional, Union

import numpy as np

from phenaki_jax.models import i3d

# A covariance's eigenvalue below -NEGATIVE_RTOL times its largest |eigenvalue| (or an asymmetry
# beyond it) is not rounding: the matrix is not a covariance.
NEGATIVE_RTOL = 1e-6

FVD_PROTOCOL = {
  **i3d.PROTOCOL,
  "statistics": "float64 mean; covariance normalised by N - 1",
  "distance": (
    "|mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2), float64; Tr (C1 C2)^1/2 as the sum of the "
    "square roots of the eigenvalues of C1^1/2 C2 C1^1/2 (scipy.linalg.sqrtm's trace to rounding)"
  ),
}


class RunningStats:
  """Streaming mean and covariance of feature vectors [N, D], in float64.

  `update(features)` adds a batch; `mean`, `cov` (normalised by N - 1) and `count` read the
  statistics so far. `meta` is a JSON-able dict saved with them (the protocol, for instance).
  """

  def __init__(self, dim: int, meta: Optional[dict] = None):
    self.dim = int(dim)
    self.count = 0
    self._mean = np.zeros(self.dim, np.float64)
    self._m2 = np.zeros((self.dim, self.dim), np.float64)  # sum of centred outer products
    self.meta = dict(meta or {})

  def update(self, features) -> "RunningStats":
    """Adds a batch of feature vectors [n, D] (any float dtype; taken as float64)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"expected features [n, {self.dim}], got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
      return self
    batch_mean = x.mean(axis=0)
    centred = x - batch_mean
    batch_m2 = centred.T @ centred
    total = self.count + n
    delta = batch_mean - self._mean
    self._mean = self._mean + delta * (n / total)
    self._m2 = self._m2 + batch_m2 + np.outer(delta, delta) * (self.count * n / total)
    self.count = total
    return self

  @property
  def mean(self) -> np.ndarray:
    """float64 [D]."""
    if self.count == 0:
      raise ValueError("no features yet")
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    """float64 [D, D], normalised by N - 1 (np.cov's default)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    return self._m2 / (self.count - 1)

  def save(self, path: Union[str, os.PathLike]) -> None:
    """Writes count, mean, the centred sum of squares and `meta` (JSON) to a .npz file, whole
    or not at all (a torn cache would fail every later evaluation)."""
    path = os.fspath(path)
    tmp = path + ".tmp.npz"  # np.savez appends .npz to a name without it
    np.savez(
      tmp,
      count=np.int64(self.count),
      mean=self._mean,
      m2=self._m2,
      meta=np.array(json.dumps(self.meta, sort_keys=True)),
    )
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: Union[str, os.PathLike]) -> "RunningStats":
    """The statistics `save` wrote (no pickles are read)."""
    with np.load(path, allow_pickle=False) as data:
      missing = {"count", "mean", "m2", "meta"} - set(data.files)
      if missing:
        raise ValueError(f"{path} is not a RunningStats file: it lacks {sorted(missing)}")
      stats = cls(data["mean"].shape[0], json.loads(str(data["meta"])))
      stats.count = int(data["count"])
      stats._mean = np.asarray(data["mean"], np.float64)
      stats._m2 = np.asarray(data["m2"], np.float64)
    return stats


def _checked_eigvalsh(matrix: np.ndarray, name: str, vectors: bool = False):
  """The eigenvalues (and with `vectors` the eigenvectors) of a symmetric positive semi-definite
  matrix, its rounding's small negative eigenvalues set to 0.

  Raises:
    ValueError: the matrix is not finite, not symmetric or has a clearly negative eigenvalue.
  """
  if not np.isfinite(matrix).all():
    raise ValueError(f"{name} has non-finite entries")
  scale = max(np.abs(matrix).max(), np.finfo(np.float64).tiny)
  if np.abs(matrix - matrix.T).max() > NEGATIVE_RTOL * scale:
    raise ValueError(f"{name} is not symmetric: not a covariance")
  matrix = 0.5 * (matrix + matrix.T)
  w, v = np.linalg.eigh(matrix) if vectors else (np.linalg.eigvalsh(matrix), None)
  if w.min() < -NEGATIVE_RTOL * max(np.abs(w).max(), np.finfo(np.float64).tiny):
    raise ValueError(
      f"{name} has the negative eigenvalue {w.min():.3g}: not positive semi-definite, "
      "not a covariance"
    )
  w = np.clip(w, 0.0, None)
  return (w, v) if vectors else w


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """|mu1 - mu2|² + Tr(cov1 + cov2 - 2 (cov1 cov2)^½) in float64 (see the module docstring).

  Raises:
    ValueError: shapes that do not match, or a matrix that is not a covariance.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  cov1 = np.atleast_2d(np.asarray(cov1, np.float64))
  cov2 = np.atleast_2d(np.asarray(cov2, np.float64))
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(
      f"means {mu1.shape}, {mu2.shape} and covariances {cov1.shape}, {cov2.shape} do not match"
    )
  _checked_eigvalsh(cov2, "cov2")
  w, v = _checked_eigvalsh(cov1, "cov1", vectors=True)
  half = (v * np.sqrt(w)) @ v.T  # cov1^½
  inner = _checked_eigvalsh(half @ cov2 @ half, "cov1^½ cov2 cov1^½")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.sqrt(inner).sum())


def protocol_mismatch(a: RunningStats, b: RunningStats) -> list:
  """The `meta` keys on which two statistics differ, sorted ([] when they may be compared).

  The "distance" entry (`FVD_PROTOCOL`) says how statistics are compared, not how they were
  made, so it is left out: statistics saved under an earlier wording of it still match.
  """
  keys = set(a.meta) | set(b.meta)
  return sorted(k for k in keys if k != "distance" and a.meta.get(k) != b.meta.get(k))


def frechet_distance_from_stats(a: RunningStats, b: RunningStats) -> float:
  """The Fréchet distance of two `RunningStats` made under the same `meta` (`protocol_mismatch`).

  Raises:
    ValueError: their `meta` differ (another protocol or clip length), naming the keys.
  """
  keys = protocol_mismatch(a, b)
  if keys:
    raise ValueError(f"the statistics were made under different protocols (they differ in {keys})")
  return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ------------------------------------------------------------------------------------------
# FVD.
# ------------------------------------------------------------------------------------------
def _batches(videos, batch_size: int) -> Iterable[np.ndarray]:
  if isinstance(videos, np.ndarray) or hasattr(videos, "shape"):
    for start in range(0, len(videos), batch_size):
      yield np.asarray(videos[start : start + batch_size])
  else:
    yield from (np.asarray(v) for v in videos)


def video_statistics(params: dict, videos, batch_size: int = 16) -> RunningStats:
  """I3D feature statistics (`FVD_PROTOCOL`) of uint8 videos [N, T, H, W, 3].

  Args:
    params: from `i3d.load_i3d_params`.
    videos: one array [N, T, H, W, 3], or an iterable of such arrays (batches of any size).
    batch_size: videos per I3D call; every call is padded to it, so it compiles once.

  Returns:
    `RunningStats` of the 400-d logits, with `meta` the protocol and the clip length.
  """
  stats = None
  for batch in _batches(videos, batch_size):
    for start in range(0, len(batch), batch_size):
      chunk = batch[start : start + batch_size]  # [n, T, H, W, 3]
      if stats is None:
        stats = RunningStats(i3d.NUM_CLASSES, {**FVD_PROTOCOL, "num_frames": int(chunk.shape[1])})
      elif chunk.shape[1] != stats.meta["num_frames"]:
        raise ValueError(f"clips of {chunk.shape[1]} frames among {stats.meta['num_frames']}")
      n = len(chunk)
      padded = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      stats.update(i3d.i3d_features(params, padded)[:n])
  if stats is None:
    raise ValueError("no videos")
  return stats


def fvd(real_videos, fake_videos, params: dict, batch_size: int = 16) -> float:
  """FVD between two sets of uint8 videos [N, T, H, W, 3] (arrays or iterables of batches)."""
  return frechet_distance_from_stats(
    video_statistics(params, real_videos, batch_size),
    video_statistics(params, fake_videos, batch_size),
  )
