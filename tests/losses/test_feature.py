"""Semantic (1 - cos) loss."""

from __future__ import annotations

import pytest
import torch

from vfmtok.losses.feature import semantic_loss, token_cosine_similarity


def test_known_values() -> None:
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 1.0]]])  # (1, 4, 2)
    pred = torch.tensor([[[5.0, 0.0], [0.0, -1.0], [-4.0, 3.0], [1.0, 0.0]]])
    # cos: 1 (same direction, any scale), -1 (opposite), 0 (orthogonal), 1/sqrt(2)
    cos = token_cosine_similarity(pred, target)
    torch.testing.assert_close(cos, torch.tensor([[1.0, -1.0, 0.0, 2**-0.5]]))
    expected = (0.0 + 2.0 + 1.0 + (1 - 2**-0.5)) / 4
    assert semantic_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_identical_and_scaled_tokens_give_zero_and_gradient_flows() -> None:
    target = torch.randn(2, 5, 8)
    assert semantic_loss(3.0 * target, target).item() == pytest.approx(0.0, abs=1e-6)
    pred = torch.randn(2, 5, 8, requires_grad=True)
    loss = semantic_loss(pred, target)
    loss.backward()
    assert 0.0 < loss.item() < 2.0 and pred.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error() -> None:
    # e.g. 581 target tokens (prefix tokens kept) against 576 predicted
    with pytest.raises(ValueError, match="differ"):
        semantic_loss(torch.randn(1, 576, 4), torch.randn(1, 581, 4))
