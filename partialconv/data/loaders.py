"""DataLoaders of a run from its resolved config: one place that turns flags into train/val loaders."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from .datasets import ClassificationFolder, DataError, check_image_folders, collate_skipping_bad, ignored_message
from .demo import ensure_demo_dataset
from .presets import RRC_SCALE, eval_transform, train_transform
from .sampler import SeededSampler
from .worker_signals import ignore_stop_signals

if TYPE_CHECKING:  # data must not import engine at run time (imports flow engine -> data)
    from ..engine.distributed import DistInfo

__all__ = ["Loaders", "batch_to_device", "build_loaders", "cpus_per_local_rank", "resolve_data_dirs", "resolve_workers"]


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: SeededSampler
    classes: list[str]


def resolve_data_dirs(cfg: argparse.Namespace) -> None:
    """Fill ``cfg.data_train/data_val`` with the embedded demo set when no data was given (made once)."""
    if cfg.data_train is None:
        train, val = ensure_demo_dataset()
        cfg.data_train, cfg.data_val = str(train), str(val)


def cpus_per_local_rank() -> int:
    """The CPUs this process may run on (its affinity mask: cgroups/cpusets, taskset, SLURM binding) shared by the
    local ranks of this node (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cpus // local)


def resolve_workers(requested: int | None, is_main: bool = True, flag: str = "-j/--workers") -> int:
    """DataLoader workers per process: ``requested`` capped at the CPUs each local rank has (more workers than CPUs
    only add context switches and memory; rank 0 warns once, before torch would warn per loader), or by default
    those CPUs less one for the training process itself."""
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


def _loader(dataset, sampler: SeededSampler, batch: int, cfg: argparse.Namespace, dist: DistInfo) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        collate_fn=collate_skipping_bad,
        drop_last=False,
        # Starting an iteration draws the workers' base seed; from the global RNG that draw would shift the model's
        # random stream (dropout) between a straight run and one resumed mid-epoch or with persistent workers.
        # Augmentation is seeded per sample (SeededSampler), so the base seed itself does not matter.
        generator=torch.Generator(),
        worker_init_fn=ignore_stop_signals,
    )


def seeded_samplers(
    num_train: int, num_val: int, cfg: argparse.Namespace, dist: DistInfo, local_batch: int
) -> tuple[SeededSampler, SeededSampler]:
    """The train sampler (shuffled per epoch, split over ranks in whole local batches) and the exact val sampler, for
    either data backend; a train set smaller than one global batch is refused."""
    if num_train < cfg.batch_size:
        raise DataError(f"--data_train {cfg.data_train}: {num_train} images, fewer than one batch of {cfg.batch_size}")
    train_sampler = SeededSampler(
        num_train, dist.rank, dist.world_size, shuffle=True, seed=cfg.seed, local_batch=local_batch
    )
    return train_sampler, SeededSampler(num_val, dist.rank, dist.world_size, shuffle=False, seed=cfg.seed)


def build_loaders(cfg: argparse.Namespace, dist: DistInfo) -> Loaders:
    """Train loader (seeded, split over ranks, ``cfg.batch_size`` global) and exact val loader (no duplicates)."""
    classes = check_image_folders(cfg.data_train, cfg.data_val)
    cfg.workers = resolve_workers(cfg.workers, dist.is_main)  # the count used, also in the run's config.yaml
    if cfg.batch_size % dist.world_size:
        raise DataError(f"-b/--batch-size {cfg.batch_size} must be divisible by the {dist.world_size} processes")
    local_batch = cfg.batch_size // dist.world_size
    if cfg.data_backend == "gpu":
        from .gpu_decode import build_gpu_loaders  # only the GPU path needs torchvision.io

        if cfg.train_min_scale != RRC_SCALE[0]:
            raise DataError(f"--train-min-scale {cfg.train_min_scale}: --data-backend gpu crops with scale {RRC_SCALE}")
        loaders = build_gpu_loaders(cfg, dist, classes, local_batch)
        _warn_ignored(loaders, dist)
        return loaders
    train_set = ClassificationFolder(
        cfg.data_train, train_transform(cfg.train_crop_size, cfg.train_min_scale), cfg.on_bad_image
    )
    val_set = ClassificationFolder(
        cfg.data_val, eval_transform(cfg.val_resize_size, cfg.val_crop_size), cfg.on_bad_image
    )
    train_sampler, val_sampler = seeded_samplers(len(train_set), len(val_set), cfg, dist, local_batch)
    loaders = Loaders(
        train=_loader(train_set, train_sampler, local_batch, cfg, dist),
        val=_loader(val_set, val_sampler, local_batch, cfg, dist),
        train_sampler=train_sampler,
        classes=classes,
    )
    _warn_ignored(loaders, dist)
    return loaders


def _warn_ignored(loaders: Loaders, dist: DistInfo) -> None:
    """One warning (rank 0) naming the hidden folders/files that neither split counted."""
    message = ignored_message(loaders.train.dataset.ignored + loaders.val.dataset.ignored)
    if message and dist.is_main:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def batch_to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool):
    """Non-blocking host-to-device copy (pinned memory makes it asynchronous on CUDA)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt), targets.to(device, non_blocking=True)
