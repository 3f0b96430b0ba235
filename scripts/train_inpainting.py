"""Train the PConv U-Net for irregular-hole inpainting (Liu et al., ECCV 2018).

From the repository root: ``python -m scripts.train_inpainting``; installed (pip install), from anywhere:
``partialconv-train-inpainting``.
The program is partialconv/programs/train_inpainting.py: its docstring and --help say how to use it.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # Run by path (python or torchrun with the file's path): run again, in this same process, as `python -m` with
    # this checkout on PYTHONPATH (child processes such as DataLoader workers inherit it), before anything is imported.
    import os
    import sys

    _CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))
    _ORIG = getattr(sys, "orig_argv", sys.argv)  # Python >= 3.10; 3.9 keeps no interpreter options
    _FLAGS = _ORIG[1 : len(_ORIG) - len(sys.argv)]  # the interpreter's own options (-u, -X ...), kept
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "scripts.train_inpainting", *sys.argv[1:]])

import os
import signal

# A stop signal while torch imports (seconds) ends the program with its exit code (130 for Ctrl-C) and no traceback;
# nothing is written before run_cli (partialconv.engine.cli) takes the signals over.
if __name__ == "__main__":
    for _s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(_s, lambda signum, frame: os._exit(128 + signum))

from partialconv.programs.train_inpainting import entry  # after the handlers: this imports torch

if __name__ == "__main__":
    entry()
