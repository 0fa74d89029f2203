"""Region-adaptive encoder: reference grid, unequal levels, causality, grid ablation, regions, init modes, the
attention precision switch."""

from __future__ import annotations

import pytest
import torch

from vfmtok.tokenizer.encoder import Attention, RegionEncoder, anchor_reference_points, causal_mask

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_is_causal_equals_the_mask_path():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, is_causal=True), attn(x, causal_mask(9)), rtol=0, atol=1e-6)
        assert not torch.allclose(attn(x, is_causal=True), attn(x), atol=1e-3)  # it does mask
    with pytest.raises(ValueError, match="is_causal"):
        attn(x, causal_mask(9), is_causal=True)


def _randomise_sampling(enc: RegionEncoder) -> RegionEncoder:
    """Non-zero offset / weight layers (a trained encoder's locations depend on the query; at init they do not)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in enc.layers:
            for lin in (layer.cross_attn.sampling_offsets, layer.cross_attn.attention_weights):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
    return enc


def _linear_dtypes(enc: RegionEncoder, levels) -> dict[str, tuple[torch.dtype, torch.dtype]]:
    """(input dtype, output dtype) of every Linear in the layers during one forward under CPU bf16 autocast."""
    seen, hooks = {}, []

    def record(name: str):
        def hook(module, inputs, output) -> None:
            seen.setdefault(name, (inputs[0].dtype, output.dtype))
        return hook

    for name, mod in enc.layers.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(record(name)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc(levels)
    for h in hooks:
        h.remove()
    return seen


def test_attention_fp32_switch_precision():
    """True (default): both attentions see fp32 under autocast. False: value projection and self-attention follow the
    bf16 autocast, the sampling offset / weight layers stay fp32."""
    enc = _randomise_sampling(_encoder())
    assert enc.attention_fp32 and all(layer.attention_fp32 for layer in enc.layers)
    fp32 = torch.float32, torch.float32
    official = _linear_dtypes(enc, _levels())
    for name in ("cross_attn.value_proj", "cross_attn.sampling_offsets", "cross_attn.attention_weights",
                 "cross_attn.output_proj", "self_attn.q_proj", "self_attn.out_proj"):
        assert official[f"0.{name}"] == fp32, name
    assert official["0.linear1"][1] == torch.bfloat16  # the FFN follows autocast in both modes

    enc.attention_fp32 = False
    assert not any(layer.attention_fp32 for layer in enc.layers)
    low = _linear_dtypes(enc, _levels())
    for name in ("cross_attn.sampling_offsets", "cross_attn.attention_weights"):
        assert low[f"1.{name}"] == fp32, name
    for name in ("cross_attn.value_proj", "cross_attn.output_proj", "self_attn.q_proj", "self_attn.out_proj"):
        assert low[f"1.{name}"][1] == torch.bfloat16, name
    assert "attention_fp32" not in "".join(enc.state_dict())


def test_sampling_locations_stay_fp32_with_bf16_attention():
    enc = _randomise_sampling(_encoder())
    levels = _levels()
    with torch.no_grad():
        want = enc.regions(levels)
        enc.attention_fp32 = False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = enc.regions(levels)
    assert got.locations.dtype == torch.float32 and got.weights.dtype == torch.float32
    # layer 0 sees the same (fp32) query either way: identical locations; later layers only differ by bf16 rounding
    assert torch.equal(got.locations[0], want.locations[0]) and torch.equal(got.weights[0], want.weights[0])
    torch.testing.assert_close(got.locations, want.locations, rtol=0, atol=2e-2)
