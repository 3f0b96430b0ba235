"""The project's programs, one module each with its ``main``: train (train.py), padding_benchmark, padding_report,
train_inpainting, eval_inpainting, inpaint and write_shards. Installed, each is a console script
(``partialconv-train``, ``partialconv-padding-report`` ...: setup.cfg's entry points) that works from any directory;
from a checkout, ``python train.py`` and ``python -m scripts.<name>`` run the same code. Nothing in the package
imports from here: a program is the top of the import layers (tests/test_layering.py)."""
