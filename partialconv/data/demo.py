"""The embedded demo dataset: ten procedurally drawn texture classes in ImageFolder layout, made once on disk.

Each class is a pattern family (stripes in three orientations, checkerboard, dots, rings, grid, zigzag, noise,
radial gradient) drawn with random colours, frequency, phase and noise; the patterns fill the image with periods of
6-12 px, so a random resized crop still shows a few periods and keeps the class. Generating the default set takes a
few seconds; it is built in a temporary directory and renamed into place, so an interrupted build never leaves a
half-written dataset behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

__all__ = ["DEMO_CLASSES", "ensure_demo_dataset", "make_demo_dataset"]

_Pattern = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _stripes(angle: float) -> _Pattern:
    def draw(y, x, rng):
        freq = 2 * np.pi / rng.uniform(6, 12)  # period in pixels
        a = angle + rng.uniform(-0.15, 0.15)
        return np.sin((x * np.cos(a) + y * np.sin(a)) * freq + rng.uniform(0, 2 * np.pi)) > 0

    return draw


def _checker(y, x, rng):
    s = rng.uniform(3, 6)
    return ((np.floor(x / s) + np.floor(y / s)) % 2) == 0


def _dots(y, x, rng):
    s = rng.uniform(6, 10)
    r = s * rng.uniform(0.2, 0.3)
    return ((x % s - s / 2) ** 2 + (y % s - s / 2) ** 2) < r**2


def _rings(y, x, rng):
    cy, cx = rng.uniform(0, y.max(), 2)
    return np.sin(np.hypot(y - cy, x - cx) * 2 * np.pi / rng.uniform(6, 12)) > 0


def _grid(y, x, rng):
    s = rng.uniform(6, 10)
    w = rng.uniform(1.5, 2.5)
    return ((x % s) < w) | ((y % s) < w)


def _zigzag(y, x, rng):
    period = rng.uniform(8, 12)
    tri = np.abs((x % period) - period / 2)
    return np.sin((y + tri * rng.uniform(1.0, 2.0)) * 2 * np.pi / rng.uniform(6, 10)) > 0


def _noise(y, x, rng):
    return rng.random(y.shape) > 0.5


def _radial(y, x, rng):
    cy, cx = rng.uniform(0, y.max(), 2)
    return np.hypot(y - cy, x - cx) / y.max()


DEMO_CLASSES: dict[str, _Pattern] = {
    "checker": _checker,
    "dots": _dots,
    "grid": _grid,
    "noise": _noise,
    "radial": _radial,
    "rings": _rings,
    "stripes_diagonal": _stripes(np.pi / 4),
    "stripes_horizontal": _stripes(np.pi / 2),
    "stripes_vertical": _stripes(0.0),
    "zigzag": _zigzag,
}


def _draw(pattern: _Pattern, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if rng.random() < 0.5:  # the diagonal class in both directions; flips must not change any class
        x = x[:, ::-1]
    t = pattern(y, x, rng).astype(np.float64)[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_demo_dataset(
    root: Union[str, Path], train_per_class: int = 60, val_per_class: int = 20, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` atomically (temp dir + rename)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for name, pattern in DEMO_CLASSES.items():
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(_draw(pattern, size, rng)).save(folder / f"{i:04d}.png")
        tmp.rename(root)  # atomic on one filesystem; fails if another process won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "val").is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_demo_dataset(root: Union[str, Path] = "data/demo") -> tuple[Path, Path]:
    """The demo's (train, val) directories, generated on first use."""
    root = Path(root)
    if not root.is_dir():
        make_demo_dataset(root)
    return root / "train", root / "val"
