"""Train/eval preprocessing (torchvision.transforms.v2), kept as parameters another pipeline (GPU decode) can reuse.

Train: RandomResizedCrop(crop, scale=(min_scale=0.08, 1), ratio=(3/4, 4/3), bilinear, antialias) + horizontal flip +
normalise. Eval: resize of the shorter side to ``val_resize`` + center crop ``val_crop`` + normalise.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RRC_SCALE", "RRC_RATIO", "train_transform", "eval_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _to_normalized_tensor() -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


def train_transform(crop_size: int, min_scale: float = RRC_SCALE[0]) -> v2.Compose:
    """``min_scale``: the smallest crop area as a fraction of the image (ImageNet recipe: 0.08)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                crop_size,
                scale=(min_scale, RRC_SCALE[1]),
                ratio=RRC_RATIO,
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            *_to_normalized_tensor(),
        ]
    )


def eval_transform(resize_size: int, crop_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize(resize_size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(crop_size),
            *_to_normalized_tensor(),
        ]
    )
