"""Evaluate a PConv U-Net like Table 1 of Liu et al. (ECCV 2018): L1 (%), PSNR and SSIM of the composite per
hole-ratio bucket, without (N) and with (B) the border constraint, as a markdown table (plus CSV).

From the repository root: ``python -m scripts.eval_inpainting``; installed (pip install), from anywhere:
``partialconv-eval-inpainting``.
The program is partialconv/programs/eval_inpainting.py: its docstring and --help say how to use it.
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
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "scripts.eval_inpainting", *sys.argv[1:]])

import sys

from partialconv.programs.eval_inpainting import cli

if __name__ == "__main__":
    sys.exit(cli())
