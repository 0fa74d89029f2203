"""Inception Score (Salimans et al. 2016) from classifier logits.

``IS = exp(E_x KL(p(y|x) || p(y)))``, computed on ``num_splits`` consecutive, equal-sized parts of the sample set and
averaged, as the ADM evaluator does (it uses parts of 5000, i.e. 10 splits for the standard 50k samples). The logits
of the FID Inception network are taken *without* the classifier bias (ADM / torch-fidelity); see
:mod:`vfmtok.evaluation.inception`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class InceptionScore(NamedTuple):
    """``mean`` and ``std`` of the per-split scores, and the number of splits used."""

    mean: float
    std: float
    splits: int


def inception_score(logits: Tensor | np.ndarray, num_splits: int = 10) -> InceptionScore:
    """Inception Score of ``logits`` (N, K) (any float dtype; computed in float64).

    Splits are consecutive slices of sizes differing by at most one (``numpy.array_split``), so the order of the
    samples matters only through the split boundaries, exactly as in ADM's evaluator. ``num_splits`` is capped at N.
    Returns: IS in [1, K].
    """
    x = torch.as_tensor(np.asarray(logits) if not isinstance(logits, Tensor) else logits).detach().double().cpu()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"logits must be (N, K) with N >= 1, got {tuple(x.shape)}")
    log_p = torch.log_softmax(x, dim=1)  # (N, K) log p(y|x)
    scores = []
    for part in torch.tensor_split(log_p, min(num_splits, x.shape[0])):
        log_py = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # (K,) log of the marginal p(y)
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(torch.exp(kl)))
    return InceptionScore(mean=float(np.mean(scores)), std=float(np.std(scores)), splits=len(scores))
