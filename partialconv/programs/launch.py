"""The start of the long-running programs, train and train_inpainting: their console scripts
(``partialconv-train``, ``partialconv-train-inpainting``) and the checkout's launchers (``train.py``,
``scripts/train_inpainting.py``) begin here, with the stop-signal handlers set before torch is imported
(startup_signals.py). Neither this module nor partialconv/__init__.py imports torch.
"""

from __future__ import annotations

from typing import NoReturn

from .startup_signals import exit_on_stop_signals


def train() -> NoReturn:
    exit_on_stop_signals()
    from .train import entry

    entry()


def train_inpainting() -> NoReturn:
    exit_on_stop_signals()
    from .train_inpainting import entry

    entry()
