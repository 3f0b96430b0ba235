"""Cluster preemption: SIGTERM/SIGUSR1/SIGINT ask the run to finish its step, checkpoint and exit (143/138/130);
and the wall-clock checkpoint interval, agreed over ranks the same way."""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional

import torch
import torch.distributed as dist

from ..data.worker_signals import STOP_SIGNALS
from .distributed import cpu_group

__all__ = ["Preemption"]

# DataLoader workers ignore these (partialconv.data.worker_signals), so a signal to the whole process group is
# handled here, once. SIGINT (Ctrl-C) stops like SIGTERM instead of raising KeyboardInterrupt mid-step.
_SIGNALS = STOP_SIGNALS


class Preemption:
    """Records a preemption signal; :meth:`requested`, called by every rank after every step, says when to stop.

    Ranks may get the signal at different steps, so in a distributed run they agree through a CPU (gloo) all-reduce
    of the flags, started asynchronously after step k and read after step k+1: no GPU synchronisation, no waiting,
    and every rank stops after the same step (one step after the signal reached the first rank).

    ``checkpoint_minutes`` > 0: the same all-reduce carries rank 0's "the interval is over" flag, so
    :attr:`checkpoint_due` turns true on every rank after the same step (ranks' clocks need not agree); the caller
    writes the checkpoint and calls :meth:`checkpoint_written`, which starts the next interval.
    """

    def __init__(self, checkpoint_minutes: float = 0.0) -> None:
        self.signum: Optional[int] = None
        self.checkpoint_seconds = 60.0 * checkpoint_minutes
        self.checkpoint_due = False
        self._interval_start = time.monotonic()
        self._previous: dict[int, object] = {}
        self._group = None
        self._pending: Optional[tuple[object, torch.Tensor]] = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        if dist.is_initialized() and dist.get_world_size() > 1:
            self._group = cpu_group()  # made here at the latest: every rank enters at the same point
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error the other ranks may never join the pending all-reduce: waiting could hang this rank
        # until the collective timeout, instead of exiting so that torchrun stops the others.
        if self._pending is not None and exc_type is None:
            self._pending[0].wait()
        self._pending = None
        # Stopping: more signals (a scheduler repeating its TERM) are noted, not acted on, while the program saves
        # and exits with exit_code (the program's entry point, run_cli, puts the previous handlers back at its end).
        stopping = self.signum is not None
        for s, handler in self._previous.items():
            signal.signal(s, self._handle if stopping else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum

    def checkpoint_written(self) -> None:
        self.checkpoint_due = False
        self._interval_start = time.monotonic()

    def _interval_over(self) -> bool:
        """This process's clock says a checkpoint is due (rank 0's clock alone decides for a distributed run); not
        while one is already due, so the flag of an all-reduce in flight cannot ask for a second one."""
        if self.checkpoint_seconds <= 0 or self.checkpoint_due:
            return False
        if self._group is not None and dist.get_rank() != 0:
            return False
        return time.monotonic() - self._interval_start >= self.checkpoint_seconds

    def requested(self) -> bool:
        if self._group is None:
            self.checkpoint_due = self.checkpoint_due or self._interval_over()
            return self.signum is not None
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            self._pending = None
            *seen, due = flags.tolist()
            self.checkpoint_due = self.checkpoint_due or due > 0
            if any(seen):
                if self.signum is None:
                    self.signum = next(s for s, n in zip(_SIGNALS, seen) if n > 0)
                return True
        flags = torch.tensor([float(self.signum == s) for s in _SIGNALS] + [float(self._interval_over())])
        self._pending = (dist.all_reduce(flags, group=self._group, async_op=True), flags)
        return False

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
