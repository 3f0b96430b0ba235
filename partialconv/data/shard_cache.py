"""The shards backend's remote side: reading a URL (retried) and the node-local cache of whole shards.

:class:`ShardCache` fetches each shard once per node under a lock per shard file, checks it against the index's
size and sha256, and evicts the least recently used shards beyond its size limit; ``partialconv.data.shards`` reads
samples by offset from the local copies.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional, Union

from ..fileio import write_text_atomic
from .errors import DataError

__all__ = ["ShardCache", "default_cache_dir", "join_url", "locked", "read_url", "sha256_file"]

DOWNLOAD_TRIES = 3
RETRY_DELAYS = (1.0, 3.0)  # seconds before the 2nd and 3rd try
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """A node-local default for the shard cache: the system temp dir (node-local on clusters, unlike $HOME)."""
    return os.path.join(tempfile.gettempdir(), f"partialconv-shards-{os.getuid()}")


def sha256_file(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@contextmanager
def _open_url(url: str) -> Iterator[IO[bytes]]:
    """A readable binary stream of ``url``: http(s) through urllib (fsspec's HTTP filesystem needs aiohttp, which
    torch does not bring), any other scheme (s3://, gs://, ...) through fsspec and the user's s3fs/gcsfs."""
    if urllib.parse.urlsplit(url).scheme in ("http", "https"):
        with urllib.request.urlopen(url, timeout=60) as response:
            yield response
        return
    import fsspec  # comes with torch

    with fsspec.open(url, "rb") as f:
        yield f


def read_url(url: str, tries: int = DOWNLOAD_TRIES) -> bytes:
    """The whole content of ``url``, retried; raises :class:`OSError` naming the URL after the last try."""
    for attempt in range(tries):
        try:
            with _open_url(url) as f:
                return f.read()
        except FileNotFoundError:  # fsspec's answer for a missing object: no use asking again
            raise
        except urllib.error.HTTPError as e:
            if e.code in (404, 410):
                raise FileNotFoundError(url) from None
            last = e  # other answers (403 while credentials propagate, 5xx) may pass
            if attempt + 1 < tries:
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
        except Exception as e:  # noqa: BLE001 - any transport error is retried, then named with the URL
            last = e
            if attempt + 1 < tries:
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
    raise OSError(f"{url}: could not be read after {tries} tries ({type(last).__name__}: {last})")


@contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if needed): held by one process of the node at a time and
    released by the kernel if the holder dies. Yields False when ``blocking`` is off and another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) and not blocking:
                yield False
                return
            raise
        yield True
    finally:
        os.close(fd)  # also releases the lock


class ShardCache:
    """A node-local directory of whole shards fetched from URLs, at most ``limit_bytes`` in all (None: no limit).

    One subdirectory per source (a hash of its base URL). ``path(base, shard)`` returns the local copy of one shard,
    fetching it first if needed: under a lock per shard file, so the ranks and DataLoader workers of a node download
    it once; to a temp name, renamed when its size and sha256 match the index. A copy found in the cache is checked
    before use: its size, and its sha256 unless a ``.ok`` note written after the last check still matches the
    file's size and modification time. Beyond the limit, the least recently used shards that no process is fetching
    are evicted first (use is recorded in the file's mtime)."""

    def __init__(self, root: Union[str, os.PathLike], limit_bytes: Optional[int] = None) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    def folder(self, base: str) -> Path:
        folder = self.root / hashlib.sha256(base.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        note = folder / "SOURCE"
        if not note.exists():  # which URL the hashed name stands for, for a person looking at the cache
            write_text_atomic(note, base + "\n")
        return folder

    def path(self, base: str, shard: dict[str, Any]) -> Path:
        folder = self.folder(base)
        local = folder / shard["name"]
        with locked(folder / f".{shard['name']}.lock"):
            if not self._valid(local, shard):
                self._evict(shard["size"], keep=local)
                self._download(join_url(base, shard["name"]), local, shard)
            os.utime(local)  # most recently used (the note is keyed by mtime: rewritten below)
            self._write_note(local, shard)
        return local

    def _note(self, local: Path) -> Path:
        return local.with_name(f".{local.name}.ok")

    def _write_note(self, local: Path, shard: dict[str, Any]) -> None:
        st = local.stat()
        self._note(local).write_text(
            json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": shard["sha256"]})
        )

    def _valid(self, local: Path, shard: dict[str, Any]) -> bool:
        try:
            st = local.stat()
        except FileNotFoundError:
            return False
        if st.st_size == shard["size"]:
            try:
                note = json.loads(self._note(local).read_text())
                if note == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": shard["sha256"]}:
                    return True
            except (OSError, ValueError):
                pass
            if sha256_file(local) == shard["sha256"]:
                return True
        print(
            f"warning: cached shard {local} does not match its index (size or sha256): fetching it again",
            file=sys.stderr,
            flush=True,
        )
        local.unlink()
        return False

    def _download(self, url: str, local: Path, shard: dict[str, Any]) -> None:
        for stale in local.parent.glob(f".{local.name}.*.part"):  # a killed fetch's (this shard's lock is ours)
            stale.unlink(missing_ok=True)
        last = "?"
        for attempt in range(DOWNLOAD_TRIES):
            tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
            try:
                digest, size = hashlib.sha256(), 0
                with _open_url(url) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
                if size != shard["size"]:
                    last = f"got {size} of {shard['size']} bytes"
                elif digest.hexdigest() != shard["sha256"]:
                    last = "sha256 differs from the index"
                else:
                    os.replace(tmp, local)
                    return
            except Exception as e:  # noqa: BLE001 - any transport error is retried, then named with the URL
                last = f"{type(e).__name__}: {e}"
            finally:
                tmp.unlink(missing_ok=True)
            if attempt + 1 < DOWNLOAD_TRIES:
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
        raise DataError(f"shard {url}: download failed after {DOWNLOAD_TRIES} tries ({last})")

    def _evict(self, incoming: int, keep: Path) -> None:
        if self.limit_bytes is None:
            return
        cached = []
        for f in self.root.glob("*/*.tar"):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            cached.append((st.st_mtime_ns, st.st_size, f))
        total = sum(size for _, size, _ in cached) + incoming
        for _, size, f in sorted(cached):
            if total <= self.limit_bytes:
                break
            if f == keep:
                continue
            with locked(f.with_name(f".{f.name}.lock"), blocking=False) as mine:
                if mine:  # a process that has it open keeps reading it (unlinked inode); others fetch it again
                    f.unlink(missing_ok=True)
                    self._note(f).unlink(missing_ok=True)
                    total -= size
