"""Tokenizer training with ``encoder_type="cnn"`` (no VFM): recipe refusals, a 3-step CPU run, export and reload."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from vfmtok.config import ConfigError
from vfmtok.hub import load_state_dict
from vfmtok.training.tokenizer import TokenizerTrainConfig, resolved_recipe, train_tokenizer
from vfmtok.training.tokenizer_setup import build_tokenizer, resolve_model_config
from vfmtok.training.tracker import read_metrics

TEST_YAML = Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "test.yaml"
# tok-test (32 px, 16 tokens) with a tiny CNN encoder: 32 -> 4 in three stride-2 downsamplings
CNN_OVERRIDES = ("dec_attn_dropout=0.0", "encoder_type=cnn", "cnn_ch=32", "cnn_ch_mult=[1, 1, 1, 1]",
                 "cnn_res_blocks=1")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory, make_image_folder) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cnn-images"), ("class0", "class1"), per_class=6, size=(36, 36))


def _recipe(data: Path | str = "", **changes) -> TokenizerTrainConfig:
    cfg = TokenizerTrainConfig.load(TEST_YAML)
    fields = {"data": str(data), "device": "cpu", "model_overrides": CNN_OVERRIDES, "semantic_weight": 0.0}
    return cfg.replace(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"semantic_weight": 1.0}, "semantic_weight"),
        ({"cache_features": True}, "cache_features"),
        ({"disc_type": "dino", "disc_features": "vfm"}, "disc_features"),
    ],
)
def test_recipe_refuses_what_needs_a_vfm(changes, field):
    cfg = _recipe(**changes)  # preset + overrides: checked when the recipe is resolved (start of training)
    with pytest.raises(ConfigError, match=field):
        resolved_recipe(cfg)
    model = resolve_model_config(cfg)
    with pytest.raises(ConfigError, match=field):  # a recipe holding a full model config: checked at once
        TokenizerTrainConfig(model=model, **{"semantic_weight": 0.0, **changes})
    assert resolved_recipe(_recipe(disc_type="dino", disc_features="bundled")).model.encoder_type == "cnn"


def test_semantic_weight_refused_before_any_work(images, tmp_path):
    with pytest.raises(ConfigError, match="semantic_weight"):
        train_tokenizer(_recipe(images, semantic_weight=0.5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_backbone_weights_are_not_needed(caplog):
    cfg = _recipe(backbone_weights="bundled")
    with caplog.at_level(logging.INFO, logger="vfmtok.training.tokenizer_setup"):
        tok = build_tokenizer(cfg, resolve_model_config(cfg))
    assert tok.backbone is None and tok.training
    assert "not used" in caplog.text and "encoder_type='cnn'" in caplog.text


def test_three_step_cpu_run_exports_a_cnn_tokenizer(images, tmp_path):
    from vfmtok.tokenizer.model import VFMTokenizer

    cfg = _recipe(images, total_steps=3, eval_every=3, ckpt_every=3, hflip=True)
    result = train_tokenizer(cfg, tmp_path / "run", progress=False)
    assert result.step == 3 and result.final is not None
    rows = [r for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["train/loss"]) and r["train/semantic"] == 0.0 for r in rows)
    assert np.isfinite(result.metrics["val/psnr"]) and 0 < result.metrics["val/usage"] <= 1
    weights = load_state_dict(result.final / "model.safetensors")
    assert not any(k.startswith("backbone.") for k in weights) and any(k.startswith("encoder.conv_in") for k in weights)
    tok = VFMTokenizer.from_pretrained(result.final)
    assert tok.config.encoder_type == "cnn" and tok.backbone is None
    codes = tok.encode(torch.zeros(1, 3, 32, 32))
    assert codes.shape == (1, 16) and tok.decode(codes).shape == (1, 3, 32, 32)
    # the saved recipe resolves to the same model and resumes (nothing left to do)
    saved = TokenizerTrainConfig.load(tmp_path / "run" / "train_config.json")
    assert saved.model == tok.config and saved.semantic_weight == 0.0
    again = train_tokenizer(saved, tmp_path / "run", progress=False)
    assert again.step == 3 and again.final == result.final
