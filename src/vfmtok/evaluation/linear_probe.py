"""Linear probing of tokenizer features: how linearly separable the classes are in what the tokenizer keeps.

The official code has no linear probe and the paper's protocol is unknown (reference section 4.3), so vfmtok fixes
its own, deterministic protocol:

1. features are standardised with the mean / std of the rows the classifier is fitted on;
2. a multinomial logistic-regression layer (weights and bias, zero-initialised) is fitted full-batch with L-BFGS
   (strong-Wolfe line search, ``max_iter`` iterations) on mean cross-entropy + ``wd / 2 * |W|^2``;
3. ``wd`` is chosen from ``weight_decays`` by top-1 on a held-out ``val_fraction`` of the *training* rows (a seeded,
   class-stratified split); the classifier is then refitted on all training rows with that ``wd``;
4. top-1 is reported on the separate test rows.

:func:`linear_probe` is a pure function of feature tensors; :func:`tokenizer_probe_features` extracts the two feature
kinds from a tokenizer: the mean over tokens of the quantised code embeddings after the post-quantisation projection
(what the decoder receives), and the mean of the encoder's slots (before quantisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


class LinearProbeResult(NamedTuple):
    """``top1`` on the test rows in [0, 1]; ``weight_decay`` chosen; ``val_top1`` per candidate as (wd, top1) pairs;
    ``train_top1`` of the final fit; row and class counts."""

    top1: float
    weight_decay: float
    val_top1: tuple[tuple[float, float], ...]
    train_top1: float
    num_train: int
    num_test: int
    num_classes: int


def _stratified_split(y: Tensor, val_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices (fit, val): ``round(val_fraction * n_c)`` rows of each class with >= 2 rows go to val."""
    fit, val = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = int(round(val_fraction * idx.numel())) if idx.numel() >= 2 else 0
        k = min(k, idx.numel() - 1)
        val.append(idx[:k])
        fit.append(idx[k:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def _standardise(fit_x: Tensor, *others: Tensor) -> list[Tensor]:
    mean = fit_x.mean(0)
    std = fit_x.std(0, unbiased=False).clamp_min(1e-6)
    return [(t - mean) / std for t in (fit_x, *others)]


def fit_linear_classifier(
    x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int = 100
) -> nn.Linear:
    """Full-batch L-BFGS logistic regression on (N, D) float features and (N,) int64 labels; deterministic."""
    layer = nn.Linear(x.shape[1], num_classes).to(device=x.device, dtype=x.dtype)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(x), y) + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return layer.requires_grad_(False)


def _top1(layer: nn.Linear, x: Tensor, y: Tensor) -> float:
    return float((layer(x).argmax(1) == y).double().mean()) if y.numel() else float("nan")


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    max_iter: int = 100,
    seed: int = 0,
) -> LinearProbeResult:
    """Top-1 of a linear classifier trained on ``train_x`` (N, D) / ``train_y`` (N,) and tested on ``test_x`` (M, D) /
    ``test_y`` (M,), following the protocol in the module docstring. Labels are int in [0, C); computation is
    float64 on the features' device."""
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError("labels must be (N,) and (M,) matching the feature rows")
    if int(train_y.min()) < 0:
        raise ValueError("labels must be >= 0 (unlabelled images cannot be probed)")
    xtr, xte = train_x.detach().double(), test_x.detach().double().to(train_x.device)
    ytr, yte = train_y.detach().long().to(train_x.device), test_y.detach().long().to(train_x.device)
    num_classes = int(max(int(ytr.max()), int(yte.max()) if yte.numel() else 0)) + 1
    gen = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = _stratified_split(ytr.cpu(), val_fraction, gen)
    fit_idx, val_idx = fit_idx.to(xtr.device), val_idx.to(xtr.device)
    scores = []
    for wd in weight_decays:
        xf, xv = _standardise(xtr[fit_idx], xtr[val_idx])
        layer = fit_linear_classifier(xf, ytr[fit_idx], num_classes, wd, max_iter)
        scores.append((float(wd), _top1(layer, xv, ytr[val_idx])))
    # best validation top-1; ties go to the larger weight decay (the simpler model)
    best_wd = max(scores, key=lambda s: (s[1] if s[1] == s[1] else -1.0, s[0]))[0]
    xf, xt = _standardise(xtr, xte)
    layer = fit_linear_classifier(xf, ytr, num_classes, best_wd, max_iter)
    return LinearProbeResult(
        top1=_top1(layer, xt, yte),
        weight_decay=best_wd,
        val_top1=tuple(scores),
        train_top1=_top1(layer, xf, ytr),
        num_train=int(xtr.shape[0]),
        num_test=int(xte.shape[0]),
        num_classes=num_classes,
    )


class ProbeableTokenizer(Protocol):
    """What :func:`tokenizer_probe_features` needs (``vfmtok.tokenizer.model.VFMTokenizer`` provides it)."""

    post_quant_proj: nn.Module

    def encode_slots(self, images: Tensor) -> Tensor: ...

    def quantize(self, slots: Tensor) -> object: ...

    def codes_to_embeddings(self, codes: Tensor) -> Tensor: ...


class ProbeFeatures(NamedTuple):
    """``tokens``: (B, dim) mean over tokens of post-quant-projected code embeddings. ``slots``: (B, dim) mean of the
    encoder's slots (pre-quantisation)."""

    tokens: Tensor
    slots: Tensor


@torch.no_grad()
def tokenizer_probe_features(tokenizer: ProbeableTokenizer, images: Tensor) -> ProbeFeatures:
    """``images``: (B, 3, S, S) float in [-1, 1] at the tokenizer's image size -> :class:`ProbeFeatures` (float32)."""
    slots = tokenizer.encode_slots(images)  # (B, L, dim)
    codes = tokenizer.quantize(slots).idx  # type: ignore[attr-defined]  # (B, L)
    tokens = tokenizer.post_quant_proj(tokenizer.codes_to_embeddings(codes))  # (B, L, dim)
    return ProbeFeatures(tokens=tokens.float().mean(1), slots=slots.float().mean(1))
