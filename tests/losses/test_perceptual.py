"""Perceptual loss wrapper: averages a passed-in distance network."""

from __future__ import annotations

import pytest
import torch

from vfmtok.losses.lpips import LPIPS
from vfmtok.losses.perceptual import perceptual_loss


def _l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


def test_mean_over_batch() -> None:
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -1.0)])
    assert perceptual_loss(_l1_distance, pred, target).item() == pytest.approx(0.75)


def test_resize_option_and_shape_check() -> None:
    seen = []

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(a.shape)
        return _l1_distance(a, b)

    perceptual_loss(spy, torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16), size=8)
    assert seen == [torch.Size([1, 3, 8, 8])]
    with pytest.raises(ValueError, match="differ"):
        perceptual_loss(spy, torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 8, 8))


def test_with_an_lpips_network_gradients_reach_the_prediction() -> None:
    net = LPIPS("alex")  # structure only; the weights do not matter here
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    assert perceptual_loss(net, target, target).item() == 0.0
    pred = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    perceptual_loss(net, pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
