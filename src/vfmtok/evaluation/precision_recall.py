"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, as the ADM evaluator computes them.

Each feature set defines a manifold: the union of balls around its points whose radius is the distance to the point's
k-th nearest neighbour in the same set (k = 3, the point itself excluded). Precision is the fraction of samples inside
the reference manifold; recall is the fraction of reference points inside the sample manifold. Distances are computed
in blocks (``block`` rows x ``block`` columns at a time), so memory stays bounded for 50k x 50k.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _as_features(x: Tensor | np.ndarray, device: torch.device | str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach()
    if t.ndim != 2:
        raise ValueError(f"features must be (N, D), got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """(n, m) squared Euclidean distances, clamped at 0 against rounding."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(feats: Tensor, k: int = 3, block: int = 10000) -> Tensor:
    """Squared distance of every point of ``feats`` (N, D) to its k-th nearest other point -> (N,)."""
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points for a k-NN manifold, got {n}")
    radii = torch.empty(n, dtype=feats.dtype, device=feats.device)
    for i in range(0, n, block):
        rows = feats[i : i + block]
        d = torch.cat([_sq_dists(rows, feats[j : j + block]) for j in range(0, n, block)], dim=1)  # (b, N)
        # the (k+1)-th smallest includes the point itself at distance 0
        radii[i : i + block] = torch.kthvalue(d, k + 1, dim=1).values
    return radii


def _coverage(points: Tensor, centres: Tensor, radii: Tensor, block: int) -> float:
    """Fraction of ``points`` within radius of at least one of ``centres``."""
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(0, points.shape[0], block):
        rows = points[i : i + block]
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=points.device)
        for j in range(0, centres.shape[0], block):
            hit |= (_sq_dists(rows, centres[j : j + block]) <= radii[j : j + block][None, :]).any(1)
        inside[i : i + block] = hit
    return float(inside.float().mean())


def precision_recall(
    ref_feats: Tensor | np.ndarray,
    sample_feats: Tensor | np.ndarray,
    k: int = 3,
    block: int = 10000,
    device: torch.device | str = "cpu",
) -> PrecisionRecall:
    """Precision and recall of ``sample_feats`` (M, D) against ``ref_feats`` (N, D), both in [0, 1]."""
    ref = _as_features(ref_feats, device)
    sam = _as_features(sample_feats, device).to(ref.dtype)
    if ref.shape[1] != sam.shape[1]:
        raise ValueError(f"feature widths differ: reference {ref.shape[1]}, samples {sam.shape[1]}")
    ref_r = manifold_radii(ref, k=k, block=block)
    sam_r = manifold_radii(sam, k=k, block=block)
    return PrecisionRecall(
        precision=_coverage(sam, ref, ref_r, block), recall=_coverage(ref, sam, sam_r, block)
    )
