"""Region-adaptive encoder: learnable anchor queries sample the frozen VFM's multi-level features (VFMTok Sec. 3.2).

Data flow (released model, B images):
    VFM taps, 4 x (B, 1024, 24, 24)
      -> per-level projector: Linear(no bias) LN ReLU Linear(no bias) LN, then one more LN   -> 4 x (B, 576, 512)
    anchor queries: LN(carrier_tokens) (1, 256, 512), positional term slots_pos (1, 256, 512)
    reference points: fixed 16 x 16 grid of cell centres, (x, y), token k <-> (row k // 16, col k % 16), same point
      on every level, never refined
      -> 6 post-norm layers [MS-deformable cross-attn (fp32) -> causal self-attn (fp32) -> ReLU FFN]
         (``attention_fp32=False``, an inference switch: both attentions under the caller's autocast, locations fp32)
    slots (B, 256, 512)

Official quirks kept: q, k AND v of the self-attention are all projected from ``src + pos``; the self-attention is
causal over the anchors; the FFN width is min(4 * dim, 1024) (chosen by the config); the configured dropout never
reached these layers (effective 0). ``init="official"`` also keeps the official init bug: the encoder's intended
xavier re-init iterated over parameters instead of modules and never ran, so its Linear layers keep PyTorch defaults
(MSDeformAttn still gets its own Deformable-DETR init). ``init="xavier"`` applies the intended xavier init to the
self-attention and FFN layers.

``quantization="grid"`` is the ablation without region-adaptive anchors: the projected levels are average-pooled to
the token grid and averaged over levels; those fixed-region tokens then pass through the same layers without the
deformable cross-attention (causal self-attention + FFN only). There are no carrier tokens in that mode.
"""

from __future__ import annotations

import contextlib

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ms_deform_attn import MSDeformAttn
from ..ops.precision import at_least_fp32


class Attention(nn.Module):
    """Multi-head attention with separate biased q/k/v/out projections (the official ``Attention3``).

    Args:
        dim: width; heads split the last dimension as ``(head, channel)``.
        num_heads: number of heads, scale 1 / sqrt(dim / num_heads).
        dropout: attention-probability dropout, active in training only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.scale = 1.0 / math.sqrt(dim / num_heads)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """``x``: (B, N, dim) -> (B, N, dim).

        ``mask``: (N, N) bool, True where attention is allowed, or None. ``is_causal``: position i attends to
        positions <= i, the same function as ``mask=causal_mask(N)`` but without a mask tensor, so SDPA may pick its
        flash / memory-efficient kernels (an explicit mask keeps it off the flash kernel). Not both.
        """
        if mask is not None and is_causal:
            raise ValueError("Attention: pass either mask or is_causal=True, not both")
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = (p(x).view(b, n, h, c // h).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal,
            scale=self.scale,
        )  # (B, h, N, c/h)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


def causal_mask(n: int, device: torch.device | None = None) -> Tensor:
    """(n, n) bool lower-triangular mask: position i attends to positions <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def anchor_reference_points(grid: int) -> Tensor:
    """(grid * grid, 2) cell-centre reference points (x, y) in (0, 1), row-major: token k = (row k // g, col k % g).

    Computed as the official ``get_reference_points`` does (linspace of pixel centres divided by the size), so the
    float32 values are identical.
    """
    ys, xs = torch.meshgrid(
        torch.linspace(0.5, grid - 0.5, grid, dtype=torch.float32),
        torch.linspace(0.5, grid - 0.5, grid, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((xs.reshape(-1) / grid, ys.reshape(-1) / grid), -1)


class LevelProjector(nn.Module):
    """Per-level projector ``fc1 (no bias) -> norm1 -> ReLU -> fc2 (no bias) -> norm2 -> norm_out``.

    Maps (B, N, D) VFM tokens to (B, N, dim).

    ``norm_out`` is the official separate ``norm_layers[i]``: two LayerNorms in a row, as released.
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_out(self.norm2(self.fc2(F.relu(self.norm1(self.fc1(x))))))


class EncoderLayer(nn.Module):
    """Post-norm layer: [deformable cross-attn -> norm1] -> causal self-attn -> norm3 -> ReLU FFN -> norm2.

    The official norm names are kept (``norm1`` after cross-attention, ``norm3`` after self-attention, ``norm2``
    after the FFN) so the layer reads against the released checkpoint. ``cross_attn`` is None in grid mode.

    ``attention_fp32`` (a plain attribute, not config, not state): True (default, official) runs both attentions in
    float32 with autocast disabled. False leaves them under the caller's autocast, so under bf16 autocast the value
    projection, the sampled values and the self-attention run in bf16; the sampling locations and weights stay float32
    either way (:meth:`MSDeformAttn.sampling`). Inference speed switch: see
    :func:`vfmtok.tokenizer.inference.prepare_inference`.
    """

    def __init__(
        self, dim: int, ffn_dim: int, n_heads: int, n_levels: int, n_points: int, dropout: float, deformable: bool,
        causal: bool,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.attention_fp32 = True
        self.cross_attn = MSDeformAttn(dim, n_levels, n_heads, n_points) if deformable else None
        self.norm1 = nn.LayerNorm(dim) if deformable else None
        self.self_attn = Attention(dim, n_heads)  # official: dropout never passed (0)
        self.norm3 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor | None,
        values: Tensor | None,
        spatial_shapes: Sequence[tuple[int, int]],
        collect: list | None = None,
    ) -> Tensor:
        """``src``: (B, L, dim) anchors; ``pos``: (1, L, dim); ``reference_points``: (1, L, n_levels, 2);
        ``values``: (B, S, dim) flattened levels. ``collect`` receives the layer's :class:`DeformSampling`."""
        if self.attention_fp32:
            # The official layer forces fp32 for both attentions (its CUDA kernel needs fp32): no autocast, inputs
            # at least fp32 (a float64 model stays float64).
            src, pos, reference_points, values = (None if t is None else at_least_fp32(t)
                                                  for t in (src, pos, reference_points, values))
            precision = torch.autocast(device_type=src.device.type, enabled=False)
        else:  # the caller's autocast applies (bf16 values and self-attention); sampling locations stay fp32
            precision = contextlib.nullcontext()
        with precision:  # cross-attention (deformable mode), causal self-attention, their residuals and post-norms
            if self.cross_attn is not None:
                query = src + pos
                if collect is not None:
                    collect.append(self.cross_attn.sampling(query, reference_points, spatial_shapes))
                out = self.cross_attn(query, reference_points, values, spatial_shapes)
                src = self.norm1(src + self.dropout(out))
            src = self.norm3(src + self.dropout(self.self_attn(src + pos, is_causal=self.causal)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class EncoderRegions(NamedTuple):
    """Deformable sampling of every encoder layer.

    ``locations``: (depth, B, L, M, n_levels, P, 2) normalised (x, y) in image coordinates ([0, 1] spans the image).
    ``weights``: (depth, B, L, M, n_levels, P) attention weights; for each (layer, token, head) they sum to 1.
    ``reference_points``: (L, 2) the fixed anchor centres (x, y).
    """

    locations: Tensor
    weights: Tensor
    reference_points: Tensor


class RegionEncoder(nn.Module):
    """Anchor queries + multi-level projectors + deformable transformer layers.

    Args:
        feature_dims: channel width of each VFM level (one projector per level).
        dim: encoder width.
        depth: number of layers.
        num_heads: deformable and self-attention heads (8 in the released model, hard-coded there).
        num_points: sampling points per head and level.
        ffn_dim: FFN hidden width.
        anchor_grid: g; the encoder emits g * g tokens.
        quantization: ``"deformable"`` (VFMTok) or ``"grid"`` (ablation, see module docstring).
        dropout: dropout on the residual branches (0 in the released model).
        causal: causal self-attention over the anchors (official) or full.
        init: ``"official"`` (PyTorch-default Linear init, as the released model trained) or ``"xavier"``.

    ``attention_fp32`` (property over the layers, default True): see :class:`EncoderLayer`.
    """

    def __init__(
        self,
        feature_dims: Sequence[int],
        dim: int,
        depth: int,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 1024,
        anchor_grid: int = 16,
        quantization: str = "deformable",
        dropout: float = 0.0,
        causal: bool = True,
        init: str = "official",
    ) -> None:
        super().__init__()
        if quantization not in ("deformable", "grid"):
            raise ValueError(f"RegionEncoder: unknown quantization {quantization!r}")
        self.dim, self.anchor_grid, self.quantization = dim, anchor_grid, quantization
        self.num_levels = len(feature_dims)
        n = anchor_grid * anchor_grid
        self.projectors = nn.ModuleList(LevelProjector(d, dim) for d in feature_dims)
        scale = dim**-0.5
        deformable = quantization == "deformable"
        if deformable:
            self.carrier_tokens = nn.Parameter(torch.randn(1, n, dim) * scale)
            self.norm_pre1 = nn.LayerNorm(dim)
        self.slots_pos = nn.Parameter(torch.randn(1, n, dim) * scale)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, ffn_dim, num_heads, self.num_levels, num_points, dropout, deformable, causal)
            for _ in range(depth)
        )
        ref = anchor_reference_points(anchor_grid)  # (L, 2)
        self.register_buffer("reference_points", ref, persistent=False)
        if init == "xavier":
            for layer in self.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                            layer.self_attn.out_proj, layer.linear1, layer.linear2):
                    nn.init.xavier_uniform_(lin.weight)
                    nn.init.zeros_(lin.bias)
        elif init != "official":
            raise ValueError(f"RegionEncoder: unknown init {init!r}")

    @property
    def num_tokens(self) -> int:
        return self.anchor_grid * self.anchor_grid

    @property
    def attention_fp32(self) -> bool:
        """True when every layer runs its attentions in float32 (official, default); see :class:`EncoderLayer`.

        Setting it sets every layer's ``attention_fp32``; it is neither config nor state.
        """
        return all(layer.attention_fp32 for layer in self.layers)

    @attention_fp32.setter
    def attention_fp32(self, value: bool) -> None:
        for layer in self.layers:
            layer.attention_fp32 = bool(value)

    def _prepare(self, levels: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        if len(levels) != self.num_levels:
            raise ValueError(f"RegionEncoder: expected {self.num_levels} feature levels, got {len(levels)}")
        tokens, shapes = [], []
        for proj, lvl in zip(self.projectors, levels):
            _, _, h, w = lvl.shape
            tokens.append(proj(lvl.flatten(2).transpose(1, 2)))  # (B, h*w, dim)
            shapes.append((h, w))
        return torch.cat(tokens, dim=1), shapes  # (B, S, dim)

    def _run(self, levels: Sequence[Tensor], collect: list | None) -> Tensor:
        values, shapes = self._prepare(levels)
        b = values.shape[0]
        if self.quantization == "deformable":
            src = self.norm_pre1(self.carrier_tokens).expand(b, -1, -1)  # (B, L, dim)
            ref = self.reference_points[None, :, None, :].expand(1, -1, self.num_levels, -1)  # (1, L, n_levels, 2)
        else:
            g = self.anchor_grid
            pooled = [
                F.adaptive_avg_pool2d(t.transpose(1, 2).reshape(b, self.dim, h, w), g).flatten(2).transpose(1, 2)
                for t, (h, w) in zip(values.split([h * w for h, w in shapes], dim=1), shapes)
            ]
            src, ref, values = torch.stack(pooled, 0).mean(0), None, None  # (B, L, dim)
        for layer in self.layers:
            src = layer(src, self.slots_pos, ref, values, shapes, collect)
        return src

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """``levels``: list of (B, D_l, h_l, w_l) VFM feature maps (any resolutions) -> slots (B, g*g, dim)."""
        return self._run(levels, None)

    def regions(self, levels: Sequence[Tensor]) -> EncoderRegions:
        """Sampling locations and weights of every layer (deformable mode only); see :class:`EncoderRegions`."""
        if self.quantization != "deformable":
            raise ValueError("regions() needs quantization='deformable': grid tokens have no sampling points")
        collect: list = []
        self._run(levels, collect)
        return EncoderRegions(
            torch.stack([c.locations for c in collect]), torch.stack([c.weights for c in collect]),
            self.reference_points.clone(),
        )
