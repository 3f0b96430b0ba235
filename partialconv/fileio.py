"""Atomic file writes: readers see the old file or the new one, never a torn write.

A leaf module (standard library only), so anything in the project may import it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["atomic_write", "write_text_atomic", "write_bytes_atomic"]

PathLike = Union[str, os.PathLike]

# mkstemp creates 0600 files; results, images and checkpoints should get the permissions an ordinary open() would
# give (0666 less the umask). The umask can only be read by setting it, so read it once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)
