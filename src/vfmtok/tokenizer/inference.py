"""Inference-only speed settings for a :class:`~vfmtok.tokenizer.VFMTokenizer` (encoding datasets, decoding samples).

:func:`prepare_inference` changes how a tokenizer runs, never what it computes beyond rounding: the frozen backbone's
weights may be stored in bf16 (it is never trained, and under bf16 autocast its matrix products run in bf16 anyway; only
its LayerNorm/residual arithmetic moves from fp32 to bf16), the sub-networks may run under ``torch.compile`` and the
convolutional pixel decoder in channels-last memory format. The quantizer's nearest-code search stays float32.
Measured effect: ``bench/tokenizer.py`` and docs/results/performance.md.
"""

from __future__ import annotations

import torch

from ..ops.ms_deform_attn import DEFORM_IMPLS, MSDeformAttn
from .model import VFMTokenizer


def prepare_inference(
    tok: VFMTokenizer,
    *,
    backbone_dtype: torch.dtype | None = torch.bfloat16,
    compile: bool = True,
    channels_last: bool = True,
    deform_impl: str | None = None,
) -> VFMTokenizer:
    """Set ``tok`` up for fast inference in place (eval mode) and return it.

    Args:
        backbone_dtype: dtype for the frozen backbone's parameters (None: unchanged). Encode under
            ``torch.autocast(..., dtype=backbone_dtype)`` afterwards.
        compile: run the backbone, the region encoder, the token decoder's pixel pass and the pixel decoder under
            ``torch.compile`` (compiled on first use per input shape).
        channels_last: keep the pixel decoder's convolution weights in channels-last format (faster cuDNN kernels
            in bf16 on recent GPUs).
        deform_impl: None (unchanged) or the multi-scale deformable attention formulation of the region encoder:
            ``"grid_sample"`` or ``"gather"`` (:func:`~vfmtok.ops.ms_deform_attn.ms_deform_attn_gather`, which
            ``torch.compile`` fuses into one pass; same values up to rounding).

    The tokenizer must not be trained afterwards (compiled methods are bound to this instance).
    """
    if deform_impl is not None and deform_impl not in DEFORM_IMPLS:
        raise ValueError(f"deform_impl must be one of {DEFORM_IMPLS}, got {deform_impl!r}")
    tok.eval()
    if deform_impl is not None:
        for module in tok.modules():
            if isinstance(module, MSDeformAttn):
                module.impl = deform_impl
    backbone = getattr(tok, "backbone", None)
    if backbone is not None and backbone_dtype is not None:
        for param in backbone.parameters():  # parameters only: the preprocessing constants stay float32
            param.data = param.data.to(backbone_dtype)
    if channels_last:
        tok.pixel_decoder.to(memory_format=torch.channels_last)
    if compile:
        if backbone is not None:
            backbone.compile()
        if getattr(tok, "encoder", None) is not None:
            tok.encoder.compile()
        tok.token_decoder.forward_pixels = torch.compile(tok.token_decoder.forward_pixels)
        tok.pixel_decoder.compile()
    return tok
