"""Float32 islands that mean "at least float32".

Several computations run in float32 even under bf16/fp16 autocast (the quantizer's search and losses, the encoder's
attentions, the discriminator, the loss arithmetic of the trainer). Such an island upcasts half-precision tensors;
it must not round a float64 computation (used by the tests that compare a step with the official code in float64)
back to float32. :func:`at_least_fp32` is that cast.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.bfloat16, torch.float16)


def island_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a float32 island computes in for inputs of ``dtype``: float64 stays float64, everything else
    (bf16, fp16, float32, integers, bool) gives float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` cast to :func:`island_dtype` of its dtype: half precision, integers and bool become float32, float32 and
    float64 tensors are returned unchanged (no copy)."""
    return t.to(island_dtype(t.dtype))
