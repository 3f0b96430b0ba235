"""The start of the long-running programs, train and train_inpainting: their console scripts
(``partialconv-train``, ``partialconv-train-inpainting``) and the checkout's launchers (``train.py``,
``scripts/train_inpainting.py``) begin here.

The stop-signal handlers go in before anything imports torch (a few seconds), so that a stop signal during start-up
ends the program with its exit code (130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1) and no traceback; nothing is
written before ``run_cli`` (partialconv.engine.cli) takes the signals over. Neither this module nor
partialconv/__init__.py imports torch.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

# partialconv.data.worker_signals.STOP_SIGNALS, the signals a run stops on (named here again: the data package imports
# torch; tests/test_entry_points.py holds the two equal)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_on_stop_signals() -> None:
    """Until the program takes the signals over: a stop signal exits at once with 128 + its number."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, lambda signum, frame: os._exit(128 + signum))


def train() -> NoReturn:
    exit_on_stop_signals()
    from .train import entry

    entry()


def train_inpainting() -> NoReturn:
    exit_on_stop_signals()
    from .train_inpainting import entry

    entry()
