"""The parameters of a run's data: what :func:`partialconv.data.build_loaders` takes (no argparse namespace)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .errors import DataError, Param
from .presets import INTERPOLATIONS, RRC_SCALE, policy_interpolations

__all__ = ["DataParams"]


@dataclass(frozen=True)
class DataParams:
    """Train/val data, batching and preprocessing, the same for every backend.

    ``backend`` is a registered backend name (:func:`partialconv.data.backend_names`) or ``"auto"``: the backend
    that recognises what ``train_dir`` holds, else the default image-folder one. Defaults are train.py's.
    """

    train_dir: str
    val_dir: str
    batch_size: int  # global: split over the processes (ranks) of a distributed run
    workers: Optional[int] = None  # DataLoader workers per process; None: the CPUs of each local rank less one
    backend: str = "auto"
    train_crop_size: int = 224
    train_min_scale: float = RRC_SCALE[0]  # RandomResizedCrop's smallest crop area (fraction of the image)
    val_resize_size: int = 256  # the shorter side before the centre crop
    val_crop_size: int = 224
    on_bad_image: str = "skip"  # an undecodable file: "skip" (dropped, counted per batch) or "error"
    seed: int = 0  # data order and per-sample augmentation
    channels_last: bool = False  # memory format of the image batches
    auto_augment: Optional[str] = None  # a torchvision.transforms.v2 policy (presets.AUTO_AUGMENT), None: none
    random_erase: float = 0.0  # RandomErasing probability (0: off)
    ra_sampler: bool = False  # repeated augmentation of the train order (SeededSampler's repeats)
    ra_reps: int = 3  # copies of each image under ra_sampler
    ra_magnitude: int = 9  # RandAugment's magnitude (auto_augment "ra"), torchvision's default
    augmix_severity: int = 3  # AugMix's severity (auto_augment "augmix"), torchvision's default
    interpolation: str = "bilinear"  # resampling of the crop, the eval resize and the policy (presets.INTERPOLATIONS)
    cache_dir: Optional[str] = None  # where shards read from URLs are kept on this node (None: a temp-dir default)
    cache_limit_gb: Optional[float] = None  # the cache's size limit (least recently used shards go first)

    def __post_init__(self) -> None:
        # Paths are kept as text (messages, config files); os.PathLike callers are welcome.
        object.__setattr__(self, "train_dir", str(self.train_dir))
        object.__setattr__(self, "val_dir", str(self.val_dir))
        if self.batch_size < 1:
            raise DataError(Param("batch_size", self.batch_size), " must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise DataError(Param("workers", self.workers), " must be >= 0")
        if self.on_bad_image not in ("skip", "error"):
            raise DataError(Param("on_bad_image", self.on_bad_image), " must be skip or error")
        if self.cache_limit_gb is not None and not self.cache_limit_gb > 0:
            raise DataError(Param("cache_limit_gb", self.cache_limit_gb), " must be > 0")
        if self.ra_reps < 1:
            raise DataError(Param("ra_reps", self.ra_reps), " must be >= 1")
        if not 0 <= self.ra_magnitude <= 30:
            raise DataError(Param("ra_magnitude", self.ra_magnitude), " must be in [0, 30] (RandAugment's 31 bins)")
        if not 1 <= self.augmix_severity <= 10:
            raise DataError(Param("augmix_severity", self.augmix_severity), " must be in [1, 10]")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                Param("interpolation", self.interpolation), f": expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.interpolation not in policy_interpolations(self.auto_augment):
            allowed = ", ".join(policy_interpolations(self.auto_augment))
            policy = Param("auto_augment", self.auto_augment)
            raise DataError(
                Param("interpolation", self.interpolation), ": the ", policy, f" resamples with {allowed} only"
            )

    @property
    def train_repeats(self) -> int:
        """The train sampler's copies of each image per draw (1: no repeated augmentation)."""
        return self.ra_reps if self.ra_sampler else 1

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format
