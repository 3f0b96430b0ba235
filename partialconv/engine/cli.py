"""The one wrapper every program's ``cli()`` uses: expected failures become one ``error:`` line and an exit code."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Callable, NoReturn, Optional, Sequence, TypeVar

from ..data.worker_signals import STOP_SIGNALS, ignore_stop_signals

__all__ = [
    "run_cli",
    "one_line",
    "Interrupted",
    "exit_program",
    "EXIT_USER_ERROR",
    "EXIT_FAILED",
    "DefaultsHelpFormatter",
    "command_name",
]

# Every program's exit codes, one rule (docs/training.md#exit-codes): 2 when the user must change something before
# the same command can work (a flag or config file, the data, a checkpoint file, an output path that cannot be
# written: argparse's own code for a bad flag); 1 when the run itself failed (a NaN/Inf loss, another rank failed,
# a bug's traceback: Python's own code). Scripts compare the two to tell "fix your command" from "look at the run".
EXIT_USER_ERROR = 2
EXIT_FAILED = 1

Argv = TypeVar("Argv")


def command_name(default: str) -> str:
    """The program's name in its ``--help``: the console script's when one started it (``partialconv-train``,
    setup.cfg's entry points, on PATH after ``pip install``), else ``default`` (``python -m scripts.X``, ``train.py``),
    the command that works from a checkout's root."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("partialconv-") else default


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


# What a collective raises on a rank that waited longer than the process group's timeout for the others: gloo's
# "Timed out waiting Nms for recv operation to complete", the store's and NCCL's "timeout"/"timed out".
_TIMED_OUT = re.compile(r"timed out|timeout", re.I)
_ROOT = Path(__file__).resolve().parents[2]
_DISTRIBUTED = Path(__file__).resolve().with_name("distributed.py").relative_to(_ROOT)


def _waiting_in(tb: Optional[TracebackType]) -> str:
    """Where this project's code waited in ``tb``: the innermost frame of its code as ``function (file:line)``,
    after the collective helper of engine/distributed.py that it called, if any."""
    frames = []
    for frame, line in traceback.walk_tb(tb):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_ROOT) and "site-packages" not in path.parts:
            frames.append((frame.f_code.co_name, path.relative_to(_ROOT), line))
    if not frames:
        return ""
    helper = frames.pop()[0] + " in " if frames and frames[-1][1] == _DISTRIBUTED and len(frames) > 1 else ""
    name, path, line = frames[-1]
    return f"{helper}{name} ({path}:{line})"


def _timeout_line(e: BaseException, timeout_flag: Optional[str]) -> Optional[str]:
    """One line for a collective that timed out on this rank (None for any other error): the rank, where it waited,
    for how long, and the backend's own words."""
    from .distributed import collective_timeout

    timeout = collective_timeout()
    if timeout is None or not isinstance(e, RuntimeError) or not _TIMED_OUT.search(str(e)):
        return None
    import torch.distributed as dist

    where = _waiting_in(e.__traceback__)
    limit = f"{timeout.total_seconds() / 60:g} min" + (f" ({timeout_flag})" if timeout_flag else "")
    first = str(e).strip().splitlines()[0]
    first = re.sub(r"^\[[^\]]*\] ", "", first)  # gloo's "[/path/to/source.cc:78] " prefix
    return (
        f"rank {dist.get_rank()} of {dist.get_world_size()}: no answer from the other ranks within {limit}"
        + (f" in {where}" if where else "")
        + f": a rank hung or died ({first})"
    )


class Interrupted(BaseException):
    """A stop signal (SIGTERM, SIGUSR1, SIGINT) outside the training loop, whose handler (``Preemption``) checkpoints
    and exits: at start-up there is nothing to save, after the loop the checkpoint is written. A BaseException, like
    KeyboardInterrupt, so that ``except Exception`` handlers do not take it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def run_cli(
    main: Callable[[Argv], int],
    argv: Argv,
    prog: str,
    errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]],
    cleanup: Optional[Callable[[], None]] = None,
    timeout_flag: Optional[str] = None,
) -> int:
    """``main(argv)``'s exit code; an exception matching one of ``errors`` (``(types, exit_code)`` pairs, the first
    match wins) prints ``"{prog}: error: {e}"`` on stderr and returns that code instead. Anything else propagates
    with its traceback (a bug, not a user error); in a distributed run, so does a collective that failed because
    another rank did (one line: that rank's own error line is the one to read) and one that timed out waiting for
    the others (one line naming the rank; ``timeout_flag``: the program's flag that sets the timeout). ``cleanup``
    runs in every case.

    A stop signal that reaches the process outside a ``Preemption`` block (start-up, shutdown) ends it with
    128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1) and one line, never a traceback; so do any
    number of further signals, also during ``cleanup``."""
    handles = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if handles else {}
    late: list[int] = []
    if handles:
        for s in STOP_SIGNALS:
            signal.signal(s, _raise_interrupted)
    try:
        code = _run(main, argv, prog, errors, timeout_flag)
    except Interrupted as e:
        code = 128 + e.signum
        print(f"{prog}: stopped by {signal.Signals(e.signum).name} (exit {code})", file=sys.stderr, flush=True)
    finally:
        if handles:  # from here on a signal is noted, not raised: cleanup runs to its end
            for s in STOP_SIGNALS:
                signal.signal(s, lambda signum, frame: late.append(signum))
        try:
            if cleanup is not None:
                cleanup()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return code if code or not late else 128 + late[0]


def _run(
    main: Callable[[Argv], int],
    argv: Argv,
    prog: str,
    errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]],
    timeout_flag: Optional[str] = None,
) -> int:
    try:
        return main(argv)
    except Exception as e:
        for types, code in errors:
            if isinstance(e, types):
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return code
        timed_out = _timeout_line(e, timeout_flag)
        if timed_out is not None:
            print(f"{prog}: error: {timed_out}", file=sys.stderr)
            return EXIT_FAILED
        if _peer_failure(e):
            import torch.distributed as dist

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"{prog}: error: rank {dist.get_rank()} stopped: another rank failed (see its error line): {first}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise


def exit_program(code: int) -> NoReturn:
    """A program's last call (``exit_program(cli())``): exit with ``code`` whatever stop signals arrive meanwhile.
    The code is decided; Python resets its handlers to the default action while it shuts down (torch's teardown
    takes a while), where one more SIGTERM would end the process by the signal instead of with ``code``."""
    ignore_stop_signals()
    sys.exit(code)
