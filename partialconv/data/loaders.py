"""What every backend's loaders share: the result type, worker count, seeded samplers, the skipping collate, the
default DataLoader, and :func:`batch_to_device` (the one step between a loader's batch and the model).

The sample protocol (docs/data_formats.md): the sampler yields ``(index, seed)`` keys; a dataset maps a key to
``(image, target)``, or to ``None`` for a bad sample under ``on_bad_image="skip"``; a loader yields
``(images, targets, bad_count)`` batches.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .batch_buffers import float_batch
from .errors import DataError, Param
from .params import DataParams
from .presets import IMAGENET_MEAN, IMAGENET_STD
from .sampler import SeededSampler
from .shared_batches import SharedBatchLoader, SlotPool, room_for_slots, slot_count
from .worker_signals import ignore_stop_signals, worker_start_context

if TYPE_CHECKING:  # data must not import engine at run time (imports flow engine -> data)
    from ..engine.distributed import DistInfo

__all__ = [
    "Batch",
    "LoaderSpec",
    "Loaders",
    "batch_to_device",
    "collate_hwc_uint8",
    "collate_skipping_bad",
    "cpus_per_local_rank",
    "normalize_images",
    "resolve_workers",
    "seeded_samplers",
    "torch_loader",
]

Batch = tuple[Tensor, Tensor, int]  # (images, targets, bad_count): what every loader yields


@dataclass
class Loaders:
    """A run's loaders: ``train``/``val`` yield :data:`Batch` and have ``len()`` (batches) and ``.dataset``."""

    train: Iterable[Batch]
    val: Iterable[Batch]
    train_sampler: SeededSampler
    classes: list[str]
    backend: str = ""  # the backend that built them (the one picked for "auto")
    identity: str = ""  # the data beyond its paths (Splits.identity: shard index fingerprints), "" if unknown


@dataclass(frozen=True)
class LoaderSpec:
    """What a backend builds one split's loader with (the same for every backend)."""

    params: DataParams  # workers resolved to a count
    local_batch: int  # this process's share of params.batch_size
    device: torch.device  # where the model runs (pinned memory on CUDA; the GPU backend decodes there)
    train: bool
    distributed: bool = False  # one rank of several: workers start from the fork server (worker_start_context)


def cpus_per_local_rank() -> int:
    """The CPUs this process may run on (its affinity mask: cgroups/cpusets, taskset, SLURM binding) shared by the
    local ranks of this node (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cpus // local)


def resolve_workers(requested: int | None, is_main: bool = True, flag: str = "workers") -> int:
    """DataLoader workers per process: ``requested`` capped at the CPUs each local rank has (more workers than CPUs
    only add context switches and memory; rank 0 warns once, before torch would warn per loader), or by default
    those CPUs less one for the training process itself. ``flag`` is how the warning names the parameter: each
    program passes its own flag."""
    cpus = cpus_per_local_rank()
    if requested is None:
        return max(0, cpus - 1)
    if requested > cpus:
        if is_main:
            print(
                f"warning: {flag} {requested} is more than the {cpus} CPU(s) available to each process on this node; "
                f"using {cpus}",
                file=sys.stderr,
                flush=True,
            )
        return cpus
    return requested


def seeded_samplers(
    num_train: int, num_val: int, params: DataParams, dist: DistInfo, local_batch: int
) -> tuple[SeededSampler, SeededSampler]:
    """The train sampler (shuffled per epoch, split over ranks in whole local batches, repeated augmentation under
    ``params.ra_sampler``) and the exact val sampler, for every backend; a train set smaller than one global batch
    is refused."""
    if num_train < params.batch_size:
        raise DataError(
            Param("train_dir", params.train_dir), f": {num_train} images, fewer than one batch of {params.batch_size}"
        )
    train_sampler = SeededSampler(
        num_train,
        dist.rank,
        dist.world_size,
        shuffle=True,
        seed=params.seed,
        local_batch=local_batch,
        repeats=params.train_repeats,
    )
    return train_sampler, SeededSampler(num_val, dist.rank, dist.world_size, shuffle=False, seed=params.seed)


def collate_skipping_bad(batch: list[Optional[tuple[Any, int]]]) -> Batch:
    """Stack the good samples; the third element is how many bad ones (``None``) were dropped (counted per epoch)."""
    good = [b for b in batch if b is not None]
    bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    # default_collate stacks tensors straight into shared memory in a worker process; torch.stack's private batch
    # would be copied into shared memory once more when the worker hands it over.
    images = default_collate([torch.as_tensor(b[0]) for b in good])
    targets = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, bad


def collate_hwc_uint8(batch: list[Optional[tuple[Tensor, int]]]) -> Batch:
    """:func:`collate_skipping_bad` for (H, W, C) uint8 samples: the batch is (B, C, H, W) uint8 in channels_last
    memory (a view of the stacked HWC pixels, no transposing copy in the worker); :func:`batch_to_device` turns it
    into the normalised float batch on the device."""
    images, targets, bad = collate_skipping_bad(batch)
    if images.dim() == 4:
        images = images.permute(0, 3, 1, 2)
    return images, targets, bad


def torch_loader(dataset: Dataset, sampler: SeededSampler, spec: LoaderSpec) -> Iterable[Batch]:
    """The default loader of a backend whose dataset follows the sample protocol: torch's DataLoader, decoding in
    ``spec.params.workers`` worker processes, batches collated by the dataset's ``collate_fn`` attribute if it has
    one (:func:`collate_hwc_uint8` for uint8 pipelines), else :func:`collate_skipping_bad`. uint8 crops for a CPU
    device travel from the workers in shared-memory slots reused across steps
    (:class:`~partialconv.data.shared_batches.SharedBatchLoader`)."""
    workers = spec.params.workers or 0
    collate = getattr(dataset, "collate_fn", collate_skipping_bad)
    common: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=spec.device.type == "cuda",
        persistent_workers=workers > 0,
        # Starting an iteration draws the workers' base seed; from the global RNG that draw would shift the model's
        # random stream (dropout) between a straight run and one resumed mid-epoch or with persistent workers.
        # Augmentation is seeded per sample (SeededSampler), so the base seed itself does not matter.
        generator=torch.Generator(),
        worker_init_fn=ignore_stop_signals,
        multiprocessing_context=worker_start_context(spec.distributed) if workers else None,
    )
    crop = spec.params.train_crop_size if spec.train else spec.params.val_crop_size
    slot_bytes = spec.local_batch * crop * crop * 3
    slots = slot_count(workers)
    if workers and spec.device.type == "cpu" and collate is collate_hwc_uint8 and room_for_slots(slots, slot_bytes):
        pool = SlotPool(slots, slot_bytes)
        if pool.usable:
            return SharedBatchLoader(dataset, sampler, spec.local_batch, pool, collate, **common)
    return DataLoader(
        dataset, batch_size=spec.local_batch, sampler=sampler, collate_fn=collate, drop_last=False, **common
    )


_NORMALIZE_CACHE: dict[torch.device, tuple[Tensor, Tensor]] = {}
_TILED_CACHE: dict[tuple[torch.device, int, bool], tuple[Tensor, Tensor]] = {}


def _shift_scale(device: torch.device) -> tuple[Tensor, Tensor]:
    """(-mean/std, 1/(255 std)) per channel, float32 on ``device`` (computed in float64 once per device)."""
    if device not in _NORMALIZE_CACHE:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        _NORMALIZE_CACHE[device] = (
            (-mean / std).to(device, torch.float32),
            (1 / (255 * std)).to(device, torch.float32),
        )
    return _NORMALIZE_CACHE[device]


def _tiled_shift_scale(device: torch.device, repeat: int, interleaved: bool) -> tuple[Tensor, Tensor]:
    """:func:`_shift_scale` along one row of ``3 * repeat`` values: each channel's value ``repeat`` times in turn
    (a CHW image) or the three values interleaved ``repeat`` times (a row of HWC pixels). Cached: a run's batches
    have one or two shapes."""
    key = (device, repeat, interleaved)
    if key not in _TILED_CACHE:
        shift, scale = _shift_scale(device)
        tile = (lambda t: t.repeat(repeat)) if interleaved else (lambda t: t.repeat_interleave(repeat))
        _TILED_CACHE[key] = (tile(shift), tile(scale))
    return _TILED_CACHE[key]


def normalize_images(
    images: Tensor, memory_format: torch.memory_format = torch.contiguous_format, fused: Optional[bool] = None
) -> Tensor:
    """(B, 3, H, W) pixels in [0, 255] (uint8, or float for the GPU backend's resampled crops) -> float32
    ``(x / 255 - mean) / std`` with the ImageNet mean/std, in ``memory_format``.

    ``fused`` (default: on CUDA) is one kernel, ``addcmul(-mean/std, x, 1/(255 std))`` with the uint8 -> float
    conversion inside it. CPU kernels broadcast a per-channel operand poorly (4-6x slower than a plain pass) and
    copy a channels_last batch into contiguous memory slowly (one strided gather of all channels at once, about
    half the cost of the whole), so there the conversion is one pass per channel plane (contiguous output: a strided
    read of that channel, written contiguously) or one plain pass (channels_last), and the affine map a second pass
    over whole rows whose per-channel operands are tiled to the row's layout. The same values as the fused kernel's
    on the CPU, bit for bit."""
    shift, scale = _shift_scale(images.device)
    if fused is None:
        fused = images.device.type == "cuda"
    if fused:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
        return torch.addcmul(shift.view(1, -1, 1, 1), images, scale.view(1, -1, 1, 1), out=out)
    n, c, h, w = images.shape
    out = float_batch(images.shape, memory_format, images.device)  # a buffer reused across steps: no page faults
    if out.is_contiguous():
        for channel in range(c):
            out[:, channel].copy_(images[:, channel])
        rows = out.view(n, c * h * w)
        tiled_shift, tiled_scale = _tiled_shift_scale(images.device, h * w, interleaved=False)
    else:  # channels_last: rows of (W, C) pixels
        out.copy_(images)
        rows = out.permute(0, 2, 3, 1).reshape(n * h, w * c)  # a view: the memory is NHWC-contiguous
        tiled_shift, tiled_scale = _tiled_shift_scale(images.device, w, interleaved=True)
    torch.addcmul(tiled_shift, rows, tiled_scale, out=rows)
    return out


def batch_to_device(
    images: Tensor, targets: Tensor, device: torch.device, channels_last: bool
) -> tuple[Tensor, Tensor]:
    """Non-blocking host-to-device copy (pinned memory makes it asynchronous on CUDA). A uint8 batch (the fast
    ``pil`` pipeline's) is copied as uint8 (a quarter of the float bytes) and converted + normalised on the device
    by :func:`normalize_images`; a float batch is already normalised."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    targets = targets.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        if images.dim() != 4:  # an all-bad batch: torch.empty(0)
            return images.to(device, torch.float32), targets
        return normalize_images(images.to(device, non_blocking=True), fmt), targets
    return images.to(device, non_blocking=True, memory_format=fmt), targets
