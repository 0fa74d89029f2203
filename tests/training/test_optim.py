"""Optimiser groups: the 2-D weight-decay rule, frozen parameters, ``no_weight_decay`` and optimiser choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfmtok.training.optim import build_optimizer, decay_names, param_groups


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def _ids(ps) -> set[int]:
    return {id(p) for p in ps}


def test_two_d_rule_and_exclusions():
    net = _Net()
    decay, no_decay = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert _ids(decay["params"]) == _ids([net.emb.weight, net.lin.weight])
    assert _ids(no_decay["params"]) == _ids([net.lin.bias, net.norm.weight, net.norm.bias, net.pos])
    every = _ids(decay["params"]) | _ids(no_decay["params"])
    assert not every & _ids(net.frozen.parameters())


def test_build_optimizer_variants():
    net = _Net()
    adam = build_optimizer(net, "adam", lr=1e-3, betas=(0.9, 0.95))
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    assert adam.param_groups[0]["betas"] == (0.9, 0.95) and adam.param_groups[0]["lr"] == 1e-3
    adamw = build_optimizer(net, "adamw", weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(net, "adam", weight_decay=0.1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(net, "sgd")
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False))


def test_decay_decided_on_the_bare_model_holds_through_wrappers():
    """Names decided on the bare model place the parameters of a wrapped / compiled model (FSDP flattens shapes, so
    the trainers decide first and match by name; the prefixes of the wrappers are stripped)."""
    net = _Net()
    names = decay_names(net)
    assert names == {"emb.weight", "lin.weight"}

    class _Wrapper(nn.Module):  # the prefixes DDP / FSDP / torch.compile add: module., _fsdp_wrapped_module., _orig_mod.
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = nn.Module()
            self.module._fsdp_wrapped_module = nn.Module()
            self.module._fsdp_wrapped_module._orig_mod = inner

    wrapped = _Wrapper(net)
    assert {n for n, _ in wrapped.named_parameters()} >= {"module._fsdp_wrapped_module._orig_mod.lin.weight"}
    decay, no_decay = param_groups(wrapped, 0.1, names)
    assert _ids(decay["params"]) == _ids([net.emb.weight, net.lin.weight])
    assert _ids(no_decay["params"]) == _ids([net.lin.bias, net.norm.weight, net.norm.bias, net.pos])
    (only,) = param_groups(nn.LayerNorm(3), 0.1)  # no matrices: one group, no empty one
    assert only["weight_decay"] == 0.0
