"""Irregular hole masks: a seeded generator with the paper's hole-ratio buckets, and a loader for mask folders in
the NVIDIA irregular-mask-dataset format.

Conventions: arrays/tensors use 1 = valid, 0 = hole. PNG files follow the NVIDIA dataset: white (>= 128) = hole,
black = valid. Masks stay binary everywhere: files are thresholded on load and every geometric augmentation uses
nearest-neighbour sampling.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..fileio import atomic_write
from .imageio import is_hidden, open_gray

__all__ = [
    "HOLE_RATIO_BUCKETS",
    "IrregularMaskGenerator",
    "MaskFolder",
    "border_margin",
    "bucket_of",
    "generate_mask",
    "hole_ratio",
    "load_mask_png",
    "save_mask_png",
]

# The paper's six hole-to-image area ratio categories, each (lo, hi].
HOLE_RATIO_BUCKETS: tuple[tuple[float, float], ...] = (
    (0.01, 0.1),
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.5),
    (0.5, 0.6),
)
MASK_EXTENSIONS = (".png",)


def hole_ratio(mask: Union[np.ndarray, Tensor]) -> float:
    """Fraction of hole pixels (mask == 0) of one (H, W) or (1, H, W) mask."""
    return float((mask == 0).sum()) / float(mask.size if isinstance(mask, np.ndarray) else mask.numel())


def bucket_of(ratio: float) -> Optional[int]:
    """Index of the bucket (lo, hi] containing ``ratio``, or None outside all buckets."""
    for i, (lo, hi) in enumerate(HOLE_RATIO_BUCKETS):
        if lo < ratio <= hi:
            return i
    return None


def border_margin(height: int, width: int) -> int:
    """Hole-free margin of the border constraint: 50 px at 512 px (our choice of margin), scaled with the image."""
    return max(1, round(min(height, width) * 50 / 512))


class _Canvas:
    """A hole map (True = hole) with numpy rasterisers that touch only each shape's bounding box."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.holes = np.zeros((height, width), dtype=bool)

    def _box(self, x0: float, y0: float, x1: float, y1: float):
        xa, xb = max(0, int(math.floor(x0))), min(self.w, int(math.ceil(x1)) + 1)
        ya, yb = max(0, int(math.floor(y0))), min(self.h, int(math.ceil(y1)) + 1)
        if xa >= xb or ya >= yb:
            return None
        ys, xs = np.mgrid[ya:yb, xa:xb]
        return (slice(ya, yb), slice(xa, xb)), xs.astype(np.float64), ys.astype(np.float64)

    def segment(self, p: tuple[float, float], q: tuple[float, float], radius: float) -> None:
        box = self._box(
            min(p[0], q[0]) - radius, min(p[1], q[1]) - radius, max(p[0], q[0]) + radius, max(p[1], q[1]) + radius
        )
        if box is None:
            return
        sl, xs, ys = box
        dx, dy = q[0] - p[0], q[1] - p[1]
        length2 = dx * dx + dy * dy
        t = np.clip(((xs - p[0]) * dx + (ys - p[1]) * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        dist2 = (xs - p[0] - t * dx) ** 2 + (ys - p[1] - t * dy) ** 2
        self.holes[sl] |= dist2 <= radius * radius

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float) -> None:
        r = max(a, b)
        box = self._box(cx - r, cy - r, cx + r, cy + r)
        if box is None:
            return
        sl, xs, ys = box
        c, s = math.cos(angle), math.sin(angle)
        u, v = (xs - cx) * c + (ys - cy) * s, -(xs - cx) * s + (ys - cy) * c
        self.holes[sl] |= (u / a) ** 2 + (v / b) ** 2 <= 1.0

    def blob(self, cx: float, cy: float, radius: float, rng: np.random.Generator) -> None:
        """A star-shaped region whose radius wobbles smoothly with the angle (a few random harmonics)."""
        box = self._box(cx - 1.6 * radius, cy - 1.6 * radius, cx + 1.6 * radius, cy + 1.6 * radius)
        if box is None:
            return
        sl, xs, ys = box
        theta = np.arctan2(ys - cy, xs - cx)
        wobble = np.ones_like(theta)
        for k in range(2, 6):
            wobble += rng.uniform(0.0, 0.3 / k * 2) * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
        self.holes[sl] |= np.hypot(xs - cx, ys - cy) <= radius * wobble


def _draw_shape(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    """One random stroke, ellipse or blob; ``scale`` (0, 1] shrinks shapes when the target is nearly reached."""
    h, w = canvas.h, canvas.w
    size = min(h, w)
    kind = rng.choice(3, p=(0.6, 0.2, 0.2))
    if kind == 0:  # a brush stroke: a thick random walk with smooth turns
        radius = max(1.0, rng.uniform(0.01, 0.04) * size * scale)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(2, 8))):
            angle += rng.normal(0, 0.8)
            step = rng.uniform(0.05, 0.2) * size * scale
            nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
            canvas.segment((x, y), (nx, ny), radius)
            x, y = nx, ny
    elif kind == 1:
        a, b = rng.uniform(0.03, 0.15, size=2) * size * scale
        canvas.ellipse(rng.uniform(0, w), rng.uniform(0, h), max(a, 1.0), max(b, 1.0), rng.uniform(0, math.pi))
    else:
        canvas.blob(rng.uniform(0, w), rng.uniform(0, h), max(1.0, rng.uniform(0.03, 0.12) * size * scale), rng)


def generate_mask(
    height: int,
    width: int,
    ratio_range: tuple[float, float],
    border: bool = False,
    seed: Optional[int] = None,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """A (height, width) uint8 mask (1 = valid, 0 = hole) whose hole ratio lies in ``(lo, hi]``.

    Shapes are added until the ratio passes a target drawn uniformly in the range; a shape that would overshoot
    ``hi`` is undone and later shapes are drawn smaller. With ``border=True`` no hole lies within
    :func:`border_margin` pixels of the image border. Deterministic for a given ``seed`` (or ``rng`` state).
    """
    lo, hi = ratio_range
    total = height * width
    margin = border_margin(height, width) if border else 0
    capacity = (height - 2 * margin) * (width - 2 * margin) / total
    if not 0 <= lo < hi or hi > 1 or capacity <= lo or math.floor(hi * total) <= math.floor(lo * total):
        raise ValueError(
            f"generate_mask: hole ratio range ({lo}, {hi}] is not reachable for a {height}x{width} mask"
            + (f" with a {margin}px border margin" if border else "")
        )
    rng = rng if rng is not None else np.random.default_rng(seed)
    target = rng.uniform(lo, min(hi, capacity))
    canvas = _Canvas(height, width)
    interior = np.zeros((height, width), dtype=bool)
    interior[margin : height - margin, margin : width - margin] = True
    holes = 0
    scale = 1.0
    while holes <= target * total:
        before = canvas.holes.copy()
        _draw_shape(canvas, rng, scale)
        canvas.holes &= interior
        count = int(canvas.holes.sum())
        if count > hi * total:
            canvas.holes = before
            scale *= 0.7
            if scale < 1e-3:  # shapes of one pixel still overshoot: finish with single pixels
                _fill_pixels(canvas.holes, interior, int(math.floor(lo * total)) + 1 - holes, rng)
                break
        else:
            holes = count
    return (~canvas.holes).astype(np.uint8)


def _fill_pixels(holes: np.ndarray, interior: np.ndarray, n: int, rng: np.random.Generator) -> None:
    if n <= 0:
        return
    free = np.flatnonzero(interior.ravel() & ~holes.ravel())
    holes.ravel()[rng.choice(free, size=n, replace=False)] = True


class IrregularMaskGenerator:
    """Seeded irregular masks for training and evaluation.

    ``bucket``: an index into :data:`HOLE_RATIO_BUCKETS`, an explicit ``(lo, hi)`` range, or None to draw one of
    the six buckets per mask. ``border``: True/False, or None to draw it per mask (half of each). ``gen(seed)``
    returns a (1, H, W) float tensor; the same seed gives the same mask.
    """

    def __init__(
        self,
        height: int,
        width: Optional[int] = None,
        bucket: Union[None, int, tuple[float, float]] = None,
        border: Optional[bool] = False,
    ) -> None:
        self.height, self.width = height, width or height
        if isinstance(bucket, int) and not 0 <= bucket < len(HOLE_RATIO_BUCKETS):
            raise ValueError(f"IrregularMaskGenerator: bucket must be in 0..{len(HOLE_RATIO_BUCKETS) - 1}")
        self.bucket = bucket
        self.border = border

    def numpy(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        bucket = self.bucket
        if bucket is None:
            bucket = int(rng.integers(len(HOLE_RATIO_BUCKETS)))
        ratio_range = HOLE_RATIO_BUCKETS[bucket] if isinstance(bucket, int) else tuple(bucket)
        border = bool(rng.integers(2)) if self.border is None else self.border
        return generate_mask(self.height, self.width, ratio_range, border=border, rng=rng)

    def __call__(self, seed: int) -> Tensor:
        return torch.from_numpy(self.numpy(seed)).float().unsqueeze(0)


def load_mask_png(path: Union[str, os.PathLike]) -> np.ndarray:
    """A mask PNG (NVIDIA convention: white = hole) as a (H, W) uint8 array with 1 = valid, 0 = hole."""
    try:
        grey = np.asarray(open_gray(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"mask {path}: cannot be read as an image ({e})") from e
    return (grey < 128).astype(np.uint8)


def save_mask_png(mask: Union[np.ndarray, Tensor], path: Union[str, os.PathLike]) -> None:
    """Write a 1 = valid mask as a PNG in the NVIDIA convention (white = hole), atomically."""
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:])
    with atomic_write(path) as f:
        Image.fromarray(np.where(m > 0.5, 0, 255).astype(np.uint8)).save(f, format="PNG")


def list_images(root: Union[str, os.PathLike], extensions: Sequence[str]) -> list[Path]:
    """Files under ``root`` (recursive) with one of ``extensions``, sorted for a stable order; hidden files and
    folders (``.ipynb_checkpoints/``, macOS ``._*`` files) are not data."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions and not is_hidden(p, root)
    )


class MaskFolder:
    """Masks from a folder of PNGs (NVIDIA irregular-mask-dataset format), as (1, size, size) float tensors.

    With ``augment`` (training): random dilation of the holes, rotation, crop and flips, all binary-preserving,
    seeded by ``mask(index, seed)``. Without: the mask resized to ``size`` with nearest-neighbour sampling.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int, augment: bool = False) -> None:
        self.files = list_images(root, MASK_EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(f"{root}: no mask PNGs found (recursive)")
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        return torch.from_numpy(load_mask_png(self.files[index % len(self.files)])).float()[None, None]

    def mask(self, index: int, seed: int = 0) -> Tensor:
        m = self.load(index)
        if self.augment:
            m = _augment_mask(m, torch.Generator().manual_seed(seed))
        m = F.interpolate(m, size=(self.size, self.size), mode="nearest")
        return m[0]


def _augment_mask(m: Tensor, g: torch.Generator) -> Tensor:
    """(1, 1, H, W) binary mask -> randomly dilated holes, rotated, cropped and flipped; still binary."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    h, w = m.shape[-2:]
    k = 2 * int(uniform(0, 4)) + 1  # dilation: 1 (none), 3, 5 or 7 px
    if k > 1:
        m = 1.0 - F.max_pool2d(1.0 - m, k, stride=1, padding=k // 2)
    angle = uniform(-math.pi, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, list(m.shape), align_corners=False)
    # Outside the source the rotated mask is valid (padding 1 = valid): rotation never invents holes.
    m = 1.0 - F.grid_sample(1.0 - m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    crop = uniform(0.6, 1.0)
    ch, cw = max(1, int(h * crop)), max(1, int(w * crop))
    top, left = int(uniform(0, h - ch + 1)), int(uniform(0, w - cw + 1))
    m = m[..., top : top + ch, left : left + cw]
    if uniform(0, 1) < 0.5:
        m = m.flip(-1)
    if uniform(0, 1) < 0.5:
        m = m.flip(-2)
    return m
