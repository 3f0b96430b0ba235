"""One sample's decode, shared by every backend that reads encoded image files: the image-folder backends (the file's
path) and the tar-shard backend (the file's bytes, read from its shard). Both go through the same
:class:`SampleDecode`, so a run on shards decodes, crops and flips exactly as the run on the folder they were
written from.

The bad-image policy lives here too: a sample that cannot be decoded is ``None`` under ``on_bad_image="skip"``
(dropped and counted by the collate) and a :class:`~partialconv.data.errors.BadImageError` under ``"error"``.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, Callable, Optional, Union

from PIL import Image, UnidentifiedImageError

from .cropped_decode import CroppedEvalDecode, CroppedTrainDecode
from .errors import BadImageError, refuse_augmentation
from .fast_pil import FastTrainCrop, eval_crop_uint8
from .imageio import open_rgb
from .loaders import collate_hwc_uint8, collate_skipping_bad
from .params import DataParams
from .presets import eval_transform, train_transform
from .sampler import seeded_draws

__all__ = ["BAD_IMAGE_ERRORS", "PIPELINES", "Source", "SampleDecode", "crop_and_flip_only", "split_decoders"]

# What PIL raises for a file that is not an image, is truncated or is otherwise undecodable.
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

Source = Union[str, os.PathLike, bytes]  # an image file: its path, or its bytes (a shard member)
PIPELINES = ("pil", "pil_fast", "turbo")  # the decodes split_decoders makes, named after their folder backends


def _as_file(source: Source) -> Union[str, os.PathLike, io.BytesIO]:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source


class SampleDecode:
    """``(source, name, seed) -> image`` or ``None``: decode one image file (path or bytes) and draw its
    augmentation from ``seed`` (:func:`~partialconv.data.sampler.seeded_draws`), under the bad-image policy.

    Either ``crop`` (a uint8 path that decodes and crops in one step, the crop drawn from the seed:
    :class:`~partialconv.data.fast_pil.FastTrainCrop`, or :mod:`~partialconv.data.cropped_decode`'s train and eval
    crops) or ``transform`` (applied to the RGB PIL image) is used."""

    def __init__(
        self,
        transform: Optional[Callable[[Image.Image], Any]] = None,
        on_bad_image: str = "skip",
        crop: Optional[Callable[[Source], Any]] = None,
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error; got {on_bad_image!r}")
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.crop = crop

    def __call__(self, source: Source, name: str, seed: Optional[int]) -> Any:
        try:
            if self.crop is not None:
                with seeded_draws(seed):
                    return self.crop(source)
            image = open_rgb(_as_file(source))
        except BAD_IMAGE_ERRORS as e:
            if self.on_bad_image == "error":
                raise BadImageError.of(name, e) from e
            # stderr, not warnings.warn: worker processes have no warning filters, and each file must be named
            print(f"warning: skipping bad image {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        if self.transform is not None:
            with seeded_draws(seed):
                image = self.transform(image)
        return image


def crop_and_flip_only(params: DataParams) -> bool:
    """Whether the run's train augmentation is the crop and the flip alone, resampled bilinearly: what the uint8
    pipelines (``pil_fast``, ``turbo``) do; policy augmentation, random erasing or another interpolation need
    ``pil``'s transforms."""
    return not params.auto_augment and not params.random_erase > 0 and params.interpolation == "bilinear"


def split_decoders(params: DataParams, pipeline: str) -> tuple[SampleDecode, SampleDecode, Callable]:
    """The train and val decoders of a run and the collate of their batches, for ``pipeline`` (:data:`PIPELINES`).

    ``turbo``: :mod:`~partialconv.data.cropped_decode`'s crops (JPEGs decoded over the crop's region only by
    libturbojpeg 3, which the caller checked loads); ``pil_fast``: reduced-scale JPEG decode of the drawn crop. Both
    give uint8 samples collated by :func:`~partialconv.data.loaders.collate_hwc_uint8` and normalised on the device,
    and have no policy augmentation and resize bilinearly (else one error naming the option). ``pil``: torchvision
    transforms on PIL images, float samples."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}; got {pipeline!r}")
    if pipeline != "pil":
        refuse_augmentation(params.auto_augment, params.random_erase, pipeline, params.interpolation)
    if pipeline == "turbo":
        train = SampleDecode(
            on_bad_image=params.on_bad_image, crop=CroppedTrainDecode(params.train_crop_size, params.train_min_scale)
        )
        val = SampleDecode(
            on_bad_image=params.on_bad_image, crop=CroppedEvalDecode(params.val_resize_size, params.val_crop_size)
        )
        return train, val, collate_hwc_uint8
    if pipeline == "pil_fast":
        train = SampleDecode(
            on_bad_image=params.on_bad_image, crop=FastTrainCrop(params.train_crop_size, params.train_min_scale)
        )
        val = SampleDecode(eval_crop_uint8(params.val_resize_size, params.val_crop_size), params.on_bad_image)
        return train, val, collate_hwc_uint8
    transform = train_transform(
        params.train_crop_size,
        params.train_min_scale,
        params.auto_augment,
        params.random_erase,
        interpolation=params.interpolation,
        ra_magnitude=params.ra_magnitude,
        augmix_severity=params.augmix_severity,
    )
    train = SampleDecode(transform, params.on_bad_image)
    val = SampleDecode(
        eval_transform(params.val_resize_size, params.val_crop_size, params.interpolation), params.on_bad_image
    )
    return train, val, collate_skipping_bad
