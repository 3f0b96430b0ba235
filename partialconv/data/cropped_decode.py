"""The ``turbo`` backend's decode: only the pixels a crop needs, from encoded bytes to a uint8 (H, W, 3) tensor.

Train (:class:`CroppedTrainDecode`): RandomResizedCrop's draws and the flip exactly as the reference draws them
(:meth:`~partialconv.data.fast_pil.FastTrainCrop.params`, on the size read from the JPEG header), then libjpeg-turbo
decodes only the crop's region (:mod:`~partialconv.data.libturbojpeg`: the columns widened to whole iMCUs plus the
chroma neighbours the upsampling reads, then trimmed, so the crop's pixels are bit-identical to a full decode), and
torch's uint8 antialiased bilinear kernel (PIL's algorithm, rounding differences of at most one level) resizes it.

Eval (:class:`CroppedEvalDecode`): ``Resize(shorter side)`` + ``CenterCrop`` with the reference's geometry, torch's
uint8 antialiased kernel given the reference's scale factors, on the rows and columns from the image's top-left
corner to the last ones the centre crop's resampling reads, decoded at a reduced DCT scale (1/2, 1/4, 1/8) where the
resize shrinks the image at least twice that much.

Both take bytes, so a reader of files and a reader of in-memory samples (tar shards) share them; both fall back, per
image, to the PIL path with the same draws (:class:`~partialconv.data.fast_pil.FastTrainCrop`'s PIL crop,
:func:`~partialconv.data.fast_pil.eval_crop_uint8`) for what this decoder does not handle: PNG and other formats,
CMYK/YCCK, 12-bit or lossless JPEGs, and any file libjpeg-turbo reports a warning or error for (the PIL path then
decodes or rejects it as it always did, under the caller's bad-image policy).
"""

from __future__ import annotations

import io
import math
import os
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from . import libturbojpeg
from .fast_pil import FastTrainCrop, eval_crop_uint8
from .imageio import open_rgb
from .presets import RRC_SCALE

__all__ = ["CroppedEvalDecode", "CroppedTrainDecode", "decoder_unavailable", "eval_geometry"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_DCT_SCALES = (8, 4, 2)
# A 1/s DCT-scaled decode is taken only when the resize after it still shrinks by 2x or more: libjpeg's scaled IDCT is
# another low-pass than PIL's kernel, and the second resize averages the difference down (on skimage's photos at
# 256/224 px: at most 8 levels, mean 0.09, against 49 and 0.9 when the scaled decode is taken as soon as it fits).
DCT_MARGIN = 2.0


def decoder_unavailable() -> Optional[str]:
    """None when libturbojpeg 3 loads, else why not (one line)."""
    try:
        libturbojpeg.load()
    except libturbojpeg.Unavailable as e:
        return str(e)
    return None


def _decodable(header: libturbojpeg.Header) -> bool:
    """Whether the cropped decode gives the reference's pixels: 8-bit YCbCr or grayscale, a subsampling TurboJPEG
    knows (CMYK/YCCK and RGB-coded JPEGs go to PIL, whose colour conversions the reference uses)."""
    return (
        header.colorspace in (libturbojpeg.TJCS_YCBCR, libturbojpeg.TJCS_GRAY)
        and header.precision == 8
        and not header.lossless
        and header.subsamp >= 0
    )


def _header(data: bytes) -> Optional[libturbojpeg.Header]:
    if data[:3] != _JPEG_MAGIC:
        return None
    try:
        header = libturbojpeg.load().header(data)
    except OSError:
        return None
    return header if _decodable(header) else None


def _read(source: Union[bytes, bytearray, memoryview, str, os.PathLike]) -> bytes:
    """The encoded image: ``source`` itself when it is bytes (a shard's sample), else the file it names."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def _region(header: libturbojpeg.Header, x0: int, x1: int, scale: int, width: int) -> tuple[int, int]:
    """Columns [a, b) to decode for columns [x0, x1) of the image scaled by 1/``scale`` (``width`` columns): the
    left edge on an iMCU boundary at least one pixel left of ``x0`` (the upsampling of the region's first column
    reads its left neighbour), the right edge two pixels past ``x1`` (the chroma sample right of it)."""
    mcu = libturbojpeg.mcu_size(header.subsamp)[0] // scale
    mcu = max(mcu, 1)
    a = (x0 // mcu) * mcu
    if a == x0 and a > 0:
        a -= mcu
    return max(a, 0), min(width, x1 + 2)


class CroppedTrainDecode(FastTrainCrop):
    """Encoded bytes (or a path) -> (crop, crop, 3) uint8 tensor: RandomResizedCrop(crop, scale, ratio) + flip,
    drawn from torch's global generator (the caller seeds it per sample: ``seeded_draws``), the JPEG decoded only
    over the crop's region. Non-JPEG and JPEGs this decoder does not take: the reference's own ops (PIL decode,
    torchvision's ``resized_crop`` and ``hflip``) with the same draws."""

    def __init__(self, crop_size: int, min_scale: float = RRC_SCALE[0]) -> None:
        super().__init__(crop_size, min_scale, use_draft=False)

    def __call__(self, source: Union[bytes, str, os.PathLike]) -> torch.Tensor:
        data = _read(source)
        header = _header(data)
        if header is None:
            return self._fallback(data, None)
        drawn = self.params(header.width, header.height)
        top, left, h, w, flip = drawn
        pixels = self.decode_region(data, left, top, w, h, header)
        if pixels is None:
            return self._fallback(data, drawn)
        return self._resize_hwc(torch.from_numpy(pixels), flip)

    @staticmethod
    def decode_region(
        data: bytes, x: int, y: int, w: int, h: int, header: Optional[libturbojpeg.Header] = None
    ) -> Optional[np.ndarray]:
        """The (h, w, 3) RGB pixels at (x, y) of the JPEG ``data``, bit-identical to those of a full decode; None
        when libturbojpeg rejects or warns about the file (the caller's fallback decides)."""
        header = header or libturbojpeg.load().header(data)
        a, b = _region(header, x, x + w, 1, header.width)
        try:
            pixels = libturbojpeg.load().decode(data, (a, y, b - a, h))
        except OSError:
            return None
        return pixels[:, x - a : x - a + w]

    def _resize_hwc(self, crop: torch.Tensor, flip: bool) -> torch.Tensor:
        size = (self.crop_size, self.crop_size)
        # NCHW in channels_last memory: the layout torch's vectorised uint8 antialiased kernel takes (about twice as
        # fast as on the trimmed crop's strided view)
        x = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
        out = x[0].permute(1, 2, 0)  # (H, W, 3), contiguous
        return out.flip(1) if flip else out.contiguous()

    def _fallback(self, data: bytes, drawn: Optional[tuple]) -> torch.Tensor:
        """The reference's own ops (PIL decode to RGB, torchvision's resized_crop and hflip on it), with the draws
        already made on the header's size if any."""
        image = open_rgb(io.BytesIO(data))
        top, left, h, w, flip = drawn if drawn is not None else self.params(*image.size)
        size = [self.crop_size, self.crop_size]
        out = TF.resized_crop(image, top, left, h, w, size, InterpolationMode.BILINEAR, antialias=True)
        if flip:
            out = TF.hflip(out)
        return torch.from_numpy(np.asarray(out).copy())


def eval_geometry(width: int, height: int, resize_size: int, crop_size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` as
    torchvision computes them: the resized size by its shorter-side rule, the crop's offset in the resized image by
    its rounding."""
    if height <= width:
        out_h, out_w = resize_size, int(resize_size * width / height)
    else:
        out_h, out_w = int(resize_size * height / width), resize_size
    return out_w, out_h, int(round((out_w - crop_size) / 2.0)), int(round((out_h - crop_size) / 2.0))


def _prefix(size: int, out_size: int, end: int) -> tuple[int, float]:
    """For one axis of a ``size``-pixel image resized to ``out_size``: how many leading pixels the outputs before
    ``end`` read, and the scale factor (outputs per input pixel) that makes torch's resize of those pixels compute
    outputs ``[0, end)`` exactly as its resize of the whole axis would. PIL's and torch's bilinear taps reach
    ``max(size / out_size, 1)`` pixels either side of an output's centre (+1 for their rounding)."""
    factor = out_size / size
    step = 1 / factor
    pixels = min(size, math.ceil(end * step + max(step, 1.0) + 1))
    while math.floor(pixels * factor) < end:  # torch's output length is floor(pixels * factor): never one short
        factor = math.nextafter(factor, math.inf)
    return pixels, factor


class CroppedEvalDecode:
    """Encoded bytes (or a path) -> (crop, crop, 3) uint8 tensor: ``Resize(resize_size)`` + ``CenterCrop(crop_size)``
    (bilinear, antialiased) with the reference's geometry, the JPEG decoded only over the rows and columns up to the
    last ones the centre crop's resampling reads, at 1/2, 1/4 or 1/8 DCT scale where the resize shrinks by at least
    twice that factor. Other images: :func:`~partialconv.data.fast_pil.eval_crop_uint8` on the PIL decode.

    The resize is torch's uint8 antialiased kernel (PIL's algorithm, as for the train crops; at most one level
    apart), given the reference's scale factors rather than sizes, so that it can start from the decoded rows and
    columns: torch's kernel maps output pixels from the first input pixel, so the decode starts at the image's
    top-left corner and stops past the crop's last taps (the pixels below and right of them are neither decoded nor
    resampled). About 1.3x faster per image than PIL's resize of exactly the crop's region (500x375 JPEGs)."""

    def __init__(self, resize_size: int, crop_size: int, dct_scaling: bool = True) -> None:
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.dct_scaling = dct_scaling
        self._pil = eval_crop_uint8(resize_size, crop_size)

    def __call__(self, source: Union[bytes, str, os.PathLike]) -> torch.Tensor:
        data = _read(source)
        header = _header(data)
        if header is None or self.resize_size < self.crop_size:  # (CenterCrop pads then: the PIL path does that)
            return self._pil(open_rgb(io.BytesIO(data)))
        c = self.crop_size
        out_w, out_h, left, top = eval_geometry(header.width, header.height, self.resize_size, c)
        shrink = min(header.width / out_w, header.height / out_h)
        s = next((s for s in _DCT_SCALES if shrink >= s * DCT_MARGIN), 1) if self.dct_scaling else 1
        # the scaled image's size is TurboJPEG's TJSCALED: ceil(dim / s)
        width, height = -(-header.width // s), -(-header.height // s)
        columns, fx = _prefix(width, out_w, left + c)
        rows, fy = _prefix(height, out_h, top + c)
        columns = _region(header, 0, columns, s, width)[1]  # with the chroma sample right of the last column
        gray = header.colorspace == libturbojpeg.TJCS_GRAY
        try:
            pixels = libturbojpeg.load().decode(data, (0, 0, columns, rows), scale=s, gray=gray)
        except OSError:
            return self._pil(open_rgb(io.BytesIO(data)))
        # NCHW in channels_last memory (the decoded HWC pixels as they are): the layout of torch's vectorised kernel
        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        x = F.interpolate(x, scale_factor=(fy, fx), mode="bilinear", antialias=True, recompute_scale_factor=False)
        out = x[0, :, top : top + c, left : left + c].permute(1, 2, 0)
        return (out.expand(c, c, 3) if gray else out).contiguous()
