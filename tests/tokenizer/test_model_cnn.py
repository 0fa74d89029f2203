"""VFMTokenizer with ``encoder_type="cnn"`` (ablation (d) of issue 8): config checks, no backbone, encode / decode,
clear errors for everything that needs a VFM, save / load, and the size of the CIFAR-10 ablation recipe."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from vfmtok import TokenizerConfig, VFMTokenizer
from vfmtok.config import ConfigError
from vfmtok.hub import ModelLoadError
from vfmtok.tokenizer.cnn_encoder import CNNEncoder
from vfmtok.tokenizer.presets import tokenizer_preset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"


def cnn_test_config(**changes) -> TokenizerConfig:
    """``tok-test`` (32 px, 4 x 4 tokens) with a tiny CNN encoder: three stride-2 downsamplings, 32 -> 4."""
    fields = {"encoder_type": "cnn", "cnn_ch": 32, "cnn_ch_mult": (1, 1, 1, 1), "cnn_res_blocks": 1,
              "dec_attn_dropout": 0.0}
    return dataclasses.replace(tokenizer_preset("tok-test"), **{**fields, **changes})


@pytest.fixture(scope="module")
def tok() -> VFMTokenizer:
    torch.manual_seed(0)
    return VFMTokenizer(cnn_test_config()).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


# ------------------------------------------------------------------------------------------------------------- config
def test_default_is_vfm_and_old_config_files_still_load():
    assert TokenizerConfig().encoder_type == "vfm" and tokenizer_preset("official").encoder_type == "vfm"
    data = tokenizer_preset("tok-test").to_dict()
    for key in ("encoder_type", "cnn_ch", "cnn_ch_mult", "cnn_res_blocks"):
        data.pop(key)  # a config.json written before the CNN option existed
    assert TokenizerConfig.from_dict(data) == tokenizer_preset("tok-test")
    cfg = cnn_test_config()
    assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"encoder_type": "resnet"}, "encoder_type"),
        ({"cnn_ch_mult": (1, 1, 1)}, "cnn_ch_mult"),  # 2 downsamplings: 32 -> 8, not anchor_grid 4
        ({"anchor_grid": 8}, "anchor_grid 8"),
        ({"cnn_ch": 48}, "cnn_ch"),
        ({"cnn_ch_mult": (1, 1, 0, 1)}, "cnn_ch_mult"),
        ({"cnn_res_blocks": 0}, "cnn_res_blocks"),
    ],
)
def test_bad_cnn_settings_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        cnn_test_config(**changes)


def test_cnn_fields_are_not_checked_for_the_vfm_encoder():
    cfg = dataclasses.replace(tokenizer_preset("tok-test"), cnn_ch_mult=(1, 2))  # would not map 32 -> 4
    assert cfg.encoder_type == "vfm"


# -------------------------------------------------------------------------------------------------------------- model
def test_no_backbone_and_no_semantic_head(tok):
    assert tok.backbone is None and not tok.has_backbone and isinstance(tok.encoder, CNNEncoder)
    names = list(tok.state_dict())
    assert not any(n.startswith("backbone.") for n in names)
    assert not any(n.startswith(("token_decoder.proj", "token_decoder.norm_post2", "token_decoder.mask_dino"))
                   for n in names)
    assert tok.num_trainable_params() == sum(p.numel() for p in tok.parameters())
    # the decoder's position table is the pixel grid itself (8 x 8 here): nothing resized
    assert tok.token_decoder.position_embedding.shape == (1, 1 + tok.config.pixel_grid**2, tok.config.dim)


def test_encode_decode_round_trip(tok, images):
    cfg = tok.config
    codes = tok.encode(images)
    assert codes.shape == (2, cfg.num_tokens) == (2, 16) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < cfg.codebook_size
    assert torch.equal(codes, tok.encode(images))
    slots = tok.encode_slots(images)
    assert slots.shape == (2, 16, cfg.dim) and torch.equal(tok.quantize(slots).idx, codes)
    rec = tok.decode(codes)
    assert rec.shape == (2, 3, 32, 32) and rec.dtype == torch.float32
    # eval forward decodes the code rows of its own indices: the same as encode -> decode
    out = tok(images)
    assert torch.equal(out.idx, codes) and out.feats is None and out.feats_rec is None
    torch.testing.assert_close(out.x_rec, rec)
    torch.testing.assert_close(tok.decode_latents(tok.codes_to_embeddings(codes)), rec)
    assert tok.decode_uint8(codes, size=48).shape == (2, 48, 48, 3)


def test_training_forward_reaches_every_parameter(images):
    torch.manual_seed(1)
    tok = VFMTokenizer(cnn_test_config()).train()
    out = tok(images)
    assert out.feats is None and out.feats_rec is None and out.z_q.requires_grad
    (out.x_rec.pow(2).mean() + out.vq_loss + out.commit_loss).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None]
    assert missing == []  # nothing unused: DDP needs no find_unused_parameters


def test_everything_that_needs_a_vfm_fails_clearly(tok, images):
    codes = tok.encode(images)
    for call in (lambda: tok.backbone_features(images), lambda: tok.decode_semantic(codes),
                 lambda: tok.regions(images), lambda: tok(images, return_semantic=True)):
        with pytest.raises(ValueError, match="encoder_type='cnn'"):
            call()
    with pytest.raises(ValueError, match="features=None"):
        tok(images, features=object())
    with pytest.raises(ValueError, match="exactly 32 x 32"):
        tok.encode(torch.zeros(1, 3, 64, 64))


def test_save_load_round_trip(tok, images, tmp_path):
    tok.save_pretrained(tmp_path / "cnn")
    saved = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert saved["encoder_type"] == "cnn" and saved["cnn_ch_mult"] == [1, 1, 1, 1]
    loaded = VFMTokenizer.from_pretrained(tmp_path / "cnn")
    assert loaded.config == tok.config and loaded.backbone is None
    codes = tok.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    torch.testing.assert_close(loaded.decode(codes), tok.decode(codes), rtol=0, atol=0)
    # the weights of a CNN tokenizer do not fit a VFM one: refused with the key lists
    (tmp_path / "vfm").mkdir()
    vfm_cfg = dataclasses.replace(tok.config, encoder_type="vfm")
    vfm_cfg.save(tmp_path / "vfm" / "config.json")
    (tmp_path / "vfm" / "model.safetensors").write_bytes((tmp_path / "cnn" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="missing keys"):
        VFMTokenizer.from_pretrained(tmp_path / "vfm")


# ------------------------------------------------------------------------------------------------ the CIFAR-10 recipe
def _trainable_by_part(cfg: TokenizerConfig) -> tuple[int, dict[str, int]]:
    tok = VFMTokenizer(cfg)
    parts: dict[str, int] = {}
    for p, name in ((p, n.split(".")[0]) for n, p in tok.named_parameters() if not n.startswith("backbone.")):
        parts[name] = parts.get(name, 0) + p.numel()
    return tok.num_trainable_params(), parts


def test_cifar10_cnn_recipe_matches_the_vfmtok_recipe_in_size():
    from vfmtok.training.tokenizer import TokenizerTrainConfig
    from vfmtok.training.tokenizer_setup import resolve_model_config

    vfm_recipe = TokenizerTrainConfig.load(CONFIGS / "bundled-dinov2s-cifar10.yaml")
    cnn_recipe = TokenizerTrainConfig.load(CONFIGS / "cifar10-cnn.yaml")
    vfm, cnn = resolve_model_config(vfm_recipe), resolve_model_config(cnn_recipe)
    assert cnn.encoder_type == "cnn" and (cnn.image_size, cnn.num_tokens, cnn.dim) == (32, 64, 256)
    # the same quantizer and decoders
    same = ("dim", "anchor_grid", "codebook_size", "codebook_dim", "dec_depth", "dec_heads", "dec_mlp_dim",
            "dec_registers", "pixel_patch", "pixel_pos_resize", "pix_ch", "pix_ch_mult", "pix_res_blocks")
    assert {k: getattr(cnn, k) for k in same} == {k: getattr(vfm, k) for k in same}
    n_vfm, parts_vfm = _trainable_by_part(vfm)
    n_cnn, parts_cnn = _trainable_by_part(cnn)
    assert n_vfm == 15_962_639
    assert abs(n_cnn - n_vfm) <= 0.1 * n_vfm
    assert parts_cnn["pixel_decoder"] == parts_vfm["pixel_decoder"] and parts_cnn["quantizer"] == parts_vfm["quantizer"]
    # the yaml's header states the count
    header = (CONFIGS / "cifar10-cnn.yaml").read_text().split("\npreset:")[0]
    assert f"{n_cnn:,}" in header and f"encoder {parts_cnn['encoder']:,}" in header
    # every training key is the VFMTok recipe's, except what a tokenizer without a VFM cannot use
    differ = {"model_overrides", "backbone_weights", "semantic_weight", "cache_features"}
    a, b = vfm_recipe.to_dict(), cnn_recipe.to_dict()
    assert {k: v for k, v in a.items() if k not in differ} == {k: v for k, v in b.items() if k not in differ}
    assert (cnn_recipe.semantic_weight, cnn_recipe.cache_features, cnn_recipe.backbone_weights) == (0.0, False,
                                                                                                    "random")
    assert re.search(r"ablation \(d\) of issue 8", header, re.IGNORECASE)
