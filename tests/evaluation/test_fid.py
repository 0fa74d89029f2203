from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.evaluation.fid import (
    FeatureStats,
    GaussianStats,
    ReferenceStats,
    frechet_distance,
    is_stats_file,
    metric_name,
)


def _spd(rng: np.random.Generator, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d + 5))
    return scale * a @ a.T / (d + 5) + 1e-3 * np.eye(d)


def _scipy_reference(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_closed_form_diagonal_gaussians(method):
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # = 5 + 1 + 1 + 6.25
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


def test_closed_form_scaled_covariance():
    # S2 = c^2 S1 -> Tr(S1 + S2 - 2 c S1) = (1 - c)^2 Tr S1
    rng = np.random.default_rng(0)
    s1 = _spd(rng, 16)
    fd = frechet_distance(np.zeros(16), s1, np.zeros(16), 9.0 * s1)
    assert fd == pytest.approx(4.0 * np.trace(s1), rel=1e-9)
    assert frechet_distance(np.ones(16), s1, np.ones(16), s1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_matches_float64_scipy_on_random_data(method):
    rng = np.random.default_rng(1)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d, scale=2.0)
    ref = _scipy_reference(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(ref, rel=1e-6)


def test_singular_covariances_are_exact():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 0.5  # 10 samples in 32-D: rank 9
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # exact: the non-zero eigenvalues of S1 S2 = A^T A B^T B / 81 are those of the 10 x 10 (A B^T)(B A^T) / 81
    ac, bc = a - a.mean(0), b - b.mean(0)
    small = (ac @ bc.T) @ (bc @ ac.T) / 81.0
    tr = np.sqrt(np.clip(np.linalg.eigvals(small).real, 0, None)).sum()
    exact = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    e = frechet_distance(a.mean(0), s1, b.mean(0), s2, method="eigh")
    q = frechet_distance(a.mean(0), s1, b.mean(0), s2, method="sqrtm")
    assert e == pytest.approx(exact, rel=1e-9)
    assert np.isfinite(q) and q == pytest.approx(exact, rel=1e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_streaming_stats_match_numpy_and_merge():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((257, 12)) * 3.0 + 1000.0  # large mean: the naive formula would lose digits
    stats = FeatureStats()
    for k, chunk in enumerate(np.array_split(x, [5, 6, 100, 200])):
        stats.update(torch.from_numpy(chunk) if k % 2 else chunk)  # tensors and arrays alike
    assert stats.n == 257 and stats.dim == 12
    np.testing.assert_allclose(stats.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    a, b = FeatureStats(), FeatureStats()
    a.update(x[:100])
    b.update(x[100:] - 7.0)
    b_data = np.concatenate([x[:100], x[100:] - 7.0])
    a.merge(b)
    np.testing.assert_allclose(a.mean(), b_data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.covariance(), np.cov(b_data, rowvar=False), rtol=1e-9)


def test_stats_errors():
    s = FeatureStats()
    with pytest.raises(ValueError):
        s.mean()
    s.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        s.covariance()
    with pytest.raises(ValueError, match="width"):
        s.update(np.zeros((2, 4)))


def test_reference_stats_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    pool = GaussianStats(rng.standard_normal(5), _spd(rng, 5), 100)
    spatial = GaussianStats(rng.standard_normal(3), _spd(rng, 3), 100)
    feats = rng.standard_normal((7, 5)).astype(np.float32)
    path = ReferenceStats("dinov2-s14-bundled-224", pool, spatial, feats, {"crop": "adm"}).save(tmp_path / "r.npz")
    assert is_stats_file(path)
    back = ReferenceStats.load(path)
    assert back.extractor == "dinov2-s14-bundled-224" and back.meta == {"crop": "adm"}
    np.testing.assert_array_equal(back.pool.sigma, pool.sigma)
    np.testing.assert_array_equal(back.spatial.mu, spatial.mu)
    np.testing.assert_array_equal(back.feats, feats)
    assert back.pool.n == 100


def test_foreign_stats_and_image_files(tmp_path):
    np.savez(tmp_path / "pfid.npz", mu=np.zeros(4), sigma=np.eye(4))
    ext = ReferenceStats.load(tmp_path / "pfid.npz")
    assert ext.extractor == "external" and ext.feats is None and ext.spatial is None
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(4), sigma=np.eye(4))
    assert not is_stats_file(tmp_path / "adm.npz")  # images present: used as images
    np.savez(tmp_path / "img.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="not a statistics file"):
        ReferenceStats.load(tmp_path / "img.npz")
    with pytest.raises(FileNotFoundError):
        ReferenceStats.load(tmp_path / "missing.npz")


def test_metric_names():
    assert metric_name("inception-v3-fid") == "FID"
    assert metric_name("inception-v3-fid", spatial=True) == "sFID"
    assert metric_name("dinov2-s14-bundled-224") == "FD_dinov2-s14-bundled-224"
    assert metric_name("efficientnet-lite0", spatial=True) == "sFD_efficientnet-lite0"
