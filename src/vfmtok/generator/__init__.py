"""The autoregressive generator: a LlamaGen-compatible class-conditional GPT and its sampler."""

from __future__ import annotations

from .gpt import GPT, GPTConfig, KVCache
from .presets import GPT_PRESETS, count_parameters, gpt_preset, list_gpt_presets
from .sampling import balanced_labels, cfg_scales, generate, sample

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "GPT_PRESETS",
    "balanced_labels",
    "cfg_scales",
    "count_parameters",
    "generate",
    "gpt_preset",
    "list_gpt_presets",
    "sample",
]
