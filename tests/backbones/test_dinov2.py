"""vfmtok's DINOv2 ViT: official-fixture equivalence, strict official key layout, frozen-ness, taps, resizing."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vfmtok.backbones import BackboneConfig, DinoV2Backbone, build_backbone, load_official_dinov2
from vfmtok.backbones.dinov2 import swiglu_hidden_dim
from vfmtok.hub import ModelLoadError

TINY = BackboneConfig(
    embed_dim=32,
    depth=6,
    num_heads=2,
    pos_embed_size=70,  # 5 x 5 position table
    num_register_tokens=4,
    taps=(1, 3, 5),
    tap_norm=(False, False, True),
    input_size=56,
)


def _fixture_config(fixtures_dir: Path) -> BackboneConfig:
    j = json.loads((fixtures_dir / "dinov2_config.json").read_text())
    taps = tuple(j["taps"]["levels"])
    return BackboneConfig(
        kind="dinov2",
        embed_dim=j["embed_dim"],
        depth=j["depth"],
        num_heads=j["num_heads"],
        mlp_ratio=float(j["mlp_ratio"]),
        ffn=j["ffn_layer"],
        patch_size=j["patch_size"],
        pos_embed_size=j["img_size"],
        num_register_tokens=j["num_register_tokens"],
        layerscale=j["layerscale"],
        qkv_bias=j["qkv_bias"],
        ln_eps=1e-6,
        interpolate_antialias=j["interpolate_antialias"],
        interpolate_offset=float(j["interpolate_offset"]),
        taps=taps,
        tap_norm=(False,) * (len(taps) - 1) + (True,),
        input_size=336,
    )


@pytest.fixture(scope="module")
def official(fixtures_dir: Path) -> tuple[DinoV2Backbone, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = DinoV2Backbone(_fixture_config(fixtures_dir))
    state = load_official_dinov2(fixtures_dir / "dinov2.pth")
    model.load_pretrained_state_dict(state, where="dinov2.pth")
    io = torch.load(fixtures_dir / "tokenizer_io.pt", map_location="cpu", weights_only=True)
    return model, state, io


def test_matches_official_fixture(official) -> None:
    model, _, io = official
    out = model(io["image_float"])
    assert len(out.levels) == 4
    for i, level in enumerate(out.levels):
        assert level.shape == (2, 32, 24, 24)
        got = level.flatten(2).transpose(1, 2)  # (B, 576, 32), token j = patch (j // 24, j % 24)
        err = (got - io[f"vfm_feat_{i}"]).abs().max().item()
        assert err <= 1e-4, f"vfm_feat_{i}: max abs diff {err:.3g}"
    assert (out.target - io["vfm_feat_3"]).abs().max().item() <= 1e-4


def test_state_dict_is_the_official_layout(official) -> None:
    model, state, _ = official
    ours = model.state_dict()
    assert list(ours) == list(state)  # same keys, same order as the official file
    assert len(ours) == 344
    assert all(ours[k].shape == state[k].shape for k in ours)


def test_strict_load_errors_name_the_keys(official) -> None:
    model, state, _ = official
    broken = dict(state)
    del broken["blocks.3.ls1.gamma"]
    broken["blocks.3.attn.q.weight"] = torch.zeros(1)
    broken["pos_embed"] = torch.zeros(1, 5, 32)
    with pytest.raises(ModelLoadError) as e:
        model.load_pretrained_state_dict(broken, where="broken.pth")
    msg = str(e.value)
    assert "broken.pth" in msg and "blocks.3.ls1.gamma" in msg and "blocks.3.attn.q.weight" in msg
    assert "pos_embed" in msg


def test_frozen_for_good() -> None:
    model = build_backbone(TINY)
    assert all(not p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    x = torch.rand(1, 3, 56, 56, requires_grad=True) * 2 - 1
    out = model(x)
    assert not out.target.requires_grad and not any(lv.requires_grad for lv in out.levels)


def test_output_layout_and_taps() -> None:
    torch.manual_seed(0)
    model = build_backbone(TINY)
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    out = model(x)
    assert [lv.shape for lv in out.levels] == [(2, 32, 4, 4)] * 3
    assert out.target.shape == (2, 16, 32)
    tokens = model.forward_tokens(model.preprocess(x))
    assert all(t.shape == (2, 1 + 4 + 16, 32) for t in tokens)
    # level = patch tokens (registers and CLS dropped) laid out row-major
    assert torch.equal(out.levels[0].flatten(2).transpose(1, 2), tokens[0][:, 5:])
    # the last tap carries the final norm, the others do not
    raw_last = DinoV2Backbone(dataclasses.replace(TINY, tap_norm=(False, False, False)))
    raw_last.load_state_dict(model.state_dict())
    raw = raw_last.forward_tokens(model.preprocess(x))[2]
    assert torch.allclose(model.norm(raw), tokens[2], atol=1e-6)
    assert torch.equal(out.target, tokens[2][:, 5:])


def test_stops_after_last_tap() -> None:
    model = build_backbone(dataclasses.replace(TINY, taps=(0, 2), tap_norm=(False, True)))
    ran = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_, i=i: ran.append(i))
    model(torch.zeros(1, 3, 56, 56))
    assert ran == [0, 1, 2]


def test_non_native_input_is_resized() -> None:
    torch.manual_seed(0)
    model = build_backbone(TINY)
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    out = model(x)
    assert out.levels[0].shape == (2, 32, 4, 4)
    resized = F.interpolate(x, size=(56, 56), mode="bicubic", align_corners=True, antialias=True)
    again = model(resized)
    assert torch.allclose(out.target, again.target, atol=1e-5)


def test_position_table_interpolation_semantics() -> None:
    torch.manual_seed(0)
    model = build_backbone(TINY)
    # the stored grid (5 x 5 at pos_embed_size 70) is used untouched
    assert model.interpolate_pos_encoding(5, 5) is model.pos_embed
    # other grids: float32 bicubic with scale_factor (grid + offset) / sqrt(N), CLS entry passes through
    for cfg in (TINY, dataclasses.replace(TINY, interpolate_antialias=False, interpolate_offset=0.1)):
        m = DinoV2Backbone(cfg)
        m.load_state_dict(model.state_dict())
        table = m.interpolate_pos_encoding(4, 3)
        assert table.shape == (1, 1 + 12, 32)
        assert torch.equal(table[:, :1], m.pos_embed[:, :1])
        grid = m.pos_embed[:, 1:].reshape(1, 5, 5, 32).permute(0, 3, 1, 2)
        s = ((4 + cfg.interpolate_offset) / math.sqrt(25), (3 + cfg.interpolate_offset) / math.sqrt(25))
        ref = F.interpolate(grid, scale_factor=s, mode="bicubic", antialias=cfg.interpolate_antialias)
        assert torch.equal(table[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 12, 32))
    # registers carry no position embedding: they enter the sequence exactly as stored
    x = model.preprocess(torch.zeros(1, 3, 56, 56))
    tokens = model.prepare_tokens(x)
    assert torch.equal(tokens[:, 1:5], model.register_tokens)
    assert torch.allclose(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1])[0])


def test_swiglu_ffn_uses_the_official_names_and_width() -> None:
    assert swiglu_hidden_dim(1536, 4.0) == 4096  # ViT-g/14
    cfg = dataclasses.replace(TINY, ffn="swiglu", num_register_tokens=0, layerscale=False, qkv_bias=False)
    model = build_backbone(cfg)
    sd = model.state_dict()
    hidden = swiglu_hidden_dim(32, 4.0)
    assert hidden == 88
    assert sd["blocks.0.mlp.w12.weight"].shape == (2 * hidden, 32)
    assert sd["blocks.0.mlp.w3.weight"].shape == (32, hidden)
    assert "blocks.0.ls1.gamma" not in sd and "blocks.0.attn.qkv.bias" not in sd and "register_tokens" not in sd
    out = model(torch.zeros(1, 3, 56, 56))
    assert out.target.shape == (1, 16, 32) and torch.isfinite(out.target).all()


def test_save_and_load_pretrained_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone(TINY)
    model.save_pretrained(tmp_path / "bb")
    again = DinoV2Backbone.from_pretrained(tmp_path / "bb")
    assert again.config == TINY
    x = torch.rand(1, 3, 56, 56) * 2 - 1
    assert torch.equal(model(x).target, again(x).target)


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="tap 6"):
        build_backbone(dataclasses.replace(TINY, taps=(1, 6), tap_norm=(False, True)))
    with pytest.raises(ValueError, match="ffn"):
        build_backbone(dataclasses.replace(TINY, ffn="geglu"))
    with pytest.raises(ValueError, match="multiple of the patch"):
        build_backbone(TINY).extract(torch.zeros(1, 3, 50, 56))
