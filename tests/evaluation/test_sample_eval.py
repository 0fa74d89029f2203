from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.evaluation.efficientnet import EfficientNetExtractor, EfficientNetLite0
from vfmtok.evaluation.features import FeatureSummary
from vfmtok.evaluation.fid import GaussianStats, ReferenceStats
from vfmtok.evaluation.sample_eval import evaluate_samples


def _summary(logits: np.ndarray | None) -> FeatureSummary:
    g = np.random.default_rng(0)
    x = g.normal(size=(64, 4))
    pool = GaussianStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False), n=64)
    return FeatureSummary(extractor="efficientnet-lite0", pool=pool, spatial=None, logits=logits, feats=None)


def test_no_inception_score_from_an_extractor_without_usable_logits():
    """EfficientNet-Lite0 with a zero classifier returns no logits: the sample report carries a warning, not an IS."""
    torch.manual_seed(0)
    net = EfficientNetLite0()
    with_fc = EfficientNetExtractor(net)
    with torch.no_grad():
        net._fc.weight.zero_()
        net._fc.bias.zero_()
    without_fc = EfficientNetExtractor(net)
    samples = _summary(logits=None)
    reference = ReferenceStats("efficientnet-lite0", samples.pool)
    out = evaluate_samples(samples, reference, without_fc)
    assert "inception_score" not in out and out["FD_efficientnet-lite0"] < 1e-6
    assert any("Inception Score skipped" in w and "all zero" in w for w in out["warnings"])
    logits = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    out = evaluate_samples(_summary(logits=logits), reference, with_fc)  # an extractor with a classifier: IS as usual
    assert out["inception_score"]["mean"] > 1.0 and not any("Inception" in w for w in out["warnings"])


def test_fd_bootstrap_spread_shrinks_with_more_samples():
    """The bootstrap spread measures the FD's noise from the sample count: 4x the samples, about half the spread."""
    from vfmtok.evaluation.fid import frechet_distance
    from vfmtok.evaluation.sample_eval import fd_bootstrap

    g = np.random.default_rng(0)
    ref = g.normal(size=(4000, 8))
    reference = GaussianStats(mu=ref.mean(0), sigma=np.cov(ref, rowvar=False), n=4000)
    small, large = (g.normal(0.3, 1.0, size=(n, 8)) for n in (100, 400))
    b_small, b_large = (fd_bootstrap(x, reference, resamples=60, seed=1) for x in (small, large))
    assert b_small["resamples"] == 60 and b_small["p5"] <= b_small["mean"] <= b_small["p95"]
    assert 1.3 < b_small["std"] / b_large["std"] < 3.5
    full = frechet_distance(large.mean(0), np.cov(large, rowvar=False), reference.mu, reference.sigma)
    assert abs(b_large["mean"] - full) < 3 * b_large["std"]
    with pytest.raises(ValueError, match="resamples"):
        fd_bootstrap(small, reference, resamples=1)


def test_evaluate_samples_reports_the_bootstrap_only_with_every_feature():
    g = np.random.default_rng(2)
    x = g.normal(size=(64, 4))
    pool = GaussianStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False), n=64)
    reference = ReferenceStats("efficientnet-lite0", pool, feats=x.astype(np.float32))
    extractor = EfficientNetExtractor(EfficientNetLite0())
    with_feats = FeatureSummary("efficientnet-lite0", pool, None, None, x.astype(np.float32))
    out = evaluate_samples(with_feats, reference, extractor, bootstrap=20)
    assert out["FD_efficientnet-lite0_bootstrap"]["resamples"] == 20
    assert out["FD_efficientnet-lite0_bootstrap"]["std"] > 0
    without = FeatureSummary("efficientnet-lite0", pool, None, None, x[:10].astype(np.float32))
    out = evaluate_samples(without, reference, extractor, bootstrap=20)
    assert "FD_efficientnet-lite0_bootstrap" not in out and any("bootstrap skipped" in w for w in out["warnings"])
