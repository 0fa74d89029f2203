"""Optimiser construction with the 2-D weight-decay rule (decay matrices and embeddings, not norms or biases)."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (``dim >= 2``) and a non-decayed group (``dim < 2``).

    This is the LlamaGen/nanoGPT rule: matrices and embeddings decay, biases and norm gains do not. Names listed by
    the model's ``no_weight_decay()`` (if any) are never decayed.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and name not in skip else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``name``: ``"adam"`` (official tokenizer recipe: plain Adam, no decay) or ``"adamw"`` (LlamaGen GPT recipe)."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"lr": lr, "betas": tuple(betas), "eps": eps}
    if fused:
        kwargs["fused"] = True
    if name == "adam":
        if weight_decay:
            raise ValueError("optimizer 'adam' has coupled L2 decay; use 'adamw' for weight decay")
        return torch.optim.Adam(groups, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'adamw'")
