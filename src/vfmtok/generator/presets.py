"""Named GPT sizes: the six LlamaGen/VFMTok c2i models plus tiny ones for tests and CPU experiments.

Official shapes (reference §3.1; vocab 16384, 256 tokens on a 16 x 16 grid, 1000 classes + null):

========  ======  =====  ====  ========  ==========  ==========
preset    layers  heads  dim   head dim  FFN hidden  parameters
========  ======  =====  ====  ========  ==========  ==========
gpt-b     12      12     768   64        2048        110.9 M
gpt-l     24      16     1024  64        2816        342.9 M
gpt-xl    36      20     1280  64        3584        774.7 M
gpt-xxl   48      24     1536  64        4096        1411.0 M
gpt-2b    48      32     1920  60        5120        2188.4 M
gpt-3b    24      32     3200  100       8704        3096.7 M
========  ======  =====  ====  ========  ==========  ==========

``gpt-test`` (8 x 8 tokens, vocab 512, 10 classes), ``gpt-tiny`` and ``gpt-small`` are not official. Every field can
be overridden, e.g. ``gpt_preset("gpt-test", vocab_size=1024, block_size=256, num_classes=1000)``.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError
from .gpt import GPTConfig

_OFFICIAL = dict(vocab_size=16384, block_size=256, num_classes=1000)

GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt-b": GPTConfig(n_layer=12, n_head=12, dim=768, **_OFFICIAL),
    "gpt-l": GPTConfig(n_layer=24, n_head=16, dim=1024, **_OFFICIAL),
    "gpt-xl": GPTConfig(n_layer=36, n_head=20, dim=1280, **_OFFICIAL),
    "gpt-xxl": GPTConfig(n_layer=48, n_head=24, dim=1536, **_OFFICIAL),
    "gpt-2b": GPTConfig(n_layer=48, n_head=32, dim=1920, **_OFFICIAL),
    "gpt-3b": GPTConfig(n_layer=24, n_head=32, dim=3200, **_OFFICIAL),
    "gpt-test": GPTConfig(n_layer=2, n_head=4, dim=64, vocab_size=512, block_size=64, num_classes=10),
    "gpt-tiny": GPTConfig(n_layer=4, n_head=4, dim=128, **_OFFICIAL),
    "gpt-small": GPTConfig(n_layer=8, n_head=8, dim=384, **_OFFICIAL),
}

# Names used by LlamaGen / VFMTok (``--gpt-model GPT-B``) and their presets.
OFFICIAL_NAMES: dict[str, str] = {
    "GPT-B": "gpt-b",
    "GPT-L": "gpt-l",
    "GPT-XL": "gpt-xl",
    "GPT-XXL": "gpt-xxl",
    "GPT-2B": "gpt-2b",
    "GPT-3B": "gpt-3b",
}


def list_gpt_presets() -> list[str]:
    """Names accepted by :func:`gpt_preset`."""
    return list(GPT_PRESETS)


def gpt_preset(name: str, **overrides: Any) -> GPTConfig:
    """The config of preset ``name`` (``gpt-b`` ... or an official ``GPT-B`` style name) with field overrides."""
    key = OFFICIAL_NAMES.get(name, name)
    if key not in GPT_PRESETS:
        raise ConfigError(f"unknown GPT preset {name!r}; choose from {list_gpt_presets()}")
    try:
        return GPT_PRESETS[key].replace(**overrides)
    except TypeError as e:
        raise ConfigError(f"gpt_preset({name!r}): {e}") from None


def preset_for_shape(n_layer: int, dim: int) -> str | None:
    """Name of the official preset with this depth and width (what a checkpoint's shapes reveal), if any."""
    for name in OFFICIAL_NAMES.values():
        cfg = GPT_PRESETS[name]
        if (cfg.n_layer, cfg.dim) == (n_layer, dim):
            return name
    return None


def count_parameters(config: GPTConfig) -> int:
    """Number of parameters of ``GPT(config)``, from the shapes alone (no allocation)."""
    embed = (config.num_classes + int(config.has_null_class)) * config.dim + 2 * config.vocab_size * config.dim
    per_layer = 4 * config.dim * config.dim + 3 * config.dim * config.ffn_hidden + 2 * config.dim
    return embed + config.n_layer * per_layer + config.dim
