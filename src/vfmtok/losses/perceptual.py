"""Perceptual loss: mean LPIPS distance. The LPIPS network is passed in (build it once with
:func:`vfmtok.losses.lpips.load_lpips`, move it to the device, reuse it every step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def perceptual_loss(lpips: Callable[[Tensor, Tensor], Tensor], pred: Tensor, target: Tensor,
                    size: int | None = None) -> Tensor:
    """Mean LPIPS distance between reconstructions and targets.

    The official recipe evaluates LPIPS-VGG on the full 336x336 images, without clamping the reconstruction.

    Args:
        lpips: a distance network mapping two (B, 3, H, W) [-1, 1] tensors to (B,) or (B, 1, 1, 1) distances,
            e.g. :class:`vfmtok.losses.lpips.LPIPS`. It must not run under ``no_grad`` (gradients reach ``pred``).
        pred: (B, 3, H, W) reconstruction, nominally in [-1, 1] (unbounded decoder output is fine).
        target: (B, 3, H, W) original in [-1, 1].
        size: if given, both images are first resized to ``size x size`` (bilinear, antialiased) to save memory;
            None keeps the official full-resolution loss.

    Returns:
        Scalar: mean distance over the batch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"perceptual loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if size is not None and pred.shape[-2:] != (size, size):
        pred = F.interpolate(pred, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        target = F.interpolate(target, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return lpips(pred, target).mean()
