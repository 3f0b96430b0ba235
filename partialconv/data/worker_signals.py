"""How DataLoader worker processes start, and why they ignore the stop signals.

Start (:func:`worker_start_context`): a distributed rank does not fork its workers. Its process group runs threads
of its own (gloo's, NCCL's), and a thread that enters Python just as the main thread forks can leave the child
stuck before it runs a line: CPython up to 3.11 can deadlock there on an interpreter lock the child inherits held
(python/cpython#112275; fixed in 3.12 and backported late to the older branches). Seen here (Python 3.11.7, torch
2.15, gloo) as a rank whose first validation never started: its val worker was stuck inside ``os.fork`` holding a
copy of a native thread's Python state, while the other rank waited in its next collective. Those ranks start their
workers from multiprocessing's fork server instead: a process started by fork + exec (no Python code runs between
them) without such threads; it ignores the stop signals too (:mod:`partialconv.data.worker_server`). A one-process
run forks its workers as before.

Signals: a scheduler, torchrun or a terminal's Ctrl-C signals the whole process group. With the default action the
workers would die first and the main process would fail with "DataLoader worker ... is killed by signal" before it
could finish its step and save the mid-epoch checkpoint. Workers still end with the main process: torch's workers
watch their parent (the main process, or the fork server, which ends with it) and exit when it is gone, a loader
that is shut down stops them through its queues, and at exit the main process kills what is left of them (see
:func:`_kill_leftover_workers`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util  # registers its exit handler first, so that ours runs before it (atexit is LIFO)
import signal
from typing import Optional

__all__ = ["SERVER_IGNORED_SIGNALS", "STOP_SIGNALS", "ignore_stop_signals", "worker_start_context"]

# What a cluster or a user sends to stop a run: scheduler/torchrun preemption, SLURM's early warning, Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


# What the fork server ignores: the stop signals, and the other signals torchrun passes on to its workers.
SERVER_IGNORED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGQUIT)


def worker_start_context(distributed: bool) -> Optional[multiprocessing.context.BaseContext]:
    """The ``multiprocessing_context`` of a DataLoader's workers: the fork server for a rank of a distributed run
    (whose process group's threads make forking unsafe), None (torch's default, fork on Linux) otherwise.

    The server is started here, while the caller goes on building its run (its imports of torch and the data path,
    a few CPU-seconds, overlap the rank's own start-up instead of delaying its first batch), with
    :data:`SERVER_IGNORED_SIGNALS` blocked: a signal to the process group cannot end it before
    :mod:`~partialconv.data.worker_server` makes it ignore them (the blocked signal stays pending until then and is
    discarded). It ends with this process."""
    if not distributed or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["partialconv.data.worker_server", "__main__"])
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_IGNORED_SIGNALS)
    try:
        multiprocessing.forkserver.ensure_running()  # does not wait for the server's imports
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return context


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
