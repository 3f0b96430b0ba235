"""Cluster preemption: SIGTERM/SIGUSR1 ask the run to finish its step, checkpoint and exit (143/138)."""

from __future__ import annotations

import signal
import threading
from typing import Optional

import torch

from .distributed import all_reduce_sum

__all__ = ["Preemption"]

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """Records a preemption signal; ``requested(sync=...)`` says whether to stop, agreed over all ranks when synced.

    A rank may get the signal a step later than another, so in a distributed run the flag is all-reduced (a
    collective every rank calls at the same steps) before anyone acts on it.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def install(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum

    def requested(self, distributed: bool, device: torch.device) -> bool:
        if not distributed:
            return self.signum is not None
        mine = [float(self.signum == s) for s in _SIGNALS]
        seen = all_reduce_sum(torch.tensor(mine, device=device)).tolist()
        if self.signum is None:
            self.signum = next((s for s, n in zip(_SIGNALS, seen) if n > 0), None)
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
