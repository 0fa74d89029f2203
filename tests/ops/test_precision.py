"""``at_least_fp32``: float32 islands upcast half precision and never round float64 down."""

from __future__ import annotations

import torch

from vfmtok.ops.precision import at_least_fp32, island_dtype


def test_at_least_fp32_upcasts_half_and_keeps_float32_and_float64() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    assert at_least_fp32(x) is x
    x32 = x.float()
    assert at_least_fp32(x32) is x32
    for half in (torch.bfloat16, torch.float16):
        y = at_least_fp32(x.to(half))
        assert y.dtype == torch.float32 and torch.equal(y, x.to(half).float())
    assert at_least_fp32(torch.arange(3)).dtype == torch.float32
    assert at_least_fp32(torch.ones(2, dtype=torch.bool)).dtype == torch.float32
    assert [island_dtype(d) for d in (torch.bfloat16, torch.float16, torch.float32, torch.float64)] == [
        torch.float32, torch.float32, torch.float32, torch.float64]


def test_quantizer_keeps_float64_and_upcasts_bf16() -> None:
    from vfmtok.tokenizer.quantizer import VectorQuantizer

    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, entropy_ratio=0.1)
    z = torch.randn(2, 5, 4)
    out32 = q(z)
    assert out32.z_q.dtype == torch.float32 and q(z.bfloat16()).z_q.dtype == torch.float32
    out64 = q.double()(z.double())
    assert out64.z_q.dtype == torch.float64 and out64.losses.vq.dtype == torch.float64
    assert torch.equal(out64.idx, out32.idx)
    torch.testing.assert_close(out64.z_q.float(), out32.z_q)
