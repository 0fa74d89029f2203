"""GAN losses on tiny known logits."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.losses.adversarial import (
    adaptive_gan_weight,
    discriminator_loss,
    gan_weight,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    lecam_regularizer,
    non_saturating_d_loss,
    non_saturating_g_loss,
)

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.0])


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_hinge() -> None:
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert hinge_g_loss(FAKE).item() == pytest.approx(1 / 3)
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met


def test_non_saturating() -> None:
    real = sum(_softplus(-r) for r in REAL.tolist()) / 3
    fake = sum(_softplus(f) for f in FAKE.tolist()) / 3
    assert non_saturating_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (real + fake), rel=1e-6)
    g = sum(_softplus(-f) for f in FAKE.tolist()) / 3
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(g, rel=1e-6)
    # equals binary cross-entropy with label 1 (the textbook definition, not the official swapped-argument call)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(FAKE, torch.ones(3))
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(bce.item(), rel=1e-6)


def test_dispatch_and_any_logit_shape() -> None:
    real, fake = REAL.view(1, 3, 1), FAKE.view(1, 1, 3)  # per-patch / per-token maps are simply averaged
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(hinge_d_loss(REAL, FAKE).item())
    assert discriminator_loss(real, fake, "non-saturating").item() == pytest.approx(
        non_saturating_d_loss(REAL, FAKE).item())
    assert generator_loss(fake, "hinge").item() == pytest.approx(1 / 3)
    assert generator_loss(fake).item() == pytest.approx(non_saturating_g_loss(FAKE).item())
    with pytest.raises(ValueError, match="unknown discriminator loss"):
        discriminator_loss(real, fake, "wasserstein")
    with pytest.raises(ValueError, match="unknown generator loss"):
        generator_loss(fake, "wasserstein")


def test_gan_weight_warmup() -> None:
    assert gan_weight(19_999, 20_000, 0.5) == 0.0
    assert gan_weight(20_000, 20_000, 0.5) == 0.5


def test_adaptive_weight() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3.0 * w).sum()  # grad (3, 3), norm 3 sqrt 2
    g = (w * torch.tensor([1.0, 1.0])).sum()  # grad (1, 1), norm sqrt 2
    out = adaptive_gan_weight(rec, g, w)
    assert out.item() == pytest.approx(3 * math.sqrt(2) / (math.sqrt(2) + 1e-4), rel=1e-6)
    assert not out.requires_grad
    assert adaptive_gan_weight((1e9 * w).sum(), g, w).item() == 1e4  # clamped


def test_lecam() -> None:
    # relu(real - 0)^2 = [4, 0.25, 0] -> 17/12; relu(0.5 - fake)^2 = [6.25, 0.25, 0] -> 6.5/3
    out = lecam_regularizer(REAL, FAKE, ema_real=0.5, ema_fake=0.0)
    assert out.item() == pytest.approx(4.25 / 3 + 6.5 / 3)
