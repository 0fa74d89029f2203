"""Official VFMTok tokenizer checkpoints -> vfmtok state dicts and configs.

The official trainer saves ``{'model', 'ema', 'optimizer', 'discriminator', 'steps', 'args', ...}`` with every key
containing ``backbone`` removed; ``ema`` holds the released weights (``model`` is the raw, non-averaged copy).
:func:`load_official_checkpoint` reads the file safely (``weights_only=True`` with ``argparse.Namespace`` allow-listed)
and takes ``ema`` first. :func:`convert_official_tokenizer` is a pure dict -> dict function driven by one explicit
rename table: every source key must be renamed or deliberately dropped, every target key must be produced, and every
shape must match the model built from the config, so the result loads with ``strict=True``.
:func:`config_from_official_json` builds the :class:`TokenizerConfig` from the official hyper-parameters (the
fixture's ``tokenizer_config.json`` / ``dinov2_config.json`` format or the ``vit_transformer.yaml`` layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from typing import Any

import torch
from torch import Tensor

from ..backbones.base import BackboneConfig
from ..config import ConfigError
from ..hub import ModelLoadError, torch_load_weights
from ..tokenizer.model import TokenizerConfig
from ..tokenizer.presets import tokenizer_preset

log = logging.getLogger(__name__)

# Official key (regex, full match of the prefix) -> vfmtok key. Applied in order; the first match wins.
RENAME_RULES: tuple[tuple[str, str], ...] = (
    (r"encode_transformer\.projectors\.(\d+)\.mlp\.0\.", r"encoder.projectors.\1.fc1."),
    (r"encode_transformer\.projectors\.(\d+)\.mlp\.1\.", r"encoder.projectors.\1.norm1."),
    (r"encode_transformer\.projectors\.(\d+)\.mlp\.3\.", r"encoder.projectors.\1.fc2."),
    (r"encode_transformer\.projectors\.(\d+)\.mlp\.4\.", r"encoder.projectors.\1.norm2."),
    (r"encode_transformer\.norm_layers\.(\d+)\.", r"encoder.projectors.\1.norm_out."),
    (r"encode_transformer\.carrier_tokens$", r"encoder.carrier_tokens"),
    (r"encode_transformer\.slots_pos$", r"encoder.slots_pos"),
    (r"encode_transformer\.norm_pre1\.", r"encoder.norm_pre1."),
    (r"encode_transformer\.transformer\.layers\.(\d+)\.", r"encoder.layers.\1."),
    # a full in-memory official VQModel also holds the frozen DINOv2 under this prefix
    (r"encode_transformer\.backbone\.pretrained_encoder\.", r"backbone."),
    (r"pre_slots_quant\.", r"quant_proj."),
    (r"slot_quantize\.embedding\.weight$", r"quantizer.embedding.weight"),
    (r"post_slots_quant\.", r"post_quant_proj."),
    (r"decode_transformer\.transformer\.layers\.(\d+)\.", r"token_decoder.blocks.\1."),
    (r"decode_transformer\.", r"token_decoder."),
    (r"decoder\.", r"pixel_decoder."),
)

# Official keys that are dropped on purpose, with the reason.
DROPPED_KEYS: dict[str, str] = {
    "slot_quantize.codebook_used": "sliding window of the last 65536 assigned indices (a training statistic, not a "
    "weight; all zeros in an EMA copy)",
}

CHECKPOINT_ENTRIES = ("ema", "model", "state_dict")


def rename_official_key(key: str) -> str | None:
    """vfmtok name of an official tokenizer key, or None when no rule matches."""
    for pattern, repl in RENAME_RULES:
        m = re.match(pattern, key)
        if m:
            return m.expand(repl) + key[m.end() :]
    return None


def expected_state_shapes(config: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``VFMTokenizer(config).state_dict()``, built on the meta device (no memory, no init cost)."""
    from ..tokenizer.model import VFMTokenizer

    with torch.device("meta"):
        model = VFMTokenizer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_official_tokenizer(
    src_state_dict: dict[str, Tensor],
    config: TokenizerConfig,
    backbone_state_dict: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Rename an official tokenizer state dict (the ``ema`` entry) to vfmtok's layout for ``config``.

    Args:
        src_state_dict: official keys (``encode_transformer.*``, ``slot_quantize.*``, ``decode_transformer.*``,
            ``decoder.*``, ...), as stored in ``vfmtok-tokenizer.pt['ema']``.
        config: the architecture the weights belong to (see :func:`config_from_official_json`).
        backbone_state_dict: official-layout DINOv2 weights (e.g. from ``load_official_dinov2``), stored under
            ``backbone.``. Without it the result holds only the trainable part (no ``backbone.`` keys).

    Returns:
        vfmtok state dict; tensors are shared with the inputs, not copied. The codebook is kept as stored (the
        quantizer L2-normalises rows on every use, exactly as the official code does).

    Raises:
        ModelLoadError: naming unmapped or missing keys and shape mismatches.
    """
    expected = expected_state_shapes(config)
    out: dict[str, Tensor] = {}
    unmapped, collisions = [], []
    for key, value in src_state_dict.items():
        if key in DROPPED_KEYS:
            continue
        new = rename_official_key(key)
        if new is None:
            unmapped.append(key)
        elif new in out:
            collisions.append(f"{key} -> {new}")
        else:
            out[new] = value
    if backbone_state_dict is not None:
        for key, value in backbone_state_dict.items():
            new = "backbone." + key
            if new in out:
                collisions.append(f"dinov2 {key} -> {new} (also in the tokenizer checkpoint)")
            out[new] = value
    has_backbone = any(k.startswith("backbone.") for k in out)
    wanted = {k: s for k, s in expected.items() if has_backbone or not k.startswith("backbone.")}
    missing = sorted(set(wanted) - set(out))
    unexpected = sorted(set(out) - set(wanted))
    bad_shape = [f"{k}: expected {wanted[k]}, got {tuple(out[k].shape)}" for k in wanted if k in out
                 and tuple(out[k].shape) != wanted[k]]
    problems = []
    if unmapped:
        problems.append(f"unmapped official keys ({len(unmapped)}): {unmapped[:20]}")
    if collisions:
        problems.append(f"key collisions: {collisions[:10]}")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing[:20]}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}")
    if bad_shape:
        problems.append(f"shape mismatches ({len(bad_shape)}): {bad_shape[:20]}")
    if problems:
        raise ModelLoadError("official tokenizer conversion failed: " + "; ".join(problems))
    return {k: out[k] for k in wanted}


# ----------------------------------------------------------------------------------------------------------------------
# checkpoint files
# ----------------------------------------------------------------------------------------------------------------------


def load_official_checkpoint(path: str | os.PathLike, entry: str | None = None) -> dict[str, Tensor]:
    """Read an official tokenizer checkpoint safely and return its weights (``ema`` first).

    ``torch.load(weights_only=True)`` runs inside ``torch.serialization.safe_globals([argparse.Namespace])``: the
    official trainer pickles its ``args`` Namespace, which plain weights-only loading refuses, and
    ``weights_only=False`` would execute arbitrary pickled code from a downloaded file.

    Args:
        path: ``vfmtok-tokenizer.pt`` or any official training checkpoint.
        entry: force ``'ema'``, ``'model'`` or ``'state_dict'``; default: the first present in that order (a flat
            dict of tensors is used as is).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"official tokenizer checkpoint not found: {path}")
    obj = torch_load_weights(path, "official tokenizer checkpoint", allowed_globals=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if entry is not None:
        if entry not in obj:
            raise ModelLoadError(f"{path}: no {entry!r} entry (top-level keys {sorted(obj)})")
        state = obj[entry]
    elif all(isinstance(v, Tensor) for v in obj.values()):
        state = obj
    else:
        found = next((k for k in CHECKPOINT_ENTRIES if k in obj), None)
        if found is None:
            raise ModelLoadError(f"{path}: none of {list(CHECKPOINT_ENTRIES)} in the checkpoint (keys {sorted(obj)})")
        if found != "ema":
            log.warning("%s: no 'ema' entry; using %r (the released weights are the EMA ones)", path, found)
        state = obj[found]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: the weights entry is a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


# ----------------------------------------------------------------------------------------------------------------------
# the official DINO discriminator (vfmtok/discriminator/discriminator_dino.py)
# ----------------------------------------------------------------------------------------------------------------------


def dino_vits16_config(embed_dim: int = 384, depth: int = 12, num_heads: int = 6) -> BackboneConfig:
    """The official discriminator's frozen network, ``FrozenDINOSmallNoDrop``: DINO v1 ViT-S/16 at 224 as timm
    builds it (16 x 16 patches, CLS token, no registers, no LayerScale, qkv bias, tanh-approximated GELU, LayerNorm
    eps 1e-6, ImageNet mean/std). ``embed_dim`` / ``depth`` / ``num_heads`` are the released 384 / 12 / 6."""
    return BackboneConfig(kind="dinov2", name="dino_vits16", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                          mlp_ratio=4.0, ffn="mlp", mlp_act="gelu_tanh", patch_size=16, pos_embed_size=224,
                          num_register_tokens=0, layerscale=False, qkv_bias=True, ln_eps=1e-6, taps=(depth - 1,),
                          tap_norm=(False,), input_size=224)


def convert_dino_vits16(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A DINO ViT-S/16 state dict (``dino_deitsmall16_pretrain.pth`` layout) -> :class:`DinoV2Backbone` keys.

    As the official ``DinoDisc`` does on loading, the key third of every ``attn.qkv.bias`` is zeroed (it cannot
    change the attention: it adds a constant per query row before the softmax). A ``head.*`` classifier is dropped;
    ``mask_token`` (unused, DINOv2 layout) is added as zeros.
    """
    out = {}
    for k, v in state.items():
        if k.startswith("head."):
            continue
        v = v.detach().clone().float()
        if k.endswith("attn.qkv.bias"):
            c = v.numel() // 3
            v[c : 2 * c] = 0.0
        out[k] = v
    if "cls_token" not in out:
        raise ModelLoadError(f"not a DINO ViT state dict: no 'cls_token' (keys {sorted(out)[:5]}...)")
    out.setdefault("mask_token", torch.zeros(1, out["cls_token"].shape[-1]))
    return out


def convert_official_dino_disc(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official ``DinoDisc`` state dict (the ``discriminator`` entry of an official training checkpoint) ->
    :class:`vfmtok.losses.discriminator.DinoDiscriminator` keys: the hook-based spectral norm's ``weight_orig`` /
    ``weight_u`` / ``weight_v`` become ``parametrizations.weight.original`` / ``.0._u`` / ``.0._v``; the heads'
    layout (``heads.i.{0, 1.fn, 2}``) is the same."""
    rename = {"weight_orig": "parametrizations.weight.original", "weight_u": "parametrizations.weight.0._u",
              "weight_v": "parametrizations.weight.0._v"}
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        head, _, leaf = k.rpartition(".")
        out[f"{head}.{rename[leaf]}" if leaf in rename else k] = v
    return out


# ----------------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------------

_INTERP = re.compile(r"^\$\{([^}]+)\}$")


def _resolve(value: Any, root: dict[str, Any]) -> Any:
    """Resolve an OmegaConf-style ``${a.b.c}`` reference against ``root`` (the transformer config)."""
    if isinstance(value, str):
        m = _INTERP.match(value.strip())
        if m:
            node: Any = root
            for part in m.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"cannot resolve {value!r} in the official config")
                node = node[part]
            return _resolve(node, root)
    return value


def backbone_config_from_official_json(dinov2: dict[str, Any], input_size: int = 336) -> BackboneConfig:
    """:class:`BackboneConfig` from the fixture's ``dinov2_config.json`` (official DinoVisionTransformer fields)."""
    taps = tuple(dinov2.get("taps", {}).get("levels", (5, 11, 17, 23)))
    ffn = str(dinov2.get("ffn_layer", "mlp"))
    return BackboneConfig(
        kind="dinov2",
        name=str(dinov2.get("name", "dinov2_official")),
        embed_dim=int(dinov2["embed_dim"]),
        depth=int(dinov2["depth"]),
        num_heads=int(dinov2["num_heads"]),
        mlp_ratio=float(dinov2.get("mlp_ratio", 4.0)),
        ffn="swiglu" if "swiglu" in ffn else "mlp",
        patch_size=int(dinov2.get("patch_size", 14)),
        pos_embed_size=int(dinov2.get("img_size", 518)),
        num_register_tokens=int(dinov2.get("num_register_tokens", 0)),
        layerscale=bool(dinov2.get("layerscale", True)),
        qkv_bias=bool(dinov2.get("qkv_bias", True)),
        interpolate_antialias=bool(dinov2.get("interpolate_antialias", False)),
        interpolate_offset=float(dinov2.get("interpolate_offset", 0.1)),
        taps=taps,
        tap_norm=(False,) * (len(taps) - 1) + (True,),  # official: final norm on the last tap only
        input_size=input_size,
    )


def _backbone_from_arch(arch: str, input_size: int) -> BackboneConfig:
    from ..backbones.factory import BACKBONE_PRESETS

    m = re.fullmatch(r"dinov2_vit([sblg])14(_reg4?)?", arch)
    if m is None:
        raise ConfigError(f"unsupported official VFM {arch!r}; give --dinov2-config to describe it")
    preset = BACKBONE_PRESETS[f"dinov2-{m.group(1)}14{'-reg4' if m.group(2) else ''}"]
    # the official wrapper taps blocks [5, 11, 17, 23] whatever the size
    return dataclasses.replace(preset, taps=(5, 11, 17, 23), tap_norm=(False, False, False, True),
                               input_size=input_size)


def config_from_official_json(
    tokenizer_json: dict[str, Any] | None = None, dinov2_json: dict[str, Any] | None = None
) -> TokenizerConfig:
    """:class:`TokenizerConfig` from official hyper-parameters.

    Args:
        tokenizer_json: the fixture's ``tokenizer_config.json`` (``model_args`` + ``transformer_config`` +
            optional ``monkeypatched``), ``tokenizer_keys_released.json`` (``official_config`` + ``model_args``),
            or the ``vit_transformer.yaml`` layout (``encoder_config`` / ``decoder_config`` at the top).
            None: the released architecture (the ``official`` preset).
        dinov2_json: the fixture's ``dinov2_config.json``; None: the DINOv2 named by ``pretrained_enc_arch``.
    """
    base = tokenizer_preset("official")
    if tokenizer_json is None:
        if dinov2_json is None:
            return base
        return dataclasses.replace(base, backbone=backbone_config_from_official_json(dinov2_json, base.image_size))
    tcfg = tokenizer_json.get("transformer_config", tokenizer_json.get("official_config", tokenizer_json))
    if "encoder_config" not in tcfg or "decoder_config" not in tcfg:
        raise ConfigError("official tokenizer config: expected 'encoder_config' and 'decoder_config' sections")
    margs = tokenizer_json.get("model_args", {})
    patched = tokenizer_json.get("monkeypatched", {})
    enc = {k: _resolve(v, tcfg) for k, v in tcfg["encoder_config"].get("params", {}).items()}
    dec = {k: _resolve(v, tcfg) for k, v in tcfg["decoder_config"].get("params", {}).items()}
    if not margs.get("codebook_l2_norm", True):
        raise ConfigError("official tokenizer config: codebook_l2_norm=False is not supported (VFMTok always uses it)")
    image_size = int(enc.get("image_size", base.image_size))
    dim = int(enc.get("dim", base.dim))
    z_channels = int(margs.get("z_channels", dim))
    if z_channels != dim or int(dec.get("dim", dim)) != dim:
        raise ConfigError(f"official tokenizer config: z_channels {z_channels} and decoder dim must equal dim {dim}")
    n_carrier = int(enc.get("n_carrier", 256))
    grid = math.isqrt(n_carrier)
    if grid * grid != n_carrier:
        raise ConfigError(f"official tokenizer config: n_carrier {n_carrier} is not a square")
    if dinov2_json is not None:
        backbone = backbone_config_from_official_json(dinov2_json, image_size)
    else:
        arch = enc.get("visual_encoder_config", {}).get("params", {}).get("pretrained_enc_arch", "dinov2_vitl14_reg")
        backbone = _backbone_from_arch(str(arch), image_size)
    in_channels = int(enc.get("in_channels", backbone.embed_dim))
    if in_channels != backbone.embed_dim:
        raise ConfigError(f"official tokenizer config: in_channels {in_channels} != DINOv2 width {backbone.embed_dim}")
    sem = patched.get("semantic_proj_dim", {}).get("value", backbone.embed_dim)
    if int(sem) != backbone.embed_dim:
        raise ConfigError(f"official tokenizer config: semantic proj width {sem} != DINOv2 width {backbone.embed_dim}")
    ch_mult = tuple(int(c) for c in margs.get("decoder_ch_mult", base.pix_ch_mult))
    return dataclasses.replace(
        base,
        preset="official-converted",
        notes="Converted from an official VFMTok tokenizer checkpoint.",
        backbone=backbone,
        image_size=image_size,
        dim=dim,
        anchor_grid=grid,
        enc_depth=int(enc.get("depth", base.enc_depth)),
        enc_heads=8,  # hard-coded in the official DeformableTransformerEncoder (num_head is not passed)
        enc_points=int(enc.get("enc_n_points", base.enc_points)),
        enc_ffn_dim=min(4 * dim, 1024),
        codebook_size=int(margs.get("codebook_size", base.codebook_size)),
        codebook_dim=int(margs.get("codebook_slots_embed_dim", base.codebook_dim)),
        commit_beta=float(margs.get("commit_loss_beta", base.commit_beta)),
        entropy_ratio=float(margs.get("entropy_loss_ratio", base.entropy_ratio)),
        dec_depth=int(dec.get("depth", base.dec_depth)),
        dec_heads=int(dec.get("num_head", base.dec_heads)),
        dec_mlp_dim=int(dec.get("mlp_dim", base.dec_mlp_dim)),
        dec_attn_dropout=float(dec.get("dropout", base.dec_attn_dropout)),
        dec_registers=int(dec.get("num_register_tokens", base.dec_registers)),
        pixel_patch=int(enc.get("patch_size", base.pixel_patch)),
        pix_ch=int(patched.get("pixel_decoder_ch", {}).get("value", base.pix_ch)),
        # the official Decoder runs num_res_blocks + 1 ResnetBlocks per level (num_res_blocks=1 unless patched)
        pix_res_blocks=int(patched.get("pixel_decoder_num_res_blocks", {}).get("value", 1)) + 1,
        pix_ch_mult=ch_mult,
        pix_dropout=float(margs.get("dropout_p", 0.0)),
    )
