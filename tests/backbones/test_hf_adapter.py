"""The transformers adapter with tiny random configs (no downloads), plus official-fixture parity through HF."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vfmtok.backbones import BackboneConfig, build_backbone, load_official_dinov2
from vfmtok.backbones.hf_adapter import HFBackbone, hf_backbone_config, hf_backbone_from_pretrained

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 56,
    "patch_size": 14,
}
FAMILIES = {
    "dinov2": (transformers.Dinov2Config, {}, 1),
    "dinov2_with_registers": (transformers.Dinov2WithRegistersConfig, {"num_register_tokens": 4}, 5),
    "clip_vision_model": (transformers.CLIPVisionConfig, {}, 1),
    "siglip_vision_model": (transformers.SiglipVisionConfig, {}, 0),
}


def _hf_config(family: str):
    cls, extra, _ = FAMILIES[family]
    return cls(**TINY, **extra)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_taps_are_hidden_states_without_prefix_tokens(family: str) -> None:
    torch.manual_seed(0)
    hf_cfg = _hf_config(family)
    backbone = build_backbone(hf_backbone_config(hf_cfg, taps=(0, 2), tap_norm=(False, True)))
    assert isinstance(backbone, HFBackbone) and backbone.feature_dims == (32, 32)
    # layers after the last tap are pruned, so no parameter of layer 3 remains
    assert not any(".3." in k for k in backbone.state_dict() if "layer" in k)

    full = transformers.AutoModel.from_config(hf_cfg).eval()
    missing, unexpected = full.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not unexpected and all(".3." in k for k in missing)
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    out = backbone(x)
    with torch.no_grad():
        hidden = full(pixel_values=backbone.preprocess(x), output_hidden_states=True).hidden_states
    prefix = FAMILIES[family][2]
    assert [lv.shape for lv in out.levels] == [(2, 32, 4, 4)] * 2 and out.target.shape == (2, 16, 32)
    assert torch.allclose(out.levels[0].flatten(2).transpose(1, 2), hidden[1][:, prefix:], atol=1e-6)
    normed = backbone.final_norm(hidden[3])[:, prefix:]
    assert torch.allclose(out.target, normed, atol=1e-6)


def test_frozen_and_resizes_non_native_inputs() -> None:
    backbone = build_backbone(hf_backbone_config(_hf_config("clip_vision_model"), taps=(1,), input_size=42))
    backbone.train()
    assert not backbone.training and all(not p.requires_grad for p in backbone.parameters())
    out = backbone(torch.rand(1, 3, 100, 100, requires_grad=True))
    assert out.levels[0].shape == (1, 32, 3, 3) and not out.target.requires_grad  # CLIP interpolates its positions


def test_save_and_rebuild_offline_from_library_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = hf_backbone_config(_hf_config("dinov2_with_registers"), taps=(1, 3), name="tiny-dinov2-reg")
    assert config.kind == "hf" and json.loads(config.library_config)["model_type"] == "dinov2_with_registers"
    backbone = build_backbone(config)
    backbone.save_pretrained(tmp_path / "bb")
    again = HFBackbone.from_pretrained(tmp_path / "bb")
    assert again.config == config and BackboneConfig.load(tmp_path / "bb") == config
    x = torch.rand(1, 3, 56, 56) * 2 - 1
    assert torch.equal(backbone(x).target, again(x).target)


def test_from_pretrained_local_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf_model = transformers.CLIPVisionModel(_hf_config("clip_vision_model"))
    hf_model.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    backbone = hf_backbone_from_pretrained(str(tmp_path / "clip"), taps=(1, 3))
    assert backbone.config.mean == (0.1, 0.2, 0.3) and backbone.config.std == (0.4, 0.5, 0.6)
    assert torch.equal(backbone.model.embeddings.patch_embedding.weight, hf_model.embeddings.patch_embedding.weight)


def test_bad_configs_are_rejected() -> None:
    config = hf_backbone_config(_hf_config("dinov2"), taps=(1,))
    with pytest.raises(ValueError, match="out of range"):
        build_backbone(dataclasses.replace(config, taps=(4,), tap_norm=(True,)))
    with pytest.raises(ValueError, match="library_config"):
        build_backbone(dataclasses.replace(config, library_config=""))


def _official_to_hf_hub_layout(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Official DINOv2 keys -> the key names of HF Hub DINOv2 checkpoints (qkv split into query / key / value).

    transformers itself renames these on load where its module names differ (5.x uses q_proj / k_proj / ...).
    """
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.register_tokens": state["register_tokens"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    rename = {
        "attn.proj": "attention.output.dense",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, t in zip(("query", "key", "value"), (q, k, v)):
                out[f"{dst}attention.attention.{name}.{kind}"] = t.contiguous()
        for key, t in state.items():
            if key.startswith(src) and "attn.qkv" not in key:
                rest = key[len(src) :]
                for a, b in rename.items():
                    rest = rest.replace(a, b)
                out[dst + rest] = t
    return out


def test_hf_dinov2_with_registers_matches_the_official_fixture(fixtures_dir: Path, tmp_path: Path) -> None:
    """Answers the reference's open question: HF's position-table resize matches the official one at 336."""
    from safetensors.torch import save_file

    cfg = json.loads((fixtures_dir / "dinov2_config.json").read_text())
    hf_cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=cfg["embed_dim"],
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        image_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        num_register_tokens=cfg["num_register_tokens"],
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
    )
    hf_cfg.save_pretrained(tmp_path)  # a local HF checkpoint folder in the Hub layout
    state = _official_to_hf_hub_layout(load_official_dinov2(fixtures_dir / "dinov2.pth"), cfg["depth"])
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    backbone = hf_backbone_from_pretrained(str(tmp_path), taps=(5, 11, 17, 23), input_size=336)
    io = torch.load(fixtures_dir / "tokenizer_io.pt", map_location="cpu", weights_only=True)
    out = backbone(io["image_float"])
    for i, level in enumerate(out.levels):
        err = (level.flatten(2).transpose(1, 2) - io[f"vfm_feat_{i}"]).abs().max().item()
        assert err <= 1e-4, f"vfm_feat_{i}: {err:.3g}"
