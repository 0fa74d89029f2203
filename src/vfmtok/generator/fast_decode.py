"""The fast decode path of :func:`~vfmtok.generator.sampling.sample`: fused layer halves, per-position CUDA graphs.

A decode step of the LlamaGen GPT is memory-bound: it streams every weight once and the filled part of the KV cache
once. What keeps it from that limit is (i) kernel count (the module path launches ~40 small kernels per layer: each
RMSNorm alone is six) and (ii) attention over a full-length cache under a mask, which reads the empty half of the cache
too. :class:`FastDecoder` removes both:

- each layer is two functions, ``_pre`` (residual add, RMSNorm, ``wqkv``, 2-D RoPE, K/V written into the cache) and
  ``_post`` (``wo``, residual, RMSNorm, SwiGLU with ``w1``/``w3`` as one matrix product), compiled once with
  ``torch.compile`` and shared by all layers (the weights are arguments); attention between them runs over the filled
  prefix only, ``cache[:, :, :t + 1]``, with no mask;
- from :data:`SPLIT_ATTENTION_MIN_ROWS` rows on CUDA (``attn_backend="auto"``), the attention is the flash-decoding
  Triton kernel :func:`vfmtok.ops.decode_triton.split_attention` instead of SDPA (it streams the cache prefix at
  86 % of the copy bandwidth inside the H200 step);
- on CUDA, one CUDA graph per position (the class position included) is captured (the prefix length is fixed inside
  each graph), all sharing one memory pool and writing the logits into one static buffer, so a step is one
  ``replay()`` and the host never waits.

The arithmetic is the module path's, op for op (the residual add moves into the next layer's ``_pre``; ``w1``/``w3``
fused is the only change of op and only with ``fuse_w13``): on CPU in fp32 with ``fuse=False`` the tokens equal the
plain path's bit for bit (tested). The per-layer caches are separate tensors so every compiled call sees inputs with
the same layout.

At batch 1 (and a few rows) the step is bound by kernel count rather than bandwidth, and ``kernels="triton"`` replaces
the layer with five kernels of :mod:`vfmtok.ops.decode_triton` (RMSNorm + ``wqkv`` + RoPE + cache write; attention;
``wo`` + residual; RMSNorm + SwiGLU; ``w2`` + residual), each streaming its weights once; ``kernels="auto"`` (the
default) takes them on CUDA GPUs of compute capability 8.0 or newer when Triton is installed and the rows are at most
:data:`TRITON_MAX_ROWS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import decode_triton
from .gpt import GPT, apply_rope, rms_norm

log = logging.getLogger(__name__)

TRITON_MAX_ROWS = 2
"""Most rows for which ``kernels="auto"`` picks the Triton matrix-vector kernels (measured faster than cuBLAS there:
docs/results/performance.md)."""


def _pre(
    h: Tensor, delta: Tensor, norm_w: Tensor, wqkv: Tensor, rope: Tensor, k_cache: Tensor, v_cache: Tensor,
    pos: Tensor, eps: float, n_head: int,
) -> tuple[Tensor, Tensor]:
    """Residual add, attention RMSNorm, ``wqkv``, RoPE, cache write.

    Args:
        h, delta: (B, 1, D) residual stream and the previous layer's FFN output (``h + delta`` is the layer input).
        rope: (1, Dh / 2, 2) cos/sin of the position; k_cache, v_cache: (B, H, S_max, Dh), written at ``pos`` (1,).

    Returns:
        ``x = h + delta`` (B, 1, D) and q (B, H, 1, Dh).
    """
    x = h + delta
    b, s, d = x.shape
    head_dim = d // n_head
    qkv = F.linear(rms_norm(x, norm_w, eps), wqkv)  # (B, 1, 3D)
    qk = apply_rope(qkv[..., : 2 * d].view(b, s, 2 * n_head, head_dim), rope)
    q, k = qk.transpose(1, 2).split(n_head, dim=1)  # (B, H, 1, Dh)
    v = qkv[..., 2 * d :].view(b, s, n_head, head_dim).transpose(1, 2)
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    return x, q


def _post(
    x: Tensor, attn: Tensor, wo: Tensor, norm_w: Tensor, w13: Tensor | None, w1: Tensor, w3: Tensor, w2: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``wo`` + residual, FFN RMSNorm, SwiGLU. attn: (B, H, 1, Dh). Returns ``(h, ffn_out)``, each (B, 1, D)."""
    b, n_head, s, head_dim = attn.shape
    h = x + F.linear(attn.transpose(1, 2).reshape(b, s, n_head * head_dim), wo)
    y = rms_norm(h, norm_w, eps)
    if w13 is None:
        gate, up = F.linear(y, w1), F.linear(y, w3)
    else:
        gate, up = F.linear(y, w13).chunk(2, dim=-1)
    return h, F.linear(F.silu(gate) * up, w2)


def _head(h: Tensor, delta: Tensor, norm_w: Tensor, out_w: Tensor, eps: float) -> Tensor:
    """Final residual add, RMSNorm and output head: (B, 1, D) -> (B, V) float32 logits."""
    return F.linear(rms_norm((h + delta)[:, -1], norm_w, eps), out_w).float()


def _auto_kernels(weight: Tensor, rows: int) -> str:
    """``kernels="auto"``: the Triton kernels on CUDA GPUs of compute capability >= 8.0 (measured on Hopper; the bf16
    code needs Ampere or newer) with Triton installed and at most TRITON_MAX_ROWS rows; else the PyTorch path."""
    usable = (weight.is_cuda and decode_triton.triton_available()
              and torch.cuda.get_device_capability(weight.device) >= (8, 0))
    return "triton" if usable and rows <= TRITON_MAX_ROWS else "torch"


SPLIT_ATTENTION_MIN_ROWS = 768
"""Fewest rows for which ``attn_backend="auto"`` takes the flash-decoding Triton kernel instead of SDPA: measured
faster in the whole step on the H200 at 768 and 896 rows (GPT-XXL; docs/results/performance.md); below, not measured
in the step, and the attention alone was no faster than SDPA at 256 rows over the full prefix."""


def _auto_attention(weight: Tensor, rows: int) -> str | None:
    """``attn_backend="auto"``: ``"triton"`` on CUDA (compute capability >= 8.0, Triton installed) from
    SPLIT_ATTENTION_MIN_ROWS rows, else None (SDPA)."""
    usable = (weight.is_cuda and decode_triton.triton_available()
              and torch.cuda.get_device_capability(weight.device) >= (8, 0))
    return "triton" if usable and rows >= SPLIT_ATTENTION_MIN_ROWS else None


_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}


@dataclass
class _LayerWeights:
    attn_norm: Tensor
    wqkv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    w1: Tensor
    w3: Tensor
    w2: Tensor
    w13: Tensor | None


class FastDecoder:
    """Prefix-KV-cache decoding with fused layer halves and (on CUDA) one CUDA graph per position.

    Args:
        gpt: the model (its parameters are read in place, except ``w1``/``w3`` under ``fuse_w13``, which are copied
            into a fused matrix by :meth:`refresh`; :func:`~vfmtok.generator.sampling.generate` calls it every time).
        rows: rows decoded together (2x the images under CFG).
        fuse: run ``_pre``/``_post``/``_head`` under ``torch.compile`` (one compilation shared by all layers).
        graphs: capture a CUDA graph per position (CUDA only).
        fuse_w13: one ``[w1; w3]`` matrix product instead of two (extra memory: the FFN input weights once more).
        attn_backend: the attention between the layer halves: None (SDPA, PyTorch picks), an SDPA kernel to force
            (``"flash"``, ``"efficient"``, ``"cudnn"``, ``"math"``), ``"triton"``: the flash-decoding kernel
            :func:`vfmtok.ops.decode_triton.split_attention` (one query per row over the filled prefix, split along
            the sequence until every multiprocessor has work; needs Triton and CUDA tensors, or its interpreter), or
            ``"auto"``: ``"triton"`` on CUDA with Triton from :data:`SPLIT_ATTENTION_MIN_ROWS` rows, else None.
        compile_mode: ``torch.compile`` mode of the fused functions (None: default; e.g.
            ``"max-autotune-no-cudagraphs"`` lets Inductor try Triton matrix-product templates with fused epilogues;
            never a cudagraph mode: the graphs are captured here).
        kernels: ``"torch"`` (the fused functions above around cuBLAS products), ``"triton"`` (five Triton kernels per
            layer, :mod:`vfmtok.ops.decode_triton`, for at most ``decode_triton.MAX_ROWS`` rows; ``fuse``,
            ``fuse_w13``, ``attn_backend`` and ``compile_mode`` then do not apply) or ``"auto"``: ``"triton"`` on CUDA
            (compute capability >= 8.0) with Triton installed and at most :data:`TRITON_MAX_ROWS` rows, else
            ``"torch"``; if the Triton kernels fail on their first step (a GPU or Triton version they do not compile
            for), ``"auto"`` logs a warning and takes ``"torch"``.
        streams: with the ``"torch"`` kernels, split the rows into this many groups, each with its own KV cache,
            decoded on its own CUDA stream (forked and joined inside each position's graph), so that one group's
            attention (memory-bound) can overlap another's matrix products (compute-bound); on CPU the groups run one
            after the other (same arithmetic, for tests). 1: one group.

    Usage: ``logits = dec.prefill(labels)``, then ``logits = dec.decode(tokens, t)`` for t = 0 .. n - 2 (token t
    enters at position t + 1). Logits are (rows, V) float32; on the graph path and with the Triton kernels they live in
    a buffer that the next step overwrites.
    """

    def __init__(
        self, gpt: GPT, rows: int, *, fuse: bool = True, graphs: bool = True, fuse_w13: bool = True,
        attn_backend: str | None = "auto", compile_mode: str | None = None, kernels: str = "auto", streams: int = 1,
    ) -> None:
        if not 1 <= streams <= rows:
            raise ValueError(f"streams={streams}: expected 1 <= streams <= rows ({rows})")
        if compile_mode not in (None, "default", "max-autotune-no-cudagraphs"):
            raise ValueError(f"compile_mode {compile_mode!r}: expected None, 'default' or 'max-autotune-no-cudagraphs' "
                             "(no CUDA-graph mode: the decoder captures its own graphs)")
        if attn_backend is not None and attn_backend not in _BACKENDS and attn_backend not in ("triton", "auto"):
            raise ValueError(f"unknown attn_backend {attn_backend!r}; expected None, 'auto', 'triton' or one of "
                             f"{sorted(_BACKENDS)}")
        if attn_backend == "auto":
            attn_backend = _auto_attention(gpt.tok_embeddings.weight, rows)
        if attn_backend == "triton" and not decode_triton.triton_available():
            raise ValueError("attn_backend='triton' needs the `triton` package (it comes with PyTorch's CUDA wheels)")
        if kernels not in ("auto", "torch", "triton"):
            raise ValueError(f"unknown kernels {kernels!r}; expected 'auto', 'torch' or 'triton'")
        self.attn_backend = attn_backend
        c = gpt.config
        weight = gpt.tok_embeddings.weight
        if kernels == "triton" and rows > decode_triton.MAX_ROWS:
            raise ValueError(f"kernels='triton' takes at most {decode_triton.MAX_ROWS} rows (got {rows}); "
                             "use kernels='torch' for larger batches")
        self.kernels = _auto_kernels(weight, rows) if kernels == "auto" else kernels
        self.gpt, self.rows, self.device = gpt, rows, weight.device
        self.graphs = graphs and weight.is_cuda
        self.eps, self.n_head, self.n = c.norm_eps, c.n_head, gpt.num_tokens
        if self.kernels == "triton":
            streams = 1
        # row groups [lo, hi) (one unless streams > 1), each with its own per-layer caches, so that every compiled
        # call sees inputs of one layout
        bounds = [rows * g // streams for g in range(streams + 1)]
        self._groups = list(zip(bounds[:-1], bounds[1:]))
        self._k, self._v, self._attn_out = [], [], []
        for lo, hi in self._groups:
            shape = (hi - lo, c.n_head, 1 + c.block_size, c.head_dim)
            self._k.append([torch.zeros(shape, dtype=weight.dtype, device=self.device) for _ in range(c.n_layer)])
            self._v.append([torch.zeros_like(t) for t in self._k[-1]])
            # attn_backend="triton": the attention output as (rows, 1, H, Dh), so that `wo` reads it without a copy
            self._attn_out.append(torch.empty(hi - lo, 1, c.n_head, c.head_dim, dtype=weight.dtype,
                                              device=self.device))
        self.k, self.v = self._k[0], self._v[0]  # the caches of the first (with one group: every) row
        self._streams = [torch.cuda.Stream(self.device) for _ in self._groups] if streams > 1 and weight.is_cuda else []
        # residual delta of layer 0, per group (each its own tensor, as the caches)
        self._zero = [torch.zeros(hi - lo, 1, c.dim, dtype=weight.dtype, device=self.device)
                      for lo, hi in self._groups]
        # per-position inputs, each its own tensor (same layout for every compiled call)
        self.pos = [torch.tensor([p], device=self.device) for p in range(1 + c.block_size)]
        self.ropes = [gpt.freqs_cis[p : p + 1].clone() for p in range(1 + c.block_size)]
        self._setup_kernels(fuse, fuse_w13, compile_mode)
        if kernels == "auto" and self.kernels == "triton":
            try:  # one step, so that a GPU or Triton version the kernels do not compile for falls back here
                with torch.no_grad():
                    self._forward(gpt.tok_embeddings(torch.zeros(rows, 1, dtype=torch.long, device=self.device)), 1)
            except Exception as e:  # noqa: BLE001 - any failure of the optional kernels: the PyTorch path serves
                log.warning("the Triton decode kernels failed (%s: %s); kernels='auto' falls back to 'torch'",
                            type(e).__name__, e)
                self.kernels = "torch"
                self._setup_kernels(fuse, fuse_w13, compile_mode)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if self.graphs:
            self._capture()

    def _setup_kernels(self, fuse: bool, fuse_w13: bool, compile_mode: str | None) -> None:
        """The per-layer weights and, for ``self.kernels``, the Triton kernels' buffers or the (compiled) functions."""
        gpt, rows, c = self.gpt, self.rows, self.gpt.config
        triton_path = self.kernels == "triton"
        self.layers = [
            _LayerWeights(
                layer.attention_norm.weight, layer.attention.wqkv.weight, layer.attention.wo.weight,
                layer.ffn_norm.weight, layer.feed_forward.w1.weight, layer.feed_forward.w3.weight,
                layer.feed_forward.w2.weight,
                torch.cat([layer.feed_forward.w1.weight, layer.feed_forward.w3.weight])
                if fuse_w13 and not triton_path else None,
            )
            for layer in gpt.layers
        ]
        if triton_path:  # the kernels' outputs, reused every step
            dt = gpt.tok_embeddings.weight.dtype
            self._x = [torch.empty(rows, c.dim, dtype=dt, device=self.device) for _ in range(2)]
            self._h = torch.empty(rows, c.dim, dtype=dt, device=self.device)
            self._q = torch.empty(rows, c.n_head, c.head_dim, dtype=dt, device=self.device)
            self._a = torch.empty_like(self._q)
            ffn = gpt.layers[0].feed_forward.w1.weight.shape[0]
            self._g = torch.empty(rows, ffn, dtype=dt, device=self.device)
            self._logits = torch.empty(rows, c.vocab_size, dtype=torch.float32, device=self.device)
        elif fuse:
            kw = {"fullgraph": True, "dynamic": False, "mode": compile_mode}
            self._pre, self._post, self._head = (torch.compile(f, **kw) for f in (_pre, _post, _head))
        else:
            self._pre, self._post, self._head = _pre, _post, _head

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-copy ``w1``/``w3`` into the fused matrices (after the model's weights changed)."""
        for w in self.layers:
            if w.w13 is not None:
                w.w13[: w.w1.shape[0]].copy_(w.w1)
                w.w13[w.w1.shape[0] :].copy_(w.w3)

    def _forward(self, h: Tensor, p: int) -> Tensor:
        """Run position ``p`` for input embeddings h (rows, 1, D) -> (rows, V) float32 logits."""
        if self.attn_backend is None or self.attn_backend == "triton":
            return self._layers(h, p)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, _BACKENDS[self.attn_backend])):
            return self._layers(h, p)

    def _layers(self, h: Tensor, p: int) -> Tensor:
        if self.kernels == "triton":
            return self._triton_layers(h, p)
        if len(self._groups) == 1:
            return self._group_layers(h, p, 0)
        if not self._streams:  # CPU: the groups one after the other
            return torch.cat([self._group_layers(h[lo:hi], p, g) for g, (lo, hi) in enumerate(self._groups)])
        main = torch.cuda.current_stream(self.device)
        out = []
        for g, ((lo, hi), stream) in enumerate(zip(self._groups, self._streams)):
            stream.wait_stream(main)  # fork: the embeddings are ready
            with torch.cuda.stream(stream):
                out.append(self._group_layers(h[lo:hi], p, g))
        for stream in self._streams:
            main.wait_stream(stream)  # join before the logits are read
        return torch.cat(out)

    def _group_layers(self, h: Tensor, p: int, g: int) -> Tensor:
        """The layers and head for row group g: h (rows_g, 1, D) -> (rows_g, V) float32 logits."""
        delta = self._zero[g]
        rope, pos = self.ropes[p], self.pos[p]
        k, v = self._k[g], self._v[g]
        for i, w in enumerate(self.layers):
            x, q = self._pre(h, delta, w.attn_norm, w.wqkv, rope, k[i], v[i], pos, self.eps, self.n_head)
            attn = self._attention(q, k[i], v[i], p, self._attn_out[g])
            h, delta = self._post(x, attn, w.wo, w.ffn_norm, w.w13, w.w1, w.w3, w.w2, self.eps)
        return self._head(h, delta, self.gpt.norm.weight, self.gpt.output.weight, self.eps)

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, p: int, out: Tensor) -> Tensor:
        """q (rows, H, 1, Dh) over cache positions [0, p] of k, v: (rows, H, 1, Dh) (in ``out`` under "triton")."""
        if self.attn_backend != "triton":
            return F.scaled_dot_product_attention(q, k[:, :, : p + 1], v[:, :, : p + 1])
        q = q[:, :, 0]
        if q.stride(-1) != 1:
            q = q.contiguous()
        decode_triton.split_attention(q, k, v, p + 1, out[:, 0])
        return out.transpose(1, 2)

    def _triton_layers(self, h: Tensor, p: int) -> Tensor:
        """The step as five Triton kernels per layer; h (rows, 1, D) embeddings -> (rows, V) float32 logits."""
        ops, rows, eps = decode_triton, self.rows, self.eps
        x = h.reshape(rows, -1)
        rope = self.ropes[p][0]  # (Dh / 2, 2)
        for i, w in enumerate(self.layers):
            ops.norm_qkv_rope(x, w.attn_norm, w.wqkv, rope, self._q, self.k[i], self.v[i], p, eps)
            ops.decode_attention(self._q, self.k[i], self.v[i], p + 1, self._a)
            ops.gemv(self._a.view(rows, -1), w.wo, self._h, residual=x)
            ops.norm_swiglu(self._h, w.ffn_norm, w.w1, w.w3, self._g, eps)
            x = ops.gemv(self._g, w.w2, self._x[i % 2], residual=self._h)
        return ops.gemv(x, self.gpt.output.weight, self._logits, norm_weight=self.gpt.norm.weight, eps=eps)

    def _capture(self) -> None:
        gpt = self.gpt
        self.codes_in = torch.zeros(self.rows, 1, dtype=torch.long, device=self.device)
        self.prefill_in = torch.zeros(self.rows, 1, gpt.config.dim, dtype=gpt.tok_embeddings.weight.dtype,
                                      device=self.device)  # the class embeddings of position 0
        self.logits_out = torch.empty(self.rows, gpt.config.vocab_size, dtype=torch.float32, device=self.device)
        if self.kernels == "triton":
            self._logits = self.logits_out  # the head kernel writes the graphs' output buffer (no copy)

        def step(p: int) -> Tensor:
            return self._forward(self.prefill_in if p == 0 else gpt.tok_embeddings(self.codes_in), p)

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm up outside capture: compilation, autotuning, cuBLAS/attention init
            for p in (0, 1, self.n - 1):
                step(p)
        torch.cuda.current_stream(self.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        for p in range(self.n):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = step(p)
                if logits is not self.logits_out:  # the Triton head writes logits_out itself
                    self.logits_out.copy_(logits)
            self._graphs[p] = graph

    @torch.no_grad()
    def prefill(self, labels: Tensor) -> Tensor:
        """Class position (rows,) int64 labels -> (rows, V) logits for the first image token."""
        if not self.graphs:
            return self._forward(self.gpt.cls_embedding(labels), 0)
        self.prefill_in.copy_(self.gpt.cls_embedding(labels))
        self._graphs[0].replay()
        return self.logits_out

    @torch.no_grad()
    def decode(self, tokens: Tensor, step: int) -> Tensor:
        """Feed token ``step`` (rows,) at position ``step + 1`` -> (rows, V) logits for the next token."""
        p = step + 1
        if not self.graphs:
            return self._forward(self.gpt.tok_embeddings(tokens[:, None]), p)
        self.codes_in.copy_(tokens[:, None])
        self._graphs[p].replay()
        return self.logits_out
