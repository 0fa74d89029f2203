"""Tokenizer presets: the released architecture (parameter counts) and the small presets."""

from __future__ import annotations

import pytest
import torch

from vfmtok.config import ConfigError
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.tokenizer.presets import TOKENIZER_PRESETS, list_tokenizer_presets, tokenizer_preset


def test_config_properties():
    cfg = tokenizer_preset("official")
    assert (cfg.num_tokens, cfg.token_grid, cfg.vocab_size, cfg.pixel_grid) == (256, (16, 16), 16384, 21)
    assert cfg.backbone.grid == (24, 24)


def test_official_preset_is_the_released_architecture():
    with torch.device("meta"):
        model = VFMTokenizer(tokenizer_preset("official"))
    assert model.num_trainable_params() == 73_286_831  # 73.29 M, as counted from the official modules
    assert sum(p.numel() for p in model.backbone.parameters()) == 304_372_736
    parts = {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in
             ("encoder", "token_decoder", "pixel_decoder")}
    assert parts == {"encoder": 20_377_856, "token_decoder": 19_900_448, "pixel_decoder": 32_799_107}


@pytest.mark.parametrize("name", ["tok-dinov2s-small", "tok-dinov2s-144", "tok-dinov2s-grid"])
def test_small_presets_build(name):
    cfg = tokenizer_preset(name)
    with torch.device("meta"):
        model = VFMTokenizer(cfg)
    assert model.backbone.grid == (16, 16) and cfg.image_size == 224
    assert model.num_trainable_params() < 20_000_000
    with pytest.raises(ConfigError, match="unknown tokenizer preset"):
        tokenizer_preset("nope")


def test_preset_names():
    assert list_tokenizer_presets() == sorted(TOKENIZER_PRESETS)
    assert {"official", "tok-test", "tok-dinov2s-small"} <= set(TOKENIZER_PRESETS)
    assert all(tokenizer_preset(n).preset == n for n in TOKENIZER_PRESETS)
