"""The VFMTok tokenizer: region-adaptive encoder, L2-normalised quantizer, token decoder and pixel decoder."""

from .model import TokenizerConfig, TokenizerOutput, VFMTokenizer
from .presets import TOKENIZER_PRESETS, tokenizer_preset

__all__ = ["TOKENIZER_PRESETS", "TokenizerConfig", "TokenizerOutput", "VFMTokenizer", "tokenizer_preset"]
