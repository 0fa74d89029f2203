"""Optimiser construction with the 2-D weight-decay rule (decay matrices and embeddings, not norms or biases).

Both trainers build their optimisers here. Under FSDP the parameters are flattened, so which ones decay is decided
on the bare model first (:func:`decay_names`) and matched by name afterwards (:func:`param_groups` strips the
DDP / FSDP / ``torch.compile`` prefixes).
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import clean_param_name


def decay_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters that decay: ``dim >= 2``, and not listed by the model's
    ``no_weight_decay()`` (if it has one). Call it on the bare model, before FSDP flattens the shapes.

    This is the LlamaGen/nanoGPT rule: matrices and embeddings decay, biases and norm gains do not.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and n not in skip}


def param_groups(model: nn.Module, weight_decay: float, decay: set[str] | None = None) -> list[dict]:
    """Trainable parameters split into a decayed group and a non-decayed group (empty groups left out).

    Args:
        model: the bare or wrapped (DDP, FSDP with ``use_orig_params``, compiled) model.
        weight_decay: the decayed group's decay.
        decay: bare names of the parameters that decay (:func:`decay_names` of the bare model); None: decided on
            ``model`` itself, which must then not be FSDP-wrapped.
    """
    decay = decay_names(model) if decay is None else decay
    decayed, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decayed if clean_param_name(name) in decay else rest).append(p)
    return [g for g in ({"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    decay: set[str] | None = None,
) -> torch.optim.Optimizer:
    """``name``: ``"adam"`` (official tokenizer recipe: plain Adam, no decay) or ``"adamw"`` (LlamaGen GPT recipe).

    ``decay``: see :func:`param_groups`. Fused on CUDA, as LlamaGen.
    """
    if name not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'adamw'")
    if name == "adam" and weight_decay:
        raise ValueError("optimizer 'adam' has coupled L2 decay; use 'adamw' for weight decay")
    groups = param_groups(model, weight_decay, decay)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    kwargs = {"lr": lr, "betas": tuple(betas), "eps": eps}
    if all(p.is_cuda for g in groups for p in g["params"]):
        kwargs["fused"] = True
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(groups, **kwargs)
