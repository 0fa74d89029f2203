"""ResumableSampler: determinism, epochs, rank union = single-process batches, resume at an exact position."""

from __future__ import annotations

import pytest

from vfmtok.training.sampler import ResumableSampler


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]


def test_deterministic_and_epoch_dependent():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(ResumableSampler(10, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_union_of_rank_batches_is_the_single_process_batch(world):
    n, per_rank_batch = 103, 4
    single = ResumableSampler(n, seed=5)
    single.set_epoch(2)
    ranks = []
    for r in range(world):
        s = ResumableSampler(n, rank=r, world_size=world, seed=5)
        s.set_epoch(2)
        ranks.append(_batches(list(s), per_rank_batch))
    global_batches = _batches(list(single), per_rank_batch * world)
    steps = min(len(b) for b in ranks)
    assert steps == (n // world) // per_rank_batch
    for k in range(steps):
        union = sorted(i for r in range(world) for i in ranks[r][k])
        assert union == sorted(global_batches[k])
    everything = [i for r in range(world) for b in ranks[r] for i in b]
    assert len(everything) == len(set(everything))  # ranks never overlap


def test_resume_start_skips_exactly_the_consumed_samples():
    s = ResumableSampler(40, rank=1, world_size=2, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=6)
    assert list(s) == full[6:] and len(s) == len(full) - 6


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="ranks"):
        ResumableSampler(3, world_size=4)
