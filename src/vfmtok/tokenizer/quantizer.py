"""Vector quantizer with an L2-normalised codebook (VFMTok, arXiv 2507.08441, Sec. 3.2; as in LlamaGen / ViT-VQGAN).

Both the latents and the codebook rows are L2-normalised before the nearest-code search, so the argmin of the squared
distance ``|z|^2 + |e|^2 - 2 z.e`` (the official formula, kept for bit-level agreement) is the code of maximum cosine
similarity. The search and the codebook losses always run in float32, even under bf16 autocast: the official trainer
let autocast run this product in bf16, which flips near-ties among 16384 codes between training and evaluation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.precision import at_least_fp32


class QuantizerLosses(NamedTuple):
    """Scalar float32 (float64 for a float64 model and input) losses in the normalised space, already weighted as
    the official code weights them.

    ``vq``: mean((z_q - sg[z])^2), trains the codebook. ``commit``: beta * mean((sg[z_q] - z)^2), trains the encoder.
    ``entropy``: ratio * (H(sample) - H(average)) of softmax(-d / T); exactly 0 when the ratio is 0 (the released
    recipe), in which case it is not computed at all.
    """

    vq: Tensor
    commit: Tensor
    entropy: Tensor


class QuantizerOutput(NamedTuple):
    """``z``: (B, L, e) L2-normalised latents. ``z_q``: (B, L, e) straight-through codes z + sg(e_idx - z), float32
    (float64 for float64 latents and codebook: the island is "at least float32", :mod:`vfmtok.ops.precision`).
    ``idx``: (B, L) int64 in [0, K). ``losses``: :class:`QuantizerLosses`."""

    z: Tensor
    z_q: Tensor
    idx: Tensor
    losses: QuantizerLosses


def entropy_loss(affinity: Tensor, temperature: float = 0.01) -> Tensor:
    """Sample entropy minus batch-average entropy of softmax(affinity / T) (MaskGIT / LlamaGen form).

    Args:
        affinity: (N, K) similarities (the official code passes minus the squared distance).
    """
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = logits.softmax(-1)
    log_probs = F.log_softmax(logits + 1e-5, dim=-1)  # the official +1e-5 is a no-op shift inside log_softmax
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over an L2-normalised codebook.

    Args:
        codebook_size: K, the number of codes.
        dim: e, the code width (12 in the released model).
        commit_beta: weight of the commitment loss (0.25).
        entropy_ratio: weight of the entropy loss (0.0 in the released recipe).
        entropy_temperature: softmax temperature of the entropy loss.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commit_beta: float = 0.25,
        entropy_ratio: float = 0.0,
        entropy_temperature: float = 0.01,
    ) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.commit_beta, self.entropy_ratio, self.entropy_temperature = commit_beta, entropy_ratio, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, dim)
        with torch.no_grad():  # official init: U(-1/K, 1/K), then rows to unit length
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))

    def codebook(self) -> Tensor:
        """(K, e) float32 (or float64) unit-norm codebook rows (rows are re-normalised on every use, as officially)."""
        return F.normalize(at_least_fp32(self.embedding.weight), p=2, dim=-1)

    def lookup(self, idx: Tensor) -> Tensor:
        """``idx``: int64 (...) in [0, K) -> (..., e) float32 unit-norm code vectors."""
        return self.codebook()[idx]

    def distances(self, z: Tensor) -> Tensor:
        """Squared distances (N, K) in float32 (or float64) between normalised latents ``z`` (N, e) and the codebook."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(at_least_fp32(z), p=2, dim=-1)
            e = self.codebook()
            return z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2.0 * torch.einsum("bd,dn->bn", z, e.t())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """``z``: (B, L, e) pre-quantisation latents (any float dtype) -> :class:`QuantizerOutput` (float32)."""
        b, n, e = z.shape
        if e != self.dim:
            raise ValueError(f"VectorQuantizer: expected latents of width {self.dim}, got {e}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(at_least_fp32(z), p=2, dim=-1)  # (B, L, e)
            d = self.distances(z.reshape(-1, e))  # (B*L, K)
            idx = d.argmin(dim=1)  # (B*L,)
            codes = self.codebook()[idx].view(b, n, e)
            vq = (codes - z.detach()).pow(2).mean()
            commit = self.commit_beta * (codes.detach() - z).pow(2).mean()
            if self.entropy_ratio > 0:
                ent = self.entropy_ratio * entropy_loss(-d, self.entropy_temperature)
            else:
                ent = z.new_zeros(())
            z_q = z + (codes - z).detach()  # straight-through estimator
        return QuantizerOutput(z, z_q, idx.view(b, n), QuantizerLosses(vq, commit, ent))


# ----------------------------------------------------------------------------------------------------------------------
# Codebook statistics (pure functions on index tensors)
# ----------------------------------------------------------------------------------------------------------------------


def code_histogram(idx: Tensor, codebook_size: int) -> Tensor:
    """int64 (K,) count of each code in ``idx`` (any shape, values in [0, K))."""
    return torch.bincount(idx.reshape(-1).long(), minlength=codebook_size)


def codebook_usage(idx: Tensor, codebook_size: int) -> float:
    """Fraction of the K codes that occur at least once in ``idx`` (the official "usage")."""
    return float((code_histogram(idx, codebook_size) > 0).sum()) / codebook_size


def codebook_perplexity(idx: Tensor, codebook_size: int) -> float:
    """exp(entropy) of the empirical code distribution: K for perfectly uniform use, 1 for a single code."""
    counts = code_histogram(idx, codebook_size).double()
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return math.exp(float(-(p * p.log()).sum()))
