"""DataLoader worker processes ignore the stop signals, so that only the main process acts on them.

A scheduler, torchrun or a terminal's Ctrl-C signals the whole process group. With the default action the workers
would die first and the main process would fail with "DataLoader worker ... is killed by signal" before it could
finish its step and save the mid-epoch checkpoint. Workers still end with the main process: torch's workers watch
their parent and exit when it is gone.
"""

from __future__ import annotations

import signal

__all__ = ["STOP_SIGNALS", "ignore_stop_signals"]

# What a cluster or a user sends to stop a run: scheduler/torchrun preemption, SLURM's early warning, Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the stop signals are the main process's to handle."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
