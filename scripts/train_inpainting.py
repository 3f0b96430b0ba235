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

from partialconv.programs.launch import train_inpainting  # imports no torch: stop signals during start-up are handled

if __name__ == "__main__":
    train_inpainting()
