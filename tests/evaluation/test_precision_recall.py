from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.evaluation.precision_recall import manifold_radii, precision_recall


def test_identical_sets_are_perfect():
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    pr = precision_recall(x, x.copy(), block=16)  # blocks smaller than the set exercise the batching
    assert pr.precision == 1.0 and pr.recall == 1.0


def test_disjoint_sets_score_zero():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 4))
    far = rng.standard_normal((40, 4)) + 100.0
    pr = precision_recall(ref, far)
    assert pr.precision == 0.0 and pr.recall == 0.0


def test_mode_collapse_keeps_precision_loses_recall():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((200, 2))
    collapsed = 0.05 * rng.standard_normal((100, 2))  # all samples near the centre of the reference
    pr = precision_recall(ref, collapsed, block=64)
    assert pr.precision == pytest.approx(1.0)
    assert pr.recall < 0.5


def test_radii_are_kth_neighbour_distances():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    r = manifold_radii(x, k=3, block=2)
    # squared distance to the 3rd nearest other point
    torch.testing.assert_close(r, torch.tensor([36.0, 25.0, 9.0, 25.0, 81.0]))
    with pytest.raises(ValueError, match="more than k"):
        manifold_radii(x[:3], k=3)


def test_width_mismatch():
    with pytest.raises(ValueError, match="widths"):
        precision_recall(np.zeros((5, 3)), np.zeros((5, 4)))
