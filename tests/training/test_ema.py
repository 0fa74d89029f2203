"""EMA of the trainable parameters: the update rule, frozen parameters, state round trip and temporary swap-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfmtok.training.ema import EMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    m[1].weight.requires_grad_(False)  # a frozen parameter is not tracked
    return m


def test_update_follows_lerp_rule():
    m = _model()
    ema = EMA(m, decay=0.9)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    params = dict(m.named_parameters())
    for k, v in ema.shadow.items():
        torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * params[k].detach(), rtol=0, atol=1e-6)


def test_frozen_parameters_and_buffers_not_tracked():
    ema = EMA(_model())
    assert "1.weight" not in ema.shadow
    assert "1.bias" in ema.shadow and "0.weight" in ema.shadow


def test_state_dict_round_trip_and_mismatch():
    m = _model()
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m[0].weight.mul_(3.0)
    ema.update(m)
    other = EMA(_model(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])
    bad = {k: v for k, v in ema.state_dict().items() if k != "shadow.0.bias"}
    with pytest.raises(KeyError, match="0.bias"):
        other.load_state_dict(bad)


def test_model_state_dict_and_applied_to_restore():
    m = _model()
    ema = EMA(m, decay=0.0)  # decay 0: the shadow becomes the current weights at each update
    original = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for k in ema.shadow:
            ema.shadow[k].fill_(0.25)
    full = ema.model_state_dict(m)
    assert set(full) == set(m.state_dict())
    assert torch.all(full["0.weight"] == 0.25) and torch.equal(full["1.weight"], original["1.weight"])
    with ema.applied_to(m):
        assert torch.all(m[2].weight == 0.25)
    for k, v in m.state_dict().items():
        assert torch.equal(v, original[k])


def test_unwraps_ddp_like_wrappers_and_validates_decay():
    m = _model()

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    ema = EMA(Wrapper(m))
    assert set(ema.shadow) == {k for k, p in m.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError):
        EMA(m, decay=1.5)
