"""The one wrapper every program's ``cli()`` uses: expected failures become one ``error:`` line and an exit code."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Optional, Sequence, TypeVar

__all__ = ["run_cli", "one_line", "EXIT_USER_ERROR", "EXIT_FAILED", "DefaultsHelpFormatter"]

# Every program's exit codes, one rule (docs/training.md#exit-codes): 2 when the user must change something before
# the same command can work (a flag or config file, the data, a checkpoint file, an output path that cannot be
# written: argparse's own code for a bad flag); 1 when the run itself failed (a NaN/Inf loss, another rank failed,
# a bug's traceback: Python's own code). Scripts compare the two to tell "fix your command" from "look at the run".
EXIT_USER_ERROR = 2
EXIT_FAILED = 1

Argv = TypeVar("Argv")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, said once: not appended to a help text that already says its default
    ("default: the model's own"), nor for a default of None (the flag's "not set", which the text explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action) or text


# torch re-raises a DataLoader worker's exception in the main process as the same type, with the message
# "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback (most recent call last):\n..." (torch/_utils.py
# ExceptionWrapper.reraise); the original message is on the traceback's last "<module>.<Type>: message" line.
_WORKER_HEADER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def one_line(e: BaseException) -> str:
    """The message of an expected error as one line: a DataLoader worker's error by its original message."""
    text = str(e)
    header = _WORKER_HEADER.match(text)
    if header:
        for line in reversed(text.splitlines()):
            name, sep, message = line.partition(": ")
            if sep and name.rsplit(".", 1)[-1] == header.group(1):
                return message
    return text


# What a collective raises on the ranks that survive one that failed: gloo's lost connection, or the distributed
# error types (NCCL's abort, the store) of torch >= 2.1. Their traceback says nothing the failed rank's line doesn't.
_PEER_FAILURE = re.compile(r"Connection closed by peer|Connection reset by peer|remote worker crash|NCCL.*abort", re.I)


def _peer_failure(e: BaseException) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    dist_errors = tuple(getattr(dist, n) for n in ("DistBackendError", "DistNetworkError") if hasattr(dist, n))
    return isinstance(e, dist_errors) or (isinstance(e, RuntimeError) and bool(_PEER_FAILURE.search(str(e))))


def run_cli(
    main: Callable[[Argv], int],
    argv: Argv,
    prog: str,
    errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]],
    cleanup: Optional[Callable[[], None]] = None,
) -> int:
    """``main(argv)``'s exit code; an exception matching one of ``errors`` (``(types, exit_code)`` pairs, the first
    match wins) prints ``"{prog}: error: {e}"`` on stderr and returns that code instead. Anything else propagates
    with its traceback (a bug, not a user error); in a distributed run, so does a collective that failed because
    another rank did (one line: that rank's own error line is the one to read). ``cleanup`` runs in every case."""
    try:
        return main(argv)
    except Exception as e:
        for types, code in errors:
            if isinstance(e, types):
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return code
        if _peer_failure(e):
            import torch.distributed as dist

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"{prog}: error: rank {dist.get_rank()} stopped: another rank failed (see its error line): {first}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise
    finally:
        if cleanup is not None:
            cleanup()
