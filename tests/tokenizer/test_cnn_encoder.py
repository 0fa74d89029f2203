"""CNNEncoder: token shapes and raster order, downsampling factor, block layout, input checks."""

from __future__ import annotations

import pytest
import torch

from vfmtok.tokenizer.cnn_encoder import CNNEncoder, Downsample
from vfmtok.tokenizer.pixel_decoder import AttnBlock, ResBlock


@pytest.fixture(scope="module")
def enc() -> CNNEncoder:
    torch.manual_seed(0)
    return CNNEncoder(dim=48, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2).eval()


def test_tokens_are_the_final_map_in_raster_order(enc):
    x = torch.rand(2, 3, 32, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = enc(x)
    assert enc.downsample_factor == 4
    assert tokens.shape == (2, 8 * 5, 48) and tokens.dtype == torch.float32
    # the same modules composed by hand: (B, dim, h, w) map, token k = (row k // w, column k % w)
    with torch.no_grad():
        h = enc.conv_in(x)
        for level in enc.down:
            for res in level.res:
                h = res(h)
            if level.downsample is not None:
                h = level.downsample(h)
        for block in enc.mid:
            h = block(h)
        fmap = enc.conv_out(torch.nn.functional.silu(enc.norm_out(h)))
    assert fmap.shape == (2, 48, 8, 5)
    for k in (0, 4, 5, 17, 39):
        torch.testing.assert_close(tokens[:, k], fmap[:, :, k // 5, k % 5])


def test_block_layout_follows_vqgan(enc):
    assert enc.conv_in.out_channels == 32 and enc.conv_out.out_channels == 48
    assert [len(level.res) for level in enc.down] == [2, 2, 2]
    assert [level.downsample is not None for level in enc.down] == [True, True, False]
    # 1x1 skip only where the width changes (32 -> 64 at the first block of level 1)
    skips = [res.nin_shortcut is not None for level in enc.down for res in level.res]
    assert skips == [False, False, True, False, False, False]
    assert isinstance(enc.mid[0], ResBlock) and isinstance(enc.mid[1], AttnBlock) and isinstance(enc.mid[2], ResBlock)
    assert Downsample(8)(torch.zeros(1, 8, 6, 10)).shape == (1, 8, 3, 5)


def test_gradients_reach_every_parameter(enc):
    enc.zero_grad(set_to_none=True)
    enc(torch.rand(1, 3, 16, 16) * 2 - 1).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
    enc.zero_grad(set_to_none=True)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="multiples of 32"):
        CNNEncoder(dim=16, ch=48, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="num_res_blocks"):
        CNNEncoder(dim=16, ch=32, ch_mult=(1, 2), num_res_blocks=0)
    enc = CNNEncoder(dim=16, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1)
    with pytest.raises(ValueError, match="multiple of 4"):
        enc(torch.zeros(1, 3, 30, 32))
