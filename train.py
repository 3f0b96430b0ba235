"""Train (or evaluate) an image classifier: ``python train.py ...`` or ``torchrun ... train.py ...`` from a checkout,
the repository's directory on sys.path as the script's own. The program is partialconv/programs/train.py (its
docstring and --help say how to use it); installed, it is also ``partialconv-train``. No flags: the demo.
"""

from partialconv.programs.launch import train  # imports no torch: stop signals during start-up are handled

if __name__ == "__main__":
    train()
