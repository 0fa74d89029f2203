"""The small-batch decode kernels against the GPT module path's arithmetic.

Numerics run on CUDA (``pytest -m gpu``) or, with ``TRITON_INTERPRET=1`` set before the run, in Triton's CPU
interpreter; without the ``triton`` package (CPU installs) only the error paths are checked."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vfmtok.generator.gpt import apply_rope, rms_norm
from vfmtok.ops import decode_triton as mod

pytestmark = pytest.mark.usefixtures("one_thread")

needs_triton = pytest.mark.skipif(not mod.triton_available(), reason="triton is not installed")
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="set TRITON_INTERPRET=1 to run on CPU")


def _check_kernels(device: str, dtype: torch.dtype, m: int, d: int, n_head: int, ffn: int, atol: float) -> None:
    g = torch.Generator().manual_seed(m)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    head_dim, s_max, pos, eps = d // n_head, 12, 7, 1e-5
    x, norm_w = rand(m, d), 1 + rand(d, scale=0.1)
    wqkv, wo = rand(3 * d, d, scale=d**-0.5), rand(d, d, scale=d**-0.5)
    w1, w3, w2 = rand(ffn, d, scale=d**-0.5), rand(ffn, d, scale=d**-0.5), rand(d, ffn, scale=ffn**-0.5)
    angles = torch.rand(head_dim // 2, generator=g) * 6
    rope = torch.stack([angles.cos(), angles.sin()], -1).to(device)
    k_cache, v_cache = rand(m, n_head, s_max, head_dim), rand(m, n_head, s_max, head_dim)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()

    # module path: RMSNorm, wqkv, RoPE, cache write
    qkv = F.linear(rms_norm(x, norm_w, eps), wqkv)[:, None]  # (M, 1, 3D)
    qk = apply_rope(qkv[..., : 2 * d].view(m, 1, 2 * n_head, head_dim), rope[None])
    q_ref, k_new = qk.transpose(1, 2).split(n_head, dim=1)  # (M, H, 1, Dh)
    k_ref[:, :, pos] = k_new[:, :, 0]
    v_ref[:, :, pos] = qkv[..., 2 * d :].view(m, n_head, head_dim)
    q = torch.empty(m, n_head, head_dim, device=device, dtype=dtype)
    mod.norm_qkv_rope(x, norm_w, wqkv, rope, q, k_cache, v_cache, pos, eps)
    torch.testing.assert_close(q, q_ref[:, :, 0], atol=atol, rtol=atol)
    torch.testing.assert_close(k_cache, k_ref, atol=atol, rtol=atol)
    torch.testing.assert_close(v_cache, v_ref, atol=atol, rtol=atol)

    # attention over the filled prefix [0, pos]
    for length in (1, pos + 1):
        ref = F.scaled_dot_product_attention(q_ref, k_ref[:, :, :length], v_ref[:, :, :length])[:, :, 0]
        out = mod.decode_attention(q_ref[:, :, 0].contiguous(), k_ref, v_ref, length, torch.empty_like(q))
        torch.testing.assert_close(out, ref, atol=atol, rtol=atol)

    # wo + residual, RMSNorm + SwiGLU, w2 + residual, RMSNorm + output head (float32 logits)
    a = rand(m, d)
    h = mod.gemv(a, wo, torch.empty_like(x), residual=x)
    torch.testing.assert_close(h, x + F.linear(a, wo), atol=atol, rtol=atol)
    y = rms_norm(h, norm_w, eps)
    act = mod.norm_swiglu(h, norm_w, w1, w3, torch.empty(m, ffn, device=device, dtype=dtype), eps)
    torch.testing.assert_close(act, F.silu(F.linear(y, w1)) * F.linear(y, w3), atol=atol, rtol=atol)
    out = mod.gemv(act, w2, torch.empty_like(x), residual=h)
    torch.testing.assert_close(out, h + F.linear(act, w2), atol=atol, rtol=atol)
    logits = mod.gemv(out, wo, torch.empty(m, d, device=device), norm_weight=norm_w, eps=eps)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, F.linear(rms_norm(out, norm_w, eps), wo).float(), atol=atol, rtol=atol)


@needs_triton
@interpreted
@pytest.mark.parametrize(("m", "ffn"), [(1, 56), (3, 56), (1, 200)])
def test_interpreted_kernels_equal_module_path_on_cpu(m: int, ffn: int) -> None:
    # sizes that are not multiples of the tiles (16 columns in the interpreter): masks on every edge; 3 and 4
    # column blocks; ffn=200: wider column blocks (at most four per row)
    _check_kernels("cpu", torch.float32, m, d=40, n_head=5, ffn=ffn, atol=1e-5)


@needs_triton
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_equal_module_path_on_cuda(m: int, dtype: torch.dtype) -> None:
    # the GPT-XXL widths; bf16 differs from cuBLAS only in the products' summation order (one bf16 rounding step)
    _check_kernels("cuda", dtype, m, d=1536, n_head=24, ffn=4096, atol=1e-4 if dtype == torch.float32 else 2e-2)


def _check_split_attention(device: str, dtype: torch.dtype, m: int, n_head: int, head_dim: int, s_max: int,
                           lengths: tuple[int, ...], splits: tuple, atol: float) -> None:
    """split_attention against SDPA over the filled prefix, q and out as the fast decoder passes them (strided
    views); NaN-poisoned outputs, so that every element must be written."""
    g = torch.Generator().manual_seed(m * 7 + head_dim)
    k, v = (torch.randn(m, n_head, s_max, head_dim, generator=g).to(device, dtype) for _ in range(2))
    qkv = torch.randn(m, 1, 2 * n_head, head_dim, generator=g).to(device, dtype)
    q = qkv.transpose(1, 2)[:, :n_head]  # (M, H, 1, Dh), strided like the decoder's q
    for length in lengths:
        ref = F.scaled_dot_product_attention(q.float(), k[:, :, :length].float(), v[:, :, :length].float())
        for n_splits in splits:
            buf = torch.full((m, 1, n_head, head_dim), float("nan"), device=device, dtype=dtype)
            out = mod.split_attention(q[:, :, 0], k, v, length, buf[:, 0], splits=n_splits)
            assert out.data_ptr() == buf.data_ptr()
            torch.testing.assert_close(buf.transpose(1, 2).float(), ref, atol=atol, rtol=atol,
                                       msg=lambda e: f"length {length}, splits {n_splits}: {e}")


@needs_triton
@interpreted
@pytest.mark.parametrize("stages", [0, 2])
def test_interpreted_split_attention_equals_sdpa_on_cpu(monkeypatch, stages: int) -> None:
    # 4 positions per block in the interpreter: lengths of one position, one block, and several partial blocks;
    # one split (direct store), several (combine pass), and the automatic choice; the block loop unrolled or as a
    # pipelined loop
    monkeypatch.setattr(mod, "SPLIT_STAGES", stages)
    _check_split_attention("cpu", torch.float32, 3, 2, 12, 23, lengths=(1, 4, 23), splits=(None, 1, 2), atol=1e-5)
    _check_split_attention("cpu", torch.float32, 1, 3, 16, 23, lengths=(17,), splits=(None, 3, 5), atol=1e-5)
    assert mod.attention_splits(programs=24, length=257, sms=132, block_l=64) == (5, 1)  # batch 1: spread out
    assert mod.attention_splits(programs=896 * 24, length=257, sms=132, block_l=64) == (1, 5)  # no combine pass


@needs_triton
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 7, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stages", [0, 3])
def test_split_attention_equals_sdpa_on_cuda(monkeypatch, m: int, dtype: torch.dtype, stages: int) -> None:
    # the GPT-XXL head shape and cache length (257 positions); 512 rows: one split per (row, head)
    monkeypatch.setattr(mod, "SPLIT_STAGES", stages)
    atol = 1e-5 if dtype == torch.float32 else 1e-2
    _check_split_attention("cuda", dtype, m, 24, 64, 257, lengths=(1, 64, 130, 257), splits=(None, 1, 3), atol=atol)


def test_errors_name_the_problem() -> None:
    x = torch.zeros(2, 8)
    if not mod.triton_available():
        with pytest.raises(ImportError, match="triton"):
            mod.gemv(x, torch.zeros(4, 8), torch.zeros(2, 4))
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="CUDA"):
            mod.gemv(x, torch.zeros(4, 8), torch.zeros(2, 4))
        return
    with pytest.raises(ValueError, match="rows"):
        mod.gemv(torch.zeros(mod.MAX_ROWS + 1, 8), torch.zeros(4, 8), torch.zeros(mod.MAX_ROWS + 1, 4))
    with pytest.raises(ValueError, match="contiguous"):
        mod.gemv(torch.zeros(8, 2).t(), torch.zeros(4, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="position"):
        mod.norm_qkv_rope(x, torch.ones(8), torch.zeros(24, 8), torch.zeros(2, 2), torch.zeros(2, 2, 4),
                          torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4), pos=3)
    cache = torch.zeros(2, 2, 5, 4)
    with pytest.raises(ValueError, match="length"):
        mod.split_attention(torch.zeros(2, 2, 4), cache, cache, 6, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="must be"):
        mod.split_attention(torch.zeros(2, 3, 4), cache, cache, 5, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="splits"):
        mod.split_attention(torch.zeros(2, 2, 4), cache, cache, 5, torch.zeros(2, 2, 4), splits=0)
