"""GAN objectives for tokenizer training (pure functions on discriminator logits).

Conventions: ``logits_real`` / ``logits_fake`` are raw discriminator outputs of any shape (per-patch or per-token
logits are averaged). Weights, the GAN start step and the optional adaptive weight are applied by the trainer.

Official VFMTok recipe (``vq_loss.py``, CVMI-Lab/VFMTok 828c780): DINO discriminator with the hinge D loss, and the
non-saturating generator loss ``mean softplus(-D(x_rec))`` (``softplus_g_loss``), both weighted 0.5 from step 20000.
Note: the official ``non_saturating_d_loss`` / ``non_saturating_gen_loss`` call
``binary_cross_entropy_with_logits(ones_like(logits), logits)`` with input and target swapped; they are unused in the
released recipe and are *not* reproduced here — the functions below are the textbook definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

D_LOSSES = ("hinge", "non-saturating")
G_LOSSES = ("hinge", "non-saturating")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))``. Returns a scalar >= 0."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Logistic ("vanilla") D loss: ``0.5 * (mean softplus(-D(x)) + mean softplus(D(x_rec)))``, i.e. binary
    cross-entropy with real = 1 and fake = 0, halved as in taming. Returns a scalar >= 0."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """``-mean D(x_rec)``. Returns a scalar (unbounded)."""
    return -logits_fake.mean()


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    """``mean softplus(-D(x_rec))`` = BCE of the fakes against label 1 (the official ``softplus_g_loss``).
    Returns a scalar >= 0."""
    return F.softplus(-logits_fake).mean()


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "hinge") -> Tensor:
    """Dispatch on ``kind`` in :data:`D_LOSSES`. Returns a scalar."""
    if kind == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    if kind == "non-saturating":
        return non_saturating_d_loss(logits_real, logits_fake)
    raise ValueError(f"unknown discriminator loss {kind!r}; choose from {D_LOSSES}")


def generator_loss(logits_fake: Tensor, kind: str = "non-saturating") -> Tensor:
    """Dispatch on ``kind`` in :data:`G_LOSSES`. Returns a scalar."""
    if kind == "hinge":
        return hinge_g_loss(logits_fake)
    if kind == "non-saturating":
        return non_saturating_g_loss(logits_fake)
    raise ValueError(f"unknown generator loss {kind!r}; choose from {G_LOSSES}")


def gan_weight(step: int, start: int, weight: float) -> float:
    """The GAN warm-up: ``weight`` once ``step >= start``, else 0 (official ``adopt_weight``; steps count from 1
    in the official trainer). The trainer should skip the discriminator forward entirely while this is 0."""
    return weight if step >= start else 0.0


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """Taming-style adaptive GAN weight ``|grad rec| / (|grad g| + 1e-4)`` at the decoder's last layer, clamped to
    ``[0, max_weight]`` and detached (disabled in the official VFMTok recipe; offered for other presets).

    Args:
        rec_loss: scalar reconstruction (+ perceptual) loss, still attached to the graph.
        g_loss: scalar generator adversarial loss, still attached to the graph.
        last_layer: the decoder's final weight tensor (e.g. ``conv_out.weight``).

    Returns:
        Scalar tensor, detached.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


def lecam_regularizer(logits_real: Tensor, logits_fake: Tensor, ema_real: Tensor | float,
                      ema_fake: Tensor | float) -> Tensor:
    """LeCam regulariser (Tseng et al., CVPR 2021; the relu form of the authors' code):
    ``mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x_rec))^2``. The EMAs of the mean logits are kept by the
    trainer. Returns a scalar >= 0."""
    return F.relu(logits_real - ema_fake).pow(2).mean() + F.relu(ema_real - logits_fake).pow(2).mean()
