"""ConfigBase: exact JSON round trip (nested configs, tuples), unknown keys named, overrides."""

from __future__ import annotations

import pytest

from vfmtok.config import ConfigError
from vfmtok.tokenizer.model import TokenizerConfig
from vfmtok.tokenizer.presets import tokenizer_preset


def test_roundtrip_nested_and_tuples(tmp_path):
    cfg = tokenizer_preset("official")
    path = cfg.save(tmp_path)
    assert path.name == "config.json"
    back = TokenizerConfig.load(tmp_path)
    assert back == cfg and isinstance(back.pix_ch_mult, tuple) and back.backbone.taps == (5, 11, 17, 23)


def test_unknown_key_is_named(tmp_path):
    data = tokenizer_preset("tok-test").to_dict()
    data["codebok_size"] = 3
    with pytest.raises(ConfigError, match="codebok_size"):
        TokenizerConfig.from_dict(data)
    data = tokenizer_preset("tok-test").to_dict()
    data["backbone"]["tapz"] = [1]
    with pytest.raises(ConfigError, match="tapz"):
        TokenizerConfig.from_dict(data)


def test_overrides():
    cfg = tokenizer_preset("tok-test").with_overrides(["codebook_size=128", "backbone.input_size=42"])
    assert cfg.codebook_size == 128 and cfg.backbone.input_size == 42
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.with_overrides(["nope=1"])
