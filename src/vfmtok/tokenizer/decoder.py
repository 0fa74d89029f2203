"""Token decoder: a shared transformer turns the 256 quantised tokens into pixel queries and VFM-feature queries.

VFMTok (arXiv 2507.08441, Sec. 3.3) decodes twice through the same weights:

* pixel pass: ``[norm_post1(tokens + slot_pos) (L) | norm_post1([cls + pe_0, pixel_query + pe_pix (g*g), registers])]``
  with a full causal mask over the whole sequence; the g*g query outputs form the (B, dim, g, g) map the convolutional
  pixel decoder upsamples (g = image_size // pixel_patch, 21 for the released model).
* semantic pass: the same memory with ``norm_post2([cls + pe_0, semantic_query + pe (G*G), registers])``; the G*G
  outputs go through ``proj`` to the width of the VFM target (G = the VFM patch grid, 24 at 336 with /14 patches).

Blocks are pre-norm ``x + Attn(LN(x))``, ``x + SwiGLU(LN(x))`` with attention-probability dropout in training and no
final norm. The pixel queries' position table is the VFM-grid table resized to g x g. The official code resizes with
``scale_factor=((g + 0.1) / G, (g + 0.1) / G)`` (bicubic, align_corners=False, no antialias), which differs by about
16% from ``size=(g, g)``; ``pixel_pos_resize="official"`` reproduces it, ``"size"`` is the plain resize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Attention, causal_mask


def swiglu_hidden(mlp_dim: int) -> int:
    """The official SwiGLU hidden width: 2/3 of ``mlp_dim`` rounded up to a multiple of 8 (2048 -> 1368)."""
    return (int(mlp_dim * 2 / 3) + 7) // 8 * 8


class SwiGLU(nn.Module):
    """``w3(silu(a) * b)`` with ``[a; b] = w12(x)`` packed along the output dim (first half gate, second half up)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(mlp_dim)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn1(norm1(x))`` then ``x + ffnet(norm2(x))`` (official names)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, attn_dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffnet = SwiGLU(dim, mlp_dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn1(self.norm1(x), mask)
        return x + self.ffnet(self.norm2(x))


def resize_pos_grid(table: Tensor, grid: int, mode: str) -> Tensor:
    """Resize a (1, G*G, D) row-major position table to (1, grid*grid, D).

    ``mode="official"`` copies the official call: identity when grid == G, else bicubic with
    ``scale_factor=(grid + 0.1) / G`` (align_corners=False, no antialias). ``mode="size"``: bicubic to ``size=grid``.
    """
    _, n, d = table.shape
    big = int(round(n**0.5))
    if big * big != n:
        raise ValueError(f"position table with {n} entries is not a square grid")
    if grid == big:
        return table
    t = table.reshape(1, big, big, d).permute(0, 3, 1, 2)  # (1, D, G, G)
    if mode == "official":
        s = (grid + 0.1) / big
        t = F.interpolate(t, scale_factor=(s, s), mode="bicubic", align_corners=False)
    elif mode == "size":
        t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    else:
        raise ValueError(f"unknown pixel_pos_resize {mode!r}; expected 'official' or 'size'")
    if t.shape[-2:] != (grid, grid):
        raise ValueError(f"position-table resize gave {tuple(t.shape[-2:])}, expected ({grid}, {grid})")
    return t.flatten(2).transpose(1, 2)


class TokenDecoder(nn.Module):
    """The decoder transformer with its pixel and semantic query sets.

    Args:
        dim: width.
        num_tokens: L, the number of quantised tokens (memory).
        vfm_grid: G; the position table covers 1 + G*G entries and the semantic pass emits G*G predictions.
        pixel_grid: g; the pixel pass emits a (dim, g, g) map.
        target_dim: width of the VFM semantic target (``proj`` output); 0 builds no semantic pass at all (no
            ``mask_dino``, ``norm_post2`` or ``proj``: a tokenizer without a VFM, e.g. ``encoder_type="cnn"``).
        depth, num_heads, mlp_dim: transformer shape (SwiGLU hidden = :func:`swiglu_hidden` of ``mlp_dim``).
        attn_dropout: attention-probability dropout in training (0.1 officially).
        num_registers: register tokens appended at the end of the sequence (4).
        pixel_pos_resize: ``"official"`` or ``"size"``, see :func:`resize_pos_grid`.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        vfm_grid: int,
        pixel_grid: int,
        target_dim: int,
        depth: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attn_dropout: float = 0.1,
        num_registers: int = 4,
        pixel_pos_resize: str = "official",
    ) -> None:
        super().__init__()
        if pixel_pos_resize not in ("official", "size"):
            raise ValueError(f"unknown pixel_pos_resize {pixel_pos_resize!r}")
        self.num_tokens, self.vfm_grid, self.pixel_grid = num_tokens, vfm_grid, pixel_grid
        self.pixel_pos_resize = pixel_pos_resize
        scale = dim**-0.5
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + vfm_grid * vfm_grid, dim) * scale)
        self.slot_position_embedding = nn.Parameter(torch.randn(1, num_tokens, dim) * scale)
        self.mask_embedding = nn.Parameter(torch.randn(1, 1, dim) * scale)  # pixel query
        self.has_semantic = target_dim > 0
        if self.has_semantic:
            self.mask_dino = nn.Parameter(torch.randn(1, 1, dim) * scale)  # semantic (VFM-feature) query
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, mlp_dim, attn_dropout) for _ in range(depth))
        self.norm_post1 = nn.LayerNorm(dim)
        if self.has_semantic:
            self.norm_post2 = nn.LayerNorm(dim)
            self.proj = nn.Linear(dim, target_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official Decoder.initialize_weights: xavier-uniform Linear with zero bias; LayerNorm 1 / 0
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pixel_position_table(self) -> Tensor:
        """(1, 1 + g*g, dim): the CLS entry followed by the VFM-grid table resized to the pixel grid."""
        pe = self.position_embedding
        grid = resize_pos_grid(pe[:, 1:], self.pixel_grid, self.pixel_pos_resize)
        return torch.cat((pe[:, :1], grid), dim=1)

    def _run(self, tokens: Tensor, queries: Tensor, norm: nn.LayerNorm) -> Tensor:
        """Concatenate [memory | queries | registers], run the blocks, return the query outputs (B, Q, dim)."""
        b, n, _ = tokens.shape
        memory = self.norm_post1(tokens + self.slot_position_embedding)  # (B, L, dim)
        registers = self.register_tokens.expand(b, -1, -1)
        q = queries.shape[1] - 1  # queries include the CLS entry
        x = torch.cat((memory, norm(torch.cat((queries, registers), dim=1))), dim=1)  # (B, L + 1 + Q + R, dim)
        mask = causal_mask(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x[:, n + 1 : n + 1 + q]

    def forward_pixels(self, tokens: Tensor) -> Tensor:
        """``tokens``: (B, L, dim) post-quant tokens -> (B, dim, g, g) map for the pixel decoder."""
        b = tokens.shape[0]
        pe = self.pixel_position_table()
        queries = torch.cat((self.cls_token + pe[:, :1], self.mask_embedding + pe[:, 1:]), dim=1).expand(b, -1, -1)
        out = self._run(tokens, queries, self.norm_post1)  # (B, g*g, dim)
        g = self.pixel_grid
        return out.transpose(1, 2).reshape(b, -1, g, g)

    def forward_semantic(self, tokens: Tensor) -> Tensor:
        """``tokens``: (B, L, dim) -> (B, G*G, target_dim) predicted VFM target tokens (row-major grid)."""
        if not self.has_semantic:
            raise ValueError("this token decoder has no semantic pass (built with target_dim=0: no VFM target)")
        b = tokens.shape[0]
        pe = self.position_embedding
        queries = torch.cat((self.cls_token + pe[:, :1], self.mask_dino + pe[:, 1:]), dim=1).expand(b, -1, -1)
        return self.proj(self._run(tokens, queries, self.norm_post2))
