"""Learning-rate schedules: warm-up, a cosine that really decays, the official constant plateau."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.training.schedule import lr_at, set_lr


def test_warmup_is_linear_from_init_lr():
    lrs = [lr_at(s, 1e-3, 100, warmup_steps=10, warmup_init_lr=1e-5) for s in range(10)]
    assert lrs[-1] == pytest.approx(1e-3)
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)
    assert lrs[0] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 10)


def test_cosine_decays_to_min_lr_monotonically():
    lrs = [lr_at(s, 1.0, 50, warmup_steps=5, schedule="cosine", min_lr=0.1) for s in range(60)]
    after = lrs[5:]
    assert after[0] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert lrs[50] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.1)
    mid = lr_at(5 + 45 // 2, 1.0, 50, warmup_steps=5, min_lr=0.1)
    assert mid == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 22 / 45)))


def test_constant_schedule_is_the_official_plateau():
    assert [lr_at(s, 1e-4, 10, warmup_steps=2, schedule="constant") for s in (2, 5, 9, 100)] == [1e-4] * 4


def test_unknown_schedule_and_set_lr():
    with pytest.raises(ValueError, match="schedule"):
        lr_at(5, 1.0, 10, schedule="linear")
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0)
    set_lr(opt, 0.125)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]
