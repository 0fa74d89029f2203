"""Semantic (VFM-feature) reconstruction loss (VFMTok paper, semantic reconstruction objective).

The decoder's semantic pass predicts the frozen VFM's last-layer patch tokens; the official trainer penalises
``1 - cos`` per token (``nn.CosineSimilarity(dim=2, eps=1e-6)``) averaged over batch and tokens, with weight 1.
Scale of the target is irrelevant (the official target is the post-LayerNorm DINOv2 output, not L2-normalised).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..ops.precision import at_least_fp32


def token_cosine_similarity(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Cosine similarity along the channel axis.

    Args:
        pred: (B, N, D) predicted tokens.
        target: (B, N, D) target tokens (detached by the caller or produced under ``no_grad``).
        eps: lower bound of the norms, as in ``torch.nn.CosineSimilarity``.

    Returns:
        (B, N) similarities in [-1, 1].
    """
    if pred.shape != target.shape:
        # e.g. 581 tokens (prefix tokens kept) against 576 would otherwise fail late or broadcast silently
        raise ValueError(f"semantic loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.cosine_similarity(at_least_fp32(pred), at_least_fp32(target), dim=-1, eps=eps)


def semantic_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over batch and tokens of ``1 - cos(pred, target)``.

    Args:
        pred: (B, N, D) predicted VFM tokens (the decoder's feature head).
        target: (B, N, D) frozen-VFM tokens.
        eps: norm lower bound.

    Returns:
        Scalar in [0, 2]; 0 when every predicted token is a positive multiple of its target.
    """
    return (1.0 - token_cosine_similarity(pred, target, eps)).mean()
