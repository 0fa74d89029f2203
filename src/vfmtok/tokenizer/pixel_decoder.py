"""VQGAN-style convolutional pixel decoder (taming-transformers / LlamaGen ``Decoder``, as VFMTok uses it).

(B, z_channels, g, g) -> conv_in -> mid [ResBlock, AttnBlock, ResBlock] -> ``len(ch_mult)`` levels from the widest to
the narrowest, each ``num_res_blocks`` ResBlocks (a 1x1 ``nin_shortcut`` where the width changes) and, except the last,
a nearest x2 upsample + 3x3 conv -> GroupNorm(32, eps 1e-6) -> swish -> conv_out -> (B, 3, g * 2^(levels-1), ...).
The output is unbounded (no tanh). Parameter names follow the official module (``conv_in``, ``mid.0/1/2``,
``conv_blocks.i.res.j``, ``conv_blocks.i.upsample.conv``, ``norm_out``, ``conv_out``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    """``x + conv2(drop(swish(norm2(conv1(swish(norm1(x)))))))`` with a 1x1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv q/k/v/proj_out and a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # (B, N, C)
        k = self.k(h).reshape(b, c, hh * ww)  # (B, C, N)
        v = self.v(h).reshape(b, c, hh * ww)  # (B, C, N)
        attn = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (B, Nq, Nk)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, hh, ww)  # (B, C, N)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_res_blocks: int, dropout: float, upsample: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, dropout) for i in range(num_res_blocks)
        )
        self.upsample = Upsample(out_ch) if upsample else None


class PixelDecoder(nn.Module):
    """Convolutional decoder from the token map to pixels.

    Args:
        z_channels: input channels (the decoder-transformer width).
        ch: base width; level i has ``ch * ch_mult[i]`` channels (all multiples of 32 for GroupNorm).
        ch_mult: width multipliers from the finest (output) level to the coarsest (input) level.
        num_res_blocks: ResBlocks per level (2 in the released model, its ``num_res_blocks=1`` plus one).
        dropout: dropout inside the ResBlocks (0).
        out_channels: image channels (3).
    """

    def __init__(
        self,
        z_channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        for w in widths:
            if w % 32:
                raise ValueError(f"PixelDecoder: width {w} is not a multiple of 32 (GroupNorm groups)")
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResBlock(block_in, block_in, dropout)])
        levels = []
        for i, i_level in enumerate(reversed(range(len(widths)))):
            levels.append(_Level(block_in, widths[i_level], num_res_blocks, dropout, upsample=i_level != 0))
            block_in = widths[i_level]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @property
    def upsample_factor(self) -> int:
        return 2 ** sum(level.upsample is not None for level in self.conv_blocks)

    @property
    def last_layer(self) -> Tensor:
        """``conv_out.weight``, for adaptive GAN weighting."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        """``z``: (B, z_channels, g, g) -> (B, 3, g * f, g * f) unbounded float, f = :attr:`upsample_factor`."""
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for res in level.res:
                h = res(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))
