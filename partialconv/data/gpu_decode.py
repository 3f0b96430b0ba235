"""GPU JPEG decode path: workers read file bytes, the training device decodes and augments whole batches.

The PIL path spends most of its CPU time in JPEG decode and resampling; here DataLoader workers only read bytes and
draw the augmentation parameters, and the device does the rest: ``torchvision.io.decode_jpeg(list, device="cuda")``
(nvJPEG, batched), crop, antialiased resize, flip and normalisation. On a CPU device the same code decodes with
libjpeg-turbo, which is what the tests compare against the PIL path.

Accuracy-relevant preprocessing is the PIL path's, parameter for parameter:

- random-resized-crop parameters come from ``torchvision.transforms.RandomResizedCrop.get_params`` (the same
  algorithm and the same torch RNG draws as transforms v1 and v2), drawn in the worker in the same order as the PIL
  transforms draw them (crop, then flip), per sample, with the worker's seeded torch RNG. Given the same worker
  seeds both paths draw the same crops and flips;
- resize is bilinear (or bicubic) with antialiasing, as ``Resize``/``RandomResizedCrop(antialias=True)`` on PIL
  images; evaluation resizes the shorter side (torchvision's size rule) and centre-crops (torchvision's rounding);
- the output is ``(x / 255 - mean) / std`` in float32, like ``ToTensor`` + ``Normalize``.

A batch travels from the worker as one concatenated byte tensor plus offsets (one shared-memory segment per batch,
not one per image). Files that nvJPEG cannot decode (PNG or CMYK files named .JPEG exist in ImageNet) fall back to
``torchvision.io.decode_image`` on the CPU for that image only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import RandomResizedCrop

__all__ = [
    "EncodedBatch",
    "EncodedImageFolder",
    "GpuDecodeLoader",
    "GpuPreprocess",
    "collate_encoded",
    "build_gpu_loader",
    "sample_train_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic")


class EncodedImageFolder(Dataset):
    """ImageFolder layout (``root/<class>/<image>``, same class order and sample order as torchvision's ImageFolder)
    whose items are ``(bytes, label)``: the file's bytes as a 1-D uint8 tensor, nothing decoded."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples = make_dataset(self.root, self.class_to_idx, extensions=IMG_EXTENSIONS)
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), target


def image_size(data: Tensor) -> tuple[int, int]:
    """(height, width) from the encoded header only (PIL reads the header lazily; nothing is decoded)."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        width, height = im.size
    return height, width


def sample_train_params(
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> tuple[int, int, int, int, bool]:
    """(top, left, h, w, flip) drawn exactly as ``RandomResizedCrop`` then ``RandomHorizontalFlip`` draw them."""
    shape_only = torch.empty((), dtype=torch.uint8).expand(1, height, width)
    top, left, h, w = RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
    flip = bool(torch.rand(1) < flip_p)
    return top, left, h, w, flip


class EncodedBatch(NamedTuple):
    """A collated batch: ``data`` holds all files back to back, image k is ``data[offsets[k]:offsets[k + 1]]``;
    ``params`` is (B, 5) int64 ``top, left, height, width, flip`` (all -1 when not training)."""

    data: Tensor
    offsets: Tensor
    params: Tensor
    targets: Tensor


class collate_encoded:  # noqa: N801 - used like a function; a class so it pickles into spawn workers
    """DataLoader ``collate_fn`` for :class:`EncodedImageFolder`, run in the worker: draws training augmentation
    parameters per sample (header-only size read) and packs the bytes into one tensor."""

    def __init__(
        self, train: bool, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ) -> None:
        self.train = train
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def __call__(self, samples: Sequence[tuple[Tensor, int]]) -> EncodedBatch:
        params = torch.full((len(samples), 5), -1, dtype=torch.int64)
        if self.train:
            for k, (data, _) in enumerate(samples):
                params[k] = torch.tensor(sample_train_params(*image_size(data), self.scale, self.ratio))
        lengths = torch.tensor([0] + [len(d) for d, _ in samples], dtype=torch.int64)
        return EncodedBatch(
            data=torch.cat([d for d, _ in samples]),
            offsets=lengths.cumsum(0),
            params=params,
            targets=torch.tensor([t for _, t in samples], dtype=torch.int64),
        )


def split_encoded(batch: EncodedBatch) -> list[Tensor]:
    bounds = batch.offsets.tolist()
    return [batch.data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decode_images(encoded: list[Tensor], device: torch.device) -> list[Tensor]:
    """RGB uint8 (3, H, W) images on ``device``; one batched decode, per-image CPU fallback for odd files."""
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    images = []
    for data in encoded:
        try:
            images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images.append(decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True))
    return images


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` rule: the shorter side becomes ``size``, the longer one is truncated."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(size)`` (images are never smaller than ``size`` here)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


class GpuPreprocess:
    """Decode + augment + normalise an :class:`EncodedBatch` on ``device``.

    Train: crop (params from the worker), resize to ``crop_size``, flip. Eval: resize shorter side to
    ``resize_size``, centre-crop ``crop_size``. Returns float32 (B, 3, crop, crop) in ``memory_format``.
    """

    def __init__(
        self,
        train: bool,
        crop_size: int = 224,
        resize_size: int = 256,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"GPU decode: interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.train = train
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.interpolation = interpolation
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.memory_format = memory_format

    def _resize(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        x = image.unsqueeze(0).float()
        if tuple(x.shape[-2:]) == size:
            return x
        x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
        # PIL clamps bicubic overshoot to [0, 255]; bilinear never overshoots.
        return x.clamp_(0, 255) if self.interpolation == "bicubic" else x

    def crop_resize(self, image: Tensor, params: Sequence[int]) -> Tensor:
        """(1, 3, crop, crop) float in [0, 255] from one decoded uint8 image, flip not applied."""
        if self.train:
            top, left, h, w = params[:4]
            return self._resize(image[:, top : top + h, left : left + w], (self.crop_size, self.crop_size))
        height, width = resized_output_size(image.shape[-2], image.shape[-1], self.resize_size)
        resized = self._resize(image, (height, width))
        top, left = center_crop_box(height, width, self.crop_size)
        return resized[..., top : top + self.crop_size, left : left + self.crop_size]

    def __call__(self, batch: EncodedBatch, device: torch.device) -> tuple[Tensor, Tensor]:
        images = decode_images(split_encoded(batch), device)
        params = batch.params.tolist()
        x = torch.cat([self.crop_resize(img, p) for img, p in zip(images, params)])
        if self.train:
            flips = batch.params[:, 4].to(device, non_blocking=True).bool().view(-1, 1, 1, 1)
            x = torch.where(flips, x.flip(-1), x)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        inv_std = 1.0 / (torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255)
        x = (x - mean).mul_(inv_std).contiguous(memory_format=self.memory_format)
        return x, batch.targets.to(device, non_blocking=True)


class GpuDecodeLoader:
    """Iterates a DataLoader of :class:`EncodedBatch` and yields ``(images, targets)`` already on ``device``.

    A drop-in for the PIL DataLoader in a training loop: ``len()``, ``sampler`` (``set_epoch``), ``dataset`` and
    ``batch_size`` are the wrapped loader's. On CUDA the next batch is decoded on a side stream while the caller
    works on the current one (one batch of lookahead), so decode kernels overlap the training step.
    """

    def __init__(self, loader: DataLoader, preprocess: GpuPreprocess, device: torch.device | str) -> None:
        self.loader = loader
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self.preprocess(batch, self.device)
            return
        stream = torch.cuda.Stream(self.device)
        pending: Optional[tuple[Tensor, Tensor]] = None
        for batch in self.loader:
            with torch.cuda.stream(stream):
                ready = self.preprocess(batch, self.device)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for t in ready:
                t.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending


def build_gpu_loader(
    root: str,
    train: bool,
    batch_size: int,
    workers: int,
    device: torch.device | str,
    crop_size: int = 224,
    resize_size: int = 256,
    interpolation: str = "bilinear",
    sampler: Optional[torch.utils.data.Sampler] = None,
    drop_last: Optional[bool] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    worker_init_fn=None,
    generator: Optional[torch.Generator] = None,
) -> GpuDecodeLoader:
    """The GPU-decode counterpart of an ImageFolder DataLoader (shuffled unless a ``sampler`` is given)."""
    dataset = EncodedImageFolder(root)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_encoded(train),
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=worker_init_fn,
        generator=generator,
    )
    preprocess = GpuPreprocess(train, crop_size, resize_size, interpolation, memory_format=memory_format)
    return GpuDecodeLoader(loader, preprocess, device)
