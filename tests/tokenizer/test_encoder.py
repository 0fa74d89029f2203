"""Region-adaptive encoder: reference grid, unequal levels, causality, grid ablation, regions, init modes."""

from __future__ import annotations

import pytest
import torch

from vfmtok.tokenizer.encoder import RegionEncoder, anchor_reference_points, causal_mask


def _levels(b: int = 2, dims=(12, 12, 12), shapes=((6, 6), (4, 5), (3, 3))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, d, h, w, generator=g) for d, (h, w) in zip(dims, shapes)]


def _encoder(**kw) -> RegionEncoder:
    torch.manual_seed(0)
    args = dict(feature_dims=(12, 12, 12), dim=16, depth=2, num_heads=4, num_points=2, ffn_dim=32, anchor_grid=3)
    args.update(kw)
    return RegionEncoder(**args).eval()


def test_reference_points_official_grid():
    ref = anchor_reference_points(16)
    assert ref.shape == (256, 2)
    assert ref[0].tolist() == [0.03125, 0.03125] and ref[255].tolist() == [0.96875, 0.96875]
    # (x, y) order, row-major: token 1 moves along x, token 16 along y
    assert ref[1].tolist() == [0.09375, 0.03125] and ref[16].tolist() == [0.03125, 0.09375]


def test_unequal_levels_and_shapes():
    enc = _encoder()
    slots = enc(_levels())
    assert slots.shape == (2, 9, 16)
    reg = enc.regions(_levels())
    assert reg.locations.shape == (2, 2, 9, 4, 3, 2, 2)  # (depth, B, L, heads, levels, points, xy)
    torch.testing.assert_close(reg.weights.sum((-1, -2)), torch.ones(2, 2, 9, 4))
    torch.testing.assert_close(reg.reference_points, anchor_reference_points(3))


def test_mixed_feature_widths():
    enc = _encoder(feature_dims=(8, 12, 20))
    assert enc(_levels(dims=(8, 12, 20))).shape == (2, 9, 16)
    with pytest.raises(ValueError, match="levels"):
        enc(_levels(dims=(8, 12, 20))[:2])


def test_causal_anchors():
    """With the causal self-attention, anchor i never sees anchors j > i (the cross-attention is per query)."""
    enc = _encoder()
    levels = _levels()
    before = enc(levels)
    with torch.no_grad():
        enc.carrier_tokens[:, 5:] += 1.0
    after = enc(levels)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_grid_quantization():
    enc = _encoder(quantization="grid")
    assert not hasattr(enc, "carrier_tokens")
    assert all(layer.cross_attn is None for layer in enc.layers)
    assert enc(_levels()).shape == (2, 9, 16)
    with pytest.raises(ValueError, match="deformable"):
        enc.regions(_levels())


def test_init_modes():
    official, fixed = _encoder(init="official"), _encoder(init="xavier")
    lin_o, lin_x = official.layers[0].linear1, fixed.layers[0].linear1
    assert lin_o.bias.abs().sum() > 0  # PyTorch default init (the released no-op xavier bug)
    assert lin_x.bias.abs().sum() == 0  # intended xavier init, zero bias
    # the deformable attention keeps its own Deformable-DETR init in both modes
    torch.testing.assert_close(official.layers[0].cross_attn.sampling_offsets.bias,
                               fixed.layers[0].cross_attn.sampling_offsets.bias)
    with pytest.raises(ValueError):
        _encoder(init="nope")


def test_causal_mask():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_fp32_region_under_autocast():
    enc = _encoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(_levels())
    assert out.dtype in (torch.float32, torch.bfloat16)
    torch.testing.assert_close(out.float(), enc(_levels()), atol=0.1, rtol=0)
