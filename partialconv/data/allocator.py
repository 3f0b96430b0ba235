"""Memory-allocator settings for decode workers (PIL path), applied per worker process from ``worker_init_fn``.

PIL allocates every decoded and resized image afresh (a 500x375 RGB image is ~750 KB). With glibc's defaults a
freed block that size is often returned to the kernel (heap trimming, or munmap above the mmap threshold) and the
next image faults its pages in again. Two fixes, selectable here so ``benchmarks/train_throughput.py --data
loader-only --malloc ...`` can measure them side by side:

- ``glibc``: ``mallopt(M_TRIM_THRESHOLD, 128 MiB)`` and ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (glibc's maximum on
  64-bit), the same as launching with ``MALLOC_TRIM_THRESHOLD_=134217728 MALLOC_MMAP_THRESHOLD_=33554432``;
- ``pillow``: Pillow keeps up to 32 freed image blocks for reuse (``PILLOW_BLOCKS_MAX=32``).

Both are no-ops where they do not apply (non-glibc C libraries).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Optional

__all__ = ["ALLOCATOR_SETTINGS", "AllocatorWorkerInit", "apply_allocator_setting"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_TRIM_BYTES = 128 << 20
_MMAP_BYTES = 32 << 20  # glibc rejects more than HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit
_PILLOW_BLOCKS = 32

# The equivalent environment of a launch, for documentation and results files.
ALLOCATOR_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "glibc": {"MALLOC_TRIM_THRESHOLD_": str(_TRIM_BYTES), "MALLOC_MMAP_THRESHOLD_": str(_MMAP_BYTES)},
    "pillow": {"PILLOW_BLOCKS_MAX": str(_PILLOW_BLOCKS)},
}


def apply_allocator_setting(name: str) -> bool:
    """Apply ``name`` (a key of :data:`ALLOCATOR_SETTINGS`) to this process; True if anything changed."""
    if name not in ALLOCATOR_SETTINGS:
        raise ValueError(f"allocator setting must be one of {', '.join(ALLOCATOR_SETTINGS)}; got {name!r}")
    if name == "glibc":
        libc_name = ctypes.util.find_library("c")
        try:
            mallopt = ctypes.CDLL(libc_name).mallopt
        except (OSError, AttributeError, TypeError):
            return False
        return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)) & bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES))
    if name == "pillow":
        from PIL import Image

        Image.core.set_blocks_max(_PILLOW_BLOCKS)
        return True
    return False


class AllocatorWorkerInit:
    """A picklable DataLoader ``worker_init_fn`` applying an allocator setting, then calling ``chained`` if given."""

    def __init__(self, name: str, chained: Optional[Callable[[int], None]] = None) -> None:
        if name not in ALLOCATOR_SETTINGS:
            raise ValueError(f"allocator setting must be one of {', '.join(ALLOCATOR_SETTINGS)}; got {name!r}")
        self.name = name
        self.chained = chained

    def __call__(self, worker_id: int) -> None:
        apply_allocator_setting(self.name)
        if self.chained is not None:
            self.chained(worker_id)
