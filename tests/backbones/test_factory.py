"""build_backbone, the presets, official-checkpoint reading (wrappers, prefixes, chunks) and config inference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vfmtok.backbones import (
    BACKBONE_PRESETS,
    BackboneConfig,
    DinoV2Backbone,
    build_backbone,
    dinov2_config_for,
    list_presets,
    load_official_dinov2,
)
from vfmtok.hub import ModelLoadError

TINY = BackboneConfig(
    embed_dim=32,
    depth=4,
    num_heads=2,
    pos_embed_size=56,
    num_register_tokens=4,
    taps=(1, 3),
    tap_norm=(False, True),
    input_size=56,
)

# (preset, state-dict entries, parameters in millions as released, FFN weight key, its shape)
EXPECTED = [
    ("dinov2-s14", 175, 22.06, "blocks.11.mlp.fc1.weight", (1536, 384)),
    ("dinov2-b14-reg4", 176, 86.58, "blocks.11.mlp.fc1.weight", (3072, 768)),
    ("dinov2-l14-reg4", 344, 304.37, "blocks.23.mlp.fc2.weight", (1024, 4096)),
    ("dinov2-g14", 567, 1136.48, "blocks.39.mlp.w12.weight", (8192, 1536)),
]


@pytest.mark.parametrize("name,entries,millions,key,shape", EXPECTED)
def test_presets_build_the_official_structures(name: str, entries: int, millions: float, key: str, shape) -> None:
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = build_backbone(name)
    sd = model.state_dict()
    assert len(sd) == entries
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == millions
    assert tuple(sd[key].shape) == shape


def test_official_vfmtok_preset() -> None:
    cfg = BACKBONE_PRESETS["dinov2-l14-reg4"]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_register_tokens) == (1024, 24, 16, 4)
    assert cfg.taps == (5, 11, 17, 23) and cfg.tap_norm == (False, False, False, True)
    assert cfg.input_size == 336 and cfg.grid == (24, 24) and cfg.pos_embed_size == 518
    assert cfg.interpolate_antialias and cfg.interpolate_offset == 0.0
    plain = BACKBONE_PRESETS["dinov2-l14"]
    assert not plain.interpolate_antialias and plain.interpolate_offset == 0.1
    assert BACKBONE_PRESETS["dinov2-s14"].taps == (2, 5, 8, 11)
    assert BACKBONE_PRESETS["dinov2-g14-reg4"].ffn == "swiglu"
    assert "bundled-dinov2-s14" in list_presets()
    for cfg in BACKBONE_PRESETS.values():  # every preset survives config.json
        assert BackboneConfig.from_dict(cfg.to_dict()) == cfg


def test_build_backbone_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="dinov2-l14-reg4"):
        build_backbone("dinov2-xl14")
    with pytest.raises(ValueError, match="kind"):
        build_backbone(dataclasses.replace(TINY, kind="onnx"))


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DinoV2Backbone(TINY).state_dict()


@pytest.mark.parametrize("flavour", ["plain", "model", "teacher", "chunked", "module"])
def test_load_official_dinov2_accepts_checkpoint_flavours(tmp_path: Path, flavour: str) -> None:
    ref = _reference_state()
    if flavour == "plain":
        obj = ref
    elif flavour == "model":
        obj = {"model": ref, "iteration": torch.tensor(3)}
    elif flavour == "teacher":  # DINOv2 training checkpoint: backbone + heads under "teacher"
        obj = {"teacher": {**{f"backbone.{k}": v for k, v in ref.items()}, "dino_head.mlp.0.weight": torch.zeros(2)}}
    elif flavour == "chunked":  # block_chunks=2: blocks.<chunk>.<global index>.
        obj = {
            "state_dict": {
                (f"blocks.{int(k.split('.')[1]) // 2}.{k[7:]}" if k.startswith("blocks.") else k): v
                for k, v in ref.items()
            }
        }
    else:
        obj = {f"module.{k}": v for k, v in ref.items()}
    torch.save(obj, tmp_path / "ckpt.pth")
    got = load_official_dinov2(tmp_path / "ckpt.pth")
    assert sorted(got) == sorted(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    DinoV2Backbone(TINY).load_pretrained_state_dict(got)


def test_load_official_dinov2_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_official_dinov2(tmp_path / "missing.pth")
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(ModelLoadError, match="no state dict"):
        load_official_dinov2(tmp_path / "nested.pth")
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="cls_token"):
        load_official_dinov2(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.pth"):
        load_official_dinov2(tmp_path / "junk.pth")


def test_dinov2_config_for_infers_the_structure(fixtures_dir: Path) -> None:
    state = load_official_dinov2(fixtures_dir / "dinov2.pth")
    cfg = dinov2_config_for(state, num_heads=2, input_size=336)
    assert (cfg.embed_dim, cfg.depth, cfg.num_register_tokens, cfg.pos_embed_size) == (32, 24, 4, 518)
    assert cfg.ffn == "mlp" and cfg.mlp_ratio == 4.0 and cfg.layerscale and cfg.qkv_bias
    assert cfg.interpolate_antialias and cfg.interpolate_offset == 0.0
    assert cfg.taps == (5, 11, 17, 23) and cfg.tap_norm == (False, False, False, True)
    DinoV2Backbone(cfg).load_pretrained_state_dict(state)


def test_dinov2_config_for_released_widths() -> None:
    with torch.device("meta"):
        state = build_backbone("dinov2-g14").state_dict()
    cfg = dinov2_config_for(state)
    ref = BACKBONE_PRESETS["dinov2-g14"]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.ffn, cfg.num_register_tokens) == (1536, 40, 24, "swiglu", 0)
    assert cfg.taps == ref.taps and cfg.interpolate_offset == ref.interpolate_offset
