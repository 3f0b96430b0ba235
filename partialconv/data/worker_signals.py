"""DataLoader worker processes ignore the stop signals, so that only the main process acts on them.

A scheduler, torchrun or a terminal's Ctrl-C signals the whole process group. With the default action the workers
would die first and the main process would fail with "DataLoader worker ... is killed by signal" before it could
finish its step and save the mid-epoch checkpoint. Workers still end with the main process: torch's workers watch
their parent and exit when it is gone, a loader that is shut down stops them through its queues, and at exit the
main process kills what is left of them (see :func:`_kill_leftover_workers`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit handler first, so that ours runs before it (atexit is LIFO)
import signal

__all__ = ["STOP_SIGNALS", "ignore_stop_signals"]

# What a cluster or a user sends to stop a run: scheduler/torchrun preemption, SLURM's early warning, Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the stop signals are the main process's to handle."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit, end the daemonic children (DataLoader workers of iterators that were never shut down: an error left
    the loop and its traceback kept the iterator alive). multiprocessing's own exit handler would send them SIGTERM,
    which our workers ignore, and then wait for them forever: the error line printed, the process would never end,
    and torchrun would never learn that this rank failed. Those that outlive SIGTERM by a second are killed."""
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children:  # torch's SIGCHLD handler would report these ends as "DataLoader worker ... is killed" errors
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=1.0)
        if child.is_alive():
            child.kill()


atexit.register(_kill_leftover_workers)
