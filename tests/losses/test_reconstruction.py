"""Pixel losses on tiny known tensors."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.losses.reconstruction import l1_loss, l2_loss, official_pixel_loss, pixel_loss, psnr

PRED = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
ZERO = torch.zeros(1, 1, 2, 2)


def test_known_values() -> None:
    assert l1_loss(PRED, ZERO).item() == pytest.approx(2.5)  # (1 + 2 + 3 + 4) / 4
    assert l2_loss(PRED, ZERO).item() == pytest.approx(7.5)  # (1 + 4 + 9 + 16) / 4
    assert pixel_loss(PRED, ZERO, "l1").item() == pytest.approx(2.5)
    assert pixel_loss(PRED, ZERO, "l2").item() == pytest.approx(7.5)


def test_official_pixel_loss_is_twice_mse_by_default() -> None:
    assert official_pixel_loss(PRED, ZERO).item() == pytest.approx(15.0)  # the released recipe's 2 x MSE
    assert official_pixel_loss(PRED, ZERO, "l1").item() == pytest.approx(10.0)  # L1 + MSE


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown pixel loss"):
        pixel_loss(PRED, ZERO, "huber")
    with pytest.raises(ValueError, match="differ"):
        l2_loss(PRED, torch.zeros(1, 2, 2))  # would broadcast silently


def test_gradient_of_official_loss() -> None:
    x = PRED.clone().requires_grad_(True)
    official_pixel_loss(x, ZERO).backward()
    torch.testing.assert_close(x.grad, 2 * 2 * PRED / 4)  # d/dx of 2 * mean(x^2)


def test_psnr() -> None:
    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    pred[0] += 0.1  # mse 0.01 -> 10 log10(4 / 0.01)
    out = psnr(pred, target)
    assert out[0].item() == pytest.approx(10 * math.log10(400.0), rel=1e-5)
    assert math.isinf(out[1].item())
