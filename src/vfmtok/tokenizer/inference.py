"""Inference-only speed settings for a :class:`~vfmtok.tokenizer.VFMTokenizer` (encoding datasets, decoding samples).

:func:`prepare_inference` changes how a tokenizer runs, never what it computes beyond rounding: the frozen backbone's
weights may be stored in bf16 (it is never trained, and under bf16 autocast its matrix products run in bf16 anyway; only
its LayerNorm/residual arithmetic moves from fp32 to bf16), the sub-networks may run under ``torch.compile`` and the
convolutional pixel decoder in channels-last memory format, and (opt-in) the region encoder's attentions may follow the
bf16 autocast instead of the official float32. The quantizer's nearest-code search stays float32.
Measured effect: ``bench/tokenizer.py`` and docs/results/performance.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..ops.ms_deform_attn import DEFORM_IMPLS, MSDeformAttn
from .encoder import EncoderLayer
from .model import VFMTokenizer


def prepare_inference(
    tok: VFMTokenizer,
    *,
    backbone_dtype: torch.dtype | None = torch.bfloat16,
    compile: bool = True,
    channels_last: bool = True,
    deform_impl: str | None = None,
    attention_fp32: bool = True,
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
            ``torch.compile`` fuses into one pass; same values up to rounding) or ``"triton"``
            (:func:`~vfmtok.ops.ms_deform_attn_triton.ms_deform_attn_triton`, one hand-written forward-only kernel on
            CUDA: the fastest; needs ``triton``).
        attention_fp32: set on every region-encoder layer (:class:`~vfmtok.tokenizer.encoder.EncoderLayer`). True
            (default, official): both attentions run in float32 with autocast disabled. False: they follow the
            caller's autocast, so under bf16 autocast the deformable value projection, the sampled values and the
            self-attention run in bf16 (the sampling locations and weights stay float32). This changes rounding (bf16
            instead of fp32 in those layers), not the function. Measured on CPU under bf16 autocast, relative
            Frobenius error of the encoder slots: ``tok-test`` (1 layer, sampling layers randomised, 5 seeds)
            1.2-1.5e-3 against the fp32-attention path under the same autocast and 1.4-1.9e-3 against float32 without
            autocast (the fp32-attention path itself: 1.1-1.4e-3); an official-size random encoder (6 layers, width
            512, 4 levels of 24 x 24) 3.3e-3 and 3.8e-3 (fp32-attention path: 2.7e-3). Tested in
            ``tests/tokenizer/test_inference.py``.

    The tokenizer must not be trained afterwards (compiled methods are bound to this instance).
    """
    if deform_impl is not None and deform_impl not in DEFORM_IMPLS:
        raise ValueError(f"deform_impl must be one of {DEFORM_IMPLS}, got {deform_impl!r}")
    tok.eval()
    for module in tok.modules():
        if isinstance(module, EncoderLayer):
            module.attention_fp32 = attention_fp32
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


def fast_codec(
    tok: VFMTokenizer, *, compile: bool | None = None
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Set ``tok`` up with the fastest settings measured and return its ``(encode, decode)`` under bf16 autocast.

    On CUDA that is ``bench/tokenizer.py``'s ``bf16-fast-triton`` (docs/results/performance.md): bf16 backbone
    weights, ``torch.compile``, the region encoder's attentions in bf16 (``attention_fp32=False``) and the deformable
    sampling as the Triton kernel (the gather form when ``triton`` is missing); elsewhere the same without the
    kernel and, unless ``compile=True``, without compilation. The codes can differ from the float32 path's where two
    codes are nearly equidistant (rounding); use the plain ``tok.encode`` / ``tok.decode`` for the official float32
    protocol.

    Returns:
        ``encode(images)``: (B, 3, H, W) float in [-1, 1] -> (B, L) int64 codes, and ``decode(codes)``: (B, L) int64
        -> (B, 3, H, W) float32 images (unclamped, about [-1, 1]); both without grad.
    """
    from ..ops.ms_deform_attn_triton import triton_available

    device = next(tok.parameters()).device
    cuda = device.type == "cuda"
    prepare_inference(tok, backbone_dtype=torch.bfloat16, compile=cuda if compile is None else compile,
                      channels_last=True, deform_impl="triton" if cuda and triton_available() else "gather",
                      attention_fp32=False)

    def encode(images: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return tok.encode(images)

    def decode(codes: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return tok.decode(codes).float()

    return encode, decode


def fast_encode(tok: VFMTokenizer, *, compile: bool | None = None) -> Callable[[Tensor], Tensor]:
    """The ``encode`` of :func:`fast_codec` (same settings): (B, 3, H, W) in [-1, 1] -> (B, L) int64 codes."""
    return fast_codec(tok, compile=compile)[0]
