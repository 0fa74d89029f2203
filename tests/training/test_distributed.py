"""Distributed helpers in a single process: no process group, no wrapping, identity reductions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfmtok.training.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    full_state_dict,
    init_distributed,
    resolve_device,
    wrap_model,
)


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu")
    m = nn.Linear(2, 2)
    assert wrap_model(m, info) is m
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(t), t) and torch.equal(all_reduce_sum(t), t)
    assert set(full_state_dict(m)) == {"weight", "bias"}
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_strategy(monkeypatch):
    import dataclasses

    info = dataclasses.replace(init_distributed("cpu"), world_size=2)
    with pytest.raises(ValueError, match="strategy"):
        wrap_model(nn.Linear(2, 2), info, "zero3")
