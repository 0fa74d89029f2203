"""Learning-rate schedules as pure functions of the step: linear warm-up, then cosine (really decaying) or constant."""

from __future__ import annotations

import math

import torch


def lr_at(
    step: int,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr: float = 0.0,
    warmup_init_lr: float = 0.0,
) -> float:
    """Learning rate at optimiser step ``step`` (0-based).

    ``schedule``: ``"cosine"`` (warm-up, then half-cosine from ``base_lr`` to ``min_lr`` at ``total_steps``) or
    ``"constant"`` (warm-up, then ``base_lr``: the official recipes, whose cosine never decays, amount to this).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_init_lr + (base_lr - warmup_init_lr) * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; expected 'cosine' or 'constant'")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
