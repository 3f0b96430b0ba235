"""A deterministic ImageNet-like JPEG folder for data-pipeline benchmarks.

Decode cost depends on the pixel count, the chroma layout and how much high-frequency content the entropy coder has
to unpack, so a realistic stand-in needs photo-like images, not flat colours: each image is a multi-octave smooth
random field (sky, lighting gradients), a few filled shapes with soft edges (objects), and sensor-like noise, saved by
PIL at quality 90 with 4:2:0 chroma subsampling. At 500x375 that gives about 100 KB per file, like ImageNet's
training set (mean about 110 KB, most images 500 px on the long side, a fifth of them portrait).

Every image is a pure function of (seed, index); the folder is built once per parameter set under a cache directory
and reused. Files are written atomically and a marker is written last, so an interrupted build is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from partialconv.fileio import atomic_write

__all__ = ["make_jpeg_folder", "render_image"]

_VERSION = 1  # bump when the image recipe changes, so stale caches are not reused
_MARKER = "complete.json"


def render_image(seed: int, index: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """The photo-like RGB image number ``index`` of ``seed``; a fifth of them are portrait (size swapped)."""
    rng = np.random.default_rng([seed, index])
    width, height = size if rng.random() >= 0.2 else (size[1], size[0])
    field = np.zeros((height, width, 3), np.float32)
    for octave, amplitude in ((3, 90.0), (8, 45.0), (24, 25.0), (64, 20.0), (160, 20.0)):
        coarse = rng.normal(0.0, 1.0, (octave, octave, 3)).astype(np.float32)
        layer = np.stack(
            [
                np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((width, height), Image.BICUBIC))
                for c in range(3)
            ],
            axis=-1,
        )
        field += amplitude * layer
    field += rng.uniform(60, 190, 3).astype(np.float32)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")

    shapes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * width, y0 + rng.uniform(0.1, 0.6) * height
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(120, 256)),)
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            points = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=fill)
    shapes = shapes.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    image = Image.alpha_composite(image.convert("RGBA"), shapes).convert("RGB")

    pixels = np.asarray(image, np.float32)
    pixels += rng.normal(0.0, 15.0, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _write_one(job: tuple[str, int, int, tuple[int, int], int]) -> int:
    path, seed, index, size, quality = job
    with atomic_write(path) as f:
        render_image(seed, index, size).save(f, "JPEG", quality=quality, subsampling="4:2:0")
    return os.path.getsize(path)


def make_jpeg_folder(
    cache_dir: str | os.PathLike,
    num_images: int = 2048,
    num_classes: int = 16,
    seed: int = 0,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    workers: Optional[int] = None,
) -> Path:
    """Build (once) and return an ImageFolder root ``<cache_dir>/<key>/`` with ``num_classes`` class folders.

    ``key`` encodes every parameter, so different requests never share or overwrite a folder.
    """
    if num_images < num_classes or num_classes < 1:
        raise ValueError(f"need num_images >= num_classes >= 1, got {num_images} images and {num_classes} classes")
    params = dict(version=_VERSION, num_images=num_images, num_classes=num_classes, seed=seed, size=list(size),
                  quality=quality)  # fmt: skip
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(cache_dir) / f"jpeg_{size[0]}x{size[1]}_n{num_images}_s{seed}_{digest}"
    if (root / _MARKER).is_file():
        return root
    jobs = []
    for index in range(num_images):
        class_dir = root / f"class_{index % num_classes:04d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        path = class_dir / f"img_{index:07d}.JPEG"
        if not path.is_file():
            jobs.append((str(path), seed, index, size, quality))
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_one(job)
    total = sum(p.stat().st_size for p in root.glob("class_*/*.JPEG"))
    marker = root / (_MARKER + ".tmp")
    marker.write_text(json.dumps({**params, "mean_bytes": total // num_images}))
    os.replace(marker, root / _MARKER)
    return root
