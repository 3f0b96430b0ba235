"""What every image loader of the project shares: 16-bit images brought to 8 bits, and hidden files skipped.

PIL's ``convert("RGB")``/``convert("L")`` clips 16-bit grayscale (modes ``I;16*`` and ``I``) at 255 instead of
scaling it, which turns almost every pixel of a 16-bit PNG white; torchvision's ``decode_image`` returns such a PNG
as ``uint16``. Both are mapped here with the same rule, ``value >> 8`` (the top byte), so the PIL and the GPU-decode
backends give the same pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

__all__ = ["is_hidden", "to_8bit", "open_rgb", "open_gray", "uint16_to_uint8"]

# Modes PIL gives 16-bit (or wider integer) single-channel images: I;16 (little-endian), I;16B/I;16L/I;16N, and "I"
# (older Pillow opens 16-bit PNGs as "I" with values 0..65535).
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_hidden(path: Union[str, os.PathLike], root: Union[str, os.PathLike]) -> bool:
    """Whether any component of ``path`` below ``root`` starts with a dot (``.ipynb_checkpoints/``, ``._x.jpg``):
    such files are tool debris, never data."""
    return any(part.startswith(".") for part in Path(path).relative_to(root).parts)


def uint16_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A uint16 image tensor (torchvision's 16-bit PNG decode) as uint8: the top byte of each value."""
    return (x.to(torch.int32) >> 8).to(torch.uint8)


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale PIL image as mode ``L`` (the top byte, as :func:`uint16_to_uint8`); others unchanged."""
    if image.mode not in _WIDE_GRAY:
        return image
    arr = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")


def open_rgb(path: Union[str, os.PathLike]) -> Image.Image:
    """The image file as an 8-bit RGB PIL image (decoded now; the file is closed)."""
    with Image.open(path) as img:
        img = to_8bit(img)
        # Palette images with transparency must go through RGBA, or PIL warns and drops the alpha meaning.
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")  # also grayscale, CMYK, RGBA (alpha dropped)


def open_gray(path: Union[str, os.PathLike]) -> Image.Image:
    """The image file as an 8-bit grayscale (mode ``L``) PIL image."""
    with Image.open(path) as img:
        return to_8bit(img).convert("L")
