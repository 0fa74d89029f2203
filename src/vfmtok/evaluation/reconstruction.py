"""Pixel reconstruction metrics: PSNR, SSIM, the resizes the protocol needs, and the down-up "degradation ladder".

All functions take uint8 (B, H, W, 3) images (the evaluation file format) or float (B, 3, H, W) in [0, 1] and compute
per-image values, so callers average over a set (the official script averages per-image PSNR/SSIM the same way).

SSIM comes in two flavours, both matching ``skimage.metrics.structural_similarity`` on [0, 1] float images with
``channel_axis=-1`` (per-channel SSIM averaged, border of half a window cropped before the mean):

* ``window="gaussian"`` (vfmtok default): 11x11 Gaussian window, sigma 1.5, population covariances
  (skimage ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``), i.e. Wang et al. 2004;
* ``window="uniform"``: 7x7 box window with sample covariances (skimage's defaults), which the official VFMTok /
  LlamaGen script uses - there with ``data_range=2.0`` on [0, 1] images, a bug that inflates SSIM. Pass
  ``data_range=2.0`` to reproduce the official number.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_unit_float(images: Tensor | np.ndarray) -> Tensor:
    """uint8 (B, H, W, 3) -> float64 (B, 3, H, W) in [0, 1]; float (B, 3, H, W) input is taken as [0, 1] already."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).double() / 255.0
    if x.is_floating_point() and x.ndim == 4:
        return x.double()
    raise ValueError(f"expected uint8 (B, H, W, 3) or float (B, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}")


def psnr(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, (B,) float64; ``inf`` for identical images. Same as skimage ``peak_signal_noise_ratio``
    on [0, 1] floats (``data_range`` 1)."""
    p, t = to_unit_float(pred), to_unit_float(target)
    mse = (p - t).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    data_range: float = 1.0,
    window: str = "gaussian",
    win_size: int | None = None,
    sigma: float = 1.5,
) -> Tensor:
    """Per-image mean SSIM, (B,) float64, averaged over channels (see module docstring for the two windows).

    Args:
        pred, target: uint8 (B, H, W, 3) or float (B, C, H, W) in [0, 1]; H, W >= the window size.
        data_range: dynamic range of the values (1.0 for [0, 1]; the official script's bug is 2.0).
        window: ``"gaussian"`` (size 11 = 2 * round(3.5 sigma) + 1, as skimage) or ``"uniform"`` (size 7).
    """
    p, t = to_unit_float(pred), to_unit_float(target)
    b, c, h, w = p.shape
    if window == "gaussian":
        size = win_size or 2 * int(3.5 * sigma + 0.5) + 1
        g = _gaussian_kernel(size, sigma, p.dtype)
        kernel = torch.outer(g, g)
        cov_norm = 1.0
    elif window == "uniform":
        size = win_size or 7
        kernel = torch.full((size, size), 1.0 / size**2, dtype=p.dtype)
        cov_norm = size**2 / (size**2 - 1.0)  # sample covariance, as skimage's default
    else:
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {window!r}")
    if min(h, w) < size:
        raise ValueError(f"images of {h}x{w} are smaller than the {size}x{size} SSIM window")
    kernel = kernel.to(p.device).expand(c, 1, size, size)

    def filt(x: Tensor) -> Tensor:
        # 'valid' filtering == skimage's filtering followed by cropping (size - 1) // 2 pixels from each border
        return F.conv2d(x, kernel, groups=c)

    mu_p, mu_t = filt(p), filt(t)
    var_p = cov_norm * (filt(p * p) - mu_p * mu_p)
    var_t = cov_norm * (filt(t * t) - mu_t * mu_t)
    cov = cov_norm * (filt(p * t) - mu_p * mu_t)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return s.mean(dim=(2, 3)).mean(1)  # per channel, then over channels


_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "box": Image.BOX, "lanczos": Image.LANCZOS}


def resize_uint8(images: np.ndarray, size: int, resample: str = "bicubic") -> np.ndarray:
    """Resize uint8 (B, H, W, 3) images to (B, size, size, 3) with PIL (``Image.resize``, antialiased).

    ``bicubic`` is what the official rFID script gets from ``Image.resize((256, 256))`` (Pillow's default filter).
    """
    if images.shape[1:3] == (size, size):
        return images
    f = _PIL_FILTERS[resample]
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), resample=f)) for im in images])


def degrade_uint8(images: np.ndarray, factor: int, resample: str = "bicubic") -> np.ndarray:
    """Down-sample uint8 (B, H, W, 3) by ``factor`` and back up (PIL, same filter both ways): a known, graded loss of
    detail that puts any FD on a scale (report the FD of x2 and x4 copies next to a tokenizer's rFD)."""
    h, w = images.shape[1:3]
    f = _PIL_FILTERS[resample]
    small = (max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor)))
    return np.stack(
        [np.asarray(Image.fromarray(im).resize(small, resample=f).resize((w, h), resample=f)) for im in images]
    )


def float_to_uint8(x: Tensor) -> np.ndarray:
    """Model output float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounding to nearest after clamping.

    (The official gFID path truncates ``127.5 x + 128`` instead; the tokenizer's ``decode_uint8`` reproduces that.)
    """
    u8 = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def lpips_distance(lpips_net: torch.nn.Module, pred_u8: np.ndarray, target_u8: np.ndarray) -> Tensor:
    """Per-image LPIPS (B,) between uint8 (B, H, W, 3) images, mapped to [-1, 1] as LPIPS expects."""
    device = next(lpips_net.parameters()).device
    p = torch.from_numpy(pred_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    t = torch.from_numpy(target_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    with torch.no_grad():
        d = lpips_net(p, t)
    return d.detach().float().flatten().cpu()
