"""Atomic file writes: readers see the old file or the new one, never a torn write.

A leaf module (standard library only), so anything in the project may import it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["WriteError", "append_line", "append_record", "atomic_write", "write_text_atomic", "write_bytes_atomic"]

PathLike = Union[str, os.PathLike]

# mkstemp creates 0600 files; results, images and checkpoints should get the permissions an ordinary open() would
# give (0666 less the umask). The umask can only be read by setting it, so read it once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

# errno values that mean "the file system is full" (disk space, or the user's quota).
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WriteError(OSError):
    """A file that could not be written (full disk, quota, I/O error); the message is one line naming the file and
    saying that what was there before is intact."""


def _reason(e: OSError) -> str:
    return "no space left on device" if e.errno in _FULL else (e.strerror or str(e))


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised from/while handling is ENOSPC/EDQUOT: torch.save's zip writer
    answers a failed write with its own RuntimeError ("unexpected pos") raised while handling the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a temporary file next to ``path`` (``.{name}.*.tmp``); on success flush, fsync and rename it over
    ``path``. On any exception the temporary file is removed and ``path`` is left as it was.

    The temporary file is in the same directory because a rename is only atomic within one file system. The parent
    directory is created if missing.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _FILE_MODE)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, WriteError) and _disk_full(e):
            raise WriteError(f"{path}: cannot be written: no space left on device (the file as it was is kept)") from e
        raise


def append_line(path: PathLike, line: str) -> None:
    """Append ``line`` (newline added) whole or not at all (:func:`append_record`)."""
    append_record(path, (line.rstrip("\n") + "\n").encode(), "a line", "the lines before it are kept")


def append_record(
    path: PathLike, data: bytes, what: str = "a record", kept: str = "the records before it are kept"
) -> None:
    """Append ``data`` with one ``write`` on an ``O_APPEND`` descriptor, whole or not at all: a short write (the
    disk filled up mid-record) is truncated away and raised as :class:`WriteError` ("``path``: cannot append
    ``what``: <reason> (``kept``)"), so readers never see half a record."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
    except OSError as e:  # e.g. no inode left for a new file
        raise WriteError(f"{path}: cannot append {what}: {_reason(e)} ({kept})") from e
    try:
        size = os.fstat(fd).st_size
        try:
            written, reason = os.write(fd, data), ""
        except OSError as e:
            written, reason = 0, _reason(e)
        if written != len(data):
            reason = reason or f"no space left on device (wrote {written} of {len(data)} bytes)"
            os.ftruncate(fd, size)  # take the torn part back
            raise WriteError(f"{path}: cannot append {what}: {reason} ({kept})")
    finally:
        os.close(fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)
