"""Image folders for inpainting: (image, mask) pairs with seeded, worker-independent randomness.

Images are (3, S, S) float tensors in [0, 1]; masks (1, S, S) with 1 = valid. Training samples are addressed by a
*key* ``epoch * len(dataset) + index`` (see :class:`InpaintingSampler`): the key seeds the crop, flip and mask of
that sample, so a resumed run sees exactly the batches an uninterrupted run would, whatever the worker count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..fileio import atomic_write
from .imageio import open_rgb
from .masks import IrregularMaskGenerator, MaskFolder, list_images

__all__ = ["IMAGE_EXTENSIONS", "InpaintingDataset", "InpaintingSampler", "load_image", "skimage_demo_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
# scikit-image's bundled colour photos used by the embedded demo.
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")


def load_image(path: Union[str, os.PathLike]) -> Tensor:
    """An image file as a (3, H, W) float tensor in [0, 1]; one-line error naming the file if it cannot be read."""
    try:
        arr = np.asarray(open_rgb(path))
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"image {path}: larger than PIL's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS} pixels "
            "(split or downscale it first)"
        ) from e
    except (OSError, ValueError) as e:
        raise ValueError(f"image {path}: cannot be read ({e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class InpaintingDataset(Dataset):
    """Images of a folder (recursive) with irregular masks.

    ``train``: random-resized crop to ``size`` and horizontal flip, masks drawn per key (generator: a random bucket
    and border setting; folder: a random file, augmented). Otherwise: resize of the short side to ``size``, centre
    crop, and a fixed mask per index. ``__getitem__(key)`` returns ``(masked_image, mask, image)``.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        size: int,
        train: bool,
        masks: Optional[MaskFolder] = None,
        seed: int = 0,
        generator: Optional[IrregularMaskGenerator] = None,
    ) -> None:
        self.files = list_images(root, IMAGE_EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(f"{root}: no images found (recursive; extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.size, self.train, self.seed = size, train, seed
        self.masks = masks
        self.generator = generator or IrregularMaskGenerator(size, bucket=None, border=None)

    def __len__(self) -> int:
        return len(self.files)

    def _crop(self, image: Tensor, g: torch.Generator) -> Tensor:
        s = self.size
        if not self.train:
            image = TF.resize(image, s, antialias=True)
            return TF.center_crop(image, [s, s])
        h, w = image.shape[-2:]
        area = h * w * (0.3 + 0.7 * float(torch.rand((), generator=g)))
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand((), generator=g)))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        image = TF.resized_crop(image, top, left, ch, cw, [s, s], antialias=True)
        if torch.rand((), generator=g) < 0.5:
            image = image.flip(-1)
        return image

    def __getitem__(self, key: int) -> tuple[Tensor, Tensor, Tensor]:
        index = key % len(self.files)
        seed = _seed(self.seed, key) if self.train else _seed(self.seed, index)
        g = torch.Generator().manual_seed(seed)
        image = self._crop(load_image(self.files[index]), g).clamp_(0.0, 1.0)
        if self.masks is not None:
            pick = int(torch.randint(len(self.masks), (), generator=g)) if self.train else index
            mask = self.masks.mask(pick, seed)
        else:
            mask = self.generator(seed)
        return image * mask, mask, image


class InpaintingSampler(Sampler[int]):
    """An endless, rank-sharded stream of keys ``epoch * N + index`` (a fresh permutation per epoch), starting at
    global sample ``start`` so that resumed runs continue where they stopped."""

    def __init__(
        self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start_step: int = 0
    ) -> None:
        self.n, self.batch_size = num_samples, batch_size
        self.rank, self.world, self.seed = rank, world_size, seed
        self.start_step = start_step

    def _keys(self) -> Iterator[int]:
        epoch, offset = divmod(self.start_step * self.batch_size * self.world, self.n)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(_seed(self.seed, epoch)))
            for i in order[offset:].tolist():
                yield epoch * self.n + i
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        # A global batch is world*batch consecutive keys; rank r takes its slice, so ranks stay aligned per step.
        keys = self._keys()
        per_step = self.batch_size * self.world
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            chunk = [next(keys) for _ in range(per_step)]
            yield from chunk[lo:hi]


def skimage_demo_folder(root: Union[str, os.PathLike]) -> Path:
    """Write scikit-image's bundled colour photos as PNGs under ``root`` once (the embedded demo data)."""
    root = Path(root)
    missing = [name for name in DEMO_PHOTOS if not (root / f"{name}.png").is_file()]
    if not missing:
        return root
    try:
        import skimage.data
    except ImportError as e:
        raise RuntimeError("no --data given and scikit-image (the embedded demo photos) is not installed") from e
    root.mkdir(parents=True, exist_ok=True)
    for name in missing:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64) / max(arr.max(), 1e-12), 0, 1) * 255).astype(np.uint8)
        with atomic_write(root / f"{name}.png") as f:
            Image.fromarray(arr[..., :3]).save(f, format="PNG")
    return root
