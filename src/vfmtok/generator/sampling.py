"""Autoregressive sampling for :class:`~vfmtok.generator.gpt.GPT`: KV-cached decoding, CFG schedules, filtering.

``sample`` draws ``(B, block_size)`` code grids for a batch of class labels. The loop is:

1. prefill the class position (``[cond; null]`` rows when classifier-free guidance is on);
2. for each step t: combine the guided logits ``uncond + s_t * (cond - uncond)`` (on logits, as LlamaGen does),
   apply temperature, top-k and top-p with tensor ops, draw one token per row from an explicit
   ``torch.Generator``, and feed it back through the KV cache at position t + 1.

Nothing in the loop reads a device value on the host, so CUDA work is queued without synchronising. Sampling uses
the exponential-race form of the categorical draw (``argmax(p / E)``, E ~ Exp(1)), which is exact and avoids the
host round trip of ``torch.multinomial``.

The decoding paths produce the same tokens for the same generator state (exactly in fp32 on CPU; on GPU up to the
kernels' rounding):

- default: :class:`~vfmtok.generator.gpt.KVCache` in ``"prefix"`` mode (attention over the filled prefix only);
- ``compile=True``: the fast path, :class:`~vfmtok.generator.fast_decode.FastDecoder` (fused layer halves under
  ``torch.compile``, one CUDA graph per position on CUDA);
- ``baseline="plain"``: recompute the whole sequence every step (the reference the tests compare against);
- ``baseline="official"``: LlamaGen's ``generate`` decoding (full-length boolean mask, K/V copied every step),
  eager or, with ``compile=True``, under ``torch.compile(mode="reduce-overhead")`` as LlamaGen runs it.

``sample(..., method="jacobi", window=K)`` is speculative Jacobi decoding (:mod:`vfmtok.generator.jacobi`): up to K
tokens per forward pass, the same distribution as the paths above but not the same codes for a seed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .fast_decode import FastDecoder
from .gpt import GPT, KVCache
from .jacobi import jacobi_sample
from .logits import CFG_SCHEDULES, apply_cfg, cfg_scales, filter_logits, sample_logits

__all__ = ["CFG_SCHEDULES", "apply_cfg", "balanced_labels", "cfg_scales", "filter_logits", "generate", "sample",
           "sample_logits"]

BASELINES = ("plain", "official")
METHODS = ("ar", "jacobi")

Pick = Callable[[Tensor, int], Tensor]
"""``pick(logits (B, V) float32, step) -> (B,) int64``: chooses the token of each row at a step."""


def balanced_labels(n: int, num_classes: int, seed: int = 0, classes: Sequence[int] | None = None) -> Tensor:
    """Class-balanced labels: every consecutive block of ``len(classes)`` labels holds each class once.

    The class order inside a block is a permutation drawn from ``seed``; when ``n`` is not a multiple of the number
    of classes, the last partial block covers a seeded random subset. ``classes`` defaults to ``range(num_classes)``.

    Returns:
        (n,) int64 on CPU.
    """
    pool = torch.arange(num_classes) if classes is None else torch.as_tensor(list(classes), dtype=torch.int64)
    if pool.numel() == 0:
        raise ValueError("balanced_labels: no classes to draw from")
    if bool(((pool < 0) | (pool >= num_classes)).any()):
        raise ValueError(f"balanced_labels: classes must lie in [0, {num_classes}), got {pool.tolist()}")
    gen = torch.Generator().manual_seed(seed)
    order = pool[torch.randperm(pool.numel(), generator=gen)]
    return order.repeat(-(-n // pool.numel()))[:n]


# ---------------------------------------------------------------------------------------------------- decoders
class _CachedDecoder:
    """KV-cached stepping in ``"prefix"`` mode (positions are ints) or ``"static"``/``"official"`` (tensors)."""

    def __init__(self, gpt: GPT, rows: int, mode: str) -> None:
        self.gpt, self.mode = gpt, mode
        self.cache: KVCache = gpt.new_cache(rows, mode=mode)
        self.positions = torch.arange(gpt.num_tokens + 1, device=self.cache.k.device)

    def _pos(self, p: int) -> int | Tensor:
        return p if self.mode == "prefix" else self.positions[p : p + 1]

    def _context(self) -> contextlib.AbstractContextManager:
        if self.mode == "official" and self.cache.k.is_cuda:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)  # LlamaGen decodes under the math kernel
        return contextlib.nullcontext()

    def prefill(self, rows: Tensor) -> Tensor:
        return self.gpt.prefill(rows, self.cache, self._pos(0))

    def decode(self, tokens: Tensor, step: int) -> Tensor:
        with self._context():
            return self.step(tokens[:, None], self._pos(step + 1))

    def step(self, codes: Tensor, pos: int | Tensor) -> Tensor:
        return self.gpt.decode_step(codes, self.cache, pos)


class _OfficialCompiledDecoder(_CachedDecoder):
    """``baseline="official"`` with ``compile=True``: the official decode step under
    ``torch.compile(mode="reduce-overhead", fullgraph=True)``, as LlamaGen's ``generate`` compiles ``decode_one_token``
    (our step excludes the sampling, which LlamaGen's compiled function includes)."""

    def __init__(self, gpt: GPT, rows: int) -> None:
        super().__init__(gpt, rows, "official")
        # LlamaGen's caches are module buffers, i.e. static addresses that the CUDA graphs may mutate in place
        for t in (self.cache.k, self.cache.v, self.cache.causal_mask):
            torch._dynamo.mark_static_address(t)
        self.compiled = torch.compile(super().step, mode="reduce-overhead", fullgraph=True)

    def step(self, codes: Tensor, pos: int | Tensor) -> Tensor:
        # a fresh position tensor every step, as LlamaGen's ``input_pos``; the output is overwritten by the next replay
        return self.compiled(codes, pos.clone()).clone()


class _PlainDecoder:
    """Reference path: the full teacher-forced forward over everything decoded so far, every step."""

    def __init__(self, gpt: GPT, rows: int) -> None:
        self.gpt = gpt
        self.codes = torch.zeros(rows, gpt.num_tokens, dtype=torch.long, device=gpt.tok_embeddings.weight.device)
        self.rows: Tensor | None = None

    def prefill(self, rows: Tensor) -> Tensor:
        self.rows = rows
        return self.gpt(self.codes[:, :0], rows)[:, -1]

    def decode(self, tokens: Tensor, step: int) -> Tensor:
        self.codes[:, step] = tokens
        return self.gpt(self.codes[:, : step + 1], self.rows)[:, -1]


# The compiled decoder of a model (fast path, or the compiled official baseline) is kept, one per model: a new batch
# shape, dtype, device, path or option set replaces it (freeing the old KV cache), so repeated calls reuse its compiled
# functions and captured graphs instead of compiling again.
_COMPILED: weakref.WeakKeyDictionary[GPT, tuple[tuple, FastDecoder | _OfficialCompiledDecoder]] = (
    weakref.WeakKeyDictionary()
)
FAST_DEFAULTS = {"fuse": True, "graphs": True, "fuse_w13": True, "attn_backend": "auto", "compile_mode": None,
                 "kernels": "auto", "streams": 1}


def clear_decoder_cache(gpt: GPT | None = None) -> None:
    """Drop the cached compiled decoder (KV cache, graphs) of ``gpt``, or of every model."""
    if gpt is None:
        _COMPILED.clear()
    else:
        _COMPILED.pop(gpt, None)


def _decoder(gpt: GPT, rows: int, baseline: str | None, compile: bool | dict):
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected None or one of {BASELINES}")
    if baseline == "plain":
        if compile:
            raise ValueError("compile applies to the KV-cached paths, not to baseline='plain'")
        return _PlainDecoder(gpt, rows)
    if not compile:
        return _CachedDecoder(gpt, rows, "official" if baseline == "official" else "prefix")
    options = dict(FAST_DEFAULTS)
    if isinstance(compile, dict):
        unknown = set(compile) - set(FAST_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fast-decoder options {sorted(unknown)}; expected {sorted(FAST_DEFAULTS)}")
        options.update(compile)
    weight = gpt.tok_embeddings.weight
    key = (baseline, rows, weight.dtype, weight.device, tuple(sorted(options.items())))
    cached = _COMPILED.get(gpt)
    if cached is not None and cached[0] == key:
        decoder = cached[1]
        if isinstance(decoder, FastDecoder):
            decoder.refresh()
        return decoder
    _COMPILED.pop(gpt, None)  # free the old cache before allocating the new one
    if weight.is_cuda:
        torch.cuda.empty_cache()
    decoder = _OfficialCompiledDecoder(gpt, rows) if baseline == "official" else FastDecoder(gpt, rows, **options)
    _COMPILED[gpt] = (key, decoder)
    return decoder


@torch.no_grad()
def generate(
    gpt: GPT,
    labels: Tensor,
    pick: Pick,
    *,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    cfg_power: float = 1.0,
    cfg_interval: tuple[int, int | None] | None = None,
    compile: bool | dict = False,
    baseline: str | None = None,
) -> Tensor:
    """Decode ``block_size`` tokens per label, choosing each token with ``pick``.

    ``pick`` receives the (guided) float32 logits (B, V) of every step; :func:`sample` passes the stochastic
    sampler. The model runs in eval mode for the call and its train/eval state is restored afterwards.

    Args:
        labels: (B,) int64 class labels in [0, num_classes].
        cfg_scale, cfg_schedule, cfg_power, cfg_interval: guidance (see :func:`cfg_scales`); CFG doubles the batch
            to ``[cond; null]`` rows when any step's scale differs from 1.
        compile: the fast path (:class:`~vfmtok.generator.fast_decode.FastDecoder`: fused layer halves under
            ``torch.compile``, one CUDA graph per position on CUDA); True, or a dict of its options (``FAST_DEFAULTS``:
            ``fuse``, ``graphs``, ``fuse_w13``, ``attn_backend``, ``compile_mode``, ``kernels``, ``streams``). The
            decoder is kept per model until the batch shape changes. With ``baseline="official"``: the official step under ``torch.compile(mode="reduce-overhead")``.
        baseline: None (KV cache over the filled prefix), ``"plain"`` (full recompute) or ``"official"``
            (LlamaGen's full-length masked cache).

    Returns:
        (B, block_size) int64 codes on the model's device.
    """
    n = gpt.num_tokens
    scales = cfg_scales(n, cfg_scale, cfg_schedule, power=cfg_power, interval=cfg_interval)
    use_cfg = bool((scales != 1).any())
    if use_cfg and not gpt.config.has_null_class:
        raise ValueError("classifier-free guidance needs a null class (the model has class_dropout_prob = 0)")
    device = gpt.tok_embeddings.weight.device
    labels = labels.to(device=device, dtype=torch.long)
    b = labels.shape[0]
    rows = torch.cat([labels, torch.full_like(labels, gpt.config.null_class)]) if use_cfg else labels
    scales = scales.to(device)
    codes = torch.empty(b, n, dtype=torch.long, device=device)
    was_training = gpt.training
    gpt.eval()
    try:
        decoder = _decoder(gpt, rows.shape[0], baseline, compile)
        logits = decoder.prefill(rows)  # (R, V)
        for t in range(n):
            step_logits = apply_cfg(logits, scales[t]) if use_cfg else logits  # (B, V)
            token = pick(step_logits, t)  # (B,)
            codes[:, t] = token
            if t + 1 < n:
                logits = decoder.decode(torch.cat([token, token]) if use_cfg else token, t)
    finally:
        gpt.train(was_training)
    return codes


def sample(
    gpt: GPT,
    labels: Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    cfg_power: float = 1.0,
    cfg_interval: tuple[int, int | None] | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    compile: bool | dict = False,
    baseline: str | None = None,
    method: str = "ar",
    window: int = 16,
    return_steps: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sample token grids for class ``labels`` (B,) -> codes (B, block_size) int64 in [0, vocab_size).

    Defaults reproduce LlamaGen/VFMTok sampling (temperature 1, no top-k/top-p, constant CFG applied from the first
    token). ``generator`` must live on the model's device; the same generator state gives the same codes on every
    decoding path. See :func:`generate` for the remaining arguments.

    Args:
        method: ``"ar"`` (one token per forward pass) or ``"jacobi"``: speculative Jacobi decoding
            (:mod:`vfmtok.generator.jacobi`), ``window`` tokens per row per forward pass, verified so that the codes
            have the same distribution as ``"ar"`` (not the same codes for a seed). Jacobi runs the eager modules:
            ``compile`` and ``baseline`` apply to ``"ar"`` only.
        window: Jacobi window K >= 1 (K = 1 is one token per pass).
        return_steps: also return the forward passes per row, (B,) int64 (``"ar"``: block_size for every row).
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    device = gpt.tok_embeddings.weight.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, the model on {device}; create it on the model's device")
    if method == "jacobi":

        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if compile or baseline is not None:
            raise ValueError("method='jacobi' runs the eager modules; compile and baseline apply to method='ar'")
        scales = cfg_scales(gpt.num_tokens, cfg_scale, cfg_schedule, power=cfg_power, interval=cfg_interval)
        if bool((scales != 1).any()) and not gpt.config.has_null_class:
            raise ValueError("classifier-free guidance needs a null class (the model has class_dropout_prob = 0)")
        codes, steps = jacobi_sample(gpt, labels, window=window, scales=scales, temperature=temperature,
                                     top_k=top_k, top_p=top_p, generator=generator)
        return (codes, steps) if return_steps else codes

    def pick(logits: Tensor, step: int) -> Tensor:
        return sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    codes = generate(
        gpt,
        labels,
        pick,
        cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule,
        cfg_power=cfg_power,
        cfg_interval=cfg_interval,
        compile=compile,
        baseline=baseline,
    )
    if not return_steps:
        return codes
    return codes, torch.full((codes.shape[0],), gpt.num_tokens, dtype=torch.long, device=codes.device)
