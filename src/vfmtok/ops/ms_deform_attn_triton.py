"""Multi-scale deformable attention, forward only, as one Triton kernel (CUDA; inference).

Same function as :func:`vfmtok.ops.ms_deform_attn.ms_deform_attn` (bilinear sampling with ``align_corners=False``
and zero padding, mixed by the attention weights), computed the way the official CUDA op does: one program per
(image, query) walks the ``n_levels x n_points`` samples of all heads, computes each sample's four corners and
bilinear weights once per head, and accumulates the corners' channel rows (``value[b, s, m, :]``, contiguous) in
float32. Nothing is materialised; the value tensor is read where it is sampled.

Written for :func:`vfmtok.tokenizer.inference.prepare_inference` (``deform_impl="triton"``): no backward, so it must
not be used for training (a clear error says so when gradients are required). Needs the ``triton`` package (shipped
with PyTorch's CUDA wheels) and CUDA tensors; ``TRITON_INTERPRET=1`` runs it on CPU tensors (slow; for tests).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .ms_deform_attn import SpatialShapes, _checked_shapes, level_start_index

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the Python forms in ms_deform_attn.py serve there
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as triton.jit itself does

if triton is not None:

    @triton.jit
    def _ms_deform_attn_fwd(
        value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, out_ptr, S, Lq,
        M: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)  # = b * Lq + q
        b = pid // Lq
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < M
        mask_d = offs_d < DH
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for lvl in tl.static_range(L):
            h = tl.load(shapes_ptr + 2 * lvl)
            w = tl.load(shapes_ptr + 2 * lvl + 1)
            start = tl.load(starts_ptr + lvl)
            for p in tl.static_range(P):
                idx = ((pid * M + offs_m) * L + lvl) * P + p  # (BLOCK_M,) into (B, Lq, M, L, P)
                aw = tl.load(weight_ptr + idx, mask=mask_m, other=0.0)
                x = tl.load(loc_ptr + 2 * idx, mask=mask_m, other=0.0) * w.to(tl.float32) - 0.5
                y = tl.load(loc_ptr + 2 * idx + 1, mask=mask_m, other=0.0) * h.to(tl.float32) - 0.5
                x0f = tl.floor(x)
                y0f = tl.floor(y)
                fx = x - x0f
                fy = y - y0f
                x0 = x0f.to(tl.int32)
                y0 = y0f.to(tl.int32)
                for corner in tl.static_range(4):
                    dx = corner % 2
                    dy = corner // 2
                    xi = x0 + dx
                    yi = y0 + dy
                    bx = fx * dx + (1.0 - fx) * (1 - dx)  # fx for the right corners, 1 - fx for the left
                    by = fy * dy + (1.0 - fy) * (1 - dy)
                    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & mask_m
                    row = (b * S + start + yi * w + xi).to(tl.int64)  # (BLOCK_M,)
                    ptrs = value_ptr + (row[:, None] * M + offs_m[:, None]) * DH + offs_d[None, :]
                    v = tl.load(ptrs, mask=inside[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                    acc += v * (bx * by * aw)[:, None]
        out_ptrs = out_ptr + (pid.to(tl.int64) * M + offs_m[:, None]) * DH + offs_d[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def triton_available() -> bool:
    """True when the Triton kernel can run here (``triton`` importable)."""
    return triton is not None


_SHAPE_TENSORS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _shape_tensors(shapes: tuple[tuple[int, int], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(L, 2) int32 level sizes (H, W) and (L,) int32 level starts on ``device``, made once per shapes and device (no
    host-to-device copy per call, so the kernel can also be captured in a CUDA graph)."""
    key = (shapes, str(device))
    if key not in _SHAPE_TENSORS:
        _SHAPE_TENSORS[key] = (torch.tensor(shapes, dtype=torch.int32, device=device),
                               torch.tensor(level_start_index(shapes), dtype=torch.int32, device=device))
    return _SHAPE_TENSORS[key]


def ms_deform_attn_triton(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """:func:`~vfmtok.ops.ms_deform_attn.ms_deform_attn` as one Triton kernel (same arguments and result).

    Args:
        value: (B, S, M, Dh), any float dtype (bf16 under the fast inference settings).
        spatial_shapes: (L, 2) or sequence of (H_l, W_l).
        sampling_locations: (B, Lq, M, L, P, 2) normalised (x, y); used in float32.
        attention_weights: (B, Lq, M, L, P); used in float32.

    Returns:
        (B, Lq, M * Dh) in ``value``'s dtype; accumulated in float32.
    """
    if triton is None:
        raise ImportError("ms_deform_attn_triton needs the `triton` package (it comes with PyTorch's CUDA wheels); "
                          "use deform_impl='gather' or 'grid_sample' without it")
    if not value.is_cuda and not _INTERPRET:
        raise ValueError(f"ms_deform_attn_triton runs on CUDA tensors (got {value.device}); set TRITON_INTERPRET=1 "
                         "before importing it to run the kernel on CPU in Triton's interpreter")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (value, sampling_locations, attention_weights)):
        raise RuntimeError("ms_deform_attn_triton has no backward (inference only): run it under torch.no_grad(), or "
                           "use deform_impl='grid_sample' / 'gather' for training")
    shapes = _checked_shapes(value, spatial_shapes, sampling_locations)
    b, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    dev = value.device
    value = value.contiguous()
    loc = sampling_locations.to(torch.float32).contiguous()
    weights = attention_weights.to(torch.float32).contiguous()
    shape_t, start_t = _shape_tensors(tuple(shapes), dev)
    out = torch.empty(b, lq, m, dh, dtype=value.dtype, device=dev)
    _ms_deform_attn_fwd[(b * lq,)](
        value, shape_t, start_t, loc, weights, out, s, lq,
        M=m, DH=dh, L=n_levels, P=n_points,
        BLOCK_M=triton.next_power_of_2(m), BLOCK_D=triton.next_power_of_2(dh),
    )
    return out.view(b, lq, m * dh)
