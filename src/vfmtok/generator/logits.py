"""What a decoding step does with the GPT's logits: classifier-free guidance (its per-step scales and the combination
of ``[cond; uncond]`` rows), top-k / top-p filtering, and the categorical draw. Shared by the autoregressive sampler
(:mod:`vfmtok.generator.sampling`) and the Jacobi sampler (:mod:`vfmtok.generator.jacobi`), so both apply CFG,
temperature and filtering with the same arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CFG_SCHEDULES = ("constant", "linear", "power-cosine")


def cfg_scales(
    num_steps: int,
    cfg_scale: float,
    schedule: str = "constant",
    *,
    power: float = 1.0,
    interval: tuple[int, int | None] | None = None,
) -> Tensor:
    """Guidance scale of every decoding step.

    With ``r = step / num_steps`` in [0, 1): ``"constant"`` is ``s``; ``"linear"`` is ``1 + (s - 1) r``;
    ``"power-cosine"`` is ``1 + (s - 1) (1 - cos(pi r**power)) / 2`` (the RAR schedule). Steps outside
    ``interval = (start, end)`` (``end=None``: to the last step) get 1, i.e. the conditional logits only.

    Returns:
        (num_steps,) float32 on CPU.
    """
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown CFG schedule {schedule!r}; expected one of {CFG_SCHEDULES}")
    if power <= 0:
        raise ValueError(f"cfg power must be > 0, got {power}")
    r = torch.arange(num_steps, dtype=torch.float64) / num_steps
    if schedule == "constant":
        scales = torch.full_like(r, float(cfg_scale))
    elif schedule == "linear":
        scales = 1 + (cfg_scale - 1) * r
    else:
        scales = 1 + (cfg_scale - 1) * (1 - torch.cos(math.pi * r**power)) / 2
    if interval is not None:
        start, end = interval
        steps = torch.arange(num_steps)
        inside = (steps >= start) & (steps < (num_steps if end is None else end))
        scales = torch.where(inside, scales, torch.ones_like(scales))
    return scales.float()


def apply_cfg(logits: Tensor, scale: float | Tensor) -> Tensor:
    """Combine ``[cond; uncond]`` rows (2B, V) into guided logits (B, V): ``uncond + scale * (cond - uncond)``."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * scale


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the nucleus to ``-inf``.

    Args:
        logits: (B, V) float.
        top_k: keep the k largest per row (0: off); ties with the k-th value are kept.
        top_p: keep the smallest prefix of the sorted distribution whose mass reaches ``top_p`` (the first token
            that crosses the threshold is kept, as in LlamaGen/HF); 1.0: off.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        above = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p  # (B, V) in sorted order
        drop_sorted = torch.cat([torch.zeros_like(above[..., :1]), above[..., :-1]], dim=-1)
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``softmax(filter(logits / temperature))``.

    Args:
        logits: (B, V) float.
        temperature: > 0 scales the logits (floored at 1e-5 as in LlamaGen); 0 means greedy argmax.
        generator: random source on the logits' device (None: the global generator).

    Returns:
        (B,) int64 token indices.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 changes no bit: skipped (one kernel less per decode step)
        logits = logits / max(temperature, 1e-5)
    logits = filter_logits(logits, top_k, top_p)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    # argmax(p / E) with E ~ Exp(1) is an exact categorical draw; the floor keeps filtered (p = 0) rows finite.
    return (probs / race.clamp_min(torch.finfo(race.dtype).tiny)).argmax(dim=-1)
