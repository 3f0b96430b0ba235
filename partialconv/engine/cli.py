"""The one wrapper every program's ``cli()`` uses: expected failures become one ``error:`` line and an exit code."""

from __future__ import annotations

import re
import sys
from typing import Callable, Optional, Sequence, TypeVar

__all__ = ["run_cli", "one_line"]

Argv = TypeVar("Argv")

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


def run_cli(
    main: Callable[[Argv], int],
    argv: Argv,
    prog: str,
    errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]],
    cleanup: Optional[Callable[[], None]] = None,
) -> int:
    """``main(argv)``'s exit code; an exception matching one of ``errors`` (``(types, exit_code)`` pairs, the first
    match wins) prints ``"{prog}: error: {e}"`` on stderr and returns that code instead. Anything else propagates
    with its traceback (a bug, not a user error). ``cleanup`` runs in every case."""
    try:
        return main(argv)
    except Exception as e:
        for types, code in errors:
            if isinstance(e, types):
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return code
        raise
    finally:
        if cleanup is not None:
            cleanup()
