"""The fast PIL train pipeline: RandomResizedCrop's exact draws, a reduced-scale JPEG decode, one resampling step,
uint8 out of the worker (normalisation happens on the device, in :func:`~partialconv.data.loaders.batch_to_device`).

Why it is accuracy-equivalent to ``presets.train_transform`` (RandomResizedCrop + flip + ToTensor + Normalize):

- the crop box and the flip come from the same calls in the same order on the same per-sample seeded generator
  (torchvision's ``RandomResizedCrop.get_params`` on the full image size, read from the JPEG header before any
  decoding; then ``torch.rand(1) < 0.5`` as ``RandomHorizontalFlip``), so the crop distribution is unchanged;
- when the crop is later shrunk by a factor of at least ``s`` in {2, 4, 8}, the JPEG is decoded at 1/s scale
  (``Image.draft``: libjpeg's scaled IDCT, a proper low-pass) and the remaining resize is smaller; the crop and the
  resize are one ``Image.resize(box=...)`` (PIL's antialiased bilinear, the reference's kernel) instead of a crop
  followed by a resize. Pixel differences are resampling differences only (tests/test_data_fast_path.py bounds
  them; benchmarks/README.md reports them);
- the worker hands over uint8 HWC pixels; the float conversion and normalisation run on the device in one op.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, RandomResizedCrop, v2

from .imageio import to_8bit
from .presets import RRC_RATIO, RRC_SCALE

__all__ = ["FastTrainCrop", "draft_scale", "eval_crop_uint8"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_DCT_SCALES = (8, 4, 2)  # libjpeg's scaled IDCT factors that Image.draft offers (1 = full size)


def draft_scale(crop_w: int, crop_h: int, out_size: int) -> int:
    """The largest JPEG DCT scale ``s`` such that the crop is still shrunk by at least ``s`` on both axes."""
    shrink = min(crop_w, crop_h) / out_size
    return next((s for s in _DCT_SCALES if shrink >= s), 1)


class FastTrainCrop:
    """Path or bytes -> (crop, crop, 3) uint8 tensor: RandomResizedCrop(crop, scale, ratio) + horizontal flip,
    drawn from torch's global generator (the caller seeds it per sample, as for ``train_transform``).

    Decoding happens here (the dataset passes the path or the bytes), because the decode scale depends on the drawn
    crop.
    """

    def __init__(self, crop_size: int, min_scale: float = RRC_SCALE[0], use_draft: bool = True) -> None:
        self.crop_size = crop_size
        self.scale = (min_scale, RRC_SCALE[1])
        self.ratio = RRC_RATIO
        self.use_draft = use_draft

    def params(self, width: int, height: int) -> tuple[int, int, int, int, bool]:
        """(top, left, h, w, flip): torchvision's draws, in its order, for an image of ``width`` x ``height``."""
        shape_only = torch.empty((), dtype=torch.uint8).expand(1, height, width)  # get_params reads the size only
        top, left, h, w = RandomResizedCrop.get_params(shape_only, list(self.scale), list(self.ratio))
        flip = bool(torch.rand(1) < 0.5)
        return top, left, h, w, flip

    def __call__(self, source: Union[str, os.PathLike, bytes]) -> torch.Tensor:
        """``source``: the image file's path, or its bytes (a tar-shard member)."""
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
        if data[:3] == _JPEG_MAGIC:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size  # from the header, before any decoding
                top, left, h, w, flip = self.params(width, height)
                s = draft_scale(w, h, self.crop_size) if self.use_draft else 1
                if s == 1 and img.mode in ("RGB", "L"):
                    # libjpeg-turbo through torchvision, then torch's uint8 antialiased bilinear kernel (PIL's
                    # algorithm, vectorised): about twice as fast as PIL's resize on the full-size crop.
                    try:
                        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
                    except RuntimeError as e:  # truncated/corrupt: the OSError PIL raises, for the bad-image policy
                        raise OSError(str(e).rsplit(", ", 1)[-1]) from e
                    return self._resize_tensor(image, top, left, h, w, flip)
                return self._pil_crop(img, (width, height), (top, left, h, w, flip), s)
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            return self._pil_crop(img, (width, height), self.params(width, height), 1)

    def _resize_tensor(self, image: torch.Tensor, top: int, left: int, h: int, w: int, flip: bool) -> torch.Tensor:
        crop = image[:, top : top + h, left : left + w].unsqueeze(0).contiguous(memory_format=torch.channels_last)
        size = (self.crop_size, self.crop_size)
        out = crop if (h, w) == size else F.interpolate(crop, size=size, mode="bilinear", antialias=True)
        if flip:
            out = out.flip(-1)
        return out[0].permute(1, 2, 0).contiguous()  # (H, W, 3)

    def _pil_crop(self, img: Image.Image, size: tuple[int, int], params: tuple, s: int) -> torch.Tensor:
        width, height = size
        top, left, h, w, flip = params
        box = (left, top, left + w, top + h)
        if s > 1 and img.format == "JPEG" and img.mode in ("RGB", "L"):
            drafted = img.draft(img.mode, (width // s, height // s))
            if drafted is not None:
                # draft returns where the full image lies in the reduced one: (0, 0, width / s', height / s')
                fx, fy = drafted[1][2] / width, drafted[1][3] / height
                box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        img.load()  # decode now, inside the caller's bad-image handling
        img = to_8bit(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode != "RGB":
            img = img.convert("RGB")
        out = img.resize((self.crop_size, self.crop_size), Image.BILINEAR, box=box)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(out).copy())  # (H, W, 3) uint8; collate makes it NCHW channels_last


def _pil_to_hwc(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy())


def eval_crop_uint8(resize_size: int, crop_size: int) -> v2.Compose:
    """``presets.eval_transform`` without its float conversion and normalisation: the same PIL resize of the shorter
    side and centre crop, returned as a (crop, crop, 3) uint8 tensor (normalised on the device, bit for bit the
    same values up to float rounding)."""
    return v2.Compose(
        [
            v2.Resize(resize_size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(crop_size),
            _pil_to_hwc,
        ]
    )
