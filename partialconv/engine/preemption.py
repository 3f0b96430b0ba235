"""Cluster preemption: SIGTERM/SIGUSR1/SIGINT ask the run to finish its step, checkpoint and exit (143/138/130)."""

from __future__ import annotations

import signal
import threading
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
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
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
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum

    def requested(self) -> bool:
        if self._group is None:
            return self.signum is not None
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            self._pending = None
            seen = flags.tolist()
            if any(seen):
                if self.signum is None:
                    self.signum = next(s for s, n in zip(_SIGNALS, seen) if n > 0)
                return True
        flags = torch.tensor([float(self.signum == s) for s in _SIGNALS])
        self._pending = (dist.all_reduce(flags, group=self._group, async_op=True), flags)
        return False

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
