"""train.py's data: its config's flags as the data layer's typed parameters, the loaders built from them, and the
data layer's errors reworded in those flags' names (``--data_train /x: no such directory``).

The data layer (partialconv/data) knows parameters (``train_dir``); the flag names are train.py's, kept here.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator, Optional

from ..data import BadImageError, DataError, DataParams, Loaders, build_loaders, ensure_demo_dataset
from ..data.loaders import resolve_workers
from .cli import one_line
from .distributed import DistInfo

__all__ = [
    "DATA_OPTIONS",
    "DATA_FLAGS",
    "resolve_data_dirs",
    "data_params",
    "data_error_message",
    "data_errors_as_flags",
    "loaders_from_config",
    "drop_last_warning",
]

# Each DataParams field: train.py's config destination that sets it, and the flag its messages name it by.
DATA_OPTIONS: dict[str, tuple[str, str]] = {
    "train_dir": ("data_train", "--data_train"),
    "val_dir": ("data_val", "--data_val"),
    "batch_size": ("batch_size", "-b/--batch-size"),
    "workers": ("workers", "-j/--workers"),
    "backend": ("data_backend", "--data-backend"),
    "train_crop_size": ("train_crop_size", "--train-crop-size"),
    "train_min_scale": ("train_min_scale", "--train-min-scale"),
    "val_resize_size": ("val_resize_size", "--val-resize-size"),
    "val_crop_size": ("val_crop_size", "--val-crop-size"),
    "on_bad_image": ("on_bad_image", "--on-bad-image"),
    "seed": ("seed", "--seed"),
    "channels_last": ("channels_last", "--channels-last"),
    "auto_augment": ("auto_augment", "--auto-augment"),
    "random_erase": ("random_erase", "--random-erase"),
    "ra_sampler": ("ra_sampler", "--ra-sampler"),
    "ra_reps": ("ra_reps", "--ra-reps"),
    "ra_magnitude": ("ra_magnitude", "--ra-magnitude"),
    "augmix_severity": ("augmix_severity", "--augmix-severity"),
    "interpolation": ("interpolation", "--interpolation"),
    "cache_dir": ("data_cache", "--data-cache"),
    "cache_limit_gb": ("data_cache_limit", "--data-cache-limit"),
}
DATA_FLAGS = {field: flag for field, (_, flag) in DATA_OPTIONS.items()}


def resolve_data_dirs(cfg: argparse.Namespace) -> None:
    """Fill ``cfg.data_train/data_val`` with the embedded demo set when no data was given (made once)."""
    if cfg.data_train is None:
        train, val = ensure_demo_dataset()
        cfg.data_train, cfg.data_val = str(train), str(val)


def data_params(cfg: argparse.Namespace) -> DataParams:
    """The data layer's parameters from a resolved config (data dirs already resolved)."""
    return DataParams(**{field: getattr(cfg, dest) for field, (dest, _) in DATA_OPTIONS.items()})


def data_error_message(e: DataError) -> str:
    """``e`` as train.py says it: parameters by their flags, a bad image with the flag that skips it. An error a
    DataLoader worker raised arrives as torch's traceback text: its own message is taken from it."""
    message = one_line(DataError(e.worded(DATA_FLAGS)))
    if isinstance(e, BadImageError):
        message += f" (use {DATA_FLAGS['on_bad_image']} skip)"
    return message


@contextmanager
def data_errors_as_flags() -> Iterator[None]:
    """Re-raise a :class:`~partialconv.data.DataError` as one in train.py's words (:func:`data_error_message`);
    also a decorator."""
    try:
        yield
    except DataError as e:
        raise DataError(data_error_message(e)) from e  # a plain message: worded again, it stays the same


def loaders_from_config(cfg: argparse.Namespace, dist: DistInfo) -> Loaders:
    """train.py's loaders: :func:`~partialconv.data.build_loaders` with the config's data flags, errors naming those
    flags; ``cfg.workers`` becomes the worker count used (so the run's config.yaml records it)."""
    with data_errors_as_flags():
        cfg.workers = resolve_workers(cfg.workers, dist.is_main, DATA_FLAGS["workers"])
        return build_loaders(data_params(cfg), dist)


# The share of the train set an epoch may leave out (the last, partial global batch) before train.py says so.
DROP_LAST_WARN_SHARE = 0.10


def drop_last_warning(num_images: int, batch_size: int, steps: int) -> Optional[str]:
    """The start-of-run warning when the whole global batches of an epoch (``steps`` of ``batch_size``) leave out
    more than :data:`DROP_LAST_WARN_SHARE` of the ``num_images`` train images (None otherwise), with a batch size
    that leaves out fewer: one more step, the set split evenly over it."""
    dropped = num_images - steps * batch_size
    if dropped <= DROP_LAST_WARN_SHARE * num_images:
        return None
    better = num_images // (steps + 1)
    return (
        f"-b/--batch-size {batch_size}: an epoch is {steps} step(s) of {batch_size} of the {num_images} train images; "
        f"the other {dropped} ({100 * dropped / num_images:.0f}%) are left out of every epoch (others each epoch). "
        f"-b {better} would take {steps + 1} steps and leave out {num_images - (steps + 1) * better}"
    )
