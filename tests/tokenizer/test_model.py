"""VFMTokenizer public API, config round-trip, save/load, training forward, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vfmtok import TokenizerConfig, VFMTokenizer
from vfmtok.config import ConfigError
from vfmtok.hub import ModelLoadError
from vfmtok.tokenizer.model import TokenizerOutput
from vfmtok.tokenizer.presets import TOKENIZER_PRESETS, tokenizer_preset


@pytest.fixture(scope="module")
def tok() -> VFMTokenizer:
    torch.manual_seed(0)
    return VFMTokenizer(tokenizer_preset("tok-test")).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_public_api_shapes(tok, images):
    cfg = tok.config
    codes = tok.encode(images)
    assert codes.shape == (2, cfg.num_tokens) == (2, 16) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < cfg.codebook_size
    rec = tok.decode(codes)
    assert rec.shape == (2, 3, cfg.image_size, cfg.image_size) and rec.dtype == torch.float32
    u8 = tok.decode_uint8(codes, size=48)
    assert u8.shape == (2, 48, 48, 3) and u8.dtype == torch.uint8
    same = tok.decode_uint8(codes, size=cfg.image_size)
    assert torch.equal(same, (rec * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    assert tok.codes_to_embeddings(codes).shape == (2, 16, cfg.codebook_dim)
    assert tok.post_quant_embeddings(codes).shape == (2, 16, cfg.dim)
    assert tok.decode_semantic(codes).shape == (2, 16, cfg.backbone.embed_dim)  # 56 px / 14 -> 4 x 4 VFM grid
    with pytest.raises(ValueError, match="codes"):
        tok.decode(codes[:, :5])


def test_eval_forward_consistent_with_encode_decode(tok, images):
    out = tok(images)
    assert isinstance(out, TokenizerOutput) and out.feats_rec is None
    codes = tok.encode(images)
    assert torch.equal(out.idx, codes)
    torch.testing.assert_close(out.x_rec, tok.decode(codes))
    assert tok(images, return_semantic=True).feats_rec.shape == out.feats.shape
    # precomputed (cacheable) backbone features give the same result
    feats = tok.backbone_features(images)
    torch.testing.assert_close(tok(images, features=feats).x_rec, out.x_rec)
    torch.testing.assert_close(tok.encode_features(feats), tok.encode_features(tok.backbone_features(images)))


def test_training_forward_gradients():
    torch.manual_seed(0)
    model = VFMTokenizer(tokenizer_preset("tok-test")).train()
    assert not model.backbone.training  # frozen for good
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.feats_rec is not None and out.feats_rec.shape == out.feats.shape
    loss = out.x_rec.square().mean() + out.vq_loss + out.commit_loss + (1 - torch.cosine_similarity(
        out.feats_rec, out.feats, dim=-1)).mean()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # the straight-through estimator carries the pixel loss back into the encoder
    assert model.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert model.quantizer.embedding.weight.grad.abs().sum() > 0
    names = {n for n, p in model.named_parameters() if p in set(model.trainable_parameters())}
    assert names and not any(n.startswith("backbone.") for n in names)


def test_save_load_round_trip(tok, images, tmp_path):
    tok.save_pretrained(tmp_path / "m")
    loaded = VFMTokenizer.from_pretrained(tmp_path / "m")
    assert loaded.config == tok.config and not loaded.training
    assert torch.equal(loaded.encode(images), tok.encode(images))
    assert torch.equal(loaded.decode(tok.encode(images)), tok.decode(tok.encode(images)))
    with pytest.raises(ModelLoadError):
        VFMTokenizer.from_pretrained(tmp_path / "missing")


def test_load_errors_name_keys(tok, tmp_path):
    state = dict(tok.state_dict())
    state.pop("quant_proj.weight")
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError, match="quant_proj.weight") as e:
        VFMTokenizer(tok.config).load_pretrained_state_dict(state)
    assert "bogus.weight" in str(e.value)


def test_config_round_trip(tmp_path):
    for name in TOKENIZER_PRESETS:
        cfg = tokenizer_preset(name)
        assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg = tokenizer_preset("tok-test")
    assert TokenizerConfig.load(cfg.save(tmp_path / "c")) == cfg
    assert cfg.with_overrides(["anchor_grid=3", "backbone.depth=2"]).num_tokens == 9
    with pytest.raises(ConfigError, match="unknown"):
        TokenizerConfig.from_dict({**cfg.to_dict(), "typo": 1})
    for bad in (dict(quantization="nope"), dict(pixel_patch=8), dict(dim=30), dict(pixel_pos_resize="x"),
                dict(encoder_init="kaiming"), dict(pix_ch=24)):
        with pytest.raises(ConfigError):
            dataclasses.replace(cfg, **bad)


def test_grid_ablation_runs(images):
    torch.manual_seed(0)
    model = VFMTokenizer(dataclasses.replace(tokenizer_preset("tok-test"), quantization="grid")).eval()
    codes = model.encode(images)
    assert codes.shape == (2, 16) and model.decode(codes).shape == (2, 3, 32, 32)


def test_regions(tok, images):
    reg = tok.regions(images)
    cfg = tok.config
    assert reg.locations.shape == (cfg.enc_depth, 2, 16, cfg.enc_heads, 4, cfg.enc_points, 2)
    torch.testing.assert_close(reg.weights.sum((-1, -2)), torch.ones(cfg.enc_depth, 2, 16, cfg.enc_heads))
