"""VQGAN-style convolutional encoder trained from scratch on pixels (ablation (d) of issue 8: no VFM at all).

The design of the taming-transformers / VQGAN ``Encoder`` (Esser et al., "Taming Transformers for High-Resolution
Image Synthesis", CVPR 2021), written for vfmtok:

(B, 3, H, W) -> conv_in (3x3, ``ch``) -> ``len(ch_mult)`` levels from the finest to the coarsest, each
``num_res_blocks`` ResBlocks to ``ch * ch_mult[i]`` channels and, except the last, a stride-2 3x3 downsample ->
mid [ResBlock, AttnBlock, ResBlock] -> GroupNorm(32) -> swish -> conv_out (3x3, ``dim``) -> (B, g*g, dim) tokens in
raster order, g = H / 2^(len(ch_mult) - 1).

The ResBlocks (GroupNorm 32 + swish + 3x3 conv, twice, a 1x1 ``nin_shortcut`` when the width changes) and the
single-head non-local AttnBlock are the pixel decoder's (:mod:`vfmtok.tokenizer.pixel_decoder`), so the encoder and
the decoder share one block definition. No attention inside the levels (VQGAN puts some at 16 px; at CIFAR's 32 px
input that would be attention over 256 positions in a 2.7 M-parameter budget, which the mid block already covers at
the token grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pixel_decoder import AttnBlock, ResBlock, _norm, _swish


class Downsample(nn.Module):
    """Stride-2 3x3 conv with right/bottom zero padding (the VQGAN choice): (B, C, H, W) -> (B, C, H/2, W/2), H, W
    even."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: output pixel i sees inputs 2i .. 2i + 2


class _Level(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_res_blocks: int, downsample: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_res_blocks))
        self.downsample = Downsample(out_ch) if downsample else None


class CNNEncoder(nn.Module):
    """Convolutional encoder from pixels to a raster of ``g * g`` tokens.

    Args:
        dim: output token width (the tokenizer's ``dim``, what ``quant_proj`` reads).
        ch: base width; ``conv_in`` outputs ``ch`` channels, level i has ``ch * ch_mult[i]`` (multiples of 32 for
            GroupNorm).
        ch_mult: width multipliers from the finest (input) to the coarsest (token) level; ``len(ch_mult) - 1``
            stride-2 downsamplings, so the token grid is ``image_size / 2 ** (len(ch_mult) - 1)``.
        num_res_blocks: ResBlocks per level.
        in_channels: image channels (3).
    """

    def __init__(
        self, dim: int, ch: int = 64, ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        if not widths or any(w <= 0 or w % 32 for w in [ch, *widths]):
            raise ValueError(f"CNNEncoder: widths {[ch, *widths]} must be positive multiples of 32 (GroupNorm groups)")
        if num_res_blocks < 1:
            raise ValueError(f"CNNEncoder: num_res_blocks must be >= 1, got {num_res_blocks}")
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, block_in = [], ch
        for i, w in enumerate(widths):
            levels.append(_Level(block_in, w, num_res_blocks, downsample=i < len(widths) - 1))
            block_in = w
        self.down = nn.ModuleList(levels)
        self.mid = nn.ModuleList([ResBlock(block_in, block_in), AttnBlock(block_in), ResBlock(block_in, block_in)])
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, dim, 3, padding=1)

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** sum(level.downsample is not None for level in self.down)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, 3, H, W) float images in [-1, 1], H and W multiples of :attr:`downsample_factor` ->
        (B, h*w, dim) float tokens, row-major (token k sits at row k // w, column k % w), h = H / factor."""
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"CNNEncoder: image size {tuple(x.shape[-2:])} is not a multiple of {f}")
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            for res in level.res:
                h = res(h)
            if level.downsample is not None:
                h = level.downsample(h)  # (B, C_i, H / 2^(i+1), W / 2^(i+1))
        for block in self.mid:
            h = block(h)
        h = self.conv_out(_swish(self.norm_out(h)))  # (B, dim, h, w)
        return h.flatten(2).transpose(1, 2)  # (B, h*w, dim)
