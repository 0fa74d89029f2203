"""Official VFMTok tokenizer conversion: key table vs the released layout, errors, and fixture equivalence."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from vfmtok.cli.main import main as cli_main
from vfmtok.convert.official_vfmtok import (
    DROPPED_KEYS,
    config_from_official_json,
    convert_official_tokenizer,
    load_official_checkpoint,
    rename_official_key,
)
from vfmtok.hub import ModelLoadError
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.tokenizer.presets import tokenizer_preset

log = logging.getLogger(__name__)


def _released(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "tokenizer_keys_released.json").read_text())


def _meta_state(spec: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v["shape"], device="meta") for k, v in spec["tensors"].items()}


def test_released_key_list_maps_completely(fixtures_dir):
    spec = _released(fixtures_dir)
    assert len(spec["tensors"]) == spec["num_tensors"] == 430
    config = config_from_official_json(spec)
    official = tokenizer_preset("official")
    assert {k: v for k, v in config.to_dict().items() if k not in ("preset", "notes")} == {
        k: v for k, v in official.to_dict().items() if k not in ("preset", "notes")}
    out = convert_official_tokenizer(_meta_state(spec), config)
    assert len(out) == 429 and not any(k.startswith("backbone.") for k in out)
    assert "slot_quantize.codebook_used" in DROPPED_KEYS
    assert sum(v.numel() for v in out.values()) == spec["num_parameter_elements"] == 73_286_831
    # without a config the released architecture is assumed
    assert config_from_official_json() == official


def test_rename_table_examples():
    assert rename_official_key("encode_transformer.projectors.2.mlp.3.weight") == "encoder.projectors.2.fc2.weight"
    assert rename_official_key("encode_transformer.norm_layers.1.bias") == "encoder.projectors.1.norm_out.bias"
    assert rename_official_key("encode_transformer.transformer.layers.5.cross_attn.sampling_offsets.bias") == (
        "encoder.layers.5.cross_attn.sampling_offsets.bias")
    assert rename_official_key("decode_transformer.transformer.layers.0.ffnet.w12.weight") == (
        "token_decoder.blocks.0.ffnet.w12.weight")
    assert rename_official_key("decode_transformer.norm_post2.weight") == "token_decoder.norm_post2.weight"
    assert rename_official_key("decoder.conv_blocks.3.upsample.conv.weight") == (
        "pixel_decoder.conv_blocks.3.upsample.conv.weight")
    assert rename_official_key("slot_quantize.embedding.weight") == "quantizer.embedding.weight"
    assert rename_official_key("encode_transformer.backbone.pretrained_encoder.blocks.0.ls1.gamma") == (
        "backbone.blocks.0.ls1.gamma")
    assert rename_official_key("something.else") is None


def test_converter_errors_name_keys():
    config = tokenizer_preset("tok-test")
    src = {k: torch.zeros(s) for k, s in _official_names_for(config).items()}
    assert len(convert_official_tokenizer(src, config)) == len(src) - 1  # all but the dropped usage buffer

    missing = dict(src)
    missing.pop("post_slots_quant.weight")
    with pytest.raises(ModelLoadError, match=r"missing keys.*post_quant_proj\.weight"):
        convert_official_tokenizer(missing, config)
    extra = {**src, "encode_transformer.mystery.weight": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match=r"unmapped official keys.*encode_transformer\.mystery\.weight"):
        convert_official_tokenizer(extra, config)
    bad = {**src, "pre_slots_quant.weight": torch.zeros(3, 3)}
    with pytest.raises(ModelLoadError, match=r"shape mismatches.*quant_proj\.weight"):
        convert_official_tokenizer(bad, config)


def _official_names_for(config) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for a config: our keys renamed back with an independent inverse table."""
    from vfmtok.convert.official_vfmtok import expected_state_shapes

    ours = {k: s for k, s in expected_state_shapes(config).items() if not k.startswith("backbone.")}
    back = [
        (r"^encoder\.projectors\.(\d+)\.fc1\.", r"encode_transformer.projectors.\1.mlp.0."),
        (r"^encoder\.projectors\.(\d+)\.norm1\.", r"encode_transformer.projectors.\1.mlp.1."),
        (r"^encoder\.projectors\.(\d+)\.fc2\.", r"encode_transformer.projectors.\1.mlp.3."),
        (r"^encoder\.projectors\.(\d+)\.norm2\.", r"encode_transformer.projectors.\1.mlp.4."),
        (r"^encoder\.projectors\.(\d+)\.norm_out\.", r"encode_transformer.norm_layers.\1."),
        (r"^encoder\.layers\.", "encode_transformer.transformer.layers."),
        (r"^encoder\.", "encode_transformer."),
        (r"^quant_proj\.", "pre_slots_quant."),
        (r"^quantizer\.", "slot_quantize."),
        (r"^post_quant_proj\.", "post_slots_quant."),
        (r"^token_decoder\.blocks\.", "decode_transformer.transformer.layers."),
        (r"^token_decoder\.", "decode_transformer."),
        (r"^pixel_decoder\.", "decoder."),
    ]
    out = {}
    for key, shape in ours.items():
        for pat, rep in back:
            if re.match(pat, key):
                out[re.sub(pat, rep, key)] = shape
                break
    out["slot_quantize.codebook_used"] = (65536,)
    return out


def test_load_official_checkpoint_prefers_ema(fixtures_dir):
    path = fixtures_dir / "tokenizer.pt"
    ema = load_official_checkpoint(path)
    model = load_official_checkpoint(path, entry="model")
    assert ema.keys() == model.keys()
    key = "encode_transformer.carrier_tokens"
    assert not torch.equal(ema[key], model[key])  # the decoy 'model' entry differs
    with pytest.raises(ModelLoadError, match="'nope'"):
        load_official_checkpoint(path, entry="nope")
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(fixtures_dir / "absent.pt")


def test_checkpoint_with_namespace_needs_allowlist(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "model": {"w": torch.zeros(2)}, "args": argparse.Namespace(a=1)}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # plain weights-only loading refuses the Namespace
    assert torch.equal(load_official_checkpoint(path)["w"], torch.ones(2))


# ----------------------------------------------------------------------------------------------------------------------
# fixture equivalence (official modules' outputs on 2 real images)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(fixtures_dir):
    from vfmtok.backbones.factory import load_official_dinov2

    config = config_from_official_json(
        json.loads((fixtures_dir / "tokenizer_config.json").read_text()),
        json.loads((fixtures_dir / "dinov2_config.json").read_text()),
    )
    state = convert_official_tokenizer(load_official_checkpoint(fixtures_dir / "tokenizer.pt"), config,
                                       load_official_dinov2(fixtures_dir / "dinov2.pth"))
    tok = VFMTokenizer(config)
    tok.load_pretrained_state_dict(state)
    io = torch.load(fixtures_dir / "tokenizer_io.pt", map_location="cpu", weights_only=True)
    tol = json.loads((fixtures_dir / "tolerances.json").read_text())
    return tok.eval(), io, tol


def test_fixture_equivalence(converted):
    tok, io, tol = converted
    x = io["image_float"]
    fixture_idx = io["indices"]
    got = {}
    with torch.no_grad():
        feats = tok.backbone_features(x)
        for i, level in enumerate(feats.levels):
            got[f"vfm_feat_{i}"] = level.flatten(2).transpose(1, 2)
        slots = tok.encode_features(feats)
        got["enc_slots"] = slots
        got["prequant"] = tok.quant_proj(slots)
        idx = tok.quantize(slots).idx
        # downstream tensors decode the fixture's indices (so a near-tie flip could not propagate)
        got["quant"] = tok.codes_to_embeddings(fixture_idx)
        got["postquant"] = tok.post_quant_proj(got["quant"])
        got["pixel_tokens"] = tok.token_decoder.forward_pixels(got["postquant"])
        got["decoded"] = tok.pixel_decoder(got["pixel_tokens"])
        got["semantic_pred"] = tok.decode_semantic(fixture_idx)
        u8 = tok.decode_uint8(fixture_idx, size=256)
    report = []
    for name, value in got.items():
        diff = (value - io[name]).abs()
        report.append(f"{name} max {diff.max():.3g} mean {diff.mean():.3g}")
        assert value.shape == io[name].shape, name
        assert diff.max() <= tol["float_max_abs"][name], report[-1]
    assert (got["decoded"] - io["decoded"]).abs().mean() <= tol["decoded_mean_abs"]
    # indices identical except at near-ties
    clear = io["code_top2_gap"] >= tol["indices"]["near_tie_gap"]
    assert torch.equal(idx[clear], fixture_idx[clear])
    # the gFID uint8 path
    du = (u8.int() - io["gfid_uint8_nhwc"].int()).abs()
    assert du.max() <= tol["gfid_uint8_nhwc"]["max_abs"]
    assert (du > 0).float().mean() <= tol["gfid_uint8_nhwc"]["max_fraction_different"]
    report.append(f"indices equal {int((idx == fixture_idx).sum())}/{idx.numel()}; gfid u8 differ "
                  f"{int((du > 0).sum())}/{du.numel()}")
    log.info("fixture equivalence: %s", "; ".join(report))
    # the eval forward agrees with the staged calls
    out = tok(x)
    torch.testing.assert_close(out.x_rec, got["decoded"], atol=1e-5, rtol=0)


def test_convert_official_cli(fixtures_dir, tmp_path, converted):
    tok, io, _ = converted
    out = tmp_path / "conv"
    rc = cli_main(["convert-official", "--tokenizer", str(fixtures_dir / "tokenizer.pt"),
                   "--dinov2", str(fixtures_dir / "dinov2.pth"),
                   "--config", str(fixtures_dir / "tokenizer_config.json"), "--dinov2-config", str(fixtures_dir / "dinov2_config.json"), "--out", str(out)])
    assert rc == 0
    loaded = VFMTokenizer.from_pretrained(out)
    assert loaded.config == tok.config
    for k, v in tok.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a config that does not fit the checkpoint is a clean error (exit 2)
    rc = cli_main(["convert-official", "--tokenizer", str(fixtures_dir / "tokenizer.pt"),
                   "--dinov2", str(fixtures_dir / "dinov2.pth"), "--out", str(tmp_path / "bad")])
    assert rc == 2


def test_official_dino_discriminator_converters():
    from vfmtok.backbones.dinov2 import DinoV2Backbone
    from vfmtok.convert.official_vfmtok import convert_dino_vits16, convert_official_dino_disc, dino_vits16_config
    from vfmtok.losses.discriminator import DinoDiscConfig, DinoDiscriminator, vit_token_features

    # the official hook-based spectral-norm names map onto ours
    state = {"heads.0.0.0.weight_orig": torch.ones(2, 2, 1), "heads.0.0.0.weight_u": torch.ones(2),
             "heads.0.0.0.weight_v": torch.ones(2), "module.heads.0.0.1.bias": torch.zeros(2)}
    assert sorted(convert_official_dino_disc(state)) == [
        "heads.0.0.0.parametrizations.weight.0._u", "heads.0.0.0.parametrizations.weight.0._v",
        "heads.0.0.0.parametrizations.weight.original", "heads.0.0.1.bias"]
    # a DINO ViT-S/16 layout (timm names, no mask token, a classifier head) loads strictly; key biases zeroed
    cfg = dino_vits16_config(embed_dim=16, depth=3, num_heads=2)
    src = {k: torch.randn_like(v) for k, v in DinoV2Backbone(cfg).state_dict().items() if k != "mask_token"}
    src["head.weight"] = torch.zeros(3, 16)
    vit = DinoV2Backbone(cfg)
    vit.load_pretrained_state_dict(convert_dino_vits16(src))
    bias = vit.blocks[0].attn.qkv.bias
    assert not bias[16:32].any() and torch.equal(bias[:16], src["blocks.0.attn.qkv.bias"][:16])
    assert vit.config.mlp_act == "gelu_tanh" and vit.blocks[0].mlp.approximate == "tanh"
    disc = DinoDiscriminator(DinoDiscConfig(feature_dims=(16,) * 3, input_size=224, crop_prob=0.0),
                             vit_token_features(vit, (0, 2)))
    assert disc(torch.rand(1, 3, 336, 336) * 2 - 1).shape == (1, 3 * 196)
    with pytest.raises(ModelLoadError, match="cls_token"):
        convert_dino_vits16({"blocks.0.norm1.weight": torch.ones(16)})
