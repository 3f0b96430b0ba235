"""Float batch buffers reused across steps on a CPU device.

Normalising a uint8 batch on the CPU writes a new float32 batch (19 MB at 32 x 3 x 224 x 224). glibc serves an
allocation that size from fresh pages (mmap above its threshold, or a heap that grew because smaller allocations
split the freed batch), and the kernel zero-fills each 4 KB page on first touch: about 4,700 page faults per batch,
as much system time as the normalisation's arithmetic. Reusing the previous step's buffer once nothing refers to it
any more removes that cost (the main process's CPU per image in ``benchmarks.train_throughput --data loader-only``:
0.38-0.42 -> 0.18-0.22 ms, docs/performance.md).

"Nothing refers to it" is decided by the buffer's storage use count (tensors, views, autograd's saved tensors all
hold the storage), read with ``torch._C._storage_Use_Count``, which torch's own CUDA-graph trees use for the same
question. The count's meaning is checked once per process on a scratch tensor; where it is missing or behaves
otherwise, every call allocates as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor

__all__ = ["BatchBuffers", "float_batch", "storage_use_count", "use_count_alone"]


def storage_use_count(t: Tensor) -> int:
    """How many tensors (and other owners) hold ``t``'s storage."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def use_count_alone(t: Optional[Tensor] = None) -> Optional[int]:
    """The storage use count read for ``t`` (default: a new tensor) while nothing else refers to it, if the count
    rises with a view and falls back when the view is gone; None otherwise (then nothing may be reused)."""
    if not hasattr(torch._C, "_storage_Use_Count"):
        return None
    try:
        t = torch.empty(4) if t is None else t
        alone = storage_use_count(t)
        view = t[1:]
        with_view = storage_use_count(t)
        del view
        return alone if with_view == alone + 1 and storage_use_count(t) == alone else None
    except Exception:  # noqa: BLE001 - a private API: any failure means "do not reuse"
        return None


class BatchBuffers:
    """Up to ``per_shape`` buffers for each of the ``shapes`` most recent (shape, memory format, device) keys.

    A training loop holds its current batch while it asks for the next one (``images = batch_to_device(...)``
    rebinds only after the call), so two buffers per shape let every step reuse one. A shape seen once (a last,
    smaller batch) pushes the oldest key out after ``shapes`` others."""

    def __init__(self, per_shape: int = 2, shapes: int = 2) -> None:
        self.per_shape = per_shape
        self.shapes = shapes
        self._pool: OrderedDict[tuple, list[Tensor]] = OrderedDict()
        self._alone = use_count_alone()  # None: reuse nothing

    def empty(self, shape: torch.Size, memory_format: torch.memory_format, device: torch.device) -> Tensor:
        """A float32 tensor of ``shape`` in ``memory_format``, uninitialised: a free pooled buffer if there is one."""
        if self._alone is None:
            return torch.empty(shape, dtype=torch.float32, device=device, memory_format=memory_format)
        key = (tuple(shape), memory_format, torch.device(device))
        buffers = self._pool.pop(key, [])
        self._pool[key] = buffers  # most recently used last
        while len(self._pool) > self.shapes:
            self._pool.popitem(last=False)
        free = next((b for b in buffers if storage_use_count(b) == self._alone), None)  # held by the pool only
        if free is None:
            free = torch.empty(shape, dtype=torch.float32, device=device, memory_format=memory_format)
            if len(buffers) < self.per_shape:
                buffers.append(free)
        # A new tensor on the same storage: the caller's references then count (one to the pooled tensor itself
        # would not, as the count is of tensors, not of Python references)
        return free.detach()


_CPU_BUFFERS = BatchBuffers()


def float_batch(shape: torch.Size, memory_format: torch.memory_format, device: torch.device) -> Tensor:
    """The float32 output of a CPU normalisation: reused from the process's pool (see module docstring)."""
    return _CPU_BUFFERS.empty(shape, memory_format, device)
