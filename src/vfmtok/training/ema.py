"""Exponential moving average of the trainable parameters (the weights the official code releases)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copy (fp32) of every trainable parameter of ``model``; ``update`` after each optimiser step.

    ``shadow = decay * shadow + (1 - decay) * param``, as the official trainers do (decay 0.9999, every step).
    Frozen parameters (the VFM backbone) and buffers are not tracked: they are identical in both copies.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in _unwrap(model).named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(_unwrap(model).named_parameters())
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        currents = [params[n].detach().float() for n in names]
        torch._foreach_lerp_(shadows, currents, 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor | float]:
        return {"decay": self.decay, **{f"shadow.{k}": v for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Tensor | float]) -> None:
        self.decay = float(state["decay"])
        loaded = {k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")}
        if set(loaded) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(loaded)), sorted(set(loaded) - set(self.shadow))
            raise KeyError(f"EMA state mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
        for k, v in loaded.items():
            self.shadow[k].copy_(v)

    def model_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The full state dict of ``model`` with the EMA values in place of the trainable parameters."""
        state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        for k, v in self.shadow.items():
            state[k] = v.to(state[k].dtype)
        return state

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. for evaluation), restoring them afterwards."""
        params = dict(_unwrap(model).named_parameters())
        backup = {k: params[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                params[k].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    params[k].copy_(v)


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / torch.compile wrappers so parameter names match the bare model."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
