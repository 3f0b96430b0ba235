"""A stop signal while a long-running program starts (torch's import takes seconds) ends it with its exit code (130
for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1) and no traceback; nothing is written before ``run_cli``
(partialconv.engine.cli) takes the signals over. Set first by every way train and train_inpainting start:
launch.py (console scripts and the checkout's launchers) and their modules' own first lines (``python -m``).
Imports nothing of torch's.
"""

from __future__ import annotations

import os
import signal

# partialconv.data.worker_signals.STOP_SIGNALS, the signals a run stops on (named here again: the data package imports
# torch; tests/test_entry_points.py holds the two equal)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_on_stop_signals() -> None:
    """Until the program takes the signals over: a stop signal exits at once with 128 + its number."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, lambda signum, frame: os._exit(128 + signum))
