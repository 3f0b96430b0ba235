"""Train/eval preprocessing (torchvision.transforms.v2), kept as parameters another pipeline (GPU decode) can reuse.

Train: RandomResizedCrop(crop, scale=(min_scale=0.08, 1), ratio=(3/4, 4/3), bilinear, antialias) + horizontal flip +
normalise. Eval: resize of the shorter side to ``val_resize`` + center crop ``val_crop`` + normalise. The resampling
(``interpolation``, torchvision's reference ``--interpolation``) is bilinear unless asked otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch
from torchvision.transforms import InterpolationMode, v2

__all__ = [
    "AUTO_AUGMENT",
    "auto_augment_transform",
    "INTERPOLATIONS",
    "policy_interpolations",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RRC_SCALE",
    "RRC_RATIO",
    "train_transform",
    "eval_transform",
]

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


# --auto-augment's policies, by torchvision's reference names.
AUTO_AUGMENT = ("ta_wide", "ra", "augmix", "imagenet")
# --interpolation: torchvision's InterpolationMode values (its reference passes the name to InterpolationMode).
INTERPOLATIONS = tuple(m.value for m in InterpolationMode)
# What the policies' geometric ops accept on PIL images (AugMix works on tensors: nearest and bilinear only);
# measured with torchvision 0.29's v2 transforms, the others raise ValueError mid-epoch.
_POLICY_INTERPOLATIONS = {
    "augmix": ("nearest", "bilinear"),
    **{p: ("nearest", "nearest-exact", "bilinear", "bicubic") for p in ("ta_wide", "ra", "imagenet")},
}


def policy_interpolations(auto_augment: Optional[str]) -> tuple[str, ...]:
    """The ``interpolation`` values the pipeline with ``auto_augment`` (a policy, or None) can resample with."""
    return _POLICY_INTERPOLATIONS.get(auto_augment or "", INTERPOLATIONS)


def auto_augment_transform(
    policy: str, interpolation: str = "bilinear", ra_magnitude: int = 9, augmix_severity: int = 3
) -> v2.Transform:
    """torchvision.transforms.v2's policy named as in its classification references, with its ``--interpolation``,
    ``--ra-magnitude`` and ``--augmix-severity`` (torchvision's defaults).
    Random draws come from torch's global RNG: seeded per sample by the dataset, like the crop."""
    interpolation = InterpolationMode(interpolation)
    if policy == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if policy == "ra":
        return v2.RandAugment(interpolation=interpolation, magnitude=ra_magnitude)
    if policy == "augmix":
        return v2.AugMix(interpolation=interpolation, severity=augmix_severity)
    if policy == "imagenet":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
    raise ValueError(f"unknown auto-augment policy {policy!r}; expected one of {', '.join(AUTO_AUGMENT)}")


def train_transform(
    crop_size: int,
    min_scale: float = RRC_SCALE[0],
    auto_augment: Optional[str] = None,
    random_erase: float = 0.0,
    interpolation: str = "bilinear",
    ra_magnitude: int = 9,
    augmix_severity: int = 3,
) -> v2.Compose:
    """``min_scale``: the smallest crop area as a fraction of the image (ImageNet recipe: 0.08). ``auto_augment``
    (a policy of :data:`AUTO_AUGMENT`) runs on the uint8 image after the flip and ``random_erase`` (a probability)
    on the normalised tensor, in torchvision's reference preset order. ``interpolation`` (:data:`INTERPOLATIONS`)
    resamples the crop and the policy, as the reference's."""
    policy = (
        [auto_augment_transform(auto_augment, interpolation, ra_magnitude, augmix_severity)] if auto_augment else []
    )
    erase = [v2.RandomErasing(p=random_erase)] if random_erase > 0 else []
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                crop_size,
                scale=(min_scale, RRC_SCALE[1]),
                ratio=RRC_RATIO,
                interpolation=InterpolationMode(interpolation),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            *policy,
            *_to_normalized_tensor(),
            *erase,
        ]
    )


def eval_transform(resize_size: int, crop_size: int, interpolation: str = "bilinear") -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize(resize_size, interpolation=InterpolationMode(interpolation), antialias=True),
            v2.CenterCrop(crop_size),
            *_to_normalized_tensor(),
        ]
    )
