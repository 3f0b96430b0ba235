"""ImageFolder datasets for classification: RGB conversion, a bad-image policy, per-sample seeded augmentation.

Augmentation randomness is a function of (seed, epoch, sample index) only: the sampler
(:class:`partialconv.data.sampler.SeededSampler`) hands each index together with its own seed, so a run gives the
same batches whatever the number of workers or ranks, and a resumed run (even mid-epoch) sees exactly the images the
uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .imageio import is_hidden, open_rgb

__all__ = [
    "DataError",
    "ClassificationFolder",
    "collate_skipping_bad",
    "check_image_folders",
    "ignored_message",
    "scan_image_folder",
]

# What PIL raises for a file that is not an image, is truncated or is otherwise undecodable.
_BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line naming the directory or file."""


def _class_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _has_image(folder: Path) -> bool:
    return any(
        p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS) and not is_hidden(p, folder) for p in folder.rglob("*")
    )


def scan_image_folder(root: Union[str, Path]) -> tuple[list[str], dict[str, int], list[tuple[str, int]], list[str]]:
    """torchvision's ImageFolder scan (same classes and sample order) without hidden entries: a hidden folder at the
    root is not a class, hidden folders and files inside a class folder are not samples. Returns ``(classes,
    class_to_idx, samples, ignored)``, ``ignored`` naming the hidden paths skipped (root folders and the topmost
    hidden component inside class folders)."""
    root = Path(root).expanduser()
    classes = _class_dirs(root)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    ignored = {str(d) for d in root.iterdir() if d.is_dir() and d.name.startswith(".")}

    skip = len(str(root))  # torchvision joins str(root) and the walk's names: the rest is relative to root

    def valid(path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        if os.sep + "." not in path[skip:]:  # the common case, kept to string operations (1.28M calls on ImageNet)
            return True
        rel = Path(path).relative_to(root)
        first = next(i for i, part in enumerate(rel.parts) if part.startswith("."))
        ignored.add(str(root.joinpath(*rel.parts[: first + 1])))
        return False

    samples = make_dataset(str(root), class_to_idx, is_valid_file=valid)
    return classes, class_to_idx, samples, sorted(ignored)


def ignored_message(ignored: list[str]) -> str:
    """The warning naming the hidden entries a scan skipped (empty when none)."""
    if not ignored:
        return ""
    shown = ", ".join(ignored[:5]) + (f" (+{len(ignored) - 5} more)" if len(ignored) > 5 else "")
    return f"ignored hidden folders/files (not classes, not data): {shown}"


def check_image_folders(train: Union[str, Path], val: Union[str, Path]) -> list[str]:
    """Validate the train/val ImageFolder layout before anything runs; returns the class names."""
    classes = {}
    for flag, root in (("--data_train", Path(train)), ("--data_val", Path(val))):
        if not root.is_dir():
            raise DataError(f"{flag} {root}: no such directory")
        names = _class_dirs(root)
        if not names:
            raise DataError(f"{flag} {root}: no class folders (expected <root>/<class>/<image files>)")
        empty = [n for n in names if not _has_image(root / n)]
        if empty:
            shown = ", ".join(empty[:5]) + (f" (+{len(empty) - 5} more)" if len(empty) > 5 else "")
            raise DataError(f"{flag} {root}: class folders without images: {shown}")
        classes[flag] = names
    tr, va = classes["--data_train"], classes["--data_val"]
    if tr != va:
        only_tr = sorted(set(tr) - set(va))[:5]
        only_va = sorted(set(va) - set(tr))[:5]
        raise DataError(
            f"--data_train {train} and --data_val {val} have different classes "
            f"(train only: {only_tr or '-'}; val only: {only_va or '-'})"
        )
    return tr


class ClassificationFolder(ImageFolder):
    """``ImageFolder`` that converts every image to RGB and applies the bad-image policy.

    ``__getitem__`` takes an index or an ``(index, seed)`` pair; with a seed, the transform's randomness is drawn
    from a generator seeded with it (the caller's global RNG is left untouched). A sample that cannot be decoded
    returns ``None`` with ``on_bad_image="skip"`` (:func:`collate_skipping_bad` drops and counts it) and raises
    :class:`DataError` naming the file with ``"error"``.
    """

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None, on_bad_image: str = "skip"):
        self.ignored: list[str] = []  # hidden entries skipped by the scan (find_classes/make_dataset below)
        super().__init__(str(root), transform=transform, loader=open_rgb)
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error; got {on_bad_image!r}")
        self.on_bad_image = on_bad_image

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes, class_to_idx, self._scanned, self.ignored = scan_image_folder(directory)
        return classes, class_to_idx

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs) -> list[tuple[str, int]]:
        return self._scanned  # made by find_classes, which torchvision calls first with the same directory

    def __getitem__(self, key: Union[int, tuple[int, int]]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except _BAD_IMAGE_ERRORS as e:
            if self.on_bad_image == "error":
                raise DataError(f"bad image {path}: {type(e).__name__}: {e} (use --on-bad-image skip)") from e
            # stderr, not warnings.warn: worker processes have no warning filters, and each file must be named
            print(f"warning: skipping bad image {path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image = self.transform(image)
        return image, target


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the good samples; the third element is how many bad ones were dropped (counted per epoch)."""
    good = [b for b in batch if b is not None]
    bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([torch.as_tensor(b[0]) for b in good])
    targets = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, bad
