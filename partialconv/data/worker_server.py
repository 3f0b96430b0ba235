"""Imported only by multiprocessing's fork server, first (``set_forkserver_preload``, see
:func:`~partialconv.data.worker_signals.worker_start_context`): the server ignores the stop signals, so that a
signal to the whole process group leaves it running and the DataLoader workers it forks keep serving the main
process while that finishes its step and saves. It also imports the data path once, so each worker forked from it
starts with torch and the decoders already loaded."""

from __future__ import annotations

import signal
import sys

from .worker_signals import SERVER_IGNORED_SIGNALS

# Guarded, should anything else import this module: the fork server runs as ``python -c "from
# multiprocessing.forkserver import main; main(...)"``. The signals were blocked when it was started: ignoring
# them discards any that came meanwhile; then they are unblocked for the workers it forks.
if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    for _signal in SERVER_IGNORED_SIGNALS:
        signal.signal(_signal, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SERVER_IGNORED_SIGNALS)

import torch  # noqa: E402, F401  (loaded once in the server: the workers fork from it warm)

from . import factory  # noqa: E402, F401  (the backends, their datasets and decoders)
