"""The timm adapter with a tiny random ViT (no downloads). Skips where timm (which needs torchvision) is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from vfmtok.backbones import build_backbone
from vfmtok.backbones.timm_adapter import TimmBackbone, timm_backbone_config

TINY_KW = {"embed_dim": 32, "depth": 4, "num_heads": 2, "reg_tokens": 4, "no_embed_class": True}


@pytest.fixture(scope="module")
def config():
    return timm_backbone_config("vit_small_patch14_reg4_dinov2", taps=(1, 3), input_size=56, **TINY_KW)


def test_config_records_structure_and_kwargs(config) -> None:
    assert config.kind == "timm" and config.embed_dim == 32 and config.depth == 4 and config.patch_size == 14
    assert config.num_prefix_tokens == 5 and config.input_size == 56
    assert json.loads(config.library_config)["img_size"] == 56
    assert len(config.mean) == 3 and len(config.std) == 3


def test_taps_match_forward_intermediates(config) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(config)
    assert isinstance(backbone, TimmBackbone)
    full = timm.create_model(config.name, pretrained=False, **json.loads(config.library_config)).eval()
    missing, unexpected = full.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head") for k in missing)  # only the classifier head was pruned
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    out = backbone(x)
    with torch.no_grad():
        ref = full.forward_intermediates(backbone.preprocess(x), indices=[1, 3], intermediates_only=True)
        ref_normed = full.forward_intermediates(backbone.preprocess(x), indices=[3], norm=True, intermediates_only=True)
    assert [lv.shape for lv in out.levels] == [(2, 32, 4, 4)] * 2 and out.target.shape == (2, 16, 32)
    assert torch.allclose(out.levels[0], ref[0], atol=1e-6)
    assert torch.allclose(out.levels[1], ref_normed[0], atol=1e-6)


def test_blocks_after_the_last_tap_are_pruned(config) -> None:
    backbone = build_backbone(config.replace(taps=(0, 1), tap_norm=(False, True)))
    assert len(backbone.model.blocks) == 2
    assert backbone(torch.zeros(1, 3, 56, 56)).target.shape == (1, 16, 32)


def test_frozen_and_round_trip(config, tmp_path: Path) -> None:
    backbone = build_backbone(config)
    backbone.train()
    assert not backbone.training and all(not p.requires_grad for p in backbone.parameters())
    backbone.save_pretrained(tmp_path / "bb")
    again = TimmBackbone.from_pretrained(tmp_path / "bb")
    x = torch.rand(1, 3, 56, 56) * 2 - 1
    assert torch.equal(backbone(x).target, again(x).target)
