"""Optional adapter: any timm ViT with ``forward_intermediates`` as a frozen, tapped backbone.

timm is an optional extra (``pip install 'vfmtok[timm]'``); it needs torchvision, which must match the installed
torch build. ``BackboneConfig.name`` is the timm model name (e.g. ``vit_large_patch14_reg4_dinov2.lvd142m``) and
``BackboneConfig.library_config`` holds the JSON of the extra ``timm.create_model`` keyword arguments (at least
``img_size``), so the structure can be rebuilt offline with ``pretrained=False``. Taps are block indices read through
timm's uniform feature API (``forward_intermediates(..., output_fmt="NLC", stop_early=True)``, prefix tokens
dropped); ``tap_norm`` applies the model's final ``norm``. Blocks after the last tap and the classifier head are
pruned at construction (``prune_intermediate_layers``), so the state dict holds only what runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from torch import Tensor

from ..hub import ModelLoadError, PretrainedMixin
from .base import BackboneConfig, BackboneOutput, FrozenBackbone

log = logging.getLogger(__name__)

__all__ = ["TimmBackbone", "timm_backbone_config", "timm_backbone_from_pretrained"]


def _require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            "BackboneConfig.kind 'timm' needs the optional package timm: pip install 'vfmtok[timm]'"
        ) from None
    return timm


def _describe(
    model: Any, name: str, taps: tuple[int, ...], tap_norm: tuple[bool, ...] | None, kwargs: dict[str, Any]
) -> BackboneConfig:
    """BackboneConfig (kind ``"timm"``) describing a built timm ViT."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    patch = model.patch_embed.patch_size
    img = model.patch_embed.img_size
    taps = tuple(taps)
    return BackboneConfig(
        kind="timm",
        name=name,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=getattr(model.blocks[0].attn, "num_heads", 1),
        patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch,
        pos_embed_size=img[0] if isinstance(img, (tuple, list)) else img,
        num_register_tokens=getattr(model, "num_reg_tokens", 0),
        taps=taps,
        tap_norm=tuple(tap_norm) if tap_norm is not None else (False,) * (len(taps) - 1) + (True,),
        num_prefix_tokens=model.num_prefix_tokens,
        input_size=img[0] if isinstance(img, (tuple, list)) else img,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        library_config=json.dumps(kwargs, sort_keys=True),
    )


def timm_backbone_config(
    name: str,
    taps: tuple[int, ...],
    tap_norm: tuple[bool, ...] | None = None,
    input_size: int | None = None,
    **create_kwargs: Any,
) -> BackboneConfig:
    """Describe timm model ``name`` (built once with ``pretrained=False`` to read its structure; no download).

    ``input_size`` becomes ``img_size`` for ``timm.create_model`` (the position table is built at that size);
    ``create_kwargs`` are passed through and recorded. Mean / std come from the model's pretrained config.
    """
    timm = _require_timm()
    kwargs = dict(create_kwargs)
    if input_size is not None:
        kwargs["img_size"] = input_size
    model = timm.create_model(name, pretrained=False, **kwargs)
    return _describe(model, name, taps, tap_norm, kwargs)


class TimmBackbone(PretrainedMixin, FrozenBackbone):
    """A timm ViT (``self.model``), frozen and tapped per ``config``; state-dict keys are timm's under ``model.``."""

    config_class = BackboneConfig

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        if config.kind != "timm":
            raise ValueError(f"TimmBackbone needs BackboneConfig.kind == 'timm', got {config.kind!r}")
        timm = _require_timm()
        kwargs = json.loads(config.library_config) if config.library_config else {}
        self.model = timm.create_model(config.name, pretrained=False, **kwargs)
        depth = len(self.model.blocks)
        self.taps = tuple(t + depth if t < 0 else t for t in config.taps)
        if any(not 0 <= t < depth for t in self.taps):
            raise ValueError(f"taps {config.taps} out of range for a {depth}-block {config.name}")
        self._take = sorted(set(self.taps))
        self.model.prune_intermediate_layers(self._take, prune_norm=False, prune_head=True)
        self.freeze()

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return (self.model.embed_dim,) * len(self.taps)

    def extract(self, x: Tensor) -> BackboneOutput:
        """Preprocessed (B, 3, H, W) -> ``BackboneOutput`` (levels (B, D, H/P, W/P), target (B, h*w, D))."""
        feats = self.model.forward_intermediates(
            x, indices=self._take, norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
        )  # block order, prefix tokens already dropped: each (B, h*w, D)
        by_block = dict(zip(self._take, feats))
        p = self.config.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        patches = [self.model.norm(by_block[t]) if n else by_block[t] for t, n in zip(self.taps, self.config.tap_norm)]
        levels = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in patches]
        return BackboneOutput(levels=levels, target=patches[self.config.target_tap])


def timm_backbone_from_pretrained(
    name: str,
    taps: tuple[int, ...],
    tap_norm: tuple[bool, ...] | None = None,
    input_size: int | None = None,
    **create_kwargs: Any,
) -> TimmBackbone:
    """Pretrained timm backbone (downloads through timm / the Hub; needs network the first time).

    timm resamples the position table to ``input_size`` while loading. Example:
    ``timm_backbone_from_pretrained("vit_large_patch14_reg4_dinov2.lvd142m", (5, 11, 17, 23), input_size=336)``.
    """
    timm = _require_timm()
    kwargs = dict(create_kwargs)
    if input_size is not None:
        kwargs["img_size"] = input_size
    source = timm.create_model(name, pretrained=True, **kwargs)
    backbone = TimmBackbone(_describe(source, name, taps, tap_norm, kwargs))
    expected = backbone.model.state_dict()
    weights = source.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelLoadError(f"{name}: pretrained weights lack {missing[:5]}")
    backbone.model.load_state_dict({k: weights[k] for k in expected}, strict=True)
    return backbone.eval()
