"""Classification data: ImageFolder datasets, presets, the seeded sampler, the demo set and loader building."""

from .datasets import ClassificationFolder, DataError, check_image_folders
from .demo import ensure_demo_dataset, make_demo_dataset
from .loaders import Loaders, batch_to_device, build_loaders, resolve_data_dirs
from .presets import eval_transform, train_transform
from .sampler import SeededSampler

__all__ = [
    "ClassificationFolder",
    "DataError",
    "Loaders",
    "SeededSampler",
    "batch_to_device",
    "build_loaders",
    "check_image_folders",
    "ensure_demo_dataset",
    "eval_transform",
    "make_demo_dataset",
    "resolve_data_dirs",
    "train_transform",
]
