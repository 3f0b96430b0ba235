"""The distributed train sampler resumed mid-epoch against the one-process order (issue 15, bug 1).

Ranks are simulated in one process: rank r of W, resumed at step s, must yield exactly the samples the one-process
run (same global batch) trains on from global batch s onwards, rank r taking positions r, r+W, ... of that tail.
"""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DataLoader

from partialconv.data.sampler import SeededSampler, sample_seed


def one_process_order(size: int, seed: int, epoch: int, global_batch: int) -> list[int]:
    s = SeededSampler(size, 0, 1, shuffle=True, seed=seed, local_batch=global_batch)
    s.set_epoch(epoch)
    return [i for i, _ in s]


@pytest.mark.parametrize("world,local_batch,size", [(2, 3, 50), (3, 2, 47), (4, 1, 23), (2, 4, 16)])
def test_every_resume_step_of_every_rank_matches_the_one_process_tail(world, local_batch, size):
    seed, epoch = 11, 3
    global_batch = world * local_batch
    order = one_process_order(size, seed, epoch, global_batch)
    steps = size // global_batch
    assert len(order) == steps * global_batch
    for start_step in range(steps + 1):
        tail = order[start_step * global_batch :]
        per_rank = []
        for rank in range(world):
            s = SeededSampler(size, rank, world, shuffle=True, seed=seed, local_batch=local_batch)
            s.set_epoch(epoch, start_step=start_step)
            got = list(s)
            assert [i for i, _ in got] == tail[rank::world], (rank, start_step)
            assert [seed_ for _, seed_ in got] == [sample_seed(seed, epoch, i) for i in tail[rank::world]]
            assert len(s) == len(got) == (steps - start_step) * local_batch
            per_rank.append([i for i, _ in got])
        # the remaining global batches, put together from the ranks, are the one-process batches
        for k in range(steps - start_step):
            merged = sorted(i for r in per_rank for i in r[k * local_batch : (k + 1) * local_batch])
            assert merged == sorted(tail[k * global_batch : (k + 1) * global_batch])


class Keys:
    """A dataset that returns the sampler's key ``(index, sample_seed)`` itself."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def test_resumed_dataloader_batches_are_the_uninterrupted_batches():
    """Through a DataLoader, as train.py uses it: the batches after a resume at step 2 are batches 2.. of an
    uninterrupted epoch, on every rank."""
    world, local_batch, size, epoch = 2, 3, 31, 1
    for rank in range(world):
        full = SeededSampler(size, rank, world, seed=5, local_batch=local_batch)
        full.set_epoch(epoch)
        resumed = SeededSampler(size, rank, world, seed=5, local_batch=local_batch)
        resumed.set_epoch(epoch, start_step=2)
        as_batches = [[int(i) for i in b[0]] for b in DataLoader(Keys(), local_batch, sampler=full)]
        loader = DataLoader(Keys(), local_batch, sampler=resumed)
        got = [[int(i) for i in b[0]] for b in loader]
        assert len(as_batches) == size // (world * local_batch) == 5
        assert got == as_batches[2:] and len(loader) == 3


@pytest.mark.parametrize("world,batch,size", [(2, 2, 7), (3, 1, 5), (2, 3, 4)])
def test_inpainting_sampler_resumed_ranks_continue_the_one_process_stream(world, batch, size):
    """train_inpainting.py's endless sampler: rank r of W resumed at step s yields, step by step, its slice of the
    global batches s, s+1, ... of a one-process run with the same global batch (crossing epoch boundaries)."""
    from partialconv.data.inpainting import InpaintingSampler

    steps = 9  # several passes over the tiny set
    global_batch = world * batch
    one = list(itertools.islice(InpaintingSampler(size, global_batch, 0, 1, seed=4), steps * global_batch))
    for start in (0, 1, 3, 5):
        for rank in range(world):
            s = InpaintingSampler(size, batch, rank, world, seed=4, start_step=start)
            got = list(itertools.islice(s, (steps - start) * batch))
            expected = [
                key
                for k in range(start, steps)
                for key in one[k * global_batch + rank * batch : k * global_batch + (rank + 1) * batch]
            ]
            assert got == expected, (rank, start)
