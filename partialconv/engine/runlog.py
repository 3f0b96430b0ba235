"""What a run leaves for humans and tools: console + ``log.txt``, ``metrics.jsonl``, TensorBoard, progress bars.

Only rank 0 writes; every method is a no-op elsewhere, so callers need no rank checks.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from partialconv.fileio import append_line, append_record, write_bytes_atomic, write_text_atomic
from partialconv.run_dir_names import LOG_FILE, METRICS_FILE

__all__ = ["EventFile", "RunLogger", "Progress"]


class EventFile:
    """A TensorBoard event file written in the caller's thread, one whole record per event.

    TensorBoard's own ``SummaryWriter`` writes from a background thread: a full disk there prints that thread's
    traceback and surfaces later as a bare ``OSError`` with no file name, and events still queued are lost when the
    process is stopped. Here the summaries are TensorBoard's and torch's (``torch.utils.tensorboard.summary``), the
    framing is TensorBoard's ``RecordWriter``, and each event is appended by :func:`~partialconv.fileio.append_record`:
    whole or not at all, a failure is one :class:`~partialconv.fileio.WriteError` line naming the file.
    """

    def __init__(self, directory: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event  # slow imports; only when TensorBoard is asked for

        directory.mkdir(parents=True, exist_ok=True)
        # TensorBoard's file naming (it reads every file with "tfevents" in its name, in name order)
        self.path = directory / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self._append(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Several scalars at one step, in one event (one write)."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import scalar

        if values:
            self._add(Summary(value=[v for tag, x in values.items() for v in scalar(tag, float(x)).value]), step)

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = "CHW") -> None:
        """``image``: a float tensor/array in [0, 1] (or uint8) laid out as ``dataformats``, as ``SummaryWriter``."""
        from torch.utils.tensorboard.summary import image as image_summary

        self._add(image_summary(tag, image, dataformats=dataformats), step)

    def close(self) -> None:
        """Nothing to do: every event is on disk when its ``add_*`` returns."""

    def _add(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._append(Event(wall_time=time.time(), step=int(step), summary=summary))

    def _append(self, event: Any) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        framed = io.BytesIO()
        RecordWriter(framed).write(event.SerializeToString())
        append_record(self.path, framed.getvalue(), "a TensorBoard event", "the events before it are kept")


class RunLogger:
    """The run directory is created by the first write, so a run that fails its checks leaves nothing behind."""

    def __init__(
        self, run_dir: Optional[Path], enabled: bool, tensorboard: bool = True, timestamps: bool = True
    ) -> None:
        """``timestamps``: whether ``log.txt`` lines start with the local time (the console's never do)."""
        self.run_dir = run_dir
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.timestamps = timestamps
        self._tb = None

    def _log_line(self, msg: str) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S')} " if self.timestamps else ""
            append_line(self.run_dir / LOG_FILE, f"{stamp}{msg}")

    @property
    def tb(self) -> Optional[Any]:
        """The TensorBoard :class:`EventFile` (made, with ``tb/``, on first use); None when not writing one."""
        if self.enabled and self.tensorboard and self.run_dir is not None and self._tb is None:
            self._tb = EventFile(self.run_dir / "tb")
        return self._tb

    def info(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)
            self._log_line(msg)

    def warn(self, msg: str) -> None:
        if self.enabled:
            print(f"warning: {msg}", file=sys.stderr, flush=True)
            self._log_line(f"warning: {msg}")

    def truncate_metrics(
        self, completed_epochs: int, last_record: Optional[dict[str, Any]] = None, key: str = "epoch"
    ) -> None:
        """Drop ``metrics.jsonl`` lines of epochs that will be re-run (resume never duplicates an epoch), and write
        back ``last_record`` (the checkpoint's copy of epoch ``completed_epochs``' line) if that line is missing,
        e.g. because the disk filled up after the checkpoint was saved. ``key`` is the record's field that counts
        the run's progress (``epoch``; train_inpainting.py's ``iteration``)."""
        path = self.run_dir / METRICS_FILE if self.run_dir is not None else None
        if not self.enabled or path is None:
            return
        keep, epochs, damaged = [], set(), []
        raw = path.read_bytes().split(b"\n") if path.is_file() else []
        lines = [line.decode("utf-8", "replace") for line in raw if line.strip()]
        for number, data in enumerate(raw, 1):
            if not data.strip():
                continue
            try:
                line = data.decode("utf-8")
                epoch = json.loads(line)[key]
                if not isinstance(epoch, int) or isinstance(epoch, bool):
                    raise TypeError(epoch)
            except (ValueError, KeyError, TypeError, IndexError):
                damaged.append(number)  # a torn, foreign or overwritten line (not UTF-8, not JSON, no key)
                continue
            if epoch <= completed_epochs:
                keep.append(line)
                epochs.add(epoch)
        if damaged:  # named once; the file as it was is kept next to the repaired one
            aside = path.with_name(f"{path.name}.damaged")
            write_bytes_atomic(aside, b"\n".join(raw))
            shown = ", ".join(map(str, damaged[:5])) + (f" (+{len(damaged) - 5} more)" if len(damaged) > 5 else "")
            self.warn(
                f"{path}: {len(damaged)} damaged line(s) dropped (not UTF-8 JSON with an integer {key!r}: line "
                f"{shown}); kept {len(keep)} valid line(s); the damaged file is saved as {aside}"
            )
        restore = last_record is not None and last_record.get(key) == completed_epochs
        if restore and completed_epochs not in epochs:
            keep.append(json.dumps(last_record))
            self.warn(f"{path}: {key} {completed_epochs}'s line was missing; written back from the checkpoint")
        elif keep == lines:
            return  # nothing to change: no rewrite (the disk may be full)
        write_text_atomic(path, "".join(f"{line}\n" for line in keep))

    def metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` as one JSON line, whole or not at all."""
        if not self.enabled or self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        append_line(self.run_dir / METRICS_FILE, json.dumps(record))

    def epoch(self, record: dict[str, Any]) -> None:
        """An epoch's ``metrics.jsonl`` line, and its numbers as TensorBoard scalars at that epoch."""
        self.metrics(record)
        if self.tb is not None:
            skip = ("epoch", "epochs", "seed", "time")
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in skip}
            self.tb.add_scalars(numbers, record["epoch"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """A tqdm bar on a terminal (rank 0), else nothing: the caller prints plain lines at the print frequency."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    @property
    def interactive(self) -> bool:
        return self.bar is not None

    def update(self, postfix: Optional[dict[str, float]] = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
