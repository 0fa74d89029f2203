"""Frozen vision foundation models: vfmtok's own DINOv2 plus optional timm / transformers adapters.

``build_backbone(config_or_preset)`` is the entry point; weights arrive through ``load_pretrained_state_dict``
(official DINOv2 files via :func:`load_official_dinov2`, the offline ViT-S/14 via :func:`bundled_dinov2_s`).
"""

from __future__ import annotations

from .base import BackboneConfig, BackboneOutput, FrozenBackbone
from .bundled import bundled_dinov2_s
from .dinov2 import DinoV2Backbone
from .factory import BACKBONE_PRESETS, build_backbone, dinov2_config_for, list_presets, load_official_dinov2

__all__ = [
    "BACKBONE_PRESETS",
    "BackboneConfig",
    "BackboneOutput",
    "DinoV2Backbone",
    "FrozenBackbone",
    "build_backbone",
    "bundled_dinov2_s",
    "dinov2_config_for",
    "list_presets",
    "load_official_dinov2",
]
