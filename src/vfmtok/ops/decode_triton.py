"""Triton kernels for small-batch GPT decoding: one fused matrix-vector product per sub-layer (CUDA; inference).

At batch 1 a decode step of the LlamaGen GPT streams every weight once, so it is bound by memory bandwidth, and what
keeps it from the bound is kernel count: around each cuBLAS product sit the RMSNorm, RoPE, cache write, residual add
and SwiGLU kernels. Here each sub-layer is one kernel that streams its weight matrix once and does that element-wise
work on the few rows in registers:

- :func:`norm_qkv_rope`: RMSNorm -> ``wqkv`` -> 2-D RoPE on q and k -> q out, k and v written into the KV cache;
- :func:`decode_attention`: one query position over the filled prefix of the cache (online softmax, no mask);
- :func:`gemv`: ``res + x @ W^T`` (``wo``, ``w2``) or ``rmsnorm(x) @ W^T`` (the output head);
- :func:`norm_swiglu`: RMSNorm -> ``silu(x @ w1^T) * (x @ w3^T)``.

A layer is four products and one attention: five kernels. Each program loads its weight rows first, since they do not
depend on the previous kernel; on Hopper GPUs the kernels are launched as programmatic dependent launches, so those
loads overlap the previous kernel's end, and only then wait (``gdc_wait``) for the activations.

For large batches, where the layer's products are cuBLAS's, :func:`split_attention` is the flash-decoding attention
between them: one query per (row, head) over the filled prefix, split along the sequence until every multiprocessor
has work, then a combine pass (one split per (row, head), and no combine pass, once the rows alone fill the GPU).

Products accumulate in float32 and are rounded to the model dtype before the RoPE, residual add or SwiGLU that follows,
as ``F.linear`` rounds its output (:mod:`vfmtok.generator.gpt`). RMSNorm is folded into the product: the sum of squares
is taken from the same x blocks, and ``1/rms`` scales the product's float32 result, ``(x * g) @ W^T / rms(x)``, where
the module path rounds ``x / rms(x)`` and its product with ``g`` to the model dtype first; in float32 the two agree to
rounding error (tested), in bf16 to about one bf16 rounding step of the normalised input.

Rows are the batch (x2 under classifier-free guidance); the kernels keep all of them in registers, so they serve up
to :data:`MAX_ROWS` rows; larger batches are compute-shaped and belong to cuBLAS. Needs the ``triton`` package (it
comes with PyTorch's CUDA wheels) and CUDA tensors; ``TRITON_INTERPRET=1`` set before import runs the kernels on CPU
tensors in Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the decoder's PyTorch path serves there
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as triton.jit itself does

MAX_ROWS = 8
"""Most rows the matrix-vector kernels take (they hold every row's partial sums in registers)."""


def triton_available() -> bool:
    """True when the kernels can run here (``triton`` importable)."""
    return triton is not None


USE_PDL = True
"""Launch the kernels as programmatic dependent launches on Hopper and newer GPUs (a switch for measurements)."""

ATTENTION_WARPS = 8
"""Warps per program of the attention kernel (a switch for measurements)."""


def in_step_filter(kind: str, k: int, candidates: list) -> list:
    """The default narrowing of the tile candidates: 4 outputs per program, with 4 warps where a program of 4 warps
    can take the largest column block (whole rows up to 2048 columns), else any warps; the autotuner picks among what
    is left.

    Timed alone, Triton's autotuner prefers 1-2 outputs per program and often 8 warps; in the decode step, where each
    kernel loads its weights while the previous one finishes, 4 outputs, 4 warps and whole rows were fastest at batch
    1 (GPT-XXL, H100: 1.510 ms per step against 1.561-1.633 for the other policies; bench/decode_tiles.py,
    docs/results/performance.md).
    """
    four = [c for c in candidates if c.kwargs["BLOCK_N"] == 4]
    whole_rows = [c for c in four if c.num_warps == 4 and c.kwargs["BLOCK_K"] >= min(k, 2048)]
    if whole_rows:
        return [c for c in four if c.num_warps == 4]
    return four or candidates


CONFIG_FILTER = in_step_filter
"""``f(kind, k, candidates) -> candidates`` narrowing the tiles the autotuner tries (``kind``: ``"gemv"``,
``"swiglu"`` or ``"qkv"``; ``k``: the columns); bench/decode_tiles.py swaps it to compare tile policies. Call
:func:`clear_kernel_cache` after changing it."""


def _configs(rows_block: int, kind: str, k: int) -> list:
    """Tile candidates: (BLOCK_N outputs, BLOCK_K columns, warps).

    A program holds all its weights in registers (loaded before it waits for the previous kernel), in at most four
    column blocks of BLOCK_K, within 64 registers per thread; the float32 product of one block is reduced at once."""
    if _INTERPRET:  # one small configuration (autotuning there would only cost time), at most four column blocks
        return [triton.Config({"BLOCK_N": 4, "BLOCK_K": max(16, triton.next_power_of_2(-(-k // 4)))}, num_warps=1)]
    pairs = kind != "gemv"
    out = []
    whole = triton.next_power_of_2(k)  # one block (small widths: the only candidate)
    for warps in (4, 8):
        for bn in (1, 2, 4, 8, 16):
            for bk in sorted({b for b in (256, 512, 1024, 2048) if b < whole} | {min(whole, 2048)}):
                padded = -(-k // bk) * bk
                # one whole (padded) row, or at most four blocks with under half a block of padding
                blocks_ok = bk == whole or (k <= 4 * bk and padded - k < bk // 2)
                weights_fit = bn * padded * (2 if pairs else 1) <= 128 * 32 * warps  # <= 64 registers per thread
                product_fits = rows_block * bn * bk <= 64 * 32 * warps  # one block's float32 product
                if blocks_ok and weights_fit and product_fits:
                    out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps))
    if not out:
        raise ValueError(f"no tile of the decode kernels fits rows={rows_block}, K={k} (at most 4 column blocks of up "
                         "to 2048 and 64 registers per thread); use FastDecoder(kernels='torch')")
    if CONFIG_FILTER is not None:
        out = list(CONFIG_FILTER(kind, k, out))
        if not out:
            raise ValueError(f"CONFIG_FILTER left no tile for the {kind} kernel at K={k}")
    return out


if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    @triton.jit
    def _program_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's rows (all M, padded to BLOCK_M) and its BLOCK_N outputs, with their masks."""
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        return offs_m, offs_m < M, offs_n, offs_n < N

    @triton.jit
    def _load_block(wa_ptr, wb_ptr, g_ptr, rows, mask_n, k0: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr,
                    PAIR: tl.constexpr, BLOCK_K: tl.constexpr):
        """Column block [k0, k0 + BLOCK_K) of the weight rows of Wa (and Wb under PAIR, else Wa's again) and of the
        norm weight g as float32 (under NORM, else 1): ``rows`` are (BLOCK_N, 1) row offsets."""
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = mask_n[:, None] & (offs_k < K)[None, :]
        a = tl.load(wa_ptr + rows + offs_k[None, :], mask=mask, other=0.0)
        b = a
        if PAIR:
            b = tl.load(wb_ptr + rows + offs_k[None, :], mask=mask, other=0.0)
        g = tl.full([BLOCK_K], 1.0, dtype=tl.float32)
        if NORM:
            g = tl.load(g_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        return a, b, g

    @triton.jit
    def _accumulate(x_ptr, offs_m, mask_m, a, b, g, acc_a, acc_b, ss, k0: tl.constexpr, K: tl.constexpr,
                    PAIR: tl.constexpr, BLOCK_K: tl.constexpr):
        """Add column block k0's share: ``acc_a += (x * g) @ a^T`` (and ``acc_b`` with b under PAIR), ``ss += x^2``
        summed over the block; x is read here, after the wait."""
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_m[:, None] & (offs_k < K)[None, :],
                    other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_K)
        ss += tl.sum(x * x, axis=1)
        x = x * g[None, :]
        acc_a += tl.sum(x[:, None, :] * a.to(tl.float32)[None, :, :], axis=2)
        if PAIR:
            acc_b += tl.sum(x[:, None, :] * b.to(tl.float32)[None, :, :], axis=2)
        return acc_a, acc_b, ss

    @triton.jit
    def _prefetched_product(
        x_ptr, g_ptr, wa_ptr, wb_ptr, rows, offs_m, mask_m, mask_n, K: tl.constexpr, NORM: tl.constexpr,
        PAIR: tl.constexpr, PDL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """``x @ Wa[rows]^T`` (and ``x @ Wb[rows]^T`` under PAIR), x scaled by the norm weight g under NORM, with the
        rows' sums of squares of x: ((BLOCK_M, BLOCK_N), (BLOCK_M, BLOCK_N), (BLOCK_M,)) float32.

        Every weight block (K <= 4 BLOCK_K; Triton keeps no list of tensors, hence the four spelled-out blocks) and
        the norm weight are loaded first; then, under PDL, the program waits for the previous kernel (``gdc_wait``)
        before it reads x."""
        tl.static_assert(K <= 4 * BLOCK_K, "the products take at most four column blocks")
        a0, b0, g0 = _load_block(wa_ptr, wb_ptr, g_ptr, rows, mask_n, 0, K, NORM, PAIR, BLOCK_K)
        if K > BLOCK_K:
            a1, b1, g1 = _load_block(wa_ptr, wb_ptr, g_ptr, rows, mask_n, BLOCK_K, K, NORM, PAIR, BLOCK_K)
        if K > 2 * BLOCK_K:
            a2, b2, g2 = _load_block(wa_ptr, wb_ptr, g_ptr, rows, mask_n, 2 * BLOCK_K, K, NORM, PAIR, BLOCK_K)
        if K > 3 * BLOCK_K:
            a3, b3, g3 = _load_block(wa_ptr, wb_ptr, g_ptr, rows, mask_n, 3 * BLOCK_K, K, NORM, PAIR, BLOCK_K)
        if PDL:
            gdc_wait()  # the previous kernel's outputs are visible from here on
        acc_a = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        ss = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc_a, acc_b, ss = _accumulate(x_ptr, offs_m, mask_m, a0, b0, g0, acc_a, acc_b, ss, 0, K, PAIR, BLOCK_K)
        if K > BLOCK_K:
            acc_a, acc_b, ss = _accumulate(x_ptr, offs_m, mask_m, a1, b1, g1, acc_a, acc_b, ss, BLOCK_K, K, PAIR,
                                           BLOCK_K)
        if K > 2 * BLOCK_K:
            acc_a, acc_b, ss = _accumulate(x_ptr, offs_m, mask_m, a2, b2, g2, acc_a, acc_b, ss, 2 * BLOCK_K, K, PAIR,
                                           BLOCK_K)
        if K > 3 * BLOCK_K:
            acc_a, acc_b, ss = _accumulate(x_ptr, offs_m, mask_m, a3, b3, g3, acc_a, acc_b, ss, 3 * BLOCK_K, K, PAIR,
                                           BLOCK_K)
        return acc_a, acc_b, ss

    @triton.jit
    def _gemv_kernel(
        x_ptr, g_ptr, w_ptr, res_ptr, out_ptr, M, N, K: tl.constexpr, eps,
        NORM: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """out[m, n] = res[m, n] + (x[m] @ W[n]) or (rmsnorm(x[m]) @ W[n]); one program per BLOCK_N outputs."""
        if PDL:
            gdc_launch_dependents()
        offs_m, mask_m, offs_n, mask_n = _program_tile(M, N, BLOCK_M, BLOCK_N)
        rows = offs_n.to(tl.int64)[:, None] * K
        y, _, ss = _prefetched_product(x_ptr, g_ptr, w_ptr, w_ptr, rows, offs_m, mask_m, mask_n, K, NORM, False, PDL,
                                       BLOCK_M, BLOCK_N, BLOCK_K)
        if NORM:
            y = y / tl.sqrt(ss / K + eps)[:, None]
        y = y.to(w_ptr.dtype.element_ty).to(tl.float32)  # F.linear's output rounding
        out_offs = offs_m[:, None] * N + offs_n[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        if RESIDUAL:
            y += tl.load(res_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_kernel(
        x_ptr, g_ptr, w1_ptr, w3_ptr, out_ptr, M, N, K: tl.constexpr, eps,
        PDL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """out[m, n] = silu(y[m] @ w1[n]) * (y[m] @ w3[n]) with y = rmsnorm(x); rounded as the module path."""
        if PDL:
            gdc_launch_dependents()
        offs_m, mask_m, offs_n, mask_n = _program_tile(M, N, BLOCK_M, BLOCK_N)
        rows = offs_n.to(tl.int64)[:, None] * K
        a, b, ss = _prefetched_product(x_ptr, g_ptr, w1_ptr, w3_ptr, rows, offs_m, mask_m, mask_n, K, True, True, PDL,
                                       BLOCK_M, BLOCK_N, BLOCK_K)
        rstd = (1.0 / tl.sqrt(ss / K + eps))[:, None]
        dtype = w1_ptr.dtype.element_ty
        a = (a * rstd).to(dtype).to(tl.float32)
        b = (b * rstd).to(dtype).to(tl.float32)
        s = (a / (1.0 + tl.exp(-a))).to(dtype).to(tl.float32)  # F.silu, rounded
        out_offs = offs_m[:, None] * N + offs_n[None, :]
        tl.store(out_ptr + out_offs, (s * b).to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit(do_not_specialize=["pos"])  # one compilation for every position
    def _qkv_rope_kernel(
        x_ptr, g_ptr, w_ptr, rope_ptr, q_ptr, k_ptr, v_ptr, M, D: tl.constexpr, eps, pos, stride_cm, stride_ch,
        HEAD_DIM: tl.constexpr, PDL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """qkv = rmsnorm(x) @ wqkv^T for BLOCK_N interleaved pairs of outputs; RoPE on the q and k pairs; q stored
        at ``q[m, c]``, k and v at ``cache[m, head, pos, d]`` (cache strides (stride_cm, stride_ch, HEAD_DIM, 1))."""
        if PDL:
            gdc_launch_dependents()
        offs_m, mask_m, pairs, mask_n = _program_tile(M, (3 * D) // 2, BLOCK_M, BLOCK_N)  # pair j: columns 2j, 2j+1
        rows = (2 * pairs).to(tl.int64)[:, None] * D
        a0, a1, ss = _prefetched_product(x_ptr, g_ptr, w_ptr, w_ptr + D, rows, offs_m, mask_m, mask_n, D, True, True,
                                         PDL, BLOCK_M, BLOCK_N, BLOCK_K)
        rstd = (1.0 / tl.sqrt(ss / D + eps))[:, None]
        dtype = w_ptr.dtype.element_ty
        a0 = (a0 * rstd).to(dtype).to(tl.float32)  # (BLOCK_M, BLOCK_N), rounded as F.linear's output
        a1 = (a1 * rstd).to(dtype).to(tl.float32)
        col = 2 * pairs  # even column of the pair in [0, 3D)
        part = col // D  # 0 = q, 1 = k, 2 = v
        c = col % D  # = head * HEAD_DIM + d
        i = (c % HEAD_DIM) // 2
        cos = tl.load(rope_ptr + 2 * i, mask=mask_n, other=1.0).to(tl.float32)[None, :]
        sin = tl.load(rope_ptr + 2 * i + 1, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        rot = (part < 2)[None, :]
        r0 = tl.where(rot, a0 * cos - a1 * sin, a0).to(dtype)
        r1 = tl.where(rot, a1 * cos + a0 * sin, a1).to(dtype)
        mask = mask_m[:, None] & mask_n[None, :]
        q_offs = offs_m[:, None] * D + c[None, :]
        tl.store(q_ptr + q_offs, r0, mask=mask & (part == 0)[None, :])
        tl.store(q_ptr + q_offs + 1, r1, mask=mask & (part == 0)[None, :])
        head = c // HEAD_DIM
        cache_offs = (offs_m.to(tl.int64)[:, None] * stride_cm + head[None, :] * stride_ch + pos * HEAD_DIM
                      + (c % HEAD_DIM)[None, :])
        tl.store(k_ptr + cache_offs, r0, mask=mask & (part == 1)[None, :])
        tl.store(k_ptr + cache_offs + 1, r1, mask=mask & (part == 1)[None, :])
        tl.store(v_ptr + cache_offs, r0, mask=mask & (part == 2)[None, :])
        tl.store(v_ptr + cache_offs + 1, r1, mask=mask & (part == 2)[None, :])

    @triton.jit(do_not_specialize=["length"])
    def _attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, length, scale, H, stride_cm, stride_ch,
        S_MAX: tl.constexpr, HEAD_DIM: tl.constexpr, PDL: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
    ):
        """One program per (row, head): softmax(q k^T * scale) v over the cache positions [0, length).

        The keys and values of the earlier positions (written by earlier steps) of the first block are loaded before
        the wait for the previous kernel, which writes position ``length - 1``. The loop runs to the cache length
        S_MAX and skips the blocks past ``length``: a loop bound known at compile time (Triton's interpreter cannot
        take a run-time bound under NumPy >= 2.3) costs a compare per empty block."""
        if PDL:
            gdc_launch_dependents()
        pid = tl.program_id(0)
        m = pid // H
        h = pid % H
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        base = m.to(tl.int64) * stride_cm + h * stride_ch
        last = length - 1
        offs_0 = tl.arange(0, BLOCK_L)
        earlier = ((offs_0 < last)[:, None] & mask_d[None, :])
        k_0 = tl.load(k_ptr + base + offs_0[:, None] * HEAD_DIM + offs_d[None, :], mask=earlier, other=0.0)
        v_0 = tl.load(v_ptr + base + offs_0[:, None] * HEAD_DIM + offs_d[None, :], mask=earlier, other=0.0)
        if PDL:
            gdc_wait()
        q = tl.load(q_ptr + pid * HEAD_DIM + offs_d, mask=mask_d, other=0.0).to(tl.float32) * scale
        k_last = tl.load(k_ptr + base + last * HEAD_DIM + offs_d, mask=mask_d, other=0.0)
        v_last = tl.load(v_ptr + base + last * HEAD_DIM + offs_d, mask=mask_d, other=0.0)
        m_i = tl.full([1], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([1], dtype=tl.float32)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for s0 in tl.static_range(0, S_MAX, BLOCK_L):
            if s0 < length:
                offs_s = s0 + tl.arange(0, BLOCK_L)
                mask_s = offs_s < length
                is_last = (offs_s == last)[:, None]
                if s0 == 0:
                    k = tl.where(is_last, k_last[None, :], k_0).to(tl.float32)
                    v = tl.where(is_last, v_last[None, :], v_0).to(tl.float32)
                else:
                    offs = base + offs_s[:, None] * HEAD_DIM + offs_d[None, :]
                    kv_mask = mask_s[:, None] & mask_d[None, :]
                    k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
                    v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
                s = tl.where(mask_s, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_L,)
                m_new = tl.maximum(m_i, tl.max(s, axis=0))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new)
                l_i = l_i * alpha + tl.sum(p, axis=0)
                acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
                m_i = m_new
        out = acc / l_i
        tl.store(out_ptr + pid * HEAD_DIM + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)

    @triton.jit
    def _attend_block(q, k_ptr, v_ptr, base, offs_s, offs_d, mask_d, length, m_i, l_i, acc, HEAD_DIM: tl.constexpr):
        """Online-softmax update of (m_i, l_i, acc) with the cache positions offs_s (those below length)."""
        mask_s = offs_s < length
        offs = base + offs_s[:, None] * HEAD_DIM + offs_d[None, :]
        kv_mask = mask_s[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)  # (BLOCK_L, BLOCK_D)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.where(mask_s, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_L,)
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        return m_new, l_i, acc

    @triton.jit
    def _split_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, length, scale, H, stride_qm, stride_qh, stride_om, stride_oh,
        stride_cm, stride_ch, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
        BLOCKS: tl.constexpr, DIRECT: tl.constexpr, STAGES: tl.constexpr,
    ):
        """Program (row * H + head, split): softmax attention of one query over the cache positions
        ``[split * BLOCKS * BLOCK_L, ...)`` below ``length``, BLOCKS blocks of BLOCK_L positions.

        DIRECT (one split): the normalised output is stored at ``out[row, head]``. Otherwise the split's running max
        m, its sum of exponentials l and the unnormalised float32 sum ``acc`` go to ``part[row * H + head, split]``
        as ``[acc (BLOCK_D), m, l]`` for :func:`_combine_kernel`. Every split holds at least one position (the host
        takes ``cdiv(length, BLOCKS * BLOCK_L)`` splits), so m is finite after the first block. STAGES = 0: the
        block loop unrolled; else a loop software-pipelined STAGES deep (the next blocks' loads in flight)."""
        pid = tl.program_id(0)
        split = tl.program_id(1)
        m = pid // H
        h = pid % H
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        q = tl.load(q_ptr + m * stride_qm + h * stride_qh + offs_d, mask=mask_d, other=0.0).to(tl.float32) * scale
        base = m.to(tl.int64) * stride_cm + h * stride_ch
        start = split * (BLOCKS * BLOCK_L)
        m_i = tl.max(tl.full([BLOCK_L], float("-inf"), dtype=tl.float32), axis=0)
        l_i = tl.sum(tl.zeros([BLOCK_L], dtype=tl.float32), axis=0)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        if STAGES == 0:
            for b in tl.static_range(BLOCKS):
                offs_s = start + b * BLOCK_L + tl.arange(0, BLOCK_L)
                m_i, l_i, acc = _attend_block(q, k_ptr, v_ptr, base, offs_s, offs_d, mask_d, length, m_i, l_i, acc,
                                              HEAD_DIM)
        else:
            for b in tl.range(0, BLOCKS, num_stages=STAGES):
                offs_s = start + b * BLOCK_L + tl.arange(0, BLOCK_L)
                m_i, l_i, acc = _attend_block(q, k_ptr, v_ptr, base, offs_s, offs_d, mask_d, length, m_i, l_i, acc,
                                              HEAD_DIM)
        if DIRECT:
            tl.store(out_ptr + m * stride_om + h * stride_oh + offs_d, (acc / l_i).to(out_ptr.dtype.element_ty),
                     mask=mask_d)
        else:
            part = part_ptr + (pid.to(tl.int64) * tl.num_programs(1) + split) * (BLOCK_D + 2)
            tl.store(part + offs_d, acc)
            tl.store(part + BLOCK_D, m_i)
            tl.store(part + BLOCK_D + 1, l_i)

    @triton.jit
    def _combine_kernel(
        part_ptr, out_ptr, splits, H, stride_om, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        """Program row * H + head: merge its ``splits`` partial softmax sums, ``sum_s e^(m_s - M) acc_s /
        sum_s e^(m_s - M) l_s`` with M the largest m_s, and store the output."""
        pid = tl.program_id(0)
        m = pid // H
        h = pid % H
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, BLOCK_D)
        mask_s = offs_s < splits
        base = part_ptr + (pid.to(tl.int64) * splits + offs_s) * (BLOCK_D + 2)  # (BLOCK_S,)
        m_s = tl.load(base + BLOCK_D, mask=mask_s, other=float("-inf"))
        l_s = tl.load(base + BLOCK_D + 1, mask=mask_s, other=0.0)
        acc = tl.load(base[:, None] + offs_d[None, :], mask=mask_s[:, None], other=0.0)  # (BLOCK_S, BLOCK_D)
        w = tl.where(mask_s, tl.exp(m_s - tl.max(m_s, axis=0)), 0.0)
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l_s, axis=0)
        tl.store(out_ptr + m * stride_om + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
                 mask=offs_d < HEAD_DIM)

    _KEY = ["M", "N", "K"]
    _gemv_kernels = {}
    _swiglu_kernels = {}
    _qkv_kernels = {}

    def _tuned(cache: dict, fn, rows_block: int, kind: str, k: int, key: list[str]):
        """The autotuned kernel of ``fn`` for ``rows_block`` rows and k columns (the configs depend on them)."""
        if (rows_block, k) not in cache:
            cache[rows_block, k] = triton.autotune(configs=_configs(rows_block, kind, k), key=key)(fn)
        return cache[rows_block, k]


def clear_kernel_cache() -> None:
    """Forget the tuned kernels (the next call re-tunes them, e.g. after setting :data:`CONFIG_FILTER`)."""
    if triton is not None:
        for cache in (_gemv_kernels, _swiglu_kernels, _qkv_kernels):
            cache.clear()


def _check(*tensors: Tensor) -> None:
    if triton is None:
        raise ImportError("the decode kernels need the `triton` package (it comes with PyTorch's CUDA wheels); "
                          "use FastDecoder(kernels='torch') without it")
    for t in tensors:
        if not t.is_cuda and not _INTERPRET:
            raise ValueError(f"the decode kernels run on CUDA tensors (got {t.device}); set TRITON_INTERPRET=1 before "
                             "importing vfmtok.ops.decode_triton to run them on CPU in Triton's interpreter")
        if not t.is_contiguous():
            raise ValueError(f"the decode kernels take contiguous tensors (got strides {t.stride()})")


def _rows_block(m: int) -> int:
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"the decode kernels take 1..{MAX_ROWS} rows (got {m}); larger batches use cuBLAS")
    return triton.next_power_of_2(m)


_PDL_DEVICES: dict[int, bool] = {}


def _launch(t: Tensor) -> dict:
    """Launch options: programmatic dependent launch on Hopper and newer GPUs (each kernel loads its weights while the
    previous kernel finishes, then waits for that kernel's outputs with ``gdc_wait``); none elsewhere."""
    if not t.is_cuda or not USE_PDL:
        return {"PDL": False}
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _PDL_DEVICES:
        _PDL_DEVICES[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return {"PDL": True, "launch_pdl": True} if _PDL_DEVICES[index] else {"PDL": False}


def gemv(x: Tensor, weight: Tensor, out: Tensor, *, residual: Tensor | None = None, norm_weight: Tensor | None = None,
         eps: float = 1e-5) -> Tensor:
    """``out = residual + x @ weight^T`` or ``out = rmsnorm(x) * norm_weight @ weight^T``.

    Args:
        x: (M, K) rows (M <= MAX_ROWS) in the weight's dtype.
        weight: (N, K).
        out: (M, N), written (any float dtype: the output head writes float32 logits of the rounded product).
        residual: (M, N) added after the product's rounding (``wo``, ``w2``); not with ``norm_weight``.
        norm_weight: (K,) RMSNorm weight applied to x first (the output head); eps its epsilon.

    Returns:
        ``out``.
    """
    if residual is not None and norm_weight is not None:
        raise ValueError("gemv takes a residual or a norm weight, not both")
    _check(x, weight, out, *(t for t in (residual, norm_weight) if t is not None))
    m, k = x.shape
    n = weight.shape[0]
    bm = _rows_block(m)
    kernel = _tuned(_gemv_kernels, _gemv_kernel, bm, "gemv", k, _KEY)
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, norm_weight if norm_weight is not None else x, weight, residual if residual is not None else x, out,
        m, n, k, eps, NORM=norm_weight is not None, RESIDUAL=residual is not None, BLOCK_M=bm, **_launch(x),
    )
    return out


def norm_swiglu(x: Tensor, norm_weight: Tensor, w1: Tensor, w3: Tensor, out: Tensor, eps: float = 1e-5) -> Tensor:
    """``out = silu(y @ w1^T) * (y @ w3^T)`` with ``y = rmsnorm(x) * norm_weight``.

    Args:
        x: (M, K); norm_weight: (K,); w1, w3: (N, K); out: (M, N) in the weights' dtype.
    """
    _check(x, norm_weight, w1, w3, out)
    m, k = x.shape
    n = w1.shape[0]
    bm = _rows_block(m)
    kernel = _tuned(_swiglu_kernels, _swiglu_kernel, bm, "swiglu", k, _KEY)
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, norm_weight, w1, w3, out, m, n, k, eps, BLOCK_M=bm, **_launch(x))
    return out


def norm_qkv_rope(
    x: Tensor, norm_weight: Tensor, wqkv: Tensor, rope: Tensor, q_out: Tensor, k_cache: Tensor, v_cache: Tensor,
    pos: int, eps: float = 1e-5,
) -> Tensor:
    """RMSNorm, ``wqkv``, RoPE on q and k, K/V written into the cache at ``pos``.

    Args:
        x: (M, D) layer input; norm_weight: (D,); wqkv: (3D, D) rows ordered q, k, v (head-major within each).
        rope: (Dh / 2, 2) cos/sin of position ``pos`` (any float dtype; used in float32).
        q_out: (M, H, Dh) written with the rotated query.
        k_cache, v_cache: (M, H, S_max, Dh), written at ``[:, :, pos]``.

    Returns:
        ``q_out``.
    """
    _check(x, norm_weight, wqkv, rope, q_out, k_cache, v_cache)
    m, d = x.shape
    s_max, head_dim = k_cache.shape[2:]
    if not 0 <= pos < s_max:
        raise ValueError(f"position {pos} outside the cache (length {s_max})")
    bm = _rows_block(m)
    kernel = _tuned(_qkv_kernels, _qkv_rope_kernel, bm, "qkv", d, ["M", "D"])
    kernel[lambda meta: (triton.cdiv(3 * d // 2, meta["BLOCK_N"]),)](
        x, norm_weight, wqkv, rope, q_out, k_cache, v_cache, m, d, eps, pos, k_cache.stride(0), k_cache.stride(1),
        HEAD_DIM=head_dim, BLOCK_M=bm, **_launch(x),
    )
    return q_out


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int, out: Tensor) -> Tensor:
    """Attention of one query position over cache positions ``[0, length)``: (M, H, Dh) -> ``out`` (M, H, Dh).

    Same function as ``F.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length])`` (scale 1/sqrt(Dh),
    no mask), accumulated in float32.
    """
    _check(q, k_cache, v_cache, out)
    m, n_head, s_max, head_dim = k_cache.shape
    if not 1 <= length <= s_max:
        raise ValueError(f"attention length {length} outside the cache (length {s_max})")
    block_d = triton.next_power_of_2(head_dim)
    # one or two blocks at GPT shapes; several in the interpreter, so that the tests cover the loop
    block_l = 4 if _INTERPRET else min(triton.next_power_of_2(s_max), max(16384 // block_d, 16))
    _attention_kernel[(m * n_head,)](
        q, k_cache, v_cache, out, length, head_dim ** -0.5, n_head, k_cache.stride(0), k_cache.stride(1),
        S_MAX=s_max, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=4 if _INTERPRET else ATTENTION_WARPS,
        **_launch(q),
    )
    return out


SPLIT_BLOCK_L = 64
"""Cache positions per block of :func:`split_attention` (a switch for measurements: bench/decode_attention.py)."""

SPLIT_WARPS = 2
"""Warps per program of :func:`split_attention` (a switch for measurements). 64 positions x 2 warps was the fastest
tile on the H200 at 256-896 rows (bench/decode_attention.py; docs/results/performance.md)."""

SPLIT_STAGES = 0
"""Software-pipelining depth of :func:`split_attention`'s block loop (0: unrolled; a switch for measurements)."""

SPLIT_MIN_PROGRAMS = 4
""":func:`split_attention` splits the sequence until there are at least this many programs per multiprocessor."""

_SM_COUNTS: dict[int, int] = {}


def _sm_count(t: Tensor) -> int:
    if not t.is_cuda:
        return 4  # the interpreter: a few, so that the tests split
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def attention_splits(programs: int, length: int, sms: int, block_l: int) -> tuple[int, int]:
    """``(splits, blocks)`` of :func:`split_attention`: ``programs`` (rows x heads) query programs over ``length``
    cache positions, each split ``blocks`` blocks of ``block_l`` positions.

    One split per (row, head) when those fill ``SPLIT_MIN_PROGRAMS`` programs per multiprocessor (large batches:
    no combine pass); otherwise into as many chunks of whole blocks as that needs (a chunk holds at least one block)."""
    total = -(-length // block_l)
    splits = min(total, max(1, -(-SPLIT_MIN_PROGRAMS * sms // programs)))
    blocks = -(-total // splits)
    return -(-total // blocks), blocks


def split_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int, out: Tensor,
                    splits: int | None = None) -> Tensor:
    """Flash-decoding: attention of one query per (row, head) over cache positions ``[0, length)``, split along the
    sequence so that every multiprocessor has work at any batch, then (with more than one split) a combine pass.

    Same function as ``F.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length])`` (scale 1/sqrt(Dh),
    no mask), accumulated in float32; the keys and values are read once, straight from the cache.

    Args:
        q: (M, H, Dh), any strides with a contiguous last dimension (e.g. a view of (M, H, 1, Dh)).
        k_cache, v_cache: (M, H, S_max, Dh) contiguous; CFG's ``[cond; uncond]`` rows are rows like any other.
        length: filled positions, 1 <= length <= S_max.
        out: (M, H, Dh) with a contiguous last dimension (e.g. a (M, 1, H, Dh) buffer transposed, so that the
            output projection reads it without a copy); written.
        splits: split into this many chunks of whole blocks, or as near as the blocks allow (None:
            :func:`attention_splits`; for tests).

    Returns:
        ``out``.
    """
    _check(k_cache, v_cache)
    for t in (q, out):
        if not t.is_cuda and not _INTERPRET:
            _check(t)  # the device error
        if t.dim() != 3 or t.stride(-1) != 1:
            raise ValueError(f"split_attention takes q and out as (M, H, Dh) with unit last stride "
                             f"(got shape {tuple(t.shape)}, strides {t.stride()})")
    m, n_head, s_max, head_dim = k_cache.shape
    if tuple(q.shape) != (m, n_head, head_dim) or tuple(out.shape) != (m, n_head, head_dim):
        raise ValueError(f"split_attention: q {tuple(q.shape)} and out {tuple(out.shape)} must be "
                         f"{(m, n_head, head_dim)} for a cache of shape {tuple(k_cache.shape)}")
    if not 1 <= length <= s_max:
        raise ValueError(f"attention length {length} outside the cache (length {s_max})")
    block_l = 4 if _INTERPRET else SPLIT_BLOCK_L  # small blocks in the interpreter: the tests cover the loops
    total = -(-length // block_l)
    if splits is None:
        splits, blocks = attention_splits(m * n_head, length, _sm_count(k_cache), block_l)
    else:
        if splits < 1:
            raise ValueError(f"splits={splits}: expected at least 1")
        blocks = -(-total // min(splits, total))
        splits = -(-total // blocks)
    block_d = triton.next_power_of_2(head_dim)
    part = out if splits == 1 else torch.empty(m * n_head * splits * (block_d + 2), dtype=torch.float32,
                                               device=out.device)
    warps = 1 if _INTERPRET else SPLIT_WARPS
    _split_attention_kernel[(m * n_head, splits)](
        q, k_cache, v_cache, out, part, length, head_dim ** -0.5, n_head, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), k_cache.stride(0), k_cache.stride(1), HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_L=block_l,
        BLOCKS=blocks, DIRECT=splits == 1, STAGES=SPLIT_STAGES, num_warps=warps,
        **({"num_stages": SPLIT_STAGES} if SPLIT_STAGES and not _INTERPRET else {}),
    )
    if splits > 1:
        _combine_kernel[(m * n_head,)](
            part, out, splits, n_head, out.stride(0), out.stride(1), HEAD_DIM=head_dim, BLOCK_D=block_d,
            BLOCK_S=triton.next_power_of_2(splits), num_warps=warps,
        )
    return out
