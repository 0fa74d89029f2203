"""The forward-only Triton kernel of multi-scale deformable attention against the PyTorch forms.

Numerics run on CUDA (``pytest -m gpu``) or, with ``TRITON_INTERPRET=1`` set before the run, in Triton's CPU
interpreter; without the ``triton`` package (CPU installs) only the error paths are checked."""

from __future__ import annotations

import os

import pytest
import torch

from vfmtok.ops import ms_deform_attn_triton as mod
from vfmtok.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(device, shapes, b=2, lq=6, m=3, dh=5, p=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, dh, generator=g, dtype=torch.float64)
    loc = torch.rand(b, lq, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2  # some samples fall off the maps
    weights = torch.rand(b, lq, m, len(shapes), p, generator=g).flatten(-2).softmax(-1).view(b, lq, m, len(shapes), p)
    return value.to(device), loc.to(device), weights.to(device)


def _check_equal_to_grid_sample(device, shapes, **kw):
    value, loc, weights = _inputs(device, shapes, **kw)
    ref = ms_deform_attn(value, shapes, loc.double(), weights.double())  # float64 reference
    with torch.no_grad():
        out = mod.ms_deform_attn_triton(value.float(), shapes, loc, weights)
        out_bf16 = mod.ms_deform_attn_triton(value.bfloat16(), shapes, loc, weights)
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-6)
    # bf16 values: the same function of the rounded values, accumulated in float32, rounded once at the end
    ref_bf16 = ms_deform_attn(value.bfloat16().double(), shapes, loc.double(), weights.double())
    torch.testing.assert_close(out_bf16.double(), ref_bf16, atol=1e-2, rtol=1e-2)


needs_triton = pytest.mark.skipif(not mod.triton_available(), reason="triton is not installed")


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="set TRITON_INTERPRET=1 to run on CPU")
def test_interpreted_kernel_equals_grid_sample_on_cpu() -> None:
    _check_equal_to_grid_sample("cpu", [(5, 7), (3, 4), (2, 2)])


@needs_triton
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_equals_grid_sample_on_cuda_official_shapes() -> None:
    shapes = [(24, 24)] * 4
    _check_equal_to_grid_sample("cuda", shapes, b=2, lq=256, m=8, dh=64, p=4)
    _check_equal_to_grid_sample("cuda", [(5, 7), (3, 4), (2, 2)])  # odd sizes, non-power-of-two heads/channels
    # inside a compiled module, as prepare_inference runs it
    torch.manual_seed(0)
    attn = MSDeformAttn(64, n_levels=2, n_heads=4, n_points=2).cuda().eval()
    for p in attn.parameters():
        p.data.normal_(0, 0.05)
    query, ref_pts = torch.randn(2, 16, 64, device="cuda"), torch.rand(1, 16, 2, 2, device="cuda")
    feats = torch.randn(2, 8 * 8 + 4 * 4, 64, device="cuda")
    with torch.no_grad():
        expected = attn(query, ref_pts, feats, [(8, 8), (4, 4)])
        attn.impl = "triton"
        got = torch.compile(attn)(query, ref_pts, feats, [(8, 8), (4, 4)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_errors_name_the_way_out(monkeypatch) -> None:
    value, loc, weights = _inputs("cpu", [(2, 2)])
    if mod.triton_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET"):
            mod.ms_deform_attn_triton(value.float(), [(2, 2)], loc, weights)
    if mod.triton_available():
        with pytest.raises(RuntimeError, match="no backward"):
            mod.ms_deform_attn_triton(value.float().requires_grad_(), [(2, 2)], loc, weights)
    monkeypatch.setattr(mod, "triton", None)
    assert not mod.triton_available()
    with pytest.raises(ImportError, match="deform_impl='gather'"):
        mod.ms_deform_attn_triton(value.float(), [(2, 2)], loc, weights)
