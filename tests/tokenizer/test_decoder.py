"""Token decoder: sequence layout, masks, position-table resize, dropout, init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfmtok.tokenizer.decoder import TokenDecoder, resize_pos_grid, swiglu_hidden


def _decoder(**kw) -> TokenDecoder:
    torch.manual_seed(0)
    args = dict(dim=16, num_tokens=9, vfm_grid=6, pixel_grid=5, target_dim=10, depth=2, num_heads=2, mlp_dim=48,
                attn_dropout=0.5, num_registers=3)
    args.update(kw)
    return TokenDecoder(**args).eval()


def test_swiglu_hidden_official():
    assert swiglu_hidden(2048) == 1368 and swiglu_hidden(128) == 88


def test_resize_pos_grid_official_quirk():
    table = torch.randn(1, 24 * 24, 8)
    grid = table.reshape(1, 24, 24, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(21.1 / 24, 21.1 / 24), mode="bicubic", align_corners=False)
    official = resize_pos_grid(table, 21, "official")
    torch.testing.assert_close(official, want.flatten(2).transpose(1, 2))
    size = resize_pos_grid(table, 21, "size")
    assert official.shape == size.shape == (1, 441, 8)
    assert (official - size).norm() / size.norm() > 0.05  # the two resizes really differ
    assert resize_pos_grid(table, 24, "official") is table  # identity at the VFM grid
    with pytest.raises(ValueError):
        resize_pos_grid(table, 21, "nearest")


def test_shapes_and_dropout():
    dec = _decoder()
    tokens = torch.randn(2, 9, 16)
    assert dec.forward_pixels(tokens).shape == (2, 16, 5, 5)
    assert dec.forward_semantic(tokens).shape == (2, 36, 10)
    torch.testing.assert_close(dec.forward_pixels(tokens), dec.forward_pixels(tokens))  # eval: deterministic
    dec.train()
    torch.manual_seed(1)
    a = dec.forward_pixels(tokens)
    torch.manual_seed(2)
    assert not torch.allclose(a, dec.forward_pixels(tokens))  # attention dropout in training


def test_registers_are_invisible_to_queries():
    """Full causal mask with registers last: no pixel or semantic query can attend to a register."""
    dec = _decoder()
    tokens = torch.randn(1, 9, 16)
    pix, sem = dec.forward_pixels(tokens), dec.forward_semantic(tokens)
    with torch.no_grad():
        dec.register_tokens.normal_()
    torch.testing.assert_close(dec.forward_pixels(tokens), pix)
    torch.testing.assert_close(dec.forward_semantic(tokens), sem)


def test_queries_see_all_tokens():
    dec = _decoder()
    tokens = torch.randn(1, 9, 16)
    pix = dec.forward_pixels(tokens)
    tokens[:, -1] += 1.0  # the last token is visible to every query
    assert (dec.forward_pixels(tokens) - pix).abs().amax(dim=1).min() > 0


def test_init():
    dec = _decoder()
    assert dec.register_tokens.abs().sum() == 0
    assert all(b.attn1.q_proj.bias.abs().sum() == 0 for b in dec.blocks)  # xavier + zero bias
    assert dec.blocks[0].ffnet.w12.weight.shape == (2 * swiglu_hidden(48), 16)
