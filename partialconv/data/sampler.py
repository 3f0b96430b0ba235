"""The one sampler of train and eval: order a function of (seed, epoch), exact eval split, mid-epoch restart,
repeated augmentation."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler

__all__ = ["SeededSampler", "sample_seed", "seeded_draws"]


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

    ``repeats=N > 1`` (train only) is repeated augmentation, as torchvision's reference ``RASampler`` (DeiT's): each
    image of the permutation comes N times in a row, so with ``world_size >= N`` its copies go to N different ranks,
    each with its own augmentation seed (``sample_seed(..., repeat)``). The epoch keeps its length (the same steps
    as without repeats): it sees about ``size / N`` distinct images, N times each. ``repeats=1`` is the plain order.
    """

    def __init__(
        self,
        size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        local_batch: int = 1,
        repeats: int = 1,
    ) -> None:
        if repeats < 1 or (repeats > 1 and not shuffle):
            # eval must count every image once; a repeat count below 1 has no meaning
            raise ValueError(f"repeats must be >= 1, and 1 without shuffle; got {repeats} (shuffle={shuffle})")
        self.size, self.rank, self.world, self.shuffle = size, rank, world_size, shuffle
        self.seed, self.local_batch, self.repeats = seed, local_batch, repeats
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def steps_per_epoch(self) -> int:
        if self.shuffle:
            return self.size // (self.local_batch * self.world)
        return math.ceil(len(range(self.rank, self.size, self.world)) / self.local_batch)

    def _indices(self) -> list[int]:
        return [index for index, _ in self._keys()]

    def _keys(self) -> list[tuple[int, int]]:
        """This rank's ``(index, repeat)`` pairs of the epoch, before ``start_step``."""
        if not self.shuffle:
            return [(i, 0) for i in range(self.rank, self.size, self.world)]
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        perm = torch.randperm(self.size, generator=g)
        # The global sequence is each image of the permutation ``repeats`` times in a row, cut to the epoch's
        # whole global batches (repeats thin the images instead of lengthening the epoch, so the schedule's steps
        # stay); global batch k is then the same set of (index, repeat) pairs for any world size.
        total = self.steps_per_epoch() * self.local_batch * self.world
        positions = torch.arange(self.rank, max(total, self.rank), self.world)  # (arange refuses end < start)
        return list(zip(perm[positions // self.repeats].tolist(), (positions % self.repeats).tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = self._keys()[self.start_step * self.local_batch :]
        return iter((i, sample_seed(self.seed, self.epoch, i, r)) for i, r in keys)

    def __len__(self) -> int:
        per_epoch = (
            self.steps_per_epoch() * self.local_batch if self.shuffle else len(range(self.rank, self.size, self.world))
        )
        return max(0, per_epoch - self.start_step * self.local_batch)


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of one sample in one epoch; ``repeat`` numbers its copies under repeated augmentation
    (copy 0 has the plain seed, so runs without repeats keep their augmentation draws)."""
    if repeat == 0:
        return _mix(seed, epoch, index, 1)
    return _mix(seed, epoch, index, 1, repeat)


@contextmanager
def seeded_draws(seed: Optional[int]) -> Iterator[None]:
    """Run the block's torch random draws from ``seed`` (None: unseeded), restoring the caller's stream after.

    What ``fork_rng(devices=[])`` + ``manual_seed`` do for the CPU generator, the only one a sample's augmentation
    draws from, without the other devices' seeding ``manual_seed`` also does: 0.001 instead of about 0.1 ms per
    sample with the CUDA build of torch. The draws are the same."""
    if seed is None:
        yield
        return
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)
