"""Train (or evaluate) an image classifier: ``python train.py ...`` or ``torchrun ... train.py ...`` from a checkout,
the repository's directory on sys.path as the script's own. The program is partialconv/programs/train.py (its
docstring and --help say how to use it); installed, it is also ``partialconv-train``. No flags: the demo.
"""

from __future__ import annotations

import os
import signal

# A stop signal while torch imports (seconds) ends the program with its exit code (130 for Ctrl-C) and no traceback;
# nothing is written before run_cli (partialconv.engine.cli) takes the signals over.
if __name__ == "__main__":
    for _s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(_s, lambda signum, frame: os._exit(128 + signum))

from partialconv.programs.train import entry  # after the handlers: this imports torch

if __name__ == "__main__":
    entry()
