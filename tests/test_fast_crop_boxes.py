"""The pil_fast train crop takes exactly the box torchvision draws (issue 24), read back from the pixels: on an image
whose red level is 2 x its column and green level 2 x its row, a crop resized by any antialiased linear kernel is a
ramp again, and the line through it gives the box's left edge and width (top and height from green). A box off by a
pixel, on any decode branch (torchvision's full-size decode, the reduced-scale JPEG decode, PIL for PNG), or a
missing/extra flip, is off by a pixel in this reading; the resampling differences stay under 0.25 pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from partialconv.data.fast_pil import FastTrainCrop, draft_scale

WIDTH, HEIGHT, CROP = 128, 120, 32


@pytest.fixture(scope="module")
def ramps(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ramp")
    x = np.arange(WIDTH)[None, :].repeat(HEIGHT, 0)
    y = np.arange(HEIGHT)[:, None].repeat(WIDTH, 1)
    image = Image.fromarray(np.stack([2 * x, 2 * y, np.full_like(x, 128)], -1).astype(np.uint8))
    image.save(folder / "ramp.jpg", quality=100, subsampling=0)  # 4:4:4: no chroma blur on the ramps
    image.save(folder / "ramp.png")
    return {"jpg": folder / "ramp.jpg", "png": folder / "ramp.png"}


def edge_and_length(levels: np.ndarray) -> tuple[float, float]:
    """Box start and length (input pixels) from the mean levels along one output axis: output pixel j samples the
    input at start + (j + 0.5) x length / CROP, where the ramp reads 2 x (that - 0.5). The two outer pixels on each
    side are left out (their kernels may reach past the image, where the ramp stops)."""
    j = np.arange(CROP)
    slope, intercept = np.polyfit(j[2:-2], levels[2:-2] / 2, 1)
    return intercept - 0.5 * slope + 0.5, slope * CROP


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_the_crop_box_read_from_the_pixels_is_torchvisions_draw(ramps, fmt):
    crop = FastTrainCrop(CROP)
    branches = set()
    for seed in range(60):
        torch.manual_seed(seed)  # the draws of torchvision's RandomResizedCrop + RandomHorizontalFlip, in that order
        top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, HEIGHT, WIDTH), [0.08, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        out = crop(ramps[fmt])
        assert out.dtype == torch.uint8 and out.shape == (CROP, CROP, 3)
        pixels = out.numpy().astype(np.float64)
        if flip:
            pixels = pixels[:, ::-1]
        x0, width = edge_and_length(pixels[:, :, 0].mean(0))
        y0, height = edge_and_length(pixels[:, :, 1].mean(1))
        seen = (x0, y0, width, height)
        assert abs(x0 - left) < 0.35 and abs(y0 - top) < 0.35, (seed, (top, left, h, w, flip), seen)
        assert abs(width - w) < 0.5 and abs(height - h) < 0.5, (seed, (top, left, h, w, flip), seen)
        branches.add(draft_scale(w, h, CROP) if fmt == "jpg" else 0)
    assert branches == ({1, 2} if fmt == "jpg" else {0})  # JPEG: full-size and reduced-scale decodes both checked
