"""The one wrapper every program's ``cli()`` uses: expected failures become one ``error:`` line and an exit code."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, TypeVar

__all__ = ["run_cli"]

Argv = TypeVar("Argv")


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
                print(f"{prog}: error: {e}", file=sys.stderr)
                return code
        raise
    finally:
        if cleanup is not None:
            cleanup()
