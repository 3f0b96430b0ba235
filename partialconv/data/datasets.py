"""The ``pil`` backend: ImageFolder datasets decoded with PIL in the DataLoader workers, RGB conversion, a bad-image
policy, per-sample seeded augmentation (torchvision transforms v2, :mod:`partialconv.data.presets`).

Augmentation randomness is a function of (seed, epoch, sample index, copy under --ra-sampler) only: the sampler
(:class:`partialconv.data.sampler.SeededSampler`) hands each index together with its own seed, so a run gives the
same batches whatever the number of workers or ranks, and a resumed run (even mid-epoch) sees exactly the images the
uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from torchvision.datasets import ImageFolder

from .backends import Backend, Splits
from .decode import SampleDecode, split_decoders
from .fast_pil import FastTrainCrop
from .image_folder import LinkReport, check_image_folders, scan_image_folder, scan_messages
from .imageio import open_rgb
from .loaders import collate_hwc_uint8
from .params import DataParams

__all__ = ["PIL_BACKEND", "PIL_FAST_BACKEND", "ClassificationFolder", "FastTrainFolder", "open_image_folders"]


class ClassificationFolder(ImageFolder):
    """``ImageFolder`` that converts every image to RGB and applies the bad-image policy.

    ``__getitem__`` takes an index or an ``(index, seed)`` pair; with a seed, the transform's randomness is drawn
    from a generator seeded with it (the caller's global RNG is left untouched). A sample that cannot be decoded
    returns ``None`` with ``on_bad_image="skip"`` (:func:`~partialconv.data.loaders.collate_skipping_bad` drops and
    counts it) and raises :class:`~partialconv.data.errors.BadImageError` naming the file with ``"error"``.
    Decoding is :class:`~partialconv.data.decode.SampleDecode`'s, the same as the shard backend's.
    """

    def __init__(
        self,
        root: Union[str, Path],
        transform: Optional[Callable] = None,
        on_bad_image: str = "skip",
        decode: Optional[SampleDecode] = None,
    ):
        self.ignored: list[str] = []  # hidden entries skipped by the scan (find_classes/make_dataset below)
        self.links = LinkReport()  # files reached twice, symlink loops (named by scan_messages)
        super().__init__(str(root), transform=transform, loader=open_rgb)
        self.decode = decode if decode is not None else SampleDecode(transform, on_bad_image)
        self.on_bad_image = self.decode.on_bad_image

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes, class_to_idx, self._scanned, self.ignored, self.links = scan_image_folder(directory)
        return classes, class_to_idx

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs) -> list[tuple[str, int]]:
        return self._scanned  # made by find_classes, which torchvision calls first with the same directory

    def __getitem__(self, key: Union[int, tuple[int, int]]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[index]
        image = self.decode(path, path, seed)
        return None if image is None else (image, target)


class FastTrainFolder(ClassificationFolder):
    """The train split of the ``pil_fast`` backend: :class:`~partialconv.data.fast_pil.FastTrainCrop` decodes each
    file (at a reduced DCT scale where the crop allows) straight to a (crop, crop, 3) uint8 tensor; batches are
    collated by :func:`~partialconv.data.loaders.collate_hwc_uint8` and normalised on the device by
    ``batch_to_device``. Same keys, seeds, crop draws and bad-image policy as :class:`ClassificationFolder` with
    ``train_transform``."""

    collate_fn = staticmethod(collate_hwc_uint8)

    def __init__(self, root: Union[str, Path], crop: FastTrainCrop, on_bad_image: str = "skip"):
        super().__init__(root, on_bad_image=on_bad_image, decode=SampleDecode(on_bad_image=on_bad_image, crop=crop))
        self.crop = crop


def _open_folders(params: DataParams, fast: bool) -> Splits:
    classes = check_image_folders(params.train_dir, params.val_dir)
    train_decode, val_decode, collate = split_decoders(params, fast)
    train = ClassificationFolder(params.train_dir, train_decode.transform, decode=train_decode)
    val = ClassificationFolder(params.val_dir, val_decode.transform, decode=val_decode)
    train.collate_fn = val.collate_fn = collate
    scans = [
        (p, r, d.ignored, d.links)
        for p, r, d in (("train_dir", params.train_dir, train), ("val_dir", params.val_dir, val))
    ]
    return Splits(train, val, classes, warnings=scan_messages(scans, params.on_bad_image))


def open_image_folders(params: DataParams) -> Splits:
    """The ``pil`` backend's splits: the ImageFolder checks, then train/eval presets on PIL-decoded images."""
    return _open_folders(params, fast=False)


def open_fast_folders(params: DataParams) -> Splits:
    """The ``pil_fast`` backend's splits: the fast uint8 train pipeline (:class:`FastTrainFolder`'s crop) and the
    ``pil`` backend's eval crop as uint8 (:func:`~partialconv.data.fast_pil.eval_crop_uint8`)."""
    return _open_folders(params, fast=True)


PIL_BACKEND = Backend("pil", open_image_folders, help="decode/augment in the workers")
PIL_FAST_BACKEND = Backend(
    "pil_fast",
    open_fast_folders,
    help="as pil, train split 2x faster: reduced-scale JPEG decode, one resampling step, uint8 batches normalised "
    "on the device (same crop draws)",
)
