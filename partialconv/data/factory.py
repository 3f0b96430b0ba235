"""The data layer's one entry point: :func:`build_loaders` picks a backend by name (or by what the train path
holds), opens the splits and returns the run's train/val loaders."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from .backends import choose_backend_noting, register_backend
from .datasets import PIL_BACKEND, PIL_FAST_BACKEND, TURBO_BACKEND
from .errors import PARAM_NAMES, DataError, Param
from .gpu_decode import GPU_BACKEND
from .loaders import Loaders, LoaderSpec, resolve_workers, seeded_samplers
from .params import DataParams
from .shards import SHARDS_BACKEND

if TYPE_CHECKING:  # data must not import engine at run time (imports flow engine -> data)
    from ..engine.distributed import DistInfo

__all__ = ["build_loaders"]

# The built-in backends, in the order "auto" asks them (backends.choose_backend: the backend that recognises the
# data, e.g. shards; then turbo when its decoder loads; else backends.DEFAULT_BACKEND).
for _backend in (PIL_BACKEND, GPU_BACKEND, PIL_FAST_BACKEND, SHARDS_BACKEND, TURBO_BACKEND):
    register_backend(_backend)


def build_loaders(params: DataParams, dist: DistInfo) -> Loaders:
    """Train loader (seeded, split over ranks, ``params.batch_size`` global) and exact val loader (no duplicates),
    built by the backend ``params.backend`` names (or, for ``"auto"``, the one that reads ``params.train_dir``).

    Raises :class:`~partialconv.data.errors.DataError` naming the directory or parameter at fault."""
    if not isinstance(params, DataParams):
        raise TypeError(
            f"build_loaders takes DataParams, not {type(params).__name__} "
            "(from train.py's config: partialconv.engine.data_setup.loaders_from_config(cfg, dist))"
        )
    backend, notes = choose_backend_noting(params)
    if params.batch_size % dist.world_size:
        raise DataError(
            Param("batch_size", params.batch_size), f" must be divisible by the {dist.world_size} processes"
        )
    workers = resolve_workers(params.workers, dist.is_main, PARAM_NAMES["workers"])
    params = replace(params, backend=backend.name, workers=workers)
    splits = backend.open_splits(params)
    local_batch = params.batch_size // dist.world_size
    spec = {"local_batch": local_batch, "device": dist.device, "distributed": dist.world_size > 1}
    train_sampler, val_sampler = seeded_samplers(len(splits.train), len(splits.val), params, dist, local_batch)
    loaders = Loaders(
        train=backend.make_loader(splits.train, train_sampler, LoaderSpec(params, train=True, **spec)),
        val=backend.make_loader(splits.val, val_sampler, LoaderSpec(params, train=False, **spec)),
        train_sampler=train_sampler,
        classes=list(splits.classes),
        backend=backend.name,
        identity=splits.identity,
    )
    if dist.is_main:
        for message in (*notes, *splits.warnings):
            print(f"warning: {message}", file=sys.stderr, flush=True)
    return loaders
