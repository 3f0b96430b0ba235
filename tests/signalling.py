"""Test helpers that deliver signals the way clusters and terminals do: to a program's whole process group (or to
one of its processes) while it runs, then check that nothing of it is left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def signal_at_line(cmd: list[str], marker: str, send: Callable[[int], None]) -> tuple[int, str, int]:
    """Run ``cmd`` (from the checkout's root) in its own session; when an output line starts with ``marker``, freeze
    the group, call ``send(leader_pid)``, let the group go on. Returns the exit code, the output and the group's id
    (the leader's pid)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(marker):
                pgid = os.getpgid(proc.pid)
                os.killpg(pgid, signal.SIGSTOP)  # the signal surely lands mid-run, DataLoader workers included
                send(proc.pid)
                os.killpg(pgid, signal.SIGCONT)
                break
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    return proc.returncode, "".join(seen) + rest, proc.pid


def to_group(sig: int) -> Callable[[int], None]:
    """A ``send`` for :func:`signal_at_line`: ``sig`` to the whole process group (a scheduler, Ctrl-C)."""
    return lambda pid: os.killpg(os.getpgid(pid), sig)


def no_process_left(pgid: int) -> bool:
    """Whether every process of the group has ended (within 5 s)."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def child_with_env(parent_pid: int, assignment: str) -> int:
    """The pid of ``parent_pid``'s child process whose environment holds ``assignment`` (e.g. ``RANK=1``: that
    rank of a torchrun), read from /proc."""
    wanted = assignment.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = parent_of(int(entry.name))
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile, or not ours to read
        if ppid == parent_pid and wanted in env:
            return int(entry.name)
    raise AssertionError(f"no child of {parent_pid} with {assignment}")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun's ranks run in sessions of their own, their DataLoader workers
    below them): what a test must end besides the launcher's own process group."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parent_of(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        below = [p for p, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every process below it (the cleanup of a test that launched it in a
    session of its own); SIGKILL also ends a process that a test stopped with SIGSTOP."""
    pids = descendants(pid)
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), *(lambda p=p: os.kill(p, signal.SIGKILL) for p in pids)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
