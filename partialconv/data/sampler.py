"""The one sampler of train and eval: order a function of (seed, epoch), exact eval split, mid-epoch restart."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["SeededSampler", "sample_seed"]


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so nearby (seed, epoch, index) give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SeededSampler(Sampler):
    """Distributed sampler whose order is a function of (seed, epoch) and which yields ``(index, sample_seed)``.

    ``shuffle=True`` (train): a seeded permutation, trimmed so every rank gets the same number of full batches
    (``drop_last`` over the global batch), rank ``r`` taking positions ``r, r+W, r+2W...``; global batch ``k`` is
    then the same set of samples for any world size. ``shuffle=False`` (eval): indices ``r::W`` with no padding, so
    every image is counted exactly once across ranks. ``start_step`` skips the first batches (mid-epoch resume).
    """

    def __init__(
        self,
        size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        local_batch: int = 1,
    ) -> None:
        self.size, self.rank, self.world, self.shuffle = size, rank, world_size, shuffle
        self.seed, self.local_batch = seed, local_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def steps_per_epoch(self) -> int:
        if self.shuffle:
            return self.size // (self.local_batch * self.world)
        return math.ceil(len(range(self.rank, self.size, self.world)) / self.local_batch)

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        perm = torch.randperm(self.size, generator=g).tolist()
        perm = perm[: self.steps_per_epoch() * self.local_batch * self.world]
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self._indices()[self.start_step * self.local_batch :]
        return iter((i, sample_seed(self.seed, self.epoch, i)) for i in indices)

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start_step * self.local_batch)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch."""
    return _mix(seed, epoch, index, 1)
