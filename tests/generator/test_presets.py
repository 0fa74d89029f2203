"""GPT presets: official shapes, parameter counts and state-dict sizes (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from vfmtok.config import ConfigError
from vfmtok.generator import GPT, count_parameters, gpt_preset, list_gpt_presets
from vfmtok.generator.presets import preset_for_shape

# (layers, heads, dim, head_dim, FFN hidden, params in millions, state-dict entries) from reference §3.1 / §5.3
OFFICIAL = {
    "gpt-b": (12, 12, 768, 64, 2048, 110.9, 88),
    "gpt-l": (24, 16, 1024, 64, 2816, 342.9, 172),
    "gpt-xl": (36, 20, 1280, 64, 3584, 774.7, 256),
    "gpt-xxl": (48, 24, 1536, 64, 4096, 1411.0, 340),
    "gpt-2b": (48, 32, 1920, 60, 5120, 2188.4, 340),
    "gpt-3b": (24, 32, 3200, 100, 8704, 3096.7, 172),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_presets(name):
    layers, heads, dim, head_dim, hidden, millions, entries = OFFICIAL[name]
    cfg = gpt_preset(name)
    assert (cfg.n_layer, cfg.n_head, cfg.dim, cfg.head_dim, cfg.ffn_hidden) == (layers, heads, dim, head_dim, hidden)
    assert (cfg.vocab_size, cfg.block_size, cfg.num_classes) == (16384, 256, 1000)
    assert round(count_parameters(cfg) / 1e6, 1) == millions
    with torch.device("meta"):
        gpt = GPT(cfg)
    assert sum(p.numel() for p in gpt.parameters()) == count_parameters(cfg)
    sd = gpt.state_dict()
    assert len(sd) == entries
    assert sd["cls_embedding.embedding_table.weight"].shape == (1001, dim)
    assert sd["layers.0.attention.wqkv.weight"].shape == (3 * dim, dim)
    assert preset_for_shape(layers, dim) == name


def test_small_presets_and_overrides():
    names = list_gpt_presets()
    assert {"gpt-test", "gpt-tiny", "gpt-small"} <= set(names)
    cfg = gpt_preset("gpt-test", vocab_size=1024, block_size=144, num_classes=100)
    assert (cfg.vocab_size, cfg.grid_size, cfg.num_classes) == (1024, 12, 100)
    assert gpt_preset("GPT-B") == gpt_preset("gpt-b")  # official names are accepted
    for name in ("gpt-test", "gpt-tiny", "gpt-small"):
        assert count_parameters(gpt_preset(name)) < 30e6
    assert preset_for_shape(2, 64) is None
    with pytest.raises(ConfigError, match="unknown GPT preset"):
        gpt_preset("gpt-huge")
    with pytest.raises(ConfigError):
        gpt_preset("gpt-test", not_a_field=1)
    with pytest.raises(ConfigError, match="square"):
        gpt_preset("gpt-test", block_size=50)
