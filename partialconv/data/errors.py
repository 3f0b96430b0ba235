"""The data layer's errors: one line naming the directory, file or parameter, in words a front end can re-word.

Library code names a parameter by what it means (``train directory /data/train: no such directory``); a program
that takes the parameters from flags says the same thing with its flag names
(``e.worded({"train_dir": "--data_train"})``, which is what ``partialconv.engine.data_setup`` does for train.py).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Union

__all__ = ["PARAM_NAMES", "BadImageError", "DataError", "Param"]

# How library messages name the fields of :class:`~partialconv.data.params.DataParams`.
PARAM_NAMES: dict[str, str] = {
    "train_dir": "train directory",
    "val_dir": "val directory",
    "batch_size": "batch size",
    "workers": "workers",
    "backend": "data backend",
    "train_crop_size": "train crop size",
    "train_min_scale": "train min scale",
    "val_resize_size": "val resize size",
    "val_crop_size": "val crop size",
    "on_bad_image": "on_bad_image",
    "seed": "seed",
    "channels_last": "channels_last",
    "auto_augment": "auto-augment policy",
    "random_erase": "random erase probability",
    "ra_sampler": "repeated augmentation",
    "ra_reps": "repeated augmentation copies",
    "ra_magnitude": "RandAugment magnitude",
    "augmix_severity": "AugMix severity",
    "interpolation": "interpolation",
    "cache_dir": "shard cache",
    "cache_limit_gb": "shard cache limit (GB)",
}


class Param(NamedTuple):
    """A parameter and its value inside a :class:`DataError` message: rendered ``"<name> <value>"``."""

    name: str  # a DataParams field (a key of PARAM_NAMES)
    value: object


class DataError(ValueError):
    """A dataset or data parameter that cannot be used; the message is one line naming the directory, file or
    parameter.

    The message is kept as parts, text and :class:`Param`, so that :meth:`worded` can say it again with other names
    for the parameters. ``DataError("text")`` is a plain message (this is also how torch re-raises an error of a
    DataLoader worker in the main process).
    """

    def __init__(self, *parts: Union[str, Param]) -> None:
        self.parts = parts
        super().__init__(self.worded())

    def worded(self, names: Mapping[str, str] = PARAM_NAMES) -> str:
        """The message with each parameter called ``names[field]`` (default: by its meaning)."""
        return "".join(
            part if isinstance(part, str) else f"{names.get(part.name, PARAM_NAMES[part.name])} {part.value}"
            for part in self.parts
        )


class BadImageError(DataError):
    """An image file that cannot be decoded, under the ``on_bad_image="error"`` policy."""

    @classmethod
    def of(cls, path: str, error: BaseException) -> BadImageError:
        return cls(f"bad image {path}: {type(error).__name__}: {error}")


def refuse_augmentation(
    auto_augment: object, random_erase: float, backend: str, interpolation: str = "bilinear"
) -> None:
    """For a backend whose train path has no policy augmentation and resamples bilinearly: one error naming the
    option that asks for more."""
    if interpolation != "bilinear":
        raise DataError(
            Param("interpolation", interpolation), ": ", Param("backend", backend), " resizes bilinearly (use pil)"
        )
    if auto_augment is None and not random_erase > 0:
        return
    option = Param("auto_augment", auto_augment) if auto_augment else Param("random_erase", random_erase)
    raise DataError(option, ": ", Param("backend", backend), " has no auto-augment/random erasing (use pil)")
