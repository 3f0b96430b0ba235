"""The ImageFolder layout (``<root>/<class>/<image files>``) that both image-folder backends read: the scan, and
the checks of a train/val pair before anything runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .errors import DataError, Param
from .imageio import is_hidden

__all__ = ["check_image_folders", "ignored_message", "scan_image_folder"]


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
    for param, root in (("train_dir", Path(train)), ("val_dir", Path(val))):
        if not root.is_dir():
            raise DataError(Param(param, root), ": no such directory")
        names = _class_dirs(root)
        if not names:
            raise DataError(Param(param, root), ": no class folders (expected <root>/<class>/<image files>)")
        empty = [n for n in names if not _has_image(root / n)]
        if empty:
            shown = ", ".join(empty[:5]) + (f" (+{len(empty) - 5} more)" if len(empty) > 5 else "")
            raise DataError(Param(param, root), f": class folders without images: {shown}")
        classes[param] = names
    tr, va = classes["train_dir"], classes["val_dir"]
    if tr != va:
        only_tr = sorted(set(tr) - set(va))[:5]
        only_va = sorted(set(va) - set(tr))[:5]
        raise DataError(
            Param("train_dir", train),
            " and ",
            Param("val_dir", val),
            f" have different classes (train only: {only_tr or '-'}; val only: {only_va or '-'})",
        )
    return tr
