"""Convolutional pixel decoder: official parameter layout, shapes, upsampling, width checks."""

from __future__ import annotations

import pytest
import torch

from vfmtok.tokenizer.pixel_decoder import AttnBlock, PixelDecoder


def test_pixel_decoder_layout():
    dec = PixelDecoder(z_channels=64, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2)
    keys = dec.state_dict().keys()
    assert dec.conv_in.weight.shape == (128, 64, 3, 3)
    assert "conv_blocks.1.res.0.nin_shortcut.weight" in keys and "conv_blocks.3.res.0.nin_shortcut.weight" in keys
    assert "conv_blocks.0.res.0.nin_shortcut.weight" not in keys
    assert "conv_blocks.3.upsample.conv.weight" in keys and "conv_blocks.4.upsample.conv.weight" not in keys
    assert {"mid.1.q.weight", "mid.1.proj_out.weight", "norm_out.weight", "conv_out.weight"} <= set(keys)
    assert dec.upsample_factor == 16
    small = PixelDecoder(z_channels=16, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    assert small(torch.randn(2, 16, 5, 5)).shape == (2, 3, 10, 10)
    with pytest.raises(ValueError, match="32"):
        PixelDecoder(z_channels=8, ch=24)


def test_attn_block_matches_sdpa():
    torch.manual_seed(0)
    blk = AttnBlock(32).eval()
    x = torch.randn(2, 32, 3, 4)
    h = blk.norm(x)
    q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (blk.q, blk.k, blk.v))  # (B, N, C)
    att = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # single head, scale 1/sqrt(C)
    want = x + blk.proj_out(att.transpose(1, 2).reshape(2, 32, 3, 4))
    torch.testing.assert_close(blk(x), want, atol=1e-5, rtol=1e-5)
