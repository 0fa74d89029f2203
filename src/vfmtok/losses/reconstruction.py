"""Pixel reconstruction losses (pure functions; weights and schedules are applied by the trainer).

The official VFMTok trainer (``vq_train.py`` + ``vq_loss.py``, CVMI-Lab/VFMTok 828c780) adds an MSE term to the
configured reconstruction loss, so its default ``--reconstruction-loss l2`` trains on ``2 * MSE``
(``l1`` gives ``L1 + MSE``); :func:`official_pixel_loss` reproduces that, :func:`pixel_loss` is the plain choice.
No clamping is applied: the loss sees the raw, unbounded decoder output, as in the official code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

PIXEL_LOSSES = ("l1", "l2")


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        # broadcasting (B,3,H,W) against (3,H,W) or a wrong resolution would silently give a wrong loss
        raise ValueError(f"pixel loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error.

    Args:
        pred: (B, 3, H, W) reconstruction (any float range; [-1, 1] images in vfmtok).
        target: same shape as ``pred``.

    Returns:
        Scalar: mean over all elements of ``|pred - target|``.
    """
    _check(pred, target)
    return F.l1_loss(pred, target)


def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error; same shapes as :func:`l1_loss`. Returns a scalar."""
    _check(pred, target)
    return F.mse_loss(pred, target)


def pixel_loss(pred: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """``"l1"`` -> :func:`l1_loss`, ``"l2"`` -> :func:`l2_loss`. Returns a scalar."""
    if kind == "l1":
        return l1_loss(pred, target)
    if kind == "l2":
        return l2_loss(pred, target)
    raise ValueError(f"unknown pixel loss {kind!r}; choose from {PIXEL_LOSSES}")


def official_pixel_loss(pred: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """The official trainer's pixel term: ``pixel_loss(kind) + MSE`` (``kind="l2"`` gives the released recipe's
    ``2 * MSE``, ``kind="l1"`` gives ``L1 + MSE``). Returns a scalar."""
    return pixel_loss(pred, target, kind) + l2_loss(pred, target)


def psnr(pred: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-image PSNR in dB, for logging during training (evaluation has its own uint8-based metric).

    Args:
        pred: (B, C, H, W); values are *not* clamped.
        target: same shape.
        data_range: peak-to-peak range of the signal; 2.0 for [-1, 1] images.

    Returns:
        (B,) float; ``inf`` where the images are identical.
    """
    _check(pred, target)
    mse = (pred.detach().float() - target.detach().float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * (data_range**2 / mse).log10()
