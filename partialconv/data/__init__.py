"""Classification data: one entry point (:func:`build_loaders`, taking :class:`DataParams`), a registry of backends
(``pil``, ``gpu``; :func:`register_backend` adds a format), the seeded sampler, presets and the demo set.

The sample protocol every backend follows is in :mod:`partialconv.data.backends` and docs/data_formats.md.
"""

from .backends import Backend, Splits, backend_names, get_backend, register_backend, unregister_backend
from .datasets import ClassificationFolder
from .demo import ensure_demo_dataset, make_demo_dataset
from .errors import BadImageError, DataError
from .factory import build_loaders
from .image_folder import check_image_folders
from .loaders import Batch, Loaders, LoaderSpec, batch_to_device, collate_skipping_bad, torch_loader
from .params import DataParams
from .presets import eval_transform, train_transform
from .sampler import SeededSampler

__all__ = [
    "Backend",
    "BadImageError",
    "Batch",
    "ClassificationFolder",
    "DataError",
    "DataParams",
    "LoaderSpec",
    "Loaders",
    "SeededSampler",
    "Splits",
    "backend_names",
    "batch_to_device",
    "build_loaders",
    "check_image_folders",
    "collate_skipping_bad",
    "ensure_demo_dataset",
    "eval_transform",
    "get_backend",
    "make_demo_dataset",
    "register_backend",
    "torch_loader",
    "train_transform",
    "unregister_backend",
]
