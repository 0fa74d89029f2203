"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021, arXiv 2010.04159, eq. 2) in pure PyTorch.

Each query has, per head, ``n_levels x n_points`` sampling locations in normalised (x, y) coordinates of every
feature level; it bilinearly samples the head's value channels there and mixes them with softmax weights taken
jointly over all levels and points of that head.

The sampling follows ``F.grid_sample`` semantics exactly as the official CUDA kernel and its "debug" PyTorch twin do:
a location ``(x, y)`` in [0, 1] addresses pixel ``(x * W - 0.5, y * H - 0.5)`` (``align_corners=False``), bilinear
interpolation, zero padding outside the map. Levels may have different resolutions. VFMTok (arXiv 2507.08441,
Sec. 3.2) uses this op to let 256 learnable anchor queries gather region features from the frozen VFM.

The parameter names and layouts of :class:`MSDeformAttn` are those of the official module (``sampling_offsets`` out =
[head][level][point][xy], ``attention_weights`` out = [head][level * point]), so official checkpoints load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = Union[Tensor, Sequence[Sequence[int]]]


def _as_shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def level_start_index(spatial_shapes: SpatialShapes) -> list[int]:
    """Offsets of each level in the flattened value sequence: ``[0, H0*W0, H0*W0 + H1*W1, ...]``."""
    starts, total = [], 0
    for h, w in _as_shape_list(spatial_shapes):
        starts.append(total)
        total += h * w
    return starts


def _checked_shapes(value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor) -> list[tuple[int, int]]:
    """The (H_l, W_l) list, checked against value's S and the locations' level count."""
    shapes = _as_shape_list(spatial_shapes)
    s, n_levels = value.shape[1], sampling_locations.shape[3]
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {s}")
    if len(shapes) != n_levels:
        raise ValueError(f"{len(shapes)} spatial shapes for {n_levels} sampling levels")
    return shapes


def ms_deform_attn(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Core multi-scale deformable attention.

    Args:
        value: (B, S, M, Dh) per-head values of all levels, flattened row-major and concatenated level after level;
            S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) long tensor or sequence of (H_l, W_l) pairs.
        sampling_locations: (B, Lq, M, L, P, 2) normalised (x, y) locations; (0, 0) is the top-left corner of the
            map, (1, 1) the bottom-right corner. Locations outside [0, 1] sample zeros (partially, near the border).
        attention_weights: (B, Lq, M, L, P) mixing weights (already normalised by the caller).

    Returns:
        (B, Lq, M * Dh) sampled and mixed values, head-major channels, in ``value``'s dtype.

    Mixed precision: ``value`` may be bf16/fp16 with float32 locations and weights. ``grid_sample`` needs one dtype
    for the map and the grid, and a bf16 grid would move the samples by up to ~0.05 px on a 24-px map, so the values
    are upcast to the locations' dtype (exact) and sampled and mixed there; only the result is rounded to ``value``'s
    dtype. With all inputs in one dtype nothing is cast.
    """
    shapes = _checked_shapes(value, spatial_shapes, sampling_locations)
    b, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)  # the sampling and mixing dtype
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations.to(dtype) - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, H*W, M, Dh) -> (B*M, Dh, H, W)
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(b * m, dh, h, w).to(dtype)
        # (B, Lq, M, P, 2) -> (B*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # (B*M, Dh, Lq, P)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Lq, M, L, P) -> (B*M, 1, Lq, L*P)
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(b * m, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*M, Dh, Lq)
    return out.view(b, m * dh, lq).transpose(1, 2).to(value.dtype).contiguous()  # (B, Lq, M*Dh)


def ms_deform_attn_gather(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """:func:`ms_deform_attn` written as one weighted gather over channel-contiguous values (same arguments/result).

    Each sample contributes its four bilinear corners as rows ``value[b, S_index, m, :]`` with weight
    ``bilinear x attention`` (0 for corners outside the map, like ``grid_sample``'s zero padding), and the output is
    their weighted sum. Eager, the gathered rows are materialised (4 x the samples); under ``torch.compile`` the
    gather, the weighting and the sum fuse into one reduction that reads each value row once per corner, which is
    what the official CUDA kernel does and what ``grid_sample`` (a loop over channels per sample point) does not.
    Equal to :func:`ms_deform_attn` up to float rounding (tested).

    Mixed precision: ``value`` may be bf16/fp16 with float32 locations and weights. The index and bilinear-weight
    arithmetic runs in the locations' dtype; each gathered row is upcast to the promoted dtype (float32) before the
    weighting, so the weighted sum accumulates in float32, and only the result is rounded to ``value``'s dtype. Under
    ``torch.compile`` the upcast fuses into the gather (the rows are still read as bf16); eager, it materialises the
    gathered rows once more in float32.
    """
    shapes = _checked_shapes(value, spatial_shapes, sampling_locations)
    b, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    dev = value.device
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=sampling_locations.dtype, device=dev)  # (L, 2) = (W, H)
    starts = torch.tensor(level_start_index(shapes), device=dev)  # (L,)
    widths = sizes[:, 0].long()  # (L,)
    # pixel coordinates (align_corners=False): (B, Lq, M, L, P, 2)
    pix = sampling_locations * sizes.view(1, 1, 1, n_levels, 1, 2) - 0.5
    base = pix.floor()
    frac = pix - base
    corner = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=dev)  # (4, 2) as (dx, dy)
    xy = base.long().unsqueeze(-2) + corner  # (B, Lq, M, L, P, 4, 2)
    fx, fy = frac[..., 0:1], frac[..., 1:2]  # (B, Lq, M, L, P, 1)
    bilinear = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # (..., P, 4)
    limit = sizes.long().view(1, 1, 1, n_levels, 1, 1, 2)
    inside = ((xy >= 0) & (xy < limit)).all(-1)  # (B, Lq, M, L, P, 4)
    weight = bilinear * inside * attention_weights.unsqueeze(-1)  # (B, Lq, M, L, P, 4)
    index = starts.view(1, 1, 1, n_levels, 1, 1) + xy[..., 1] * widths.view(1, 1, 1, n_levels, 1, 1) + xy[..., 0]
    index = torch.where(inside, index, torch.zeros_like(index))  # (B, Lq, M, L, P, 4) into S
    # rows of (B*M, S, Dh): flat row id = (b * M + m) * S + index
    rows = value.transpose(1, 2).reshape(b * m * s, dh)
    bm = (torch.arange(b, device=dev).view(b, 1, 1) * m + torch.arange(m, device=dev).view(1, 1, m)) * s  # (B,1,M)
    flat = (index + bm.view(b, 1, m, 1, 1, 1)).flatten(3)  # (B, Lq, M, L*P*4)
    dtype = torch.promote_types(value.dtype, weight.dtype)  # the accumulation dtype
    gathered = rows[flat].to(dtype)  # (B, Lq, M, K, Dh)
    out = (gathered * weight.flatten(3).unsqueeze(-1).to(dtype)).sum(3)  # (B, Lq, M, Dh)
    return out.reshape(b, lq, m * dh).to(value.dtype)


DEFORM_IMPLS = ("grid_sample", "gather", "triton")


class DeformSampling(NamedTuple):
    """Where and how strongly every query samples.

    ``locations``: (B, Lq, M, L, P, 2) normalised (x, y) in feature-map coordinates ([0, 1] spans the whole map).
    ``weights``: (B, Lq, M, L, P), softmax over L * P for each (query, head); each head's weights sum to 1.
    """

    locations: Tensor
    weights: Tensor


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with the official parameter layout.

    Args:
        dim: model width (query and value channels); must be divisible by ``n_heads``.
        n_levels: number of feature levels sampled.
        n_heads: attention heads; each head sees ``dim // n_heads`` value channels.
        n_points: sampling points per head and level.
    """

    def __init__(self, dim: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"MSDeformAttn: dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_levels, self.n_heads, self.n_points = dim, n_levels, n_heads, n_points
        # or "gather" (:func:`ms_deform_attn_gather`) or "triton" (forward-only kernel, inference:
        # :mod:`vfmtok.ops.ms_deform_attn_triton`); not part of the state dict
        self.impl = "grid_sample"
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init: zero offset weights; offset bias points head h along angle 2*pi*h/M (max |component|
        scaled to 1) times (point index + 1); uniform attention (zero weight and bias); xavier value/output proj."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def sampling(self, query: Tensor, reference_points: Tensor, spatial_shapes: SpatialShapes) -> DeformSampling:
        """Sampling locations and attention weights of every query.

        Args:
            query: (B, Lq, dim), any float dtype.
            reference_points: (B or 1, Lq, L, 2) normalised (x, y) reference point of each query on each level.
            spatial_shapes: (L, 2) or sequence of (H_l, W_l); offsets are in units of each level's pixels.

        Always computed at float32 or wider (bf16/fp16 queries are upcast) with autocast disabled: a bf16 location
        near 1 is only good to ~2^-8 of the map, ~0.05 px on a 24-px level. The two small Linear layers cost little.
        """
        b, lq, _ = query.shape
        shapes = _as_shape_list(spatial_shapes)
        m, n_lv, p = self.n_heads, self.n_levels, self.n_points
        dtype = torch.promote_types(query.dtype, torch.float32)
        with torch.autocast(device_type=query.device.type, enabled=False):
            query, reference_points = query.to(dtype), reference_points.to(dtype)
            offsets = self.sampling_offsets(query).view(b, lq, m, n_lv, p, 2)
            weights = self.attention_weights(query).view(b, lq, m, n_lv * p).softmax(-1).view(b, lq, m, n_lv, p)
            # offsets are in pixels of each level: divide by (W_l, H_l) to get normalised coordinates
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return DeformSampling(locations, weights)

    def forward(
        self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, spatial_shapes: SpatialShapes
    ) -> Tensor:
        """Args:
            query: (B, Lq, dim) queries (the caller adds any positional embedding).
            reference_points: (B or 1, Lq, L, 2) normalised (x, y).
            input_flatten: (B, S, dim) features of all levels, flattened row-major and concatenated.
            spatial_shapes: (L, 2) or sequence of (H_l, W_l) with sum H_l W_l = S.

        Returns:
            (B, Lq, dim). Under autocast the value and output projections follow it (bf16 values are sampled as
            described in :func:`ms_deform_attn` / :func:`ms_deform_attn_gather`); the sampling locations and weights
            are float32 regardless (:meth:`sampling`).
        """
        b, s, _ = input_flatten.shape
        value = self.value_proj(input_flatten).view(b, s, self.n_heads, self.dim // self.n_heads)  # (B, S, M, Dh)
        sampling = self.sampling(query, reference_points, spatial_shapes)
        if self.impl == "triton":  # forward-only CUDA kernel (inference): imported here, triton is optional
            from .ms_deform_attn_triton import ms_deform_attn_triton as core
        else:
            core = ms_deform_attn_gather if self.impl == "gather" else ms_deform_attn
        out = core(value, spatial_shapes, sampling.locations, sampling.weights)  # (B, Lq, dim)
        return self.output_proj(out)
