from __future__ import annotations

import numpy as np
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
