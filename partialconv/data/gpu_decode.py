"""The ``gpu`` backend (GPU JPEG decode): workers read file bytes, the device decodes and augments batches.

The PIL path spends its CPU time in JPEG decode and resampling; here DataLoader workers only read bytes, parse the
header for the image size and draw the augmentation parameters, and the device does the rest:
``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG, batched), crop, antialiased resize, flip and
normalisation. On a CPU device the same code decodes with libjpeg-turbo, which is how the tests compare it with the
PIL path.

Accuracy-relevant preprocessing is the PIL path's (``partialconv.data.presets``), parameter for parameter:

- random-resized-crop parameters come from ``torchvision.transforms.RandomResizedCrop.get_params`` (the algorithm and
  torch RNG draws of transforms v1 and v2), then the flip draw, in the order the PIL transforms draw them; with a
  per-sample seed from :class:`~partialconv.data.sampler.SeededSampler` the RNG is seeded exactly as
  :class:`~partialconv.data.datasets.ClassificationFolder` seeds it, so both paths draw the same crop and flip for
  the same (seed, epoch, index);
- resize is bilinear with antialiasing, as ``RandomResizedCrop``/``Resize(antialias=True)``; evaluation resizes the
  shorter side (torchvision's size rule) and centre-crops (torchvision's rounding);
- the output is ``(x / 255 - mean) / std`` in float32, like ``ToDtype(scale=True)`` + ``Normalize``.

A batch travels from the worker as one concatenated byte tensor plus offsets (one shared-memory segment per batch,
not one per image). Files nvJPEG cannot decode (PNG or CMYK files named .JPEG exist in ImageNet) fall back to
``torchvision.io.decode_image`` on the CPU for that image; files nothing can decode follow ``on_bad_image``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import RandomResizedCrop

from .backends import Backend, Splits
from .errors import BadImageError, DataError, Param, refuse_augmentation
from .image_folder import check_image_folders, scan_image_folder, scan_messages
from .imageio import uint16_to_uint8
from .loaders import LoaderSpec, normalize_images
from .params import DataParams
from .presets import RRC_RATIO, RRC_SCALE
from .sampler import SeededSampler, seeded_draws
from .worker_signals import ignore_stop_signals, worker_start_context

__all__ = [
    "GPU_BACKEND",
    "EncodedBatch",
    "EncodedImageFolder",
    "GpuDecodeLoader",
    "GpuPreprocess",
    "collate_encoded",
    "decode_images",
    "gpu_loader",
    "open_encoded_folders",
    "sample_train_params",
]

NO_PARAMS = (-1, -1, -1, -1, 0)


def sample_train_params(
    height: int, width: int, scale: Sequence[float] = RRC_SCALE, ratio: Sequence[float] = RRC_RATIO, flip_p: float = 0.5
) -> tuple[int, int, int, int, int]:
    """(top, left, h, w, flip) drawn exactly as ``RandomResizedCrop`` then ``RandomHorizontalFlip`` draw them."""
    shape_only = torch.empty((), dtype=torch.uint8).expand(1, height, width)
    top, left, h, w = RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
    return top, left, h, w, int(torch.rand(1) < flip_p)


class EncodedImageFolder(Dataset):
    """ImageFolder layout (same classes and sample order as torchvision's ``ImageFolder``) whose items are the files'
    bytes, undecoded: ``(bytes, params, target, path)`` with ``bytes`` a 1-D uint8 tensor and ``params``
    ``(top, left, h, w, flip)`` drawn here when ``train`` (else :data:`NO_PARAMS`).

    Like :class:`~partialconv.data.datasets.ClassificationFolder`, a key is an index or ``(index, seed)``; with a
    seed the draws come from a generator state seeded with it, and the caller's RNG is left untouched. A file whose
    header cannot be read returns ``None`` with ``on_bad_image="skip"`` and raises
    :class:`~partialconv.data.errors.BadImageError` with "error".
    """

    def __init__(self, root: str, train: bool, on_bad_image: str = "skip") -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error; got {on_bad_image!r}")
        self.root = str(root)
        self.train = train
        self.on_bad_image = on_bad_image
        self.classes, self.class_to_idx, self.samples, self.ignored, self.links = scan_image_folder(self.root)
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, tuple[int, int]]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as im:  # header only: nothing is decoded here
                width, height = im.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            return _bad(path, e, self.on_bad_image)
        params = NO_PARAMS
        if self.train:
            with seeded_draws(seed):
                params = sample_train_params(height, width)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), params, target, path


def _bad(path: str, error: Exception, policy: str) -> None:
    if policy == "error":
        raise BadImageError.of(path, error) from error
    warnings.warn(f"skipping bad image {path}: {type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
    return None


class EncodedBatch(NamedTuple):
    """A collated batch: image k is ``data[offsets[k]:offsets[k + 1]]``; ``params`` is (B, 5) int64
    ``top, left, height, width, flip``; ``bad`` counts samples dropped in the worker."""

    data: Tensor
    offsets: Tensor
    params: Tensor
    targets: Tensor
    paths: list[str]
    bad: int


def collate_encoded(samples: Sequence) -> EncodedBatch:
    """DataLoader ``collate_fn`` for :class:`EncodedImageFolder` (runs in the worker): packs the bytes into one
    tensor and drops (counts) skipped samples."""
    good = [s for s in samples if s is not None]
    lengths = torch.tensor([0] + [len(s[0]) for s in good], dtype=torch.int64)
    return EncodedBatch(
        data=torch.cat([s[0] for s in good]) if good else torch.empty(0, dtype=torch.uint8),
        offsets=lengths.cumsum(0),
        params=torch.tensor([s[1] for s in good], dtype=torch.int64).view(-1, 5),
        targets=torch.tensor([s[2] for s in good], dtype=torch.int64),
        paths=[s[3] for s in good],
        bad=len(samples) - len(good),
    )


def decode_images(encoded: list[Tensor], device: torch.device) -> list[Optional[Tensor]]:
    """RGB uint8 (3, H, W) images on ``device``: JPEGs in one batched decode, other formats (by their magic bytes)
    and JPEGs the batched decoder rejects one by one on the CPU; ``None`` for a file nothing can decode."""
    images: list[Optional[Tensor]] = [None] * len(encoded)
    jpegs = [k for k, data in enumerate(encoded) if data[:2].tolist() == [0xFF, 0xD8]]
    is_jpeg = set(jpegs)
    try:
        decoded = decode_jpeg([encoded[k] for k in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
        for k, image in zip(jpegs, decoded):
            images[k] = image
    except RuntimeError:
        pass  # one bad file fails the whole batch: decode one by one below
    for k, data in enumerate(encoded):
        if images[k] is None:
            images[k] = _decode_one(data, device, is_jpeg=k in is_jpeg)
    return images


def _decode_one(data: Tensor, device: torch.device, is_jpeg: bool) -> Optional[Tensor]:
    if is_jpeg:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass  # e.g. CMYK or progressive JPEGs nvJPEG rejects; libjpeg-turbo handles them
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    if image.dtype == torch.uint16:  # 16-bit PNGs decode as uint16: to 8 bits exactly as the PIL path does
        image = uint16_to_uint8(image)
    return image.to(device, non_blocking=True)


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` rule: the shorter side becomes ``size``, the longer one is truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


class GpuPreprocess:
    """Decode + augment + normalise an :class:`EncodedBatch` on ``device``.

    Train: crop (parameters from the worker), resize to ``crop_size``, flip. Eval: resize the shorter side to
    ``resize_size``, centre-crop ``crop_size``. Returns ``(images, targets, bad)`` like the PIL loader's batches,
    images float32 (B, 3, crop, crop) in ``memory_format``.
    """

    def __init__(
        self,
        train: bool,
        crop_size: int = 224,
        resize_size: int = 256,
        on_bad_image: str = "skip",
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if not train and resize_size < crop_size:
            raise DataError(
                "GPU decode: ", Param("val_resize_size", resize_size), " must be >= ", Param("val_crop_size", crop_size)
            )
        self.train = train
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.on_bad_image = on_bad_image
        self.memory_format = memory_format

    @staticmethod
    def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
        x = image.unsqueeze(0)
        if tuple(x.shape[-2:]) == size:
            return x.float()
        if x.device.type == "cpu":
            # torch's uint8 channels-last antialias kernel is PIL's algorithm (rounded like PIL) and ~100x faster
            # on CPU than the float kernel; CUDA has only the float kernel.
            x = x.contiguous(memory_format=torch.channels_last)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).float()
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)

    def crop_resize(self, image: Tensor, params: Sequence[int]) -> Tensor:
        """(1, 3, crop, crop) float in [0, 255] from one decoded uint8 image, flip not applied."""
        if self.train:
            top, left, h, w = params[:4]
            return self._resize(image[:, top : top + h, left : left + w], (self.crop_size, self.crop_size))
        height, width = resized_output_size(image.shape[-2], image.shape[-1], self.resize_size)
        top, left = int(round((height - self.crop_size) / 2.0)), int(round((width - self.crop_size) / 2.0))
        resized = self._resize(image, (height, width))
        return resized[..., top : top + self.crop_size, left : left + self.crop_size]

    def __call__(self, batch: EncodedBatch, device: torch.device) -> tuple[Tensor, Tensor, int]:
        bounds = batch.offsets.tolist()
        images = decode_images([batch.data[a:b] for a, b in zip(bounds[:-1], bounds[1:])], device)
        keep = [k for k, img in enumerate(images) if img is not None]
        for k in set(range(len(images))) - set(keep):
            _bad(batch.paths[k], RuntimeError("not decodable as JPEG/PNG"), self.on_bad_image)
        if not keep:
            return (
                torch.empty(0, device=device),
                torch.empty(0, dtype=torch.long, device=device),
                batch.bad + len(images),
            )
        params = batch.params.tolist()
        crops = [self.crop_resize(images[k], params[k]) for k in keep]
        if self.train:
            crops = [c.flip(-1) if params[k][4] else c for c, k in zip(crops, keep)]
        x = normalize_images(torch.cat(crops), self.memory_format)  # the same device op as the pil backend's
        targets = batch.targets[keep if len(keep) < len(images) else slice(None)].to(device, non_blocking=True)
        return x, targets, batch.bad + len(images) - len(keep)


class GpuDecodeLoader:
    """Iterates a DataLoader of :class:`EncodedBatch` and yields ``(images, targets, bad)`` already on ``device``.

    A drop-in for the PIL DataLoader in the training loop: ``len()``, ``dataset``, ``sampler`` and ``batch_size`` are
    the wrapped loader's. On CUDA the next batch is decoded on a side stream while the caller works on the current
    one (one batch of lookahead), so decode kernels overlap the training step.
    """

    def __init__(self, loader: DataLoader, preprocess: GpuPreprocess, device: Union[torch.device, str]) -> None:
        self.loader = loader
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self.preprocess(batch, self.device)
            return
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        pending = None
        for batch in self.loader:
            # No side.wait_stream(main): decoding batch k+1 may overlap step k. The outputs are allocated on the
            # side stream and record_stream(main) keeps the allocator from reusing them before main is done.
            with torch.cuda.stream(side):
                ready = self.preprocess(batch, self.device)
            if pending is not None:
                yield pending
            main.wait_stream(side)
            for t in ready[:2]:
                t.record_stream(main)
            pending = ready
        if pending is not None:
            yield pending


def _encoded_loader(
    dataset: EncodedImageFolder, sampler, batch: int, workers: int, distributed: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_encoded,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator(),  # see loaders.torch_loader: keeps the global RNG (dropout) out of the data path
        worker_init_fn=ignore_stop_signals,
        multiprocessing_context=worker_start_context(distributed) if workers else None,
    )


def open_encoded_folders(params: DataParams) -> Splits:
    """The ``gpu`` backend's splits: the ImageFolder checks, then datasets of undecoded file bytes."""
    classes = check_image_folders(params.train_dir, params.val_dir)
    refuse_augmentation(params.auto_augment, params.random_erase, "gpu", params.interpolation)
    if params.train_min_scale != RRC_SCALE[0]:
        scale = Param("train_min_scale", params.train_min_scale)
        raise DataError(scale, ": ", Param("backend", "gpu"), f" crops with scale {RRC_SCALE}")
    train = EncodedImageFolder(params.train_dir, train=True, on_bad_image=params.on_bad_image)
    val = EncodedImageFolder(params.val_dir, train=False, on_bad_image=params.on_bad_image)
    scans = [
        (p, r, d.ignored, d.links)
        for p, r, d in (("train_dir", params.train_dir, train), ("val_dir", params.val_dir, val))
    ]
    return Splits(train, val, classes, warnings=scan_messages(scans, params.on_bad_image))


def gpu_loader(dataset: EncodedImageFolder, sampler: SeededSampler, spec: LoaderSpec) -> GpuDecodeLoader:
    """Workers read bytes (:func:`collate_encoded`); :class:`GpuPreprocess` decodes and augments on ``spec.device``."""
    p = spec.params
    if spec.train:
        preprocess = GpuPreprocess(True, p.train_crop_size, on_bad_image=p.on_bad_image, memory_format=p.memory_format)
    else:
        preprocess = GpuPreprocess(
            False, p.val_crop_size, p.val_resize_size, p.on_bad_image, memory_format=p.memory_format
        )
    encoded = _encoded_loader(dataset, sampler, spec.local_batch, p.workers or 0, spec.distributed)
    return GpuDecodeLoader(encoded, preprocess, spec.device)


GPU_BACKEND = Backend(
    "gpu",
    open_encoded_folders,
    make_loader=gpu_loader,
    help="workers read bytes, the device decodes (nvJPEG) and augments",
)
