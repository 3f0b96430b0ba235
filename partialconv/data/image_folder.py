"""The ImageFolder layout (``<root>/<class>/<image files>``) that both image-folder backends read: the scan, and
the checks of a train/val pair before anything runs."""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError, Param
from .imageio import is_hidden

__all__ = [
    "LinkReport",
    "check_image_folders",
    "ignored_message",
    "scan_image_folder",
    "scan_messages",
    "folder_fingerprint",
]


def _class_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _has_image(folder: Path) -> bool:
    return any(
        p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS) and not is_hidden(p, folder) for p in folder.rglob("*")
    )


@dataclass
class LinkReport:
    """What a scan met through symbolic links: ``loops`` (links to a folder they are inside of, or to themselves:
    followed, they would list the same files again and again) and ``duplicates`` (``(path, first path)`` pairs: a
    file or folder reached again by another path, listed once, under its first path in sample order)."""

    loops: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)


Identity = Optional[tuple[int, int]]  # (device, inode); None for a dangling link


def _walk_once(
    top: str, seen_dirs: dict[tuple[int, int], str], links: LinkReport
) -> list[tuple[str, list[tuple[str, Identity]]]]:
    """``(folder, [(file name, identity)])`` of every folder under ``top``, following links as torchvision's
    ``os.walk(..., followlinks=True)`` does, but entering each folder (by device and inode) once: a loop is recorded in
    ``links.loops``, a folder reached again in ``links.duplicates``. One ``stat`` per folder and per link; a
    plain file's identity comes from the directory listing (1.28M files on ImageNet)."""
    out = []
    stack = [(top, ())]
    while stack:
        path, ancestors = stack.pop()
        try:
            st = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue  # unreadable: skipped, as os.walk does
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            links.loops.append(path)
            continue
        if ident in seen_dirs:
            links.duplicates.append((path, seen_dirs[ident]))
            continue
        seen_dirs[ident] = path
        files, subdirs = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry.path)
            elif not entry.is_symlink():
                files.append((entry.name, (st.st_dev, entry.inode())))  # d_ino of the listing: no stat
            else:
                try:
                    target = os.stat(entry.path)
                    files.append((entry.name, (target.st_dev, target.st_ino)))
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        links.loops.append(entry.path)  # a link to itself: no file behind it
                    else:  # dangling: kept, the bad-image policy names it when it is read
                        files.append((entry.name, None))
        out.append((path, files))
        stack.extend((d, (*ancestors, ident)) for d in reversed(subdirs))
    return out


def scan_image_folder(
    root: Union[str, Path],
) -> tuple[list[str], dict[str, int], list[tuple[str, int]], list[str], LinkReport]:
    """torchvision's ImageFolder scan (same classes and sample order) without hidden entries: a hidden folder at the
    root is not a class, hidden folders and files inside a class folder are not samples. Returns ``(classes,
    class_to_idx, samples, ignored, links)``, ``ignored`` naming the hidden paths skipped (root folders and the
    topmost hidden component inside class folders).

    Unlike torchvision's ``make_dataset`` (``os.walk`` following links, which lists a folder again at every turn of
    a symlink loop, up to the kernel's 40 links per path), a file or folder reached twice through links is listed
    once and a loop is not entered (both named in ``links``, see :func:`scan_messages`)."""
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

    links = LinkReport()
    seen_dirs: dict[tuple[int, int], str] = {}
    seen_files: dict[tuple[int, int], str] = {}
    samples = []
    for name in classes:
        # torchvision's order: folders sorted by path, files by name within each
        for folder, names in sorted(_walk_once(os.path.join(str(root), name), seen_dirs, links)):
            for fname, ident in names:
                path = os.path.join(folder, fname)
                if not valid(path):
                    continue
                if ident is None:
                    samples.append((path, class_to_idx[name]))
                    continue
                if ident in seen_files:
                    links.duplicates.append((path, seen_files[ident]))
                    continue
                seen_files[ident] = path
                samples.append((path, class_to_idx[name]))
    return classes, class_to_idx, samples, sorted(ignored), links


def ignored_message(ignored: list[str]) -> str:
    """The warning naming the hidden entries a scan skipped (empty when none)."""
    if not ignored:
        return ""
    shown = ", ".join(ignored[:5]) + (f" (+{len(ignored) - 5} more)" if len(ignored) > 5 else "")
    return f"ignored hidden folders/files (not classes, not data): {shown}"


def scan_messages(scans: Sequence[tuple[str, str, list[str], LinkReport]], on_bad_image: str) -> tuple[str, ...]:
    """The warnings of a split pair's scans (``(param, root, ignored, links)`` each): hidden entries skipped, files
    reached twice, symlink loops. With ``on_bad_image="error"`` a loop is a :class:`DataError` naming it instead."""
    out = []
    message = ignored_message([path for _, _, ignored, _ in scans for path in ignored])
    if message:
        out.append(message)
    loops = [(param, root, path) for param, root, _, links in scans for path in links.loops]
    if loops and on_bad_image == "error":
        param, root, path = loops[0]
        raise DataError(
            Param(param, root),
            f": symlink loop at {path} (a link to a folder it is inside of); remove the link, or ",
            Param("on_bad_image", "skip"),
            " to leave it out with a warning",
        )
    if loops:
        out.append(f"symlink loops not followed (each file is listed once): {_shown([p for _, _, p in loops])}")
    duplicates = [pair for _, _, _, links in scans for pair in links.duplicates]
    if duplicates:
        out.append(
            f"{len(duplicates)} file(s)/folder(s) reached again through symbolic links, listed once "
            f"(e.g. {duplicates[0][0]} is {duplicates[0][1]})"
        )
    return tuple(out)


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")


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


def folder_fingerprint(root: Union[str, Path], classes: Sequence[str], samples: Sequence[tuple[str, int]]) -> dict:
    """What a position in an epoch of this split depends on: ``{"samples": n, "classes": [names], "per_class":
    [count per class], "sha256": hash of the class names and of every sample's path (relative to ``root``) and
    class index, in sample order}``. From the scan's list alone (no file is read or stat'ed: ImageNet's 1.28M paths
    hash in about a second), so it moves when a file is added, removed or renamed, or a class changes."""
    prefix = str(Path(root).expanduser()).rstrip(os.sep) + os.sep
    cut = len(prefix)
    digest = hashlib.sha256("\0".join(classes).encode("utf-8", "surrogateescape"))
    per_class = [0] * len(classes)
    for start in range(0, len(samples), 65536):  # one join per chunk: a few large updates, not 1.28M small ones
        chunk = samples[start : start + 65536]
        text = "".join(f"\n{p[cut:] if p.startswith(prefix) else p}\t{i}" for p, i in chunk)
        digest.update(text.encode("utf-8", "surrogateescape"))
        for _, i in chunk:
            per_class[i] += 1
    return {"samples": len(samples), "classes": list(classes), "per_class": per_class, "sha256": digest.hexdigest()}


def fingerprint_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """How a split's :func:`folder_fingerprint` changed, in words (empty when it did not): the sample count, the
    classes added or removed, the classes whose count changed, or files renamed/replaced at the same counts."""
    if saved.get("sha256") == now["sha256"]:
        return ""
    parts = [f"{saved.get('samples')} -> {now['samples']} images"]
    old = dict(zip(saved.get("classes", []), saved.get("per_class", [])))
    new = dict(zip(now["classes"], now["per_class"]))
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    if added:
        parts.append(f"classes added: {_shown(added)}")
    if removed:
        parts.append(f"classes removed: {_shown(removed)}")
    counts = [f"{c} {new[c] - old[c]:+d}" for c in new if c in old and new[c] != old[c]]
    if counts:
        parts.append(f"images per class: {_shown(counts)}")
    if len(parts) == 1 and not added and not removed and saved.get("samples") == now["samples"]:
        parts.append("same counts, other files (renamed or replaced)")
    return ", ".join(parts)
