"""One process per run directory: an OS lock held for the life of the process that owns the directory.

The lock is ``flock`` on ``<run dir>/.lock``. The kernel releases it when the process ends however it ends (SIGKILL
and the OOM killer included), so a crash never leaves a stale lock and a restarted run (torchrun's elastic restart,
a requeued job) takes it at once. The file holds the owner's pid, host and start time for the refusal message.

Where ``flock`` does not hold: on NFS, Linux emulates it with POSIX byte-range locks through the NFS lock manager
(works between machines when ``lockd``/NFSv4 locking works); Lustre honours it between nodes only when mounted with
``-o flock`` (``localflock`` locks per node; without either, ``flock`` fails with ENOSYS); some FUSE and object-store
mounts do not implement it. When the file system refuses the lock outright, the run goes on with one warning and
nothing stops a second process on the same directory there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

__all__ = ["EXIT_RUN_DIR_BUSY", "LOCK_NAME", "RunDirBusy", "RunDirLock", "lock_holder"]

LOCK_NAME = ".lock"
EXIT_RUN_DIR_BUSY = 75  # EX_TEMPFAIL, train.py's exit code for a busy run directory: padding_benchmark comes back later
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP))


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock; the message is one line naming it."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (started {started})"


def lock_holder(run_dir: Path) -> Optional[str]:
    """Who holds ``run_dir``'s lock right now ("pid N on HOST (started ...)"), or None when nobody does (also when
    there is no lock file, or the file system has no locks). Takes and drops the lock to find out: no waiting."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(path)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a lock it took
    return None


class RunDirLock:
    """Hold ``run_dir``'s lock from :meth:`acquire` until :meth:`release` or the end of the process.

    :meth:`acquire` creates the directory if needed. :meth:`release` removes what acquiring created (the lock file
    and the directories) when the run wrote nothing else there, so a run refused by a later check leaves nothing
    behind, as before locks existed.
    """

    def __init__(self, run_dir: Path, what: str = "--output-dir", warn: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what  # the flags that choose the directory, for messages
        self.warn = warn
        self._fd: Optional[int] = None
        self._created: list[Path] = []

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        missing = []
        for d in (self.run_dir, *self.run_dir.parents):
            if d.exists():
                break
            missing.append(d)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # OSError: the caller's one line
        self._created = missing  # deepest first
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_created()
                raise RunDirBusy(
                    f"{self.run_dir} is in use by {_holder_text(self.path)}: one process per run directory; wait "
                    f"for it to end, or give this run another {self.what}"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _UNSUPPORTED:
                    raise
                self.warn(
                    f"{self.path}: this file system has no file locks ({e.strerror}): nothing stops a second "
                    "process from using this run directory at the same time"
                )
                return self
            # A releasing owner may have unlinked the file between our open and our lock: lock the file that is
            # there now, not an orphan.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._created and {p.name for p in self.run_dir.iterdir()} == {LOCK_NAME}:
                self.path.unlink()  # still locked: a process waiting on the old file re-checks its inode
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:
            try:
                d.rmdir()  # only if empty
            except OSError:
                break
        self._created = []

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
