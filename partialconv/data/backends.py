"""The registry of data backends: a name -> how a split's samples are read and batched.

A backend is two functions (plus an optional format check):

- ``open_splits(params) -> Splits``: check ``params.train_dir``/``params.val_dir`` and return the two map-style
  datasets and the class names. A dataset follows the sample protocol: ``dataset[(index, seed)]`` is
  ``(image, target)`` with the augmentation drawn from ``seed`` (``sampler.seeded_draws``), or
  ``None`` for a sample that cannot be read under ``params.on_bad_image == "skip"`` (raise
  :class:`~partialconv.data.errors.BadImageError` under ``"error"``);
- ``make_loader(dataset, sampler, spec)`` -> an iterable of ``(images, targets, bad_count)`` batches with ``len()``
  and ``.dataset``; the default, :func:`~partialconv.data.loaders.torch_loader`, is torch's DataLoader with the
  skipping collate, which serves any dataset that follows the protocol;
- ``detect(path) -> bool`` (optional): whether ``path`` holds this backend's format; ``backend="auto"`` picks the
  first registered backend that says yes, else :data:`DEFAULT_BACKEND`.

Built in (registered by :mod:`partialconv.data.factory`): ``pil`` (:mod:`partialconv.data.datasets`) and ``gpu``
(:mod:`partialconv.data.gpu_decode`). A new format is a sibling module that calls :func:`register_backend`;
docs/data_formats.md walks through one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torch.utils.data import Dataset

from .errors import DataError, Param
from .loaders import Batch, LoaderSpec, torch_loader
from .params import DataParams
from .sampler import SeededSampler

__all__ = [
    "DEFAULT_BACKEND",
    "Backend",
    "Splits",
    "backend_names",
    "choose_backend",
    "get_backend",
    "register_backend",
    "is_url",
    "unregister_backend",
]

DEFAULT_BACKEND = "pil"  # what "auto" falls back to: the ImageFolder layout, whose checks explain a wrong path

_BACKENDS: dict[str, Backend] = {}


@dataclass(frozen=True)
class Splits:
    """What a backend's ``open_splits`` returns."""

    train: Dataset
    val: Dataset
    classes: list[str]  # index = target
    warnings: Sequence[str] = ()  # printed once by rank 0 as "warning: ..." (e.g. the hidden files a scan skipped)
    identity: str = ""  # what the data is, beyond its paths (e.g. the shard indexes' fingerprints); "" if unknown


@dataclass(frozen=True)
class Backend:
    name: str
    open_splits: Callable[[DataParams], Splits]
    make_loader: Callable[[Dataset, SeededSampler, LoaderSpec], Iterable[Batch]] = torch_loader
    detect: Optional[Callable[[Path], bool]] = None
    help: str = ""  # one line for --data-backend's help
    reads_urls: bool = False  # paths may be URLs (scheme://...): detect then gets the URL as a str


def is_url(path: str) -> bool:
    """Whether a data path is a URL (``scheme://...``, ``file://`` too: read through fsspec like any other)."""
    return "://" in str(path)


def register_backend(backend: Backend, replace: bool = False) -> Backend:
    """Make ``backend`` available by its name (``replace`` an existing one only when asked)."""
    if backend.name == "auto" or not backend.name.isidentifier():
        raise ValueError(f"backend name must be an identifier other than 'auto'; got {backend.name!r}")
    if backend.name in _BACKENDS and not replace:
        raise ValueError(f"data backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    _BACKENDS.pop(name, None)


def backend_names() -> list[str]:
    """The registered names, in registration order."""
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise DataError(Param("backend", name), f": unknown (registered: {', '.join(_BACKENDS) or 'none'}, or auto)")
    return _BACKENDS[name]


def choose_backend(params: DataParams) -> Backend:
    """``params.backend`` by name; for ``"auto"``, the first backend whose ``detect`` recognises what
    ``params.train_dir`` holds, else :data:`DEFAULT_BACKEND`. A URL (either split) is read only by a backend that
    ``reads_urls``."""
    url = next((p for p in (params.train_dir, params.val_dir) if is_url(p)), None)
    if params.backend != "auto":
        backend = get_backend(params.backend)
        if url is not None and not backend.reads_urls:
            readers = [b.name for b in _BACKENDS.values() if b.reads_urls]
            raise DataError(
                Param("backend", backend.name),
                f" reads local paths, not {url} (URLs are read by: {', '.join(readers) or 'none'}, or auto)",
            )
        root = Path(params.train_dir)
        if url is None and not (backend.detect is not None and backend.detect(root)):
            other = next((b for b in _BACKENDS.values() if b.detect is not None and b.detect(root)), None)
            if other is not None:  # e.g. pil on a shard directory: say so instead of "no class folders"
                raise DataError(
                    Param("train_dir", root), f" holds {other.name} data, not {backend.name}'s: use ",
                    Param("backend", other.name), " or auto",
                )  # fmt: skip
        return backend
    for backend in _BACKENDS.values():
        if url is not None and not backend.reads_urls:
            continue
        if backend.detect is not None and backend.detect(params.train_dir if url else Path(params.train_dir)):
            return backend
    if url is not None:
        raise DataError(Param("train_dir", params.train_dir), ": no data backend reads this URL")
    return get_backend(DEFAULT_BACKEND)
