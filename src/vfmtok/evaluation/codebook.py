"""Codebook usage over a whole evaluation set.

``usage`` = number of distinct codes used / codebook size (the official rFID script's number: unique indices over the
whole val set / 16384); ``perplexity`` = exp(entropy of the code histogram), the "effective number of codes" (equals
the codebook size only for a perfectly uniform histogram). Counts accumulate batch by batch with ``bincount``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class CodebookReport(NamedTuple):
    """``usage`` in [0, 1], ``perplexity`` in [1, K], ``entropy_bits`` in [0, log2 K], ``used`` codes, ``total``
    tokens counted, codebook ``size`` K."""

    usage: float
    perplexity: float
    entropy_bits: float
    used: int
    total: int
    size: int


class CodebookUsage:
    """Histogram of code indices; ``update(idx)`` with int (B, L) (any shape) in [0, K)."""

    def __init__(self, codebook_size: int) -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        self.size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)

    def update(self, idx: Tensor) -> None:
        flat = idx.detach().reshape(-1).to("cpu", torch.int64)
        if flat.numel() == 0:
            return
        if int(flat.min()) < 0 or int(flat.max()) >= self.size:
            raise ValueError(f"code indices must lie in [0, {self.size}), got [{int(flat.min())}, {int(flat.max())}]")
        self.counts += torch.bincount(flat, minlength=self.size)

    def merge(self, other: CodebookUsage) -> None:
        if other.size != self.size:
            raise ValueError(f"codebook sizes differ: {self.size} vs {other.size}")
        self.counts += other.counts

    def report(self) -> CodebookReport:
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("no code indices counted")
        p = self.counts[self.counts > 0].double() / total
        entropy = float(-(p * p.log()).sum())  # nats
        return CodebookReport(
            usage=int((self.counts > 0).sum()) / self.size,
            perplexity=math.exp(entropy),
            entropy_bits=entropy / math.log(2),
            used=int((self.counts > 0).sum()),
            total=total,
            size=self.size,
        )
