"""A deterministic, resumable, rank-aware sampler.

Epoch ``e`` uses the permutation ``randperm(N, seed + e)``; rank ``r`` of ``W`` takes every W-th index starting at
``r`` (like ``DistributedSampler``), after dropping the tail so every rank gets the same count. ``set_epoch(e, start)``
skips the first ``start`` samples of this rank's share, which is how a resumed run continues at exactly the next batch.
The union of the ranks' k-th batches equals the k-th batch of a single-process run with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        if num_samples <= 0:
            raise ValueError("ResumableSampler: the dataset is empty")
        self.num_samples = num_samples
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.per_rank = num_samples // world_size
        if self.per_rank == 0:
            raise ValueError(f"ResumableSampler: {num_samples} samples cannot be split over {world_size} ranks")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``start`` samples."""
        self.epoch, self.start = epoch, start

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
