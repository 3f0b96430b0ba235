"""Run train.py (``python tests/fault_launcher.py ARGS...``, from the checkout's root) with a fault planted at a
chosen instruction, so tests can deliver a real SIGKILL exactly there:

- ``FAULT_KILL_AFTER_REPLACE=K``: the process SIGKILLs itself right after its K-th ``os.replace`` (every rename of
  the project's atomic writes and checkpoint rotation goes through it);
- ``FAULT_VALIDATION_DELAY=S``: validation starts with the line ``FAULT: validating`` and takes S seconds longer
  (a long ImageNet validation, in which a scheduler's stop signal and kill can land);
- ``FAULT_STEP_DELAY=S``: every training step takes S seconds longer (a real model's step time, so a kill at a
  random moment lands inside training);
- ``FAULT_VALIDATION_GATE=PATH``: validation starts with the same line and waits (up to 120 s) until PATH exists,
  so a test decides when the process may go on.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kill_after_replace(k: int) -> None:
    real = os.replace
    calls = [0]

    def replace(*args, **kwargs):
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def _slow_validation(seconds: float, gate: str) -> None:
    import partialconv.engine.trainer as trainer

    real = trainer.evaluate

    def evaluate(*args, **kwargs):
        print("FAULT: validating", flush=True)
        time.sleep(seconds)
        deadline = time.monotonic() + 120
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(*args, **kwargs)

    trainer.evaluate = evaluate  # before train.py imports it by name


def _slow_steps(seconds: float) -> None:
    import partialconv.engine.trainer as trainer

    real = trainer.train_step

    def train_step(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    trainer.train_step = train_step  # looked up in the module by train_one_epoch at each step


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if os.environ.get("FAULT_KILL_AFTER_REPLACE"):
        _kill_after_replace(int(os.environ["FAULT_KILL_AFTER_REPLACE"]))
    if os.environ.get("FAULT_VALIDATION_DELAY") or os.environ.get("FAULT_VALIDATION_GATE"):
        _slow_validation(float(os.environ.get("FAULT_VALIDATION_DELAY") or 0), os.environ.get("FAULT_VALIDATION_GATE"))
    if os.environ.get("FAULT_STEP_DELAY"):
        _slow_steps(float(os.environ["FAULT_STEP_DELAY"]))
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
