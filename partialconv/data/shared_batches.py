"""uint8 batches handed from DataLoader workers to the main process in shared-memory slots reused across steps.

torch's DataLoader collates each batch of a worker into a new shared-memory segment. The kernel allocates and
zero-fills its pages as they are first written (tmpfs: about 3.6 ms for the 4.8 MB of a batch of 32 uint8 crops of
224 px on a 2-core EPYC VM, 0.11 ms per image, most of what a ``turbo`` worker spends beyond decoding and resizing),
and the main process maps them and frees them again. Here the main process makes a pool of slots once, before its
workers start (sparse: a slot's pages are allocated the first time a worker fills it, then kept):

- the batch sampler gives each batch it hands to a worker a slot that no tensor of the main process refers to (its
  storage use count, read as :mod:`~partialconv.data.batch_buffers` reads it) and no other batch in flight was given;
- the worker's collate stacks the images into that slot and returns the slot's number and the batch's shape;
- the loader's iterator, in the main process, turns them into a view of the slot.

A batch for which no slot is free when the DataLoader asks for it (a consumer keeping old batches), or whose images
do not fit (a size or type other than the split's crops), is collated as before, into fresh shared memory: the
slots change where the pixels travel, never which pixels a batch holds.

Where the slots, all filled, would take more than a quarter of the free shared memory (:func:`room_for_slots`: a
container's /dev/shm is often 64 MB), none are made and the loader is torch's as before. For a CPU device only: on
CUDA the pin-memory thread copies each batch into pinned memory, and reusing a slot would need the asynchronous
copies from it tracked as well (left for a GPU session to measure).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .batch_buffers import storage_use_count, use_count_alone

__all__ = ["SharedBatchLoader", "SlotBatch", "SlotPool", "room_for_slots", "shared_memory_free", "slot_count"]

PREFETCH_FACTOR = 2  # torch's default: batches in flight per worker
# Beyond the batches in flight: the batch the DataLoader has just received (its slot is still reserved when it asks
# the sampler for the next batch), the consumer's current one, and one more for a loop that keeps the previous batch.
EXTRA_SLOTS = 3
SHARED_MEMORY_DIR = "/dev/shm"  # where torch's shared-memory segments live (shm_open)


def _new_slot(slot_bytes: int) -> Tensor:
    # _new_shared maps a new shared-memory file without touching its pages: unused slots cost no memory
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(slot_bytes))


class SlotPool:
    """``count`` shared uint8 buffers of ``slot_bytes`` each, made in the main process; which are free is decided
    there alone (:meth:`take`), from the slots' storage use counts and the batches in flight."""

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.slots = [_new_slot(slot_bytes)]
        self.alone = use_count_alone(self.slots[0])
        if self.alone is not None:
            self.slots += [_new_slot(slot_bytes) for _ in range(count - 1)]
        self._in_flight: set[int] = set()
        self.taken = 0  # batches given a slot
        self.missed = 0  # batches collated into fresh shared memory: no slot was free

    @property
    def usable(self) -> bool:
        """Whether the use counts can be read here (else nothing is ever taken)."""
        return self.alone is not None

    def take(self) -> Optional[int]:
        """A free slot, now reserved for the batch about to be handed to a worker; None if none is free."""
        if self.alone is not None:
            for i, slot in enumerate(self.slots):
                if i not in self._in_flight and storage_use_count(slot) == self.alone:
                    self._in_flight.add(i)
                    self.taken += 1
                    return i
        self.missed += 1
        return None

    def new_iteration(self) -> None:
        """Forget the reservations of batches that will never be received: those of an iteration left before its
        end (the DataLoader has drained them by the time a new iteration asks for its first batch)."""
        self._in_flight.clear()

    def receive(self, batch: SlotBatch) -> tuple[Tensor, Tensor, int]:
        """The ``(images, targets, bad)`` batch a worker wrote into its slot: images a (B, C, H, W) uint8 view of
        the slot in channels_last memory (the layout ``collate_hwc_uint8`` gives); the slot stays in use until
        nothing refers to that view any more."""
        self._in_flight.discard(batch.slot)
        if batch.collated is not None:
            return batch.collated
        n, h, w, c = batch.shape
        images = self.slots[batch.slot][: n * h * w * c].view(n, h, w, c).permute(0, 3, 1, 2)
        return images, torch.tensor(batch.targets, dtype=torch.long), batch.bad


@dataclass
class SlotBatch:
    """What a worker returns for a batch that was given a slot: the batch's (N, H, W, C) shape, targets and bad
    count with the pixels in the slot, or ``collated``, the usual batch, when its images did not fit."""

    slot: int
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    targets: tuple[int, ...] = ()
    bad: int = 0
    collated: Optional[tuple[Tensor, Tensor, int]] = None


class _WithSlot(list):
    """A batch's sampler keys, then its samples, with the slot its images go to (None: none was free)."""

    slot: Optional[int] = None


class _SlotBatches(Sampler):
    """Batches of ``batch_size`` keys of ``sampler`` (the last one may be smaller), each with a slot taken when the
    DataLoader asks for it, i.e. when it is about to hand the batch to a worker."""

    def __init__(self, sampler: Sampler, batch_size: int, pool: SlotPool) -> None:
        self.sampler, self.batch_size, self.pool = sampler, batch_size, pool

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _with_slot(self, keys: list) -> _WithSlot:
        batch = _WithSlot(keys)
        batch.slot = self.pool.take()
        return batch

    def __iter__(self) -> Iterator[_WithSlot]:
        # A generator: this runs at the DataLoader's first request of an iteration, after it has collected the
        # batches its workers still had from an iteration left early (torch's _reset), so no worker writes a slot
        # that new_iteration frees.
        self.pool.new_iteration()
        keys = []
        for key in self.sampler:
            keys.append(key)
            if len(keys) == self.batch_size:
                yield self._with_slot(keys)
                keys = []
        if keys:
            yield self._with_slot(keys)


class _SlottedDataset(Dataset):
    """``dataset``'s samples, fetched a batch at a time so that the batch's slot reaches the collate."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[key]

    def __getitems__(self, keys: list) -> _WithSlot:
        samples = _WithSlot(self.dataset[key] for key in keys)
        samples.slot = getattr(keys, "slot", None)
        return samples


class _SlotCollate:
    """In the worker: the batch's (H, W, C) uint8 images stacked into its slot (``collate`` for a batch without a
    slot, or whose images do not fit)."""

    def __init__(self, slots: list[Tensor], collate: Callable[[list], tuple[Tensor, Tensor, int]]) -> None:
        self.slots = slots
        self.collate = collate

    def __call__(self, samples: list) -> Any:
        slot = getattr(samples, "slot", None)
        if slot is None:
            return self.collate(samples)
        good = [s for s in samples if s is not None]
        images = [torch.as_tensor(s[0]) for s in good]
        shape = tuple(images[0].shape) if images else ()
        if (
            len(shape) != 3
            or any(im.dtype != torch.uint8 or tuple(im.shape) != shape for im in images)
            or len(images) * images[0].numel() > self.slots[slot].numel()
        ):
            return SlotBatch(slot, collated=self.collate(samples))
        n = len(images)
        torch.stack(images, out=self.slots[slot][: n * images[0].numel()].view(n, *shape))
        return SlotBatch(slot, (n, *shape), tuple(int(s[1]) for s in good), len(samples) - n)


class SharedBatchLoader:
    """Batches ``(images, targets, bad)`` of ``dataset`` in ``sampler``'s order, ``batch_size`` keys each, decoded
    by DataLoader workers into :class:`SlotPool` slots (the module docstring); ``loader_kwargs`` go to the
    DataLoader (workers, start method, worker_init_fn...). Iterates and has ``len()`` and ``.dataset`` like the
    DataLoader it wraps (``.loader``)."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: Sampler,
        batch_size: int,
        pool: SlotPool,
        collate: Callable[[list], tuple[Tensor, Tensor, int]],
        **loader_kwargs: Any,
    ) -> None:
        self.dataset = dataset
        self.pool = pool
        self.loader = DataLoader(
            _SlottedDataset(dataset),
            batch_sampler=_SlotBatches(sampler, batch_size, pool),
            collate_fn=_SlotCollate(pool.slots, collate),
            prefetch_factor=PREFETCH_FACTOR,
            **loader_kwargs,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        for batch in self.loader:
            # (the generator keeps no reference to the view it yields: the consumer's are the slot's only ones)
            yield self.pool.receive(batch) if isinstance(batch, SlotBatch) else batch


def slot_count(workers: int) -> int:
    """Slots for a loader with ``workers`` workers: its batches in flight, and :data:`EXTRA_SLOTS`."""
    return workers * PREFETCH_FACTOR + EXTRA_SLOTS


def shared_memory_free() -> Optional[int]:
    """Bytes free in :data:`SHARED_MEMORY_DIR`; None where it cannot be read."""
    try:
        stat = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def room_for_slots(count: int, slot_bytes: int) -> bool:
    """Whether ``count`` slots, once all filled, take at most a quarter of the free shared memory. Filled slots stay
    allocated while the other split's loader runs, and a batch that finds no free slot still needs a segment of its
    own; a worker writing to a full /dev/shm (Docker's default size is 64 MB) dies of SIGBUS, so where the slots
    would crowd it the loader collates as torch does."""
    free = shared_memory_free()
    return free is not None and count * slot_bytes * 4 <= free
