"""Optional adapter: Hugging Face ``transformers`` vision encoders as frozen, tapped backbones.

Supported model types: ``dinov2``, ``dinov2_with_registers``, ``clip_vision_model`` and ``siglip_vision_model``
(full ``clip`` / ``siglip`` checkpoints contribute their vision tower). ``transformers`` is an optional extra
(``pip install 'vfmtok[transformers]'``); nothing here downloads anything except
:func:`hf_backbone_from_pretrained`, which is meant for users with Hub access.

The wrapped model's own config is stored as JSON in ``BackboneConfig.library_config``, so a saved vfmtok model can
rebuild the structure offline. Taps: ``taps[i]`` is the output of encoder layer ``taps[i]`` (0-indexed), i.e.
``hidden_states[taps[i] + 1]`` of the HF model, captured with forward hooks; ``tap_norm[i]`` applies the model's final
LayerNorm (``layernorm`` for DINOv2, ``post_layernorm`` for CLIP and SigLIP). Layers after the last tap are removed
at construction, so the state dict holds only what runs. Prefix tokens (CLS, registers) are dropped.

Numerics versus vfmtok's own :class:`~vfmtok.backbones.dinov2.DinoV2Backbone`: HF ``Dinov2WithRegistersModel``
resizes the position table like the official register models (bicubic, antialias). HF ``Dinov2Model`` resizes
without antialias and without the 0.1 offset of the official non-register models, so its features differ slightly
from the official ones at any input size other than 518.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from torch import Tensor, nn

from ..hub import ModelLoadError, PretrainedMixin
from .base import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, BackboneOutput, FrozenBackbone

log = logging.getLogger(__name__)

__all__ = ["HFBackbone", "hf_backbone_config", "hf_backbone_from_pretrained"]

_SUPPORTED = ("dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model")
_VISION_TOWER = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
_MEAN_STD = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# candidate attribute paths (transformers 4.x nests CLIP/SigLIP under vision_model, 5.x does not)
_LAYER_PATHS = ("encoder.layer", "encoder.layers", "vision_model.encoder.layers")
_NORM_PATHS = ("layernorm", "post_layernorm", "vision_model.post_layernorm")


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            "BackboneConfig.kind 'hf' needs the optional package transformers: pip install 'vfmtok[transformers]'"
        ) from None
    return transformers


def _get_path(module: nn.Module, paths: tuple[str, ...]) -> tuple[str, Any]:
    for path in paths:
        obj: Any = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return path, obj
    raise ModelLoadError(f"{type(module).__name__}: none of {paths} found")


def _hf_config_from_json(text: str) -> Any:
    transformers = _require_transformers()
    data = json.loads(text)
    model_type = data.pop("model_type", None)
    if model_type not in _SUPPORTED:
        raise ModelLoadError(f"HF backbone: model_type {model_type!r} is not one of {_SUPPORTED}")
    return transformers.AutoConfig.for_model(model_type, **data)


def _vision_config(hf_config: Any) -> Any:
    """A full CLIP / SigLIP config -> its vision config; vision configs pass through."""
    if getattr(hf_config, "model_type", None) in _VISION_TOWER:
        return hf_config.vision_config
    return hf_config


def hf_backbone_config(
    hf_config: Any,
    taps: tuple[int, ...],
    tap_norm: tuple[bool, ...] | None = None,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    name: str = "",
) -> BackboneConfig:
    """:class:`BackboneConfig` (kind ``"hf"``) for a transformers config object.

    ``tap_norm`` defaults to the final norm on the last tap only; ``input_size`` to the model's ``image_size``;
    ``mean`` / ``std`` to the usual values of the model family.
    """
    hf_config = _vision_config(hf_config)
    model_type = hf_config.model_type
    if model_type not in _SUPPORTED:
        raise ModelLoadError(f"HF backbone: model_type {model_type!r} is not one of {_SUPPORTED}")
    taps = tuple(taps)
    default_mean, default_std = _MEAN_STD[model_type]
    return BackboneConfig(
        kind="hf",
        name=name or model_type,
        embed_dim=hf_config.hidden_size,
        depth=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        patch_size=hf_config.patch_size,
        pos_embed_size=hf_config.image_size,
        num_register_tokens=getattr(hf_config, "num_register_tokens", 0),
        taps=taps,
        tap_norm=tuple(tap_norm) if tap_norm is not None else (False,) * (len(taps) - 1) + (True,),
        input_size=input_size or hf_config.image_size,
        mean=tuple(mean or default_mean),
        std=tuple(std or default_std),
        library_config=hf_config.to_json_string(use_diff=False),
    )


class HFBackbone(PretrainedMixin, FrozenBackbone):
    """A transformers vision encoder (``self.model``), frozen and tapped per ``config``.

    Built from ``config.library_config`` alone (random init); load weights with :meth:`load_pretrained_state_dict`
    or use :func:`hf_backbone_from_pretrained`. ``state_dict`` keys are the HF ones under ``model.``.
    """

    config_class = BackboneConfig

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        if config.kind != "hf" or not config.library_config:
            raise ValueError("HFBackbone needs BackboneConfig.kind == 'hf' and the HF config JSON in library_config")
        transformers = _require_transformers()
        hf_config = _hf_config_from_json(config.library_config)
        self.model_type: str = hf_config.model_type
        self.model = transformers.AutoModel.from_config(hf_config)
        depth = hf_config.num_hidden_layers
        self.taps = tuple(t + depth if t < 0 else t for t in config.taps)
        if any(not 0 <= t < depth for t in self.taps):
            raise ValueError(f"taps {config.taps} out of range for a {depth}-layer {self.model_type}")
        self._layer_path, layers = _get_path(self.model, _LAYER_PATHS)
        self._norm_path, _ = _get_path(self.model, _NORM_PATHS)
        keep = max(self.taps) + 1
        if keep < len(layers):  # like timm's prune_intermediate_layers: later layers never run, so drop them
            parent_path, attr = self._layer_path.rsplit(".", 1)
            _, parent = _get_path(self.model, (parent_path,))
            setattr(parent, attr, nn.ModuleList(list(layers)[:keep]))
        self.freeze()

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return (self.config.embed_dim,) * len(self.taps)

    @property
    def final_norm(self) -> nn.Module:
        """The LayerNorm applied to taps with ``tap_norm``."""
        return _get_path(self.model, (self._norm_path,))[1]

    def _run(self, x: Tensor) -> None:
        if self.model_type in ("clip_vision_model", "siglip_vision_model"):
            native = x.shape[-2:] == (self.config.pos_embed_size, self.config.pos_embed_size)
            self.model(pixel_values=x, interpolate_pos_encoding=not native)
        else:  # DINOv2 always interpolates when the grid differs
            self.model(pixel_values=x)

    def extract(self, x: Tensor) -> BackboneOutput:
        """Preprocessed (B, 3, H, W) -> ``BackboneOutput`` (levels (B, D, H/P, W/P), target (B, h*w, D))."""
        _, layers = _get_path(self.model, (self._layer_path,))
        wanted = set(self.taps)
        captured: dict[int, Tensor] = {}

        def hook(i: int) -> Any:
            def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
                captured[i] = output[0] if isinstance(output, (tuple, list)) else output

            return fn

        handles = [layers[i].register_forward_hook(hook(i)) for i in sorted(wanted)]
        try:
            self._run(x.to(next(self.model.parameters()).dtype))
        finally:
            for h in handles:
                h.remove()
        p = self.config.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        k = self.config.num_prefix_tokens
        norm = self.final_norm
        patches = []
        for t, use_norm in zip(self.taps, self.config.tap_norm):
            y = captured[t]  # (B, prefix + h*w, D)
            prefix = k if k is not None else y.shape[1] - h * w
            y = norm(y) if use_norm else y
            patches.append(y[:, prefix:])  # (B, h*w, D)
        levels = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in patches]
        return BackboneOutput(levels=levels, target=patches[self.config.target_tap])


def _read_mean_std(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """image_mean / image_std from the checkpoint's preprocessor_config.json, if there is one."""
    try:
        from transformers.utils import cached_file

        path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        if path is None:
            return None
        with open(path) as f:
            data = json.load(f)
        return tuple(data["image_mean"]), tuple(data["image_std"])
    except Exception as e:  # noqa: BLE001 - optional metadata; fall back on the family defaults
        log.info("no usable preprocessor_config.json for %s (%s); using family defaults", name_or_path, e)
        return None


def hf_backbone_from_pretrained(
    name_or_path: str,
    taps: tuple[int, ...],
    tap_norm: tuple[bool, ...] | None = None,
    input_size: int | None = None,
    revision: str | None = None,
) -> HFBackbone:
    """Pretrained transformers backbone from the Hub or a local HF directory (needs network for Hub ids).

    Example: ``hf_backbone_from_pretrained("facebook/dinov2-with-registers-large", taps=(5, 11, 17, 23),
    input_size=336)`` gives the VFMTok taps through transformers. Mean / std come from the checkpoint's
    ``preprocessor_config.json`` when present.
    """
    transformers = _require_transformers()
    hf_config = _vision_config(transformers.AutoConfig.from_pretrained(name_or_path, revision=revision))
    classes = {
        "clip_vision_model": transformers.CLIPVisionModel,
        "siglip_vision_model": transformers.SiglipVisionModel,
    }
    loader = classes.get(hf_config.model_type, transformers.AutoModel)
    hf_model = loader.from_pretrained(name_or_path, revision=revision)
    mean_std = _read_mean_std(name_or_path)
    config = hf_backbone_config(
        hf_model.config,
        taps,
        tap_norm,
        input_size=input_size,
        mean=mean_std[0] if mean_std else None,
        std=mean_std[1] if mean_std else None,
        name=str(name_or_path),
    )
    backbone = HFBackbone(config)
    expected = backbone.model.state_dict()
    source = hf_model.state_dict()
    missing = sorted(set(expected) - set(source))
    if missing:
        raise ModelLoadError(f"{name_or_path}: weights lack {len(missing)} keys, e.g. {missing[:5]}")
    backbone.model.load_state_dict({k: source[k] for k in expected}, strict=True)
    return backbone.eval()
