from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.evaluation.inception_score import inception_score


def test_uniform_predictions_score_one():
    s = inception_score(torch.zeros(100, 1008))
    assert s.mean == pytest.approx(1.0) and s.std == pytest.approx(0.0, abs=1e-12) and s.splits == 10


def test_confident_balanced_predictions_score_number_of_classes():
    labels = np.arange(1000) % 10
    logits = 100.0 * np.eye(1008)[labels]  # near one-hot, 10 classes evenly in every split
    s = inception_score(logits, num_splits=10)
    assert s.mean == pytest.approx(10.0, rel=1e-6)


def test_collapsed_confident_predictions_score_one():
    logits = torch.full((50, 20), -50.0)
    logits[:, 3] = 50.0
    assert inception_score(logits).mean == pytest.approx(1.0, abs=1e-6)


def test_sharper_predictions_score_higher_and_splits_capped():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 30))
    assert inception_score(3 * base).mean > inception_score(base).mean > 1.0
    assert inception_score(base[:4], num_splits=10).splits == 4


def test_bad_shape():
    with pytest.raises(ValueError):
        inception_score(torch.zeros(10))
