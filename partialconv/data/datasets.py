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
from .cropped_decode import decoder_unavailable
from .decode import SampleDecode, crop_and_flip_only, split_decoders
from .fast_pil import FastTrainCrop
from .image_folder import LinkReport, check_image_folders, scan_image_folder, scan_messages
from .imageio import open_rgb
from .loaders import collate_hwc_uint8
from .params import DataParams

__all__ = [
    "PIL_BACKEND",
    "PIL_FAST_BACKEND",
    "TURBO_BACKEND",
    "ClassificationFolder",
    "FastTrainFolder",
    "open_image_folders",
]


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
    """A split whose ``crop`` decodes each file straight to a (crop, crop, 3) uint8 tensor: the ``pil_fast``
    backend's train split (:class:`~partialconv.data.fast_pil.FastTrainCrop`, at a reduced DCT scale where the crop
    allows) and the ``turbo`` backend's splits (:mod:`~partialconv.data.cropped_decode`); batches are collated by
    :func:`~partialconv.data.loaders.collate_hwc_uint8` and normalised on the device by ``batch_to_device``.
    Same keys, seeds, crop draws and bad-image policy as :class:`ClassificationFolder` with ``train_transform``."""

    collate_fn = staticmethod(collate_hwc_uint8)

    def __init__(self, root: Union[str, Path], crop: FastTrainCrop, on_bad_image: str = "skip"):
        super().__init__(root, on_bad_image=on_bad_image, decode=SampleDecode(on_bad_image=on_bad_image, crop=crop))
        self.crop = crop


def _open_folders(params: DataParams, pipeline: str) -> Splits:
    classes = check_image_folders(params.train_dir, params.val_dir)
    train_decode, val_decode, collate = split_decoders(params, pipeline)
    train = ClassificationFolder(params.train_dir, train_decode.transform, decode=train_decode)
    val = ClassificationFolder(params.val_dir, val_decode.transform, decode=val_decode)
    train.collate_fn = val.collate_fn = collate
    return Splits(train, val, classes, warnings=_scan_warnings(params, train, val))


def _scan_warnings(params: DataParams, train: ClassificationFolder, val: ClassificationFolder) -> tuple[str, ...]:
    """The scan's warnings of both splits: hidden entries skipped, files reached twice, symlink loops."""
    scans = [
        (p, r, d.ignored, d.links)
        for p, r, d in (("train_dir", params.train_dir, train), ("val_dir", params.val_dir, val))
    ]
    return scan_messages(scans, params.on_bad_image)


def open_cropped_folders(params: DataParams) -> Splits:
    """The ``turbo`` backend's splits: both decoded over the crop's region only
    (:class:`~partialconv.data.cropped_decode.CroppedTrainDecode`, :class:`~.CroppedEvalDecode`), uint8 batches."""
    classes = check_image_folders(params.train_dir, params.val_dir)
    train_decode, val_decode, _ = split_decoders(params, "turbo")  # the shards backend's too, on a shard's bytes
    train = FastTrainFolder(params.train_dir, train_decode.crop, params.on_bad_image)
    val = FastTrainFolder(params.val_dir, val_decode.crop, params.on_bad_image)
    return Splits(train, val, classes, warnings=_scan_warnings(params, train, val))


def _turbo_by_default(params: DataParams) -> tuple[bool, str]:
    """``auto`` takes ``turbo`` unless policy augmentation or a non-bilinear resize is asked for (the pil backend's),
    or libturbojpeg 3 is missing (then one warning: the run is about half as fast per CPU core)."""
    if not crop_and_flip_only(params):
        return False, ""
    reason = decoder_unavailable()
    if reason is None:
        return True, ""
    return False, f"data backend auto: the turbo backend is unavailable ({reason}); using pil (about half its speed)"


def open_image_folders(params: DataParams) -> Splits:
    """The ``pil`` backend's splits: the ImageFolder checks, then train/eval presets on PIL-decoded images."""
    return _open_folders(params, "pil")


def open_fast_folders(params: DataParams) -> Splits:
    """The ``pil_fast`` backend's splits: the fast uint8 train pipeline (:class:`FastTrainFolder`'s crop) and the
    ``pil`` backend's eval crop as uint8 (:func:`~partialconv.data.fast_pil.eval_crop_uint8`)."""
    return _open_folders(params, "pil_fast")


PIL_BACKEND = Backend("pil", open_image_folders, help="decode/augment in the workers")
PIL_FAST_BACKEND = Backend(
    "pil_fast",
    open_fast_folders,
    help="as pil, train split: reduced-scale JPEG decode, one resampling step, uint8 batches normalised on the "
    "device (same crop draws); 1.34-1.72x the torchvision reference's img/s (benchmarks/README.md)",
)
TURBO_BACKEND = Backend(
    "turbo",
    open_cropped_folders,
    help="the default (auto) when libturbojpeg 3 loads (the fast-decode extra): as pil with the same crop draws, "
    "JPEGs decoded over the crop's region only, uint8 batches normalised on the device; others (PNG, CMYK, bad "
    "files) through PIL per image. Measured on 97 KB 500x375 JPEGs, 224 px, batch 32, idle 2-core CPU, 3 runs, 1 "
    "and 2 workers: 2.17-2.46x the torchvision reference's train images per CPU-second of all processes, "
    "2.05-2.45x for eval (docs/performance.md)",
    auto_default=_turbo_by_default,
)
