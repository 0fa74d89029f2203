"""Multi-scale deformable attention vs a slow per-point bilinear reference."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.ops.ms_deform_attn import MSDeformAttn, level_start_index, ms_deform_attn, ms_deform_attn_gather

pytestmark = pytest.mark.usefixtures("one_thread")


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample (C, H, W) at normalised (x, y) with grid_sample semantics (align_corners=False, zero padding)."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c, dtype=img.dtype)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        wx = 1.0 - abs(px - xi)
        wy = 1.0 - abs(py - yi)
        if 0 <= xi < w and 0 <= yi < h:
            out += wx * wy * img[:, yi, xi]
    return out


def reference_ms_deform_attn(value, shapes, locations, weights):
    """Loop over every batch, query, head, level and point."""
    b, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    starts = level_start_index(shapes)
    out = torch.zeros(b, lq, m, dh, dtype=value.dtype)
    for bi in range(b):
        for q in range(lq):
            for h in range(m):
                for lvl, (hh, ww) in enumerate(shapes):
                    img = value[bi, starts[lvl] : starts[lvl] + hh * ww, h].T.reshape(dh, hh, ww)
                    for p in range(n_points):
                        x, y = locations[bi, q, h, lvl, p].tolist()
                        out[bi, q, h] += weights[bi, q, h, lvl, p] * _bilinear_zero_pad(img, x, y)
    return out.reshape(b, lq, m * dh)


@pytest.mark.parametrize("shapes", [[(5, 7), (3, 4), (1, 2)], [(4, 4), (4, 4)]])
def test_matches_slow_reference_unequal_levels(shapes):
    g = torch.Generator().manual_seed(0)
    b, lq, m, dh, p = 2, 5, 2, 3, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, dh, generator=g, dtype=torch.float64)
    # include locations outside [0, 1] to exercise the zero padding at the borders
    loc = torch.rand(b, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    w = torch.rand(b, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, loc, w)
    want = reference_ms_deform_attn(value, shapes, loc, w)
    assert got.shape == (b, lq, m * dh)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # spatial shapes as a tensor work the same
    torch.testing.assert_close(ms_deform_attn(value, torch.tensor(shapes), loc, w), got)


def test_pixel_centres_return_exact_values():
    """A location at a pixel centre, (j + 0.5) / W, returns exactly that pixel (location * size - 0.5 semantics)."""
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)  # one 3 x 4 level
    loc = torch.tensor([[(1 + 0.5) / 4, (2 + 0.5) / 3]], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == 2 * 4 + 1


def test_gradients_match_reference():
    shapes = [(3, 3), (2, 1)]
    g = torch.Generator().manual_seed(1)
    value = torch.randn(1, 11, 1, 2, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 2, 1, 2, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    w = torch.rand(1, 2, 1, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, shapes, l, a), (value, loc, w))


def test_shape_errors():
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn(torch.zeros(1, 10, 1, 1), [(3, 3)], torch.zeros(1, 1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1, 1))


def test_module_init_and_layout():
    attn = MSDeformAttn(dim=16, n_levels=3, n_heads=4, n_points=2)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    bias = attn.sampling_offsets.bias.view(4, 3, 2, 2)  # (head, level, point, xy)
    # head 0 points along +x, head 1 (90 degrees) along +y; point p is scaled by p + 1; same on every level
    torch.testing.assert_close(bias[0, :, 0], torch.tensor([[1.0, 0.0]] * 3))
    torch.testing.assert_close(bias[0, :, 1], torch.tensor([[2.0, 0.0]] * 3))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    assert bias.abs().amax(-1).min() > 0.99  # scaled so the largest component is (p + 1)

    shapes = [(8, 8), (4, 6), (2, 2)]
    query = torch.randn(2, 5, 16)
    ref = torch.rand(1, 5, 3, 2)
    samp = attn.sampling(query, ref, shapes)
    assert samp.locations.shape == (2, 5, 4, 3, 2, 2) and samp.weights.shape == (2, 5, 4, 3, 2)
    torch.testing.assert_close(samp.weights.sum((-1, -2)), torch.ones(2, 5, 4))
    torch.testing.assert_close(samp.weights, torch.full_like(samp.weights, 1 / 6))  # uniform at init
    # offsets are in pixels of each level: divided by (W_l, H_l)
    want = ref[:, :, None, :, None, :] + bias[None, None] / torch.tensor([[8.0, 8.0], [6.0, 4.0], [2.0, 2.0]])[
        None, None, None, :, None, :]
    torch.testing.assert_close(samp.locations, want.expand_as(samp.locations))


def test_module_forward_matches_core():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, n_levels=2, n_heads=2, n_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight)
    shapes = [(4, 5), (2, 3)]
    x = torch.randn(1, 26, 8)
    q = torch.randn(1, 4, 8)
    ref = torch.rand(1, 4, 2, 2)
    out = attn(q, ref, x, shapes)
    samp = attn.sampling(q, ref, shapes)
    value = attn.value_proj(x).view(1, 26, 2, 4)
    want = attn.output_proj(reference_ms_deform_attn(value.double(), shapes, samp.locations.double(),
                                                     samp.weights.double()).float())
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_gather_formulation_equals_grid_sample_values_and_gradients():
    """ms_deform_attn_gather (the fusable form) == the grid_sample form, border and out-of-map samples included."""
    torch.manual_seed(0)
    shapes = [(6, 5), (3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 4, 8, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(2, 7, 4, 3, 5, 2, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    weights = torch.rand(2, 7, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    ref = ms_deform_attn(value, shapes, loc, weights)
    got = ms_deform_attn_gather(value, shapes, loc, weights)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (value, loc, weights), grad)
    have = torch.autograd.grad(got, (value, loc, weights), grad)
    for h, w in zip(have, want):
        torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-9)
    corners = torch.tensor([0.0, 1.0], dtype=torch.float64)  # the map's own borders
    edge = corners.view(1, 1, 1, 1, 2, 1).expand(2, 7, 4, 3, 2, 2).contiguous()
    w2 = torch.rand(2, 7, 4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(ms_deform_attn_gather(value.detach(), shapes, edge, w2),
                               ms_deform_attn(value.detach(), shapes, edge, w2), rtol=0, atol=1e-12)


def test_module_impl_switch():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=32, n_levels=2, n_heads=4, n_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    shapes = [(4, 4), (2, 3)]
    query = torch.randn(2, 5, 32)
    ref_pts = torch.rand(1, 5, 2, 2)
    feats = torch.randn(2, 22, 32)
    ref = attn(query, ref_pts, feats, shapes)
    attn.impl = "gather"
    torch.testing.assert_close(attn(query, ref_pts, feats, shapes), ref, rtol=1e-5, atol=1e-5)
    assert "impl" not in "".join(attn.state_dict())


@pytest.mark.parametrize("core", [ms_deform_attn, ms_deform_attn_gather])
def test_bf16_values_with_fp32_locations(core):
    """bf16 values + fp32 locations/weights: sampled and mixed in fp32 (values upcast exactly), result rounded to
    bf16, i.e. exactly the fp32 computation on the bf16 values, rounded once."""
    g = torch.Generator().manual_seed(2)
    shapes = [(6, 5), (3, 4)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 4, 8, generator=g).bfloat16()
    loc = torch.rand(2, 7, 4, 2, 3, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(2, 7, 4, 2, 3, generator=g)
    got = core(value, shapes, loc, weights)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 7, 32)
    assert torch.equal(got, core(value.float(), shapes, loc, weights).bfloat16())
    # a bf16 grid would have moved the samples: the fp32 locations are what was used
    coarse = core(value.float(), shapes, loc.bfloat16().float(), weights).bfloat16()
    assert not torch.equal(got, coarse)


def test_sampling_is_fp32_under_autocast():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    query = torch.randn(2, 5, 16).bfloat16()
    ref_pts = torch.rand(1, 5, 2, 2)
    shapes = [(4, 4), (2, 3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn.sampling(query, ref_pts, shapes)
    want = attn.sampling(query.float(), ref_pts, shapes)
    assert got.locations.dtype == torch.float32 and got.weights.dtype == torch.float32
    assert torch.equal(got.locations, want.locations) and torch.equal(got.weights, want.weights)
    # float64 stays float64 (the reference tests run the module in double)
    assert attn.double().sampling(query.double(), ref_pts.double(), shapes).locations.dtype == torch.float64
