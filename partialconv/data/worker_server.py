"""Imported only by multiprocessing's fork server (``set_forkserver_preload``, see
:func:`~partialconv.data.worker_signals.worker_start_context`): the server ignores the stop signals, so that a
signal to the whole process group leaves it running and the DataLoader workers it forks keep serving the main
process while that finishes its step and saves. It also imports the data path once, so each worker forked from it
starts with torch and the decoders already loaded."""

from __future__ import annotations

import signal
import sys

import torch  # noqa: F401  (loaded once in the server: the workers fork from it warm)

from . import factory  # noqa: F401  (the backends, their datasets and decoders)
from .worker_signals import STOP_SIGNALS

# Guarded, should anything else import this module: the fork server runs as ``python -c "from
# multiprocessing.forkserver import main; main(...)"``.
if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    for _signal in (*STOP_SIGNALS, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(_signal, signal.SIG_IGN)
