"""A training run's checkpoint files in its directory: how they are written, so that a kill at any instruction leaves
a state a resume completes; which one a run continues; when a fresh start may replace a run.

- the commit protocol (:func:`save_run_checkpoint`: last, previous, best and epoch snapshots) and its completion
  after a kill (:func:`complete_run_files`, :func:`remove_temp_files`);
- the checkpoint a run continues: ``--resume auto`` and its fallback to the previous one
  (:func:`find_resume_checkpoint`), elastic restarts under torchrun (:func:`elastic_restart_resume`), the best weights
  carried along into another directory (:func:`carry_best`);
- the fresh-start rule of both trainers (:func:`check_fresh_start`, :func:`move_run_aside`) and the check that the
  directory can be written (:func:`check_output_dir`).

What a checkpoint holds and how a run is restored from it: :mod:`partialconv.engine.run_state`. One checkpoint file,
whoever wrote it (atomic save, ``weights_only`` load, key matching): :mod:`partialconv.checkpoint_io`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..checkpoint_io import CheckpointError, read_checkpoint
from ..errors import ConfigError
from ..fileio import atomic_write
from ..run_dir_names import CONFIG_FILE, ENVIRONMENT_FILE, LOG_FILE, METRICS_FILE, REPLACED_PREFIX

__all__ = [
    "LAST",
    "PREVIOUS",
    "BEST",
    "save_run_checkpoint",
    "complete_run_files",
    "remove_temp_files",
    "elastic_restart_resume",
    "snapshot_name",
    "find_resume_checkpoint",
    "carry_best",
    "check_fresh_start",
    "check_output_dir",
    "existing_run_files",
    "move_run_aside",
]

LAST = "checkpoint.pth.tar"
PREVIOUS = "checkpoint.prev.pth.tar"
BEST = "model_best.pth.tar"
# What a train.py run writes in its directory; the checkpoints and metrics are what a fresh start would destroy.
RESULT_FILES = (LAST, PREVIOUS, BEST, "checkpoint_epoch*.pth.tar", METRICS_FILE)
RUN_FILES = (*RESULT_FILES, LOG_FILE, CONFIG_FILE, ENVIRONMENT_FILE, "tb")


def save_run_checkpoint(
    run_dir: Path,
    state: dict[str, Any],
    is_best: bool = False,
    snapshot_epoch: Optional[int] = None,
    keep_previous: bool = True,
) -> None:
    """Commit ``state`` as the run's checkpoint, then derive ``model_best.pth.tar`` and the epoch snapshot from it.

    The commit protocol, so that a kill at any instruction leaves a directory a resume can complete:

    1. ``state`` records what is to be derived from it (``commit``: whether it is the best, which snapshot);
    2. it is written to a temporary file and fsynced; the last checkpoint becomes ``checkpoint.prev.pth.tar``;
    3. the temporary file is renamed to ``checkpoint.pth.tar``: the commit point;
    4. best and snapshot are hard links to (or, where the file system has none, copies of) the committed file, each
       put in place by a rename.

    ``keep_previous=False`` (``--no-keep-prev``) skips the rotation of 2 and removes an older
    ``checkpoint.prev.pth.tar`` after the commit: the rename still replaces the last checkpoint atomically.

    A kill before 3 leaves the previous state (and a temporary file that :func:`complete_run_files` removes); a kill
    after 3 leaves a checkpoint whose ``commit`` entry says which derived files :func:`complete_run_files` must
    (re)make. A full disk raises :class:`~partialconv.fileio.WriteError` (one line) with the old files intact.
    """
    state["commit"] = {"best": bool(is_best), "snapshot": snapshot_epoch}
    last = run_dir / LAST
    with atomic_write(last) as f:
        torch.save(state, f)
        # Rotate only once the new file is complete on disk: a full disk (or a kill) while writing leaves the last
        # checkpoint where --resume auto looks first.
        f.flush()
        os.fsync(f.fileno())
        if last.is_file() and keep_previous:
            os.replace(last, run_dir / PREVIOUS)
    if not keep_previous:  # --no-keep-prev: one checkpoint less on disk, no fallback if the last is damaged later
        (run_dir / PREVIOUS).unlink(missing_ok=True)
    _derive(run_dir, state["commit"])


def _derive(run_dir: Path, commit: dict[str, Any]) -> list[str]:
    """Make the files the committed checkpoint names (best, snapshot) from it; returns their names."""
    made = []
    if commit.get("best"):
        _link_or_copy(run_dir / LAST, run_dir / BEST)
        made.append(BEST)
    if commit.get("snapshot") is not None:
        name = snapshot_name(int(commit["snapshot"]))
        _link_or_copy(run_dir / LAST, run_dir / name)
        made.append(name)
    return made


def snapshot_name(epoch: int) -> str:
    return f"checkpoint_epoch{epoch}.pth.tar"


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a file with ``src``'s content, atomically: a hard link (no bytes copied; the later rename of
    a new checkpoint over ``src`` does not touch it), or a copy where the file system has no hard links."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        _copy_atomic(src, dst)
        return
    os.replace(tmp, dst)


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as f_src, atomic_write(dst) as f_dst:
        shutil.copyfileobj(f_src, f_dst)


def _holds(path: Path, ckpt: dict[str, Any], source: Path) -> bool:
    """Whether ``path`` is the checkpoint ``ckpt`` (read from ``source``): the same file, or the same position."""
    if not path.is_file():
        return False
    try:
        if os.path.samefile(path, source):
            return True
        other = read_checkpoint(path)
    except (OSError, CheckpointError):
        return False
    return isinstance(other, dict) and (other.get("epoch"), other.get("step")) == (ckpt.get("epoch"), ckpt.get("step"))


def complete_run_files(run_dir: Path, ckpt: dict[str, Any], source: Path, warn: Callable[[str], None] = print) -> None:
    """Finish what a kill left half-done in ``run_dir`` before it is resumed from ``ckpt`` (read from ``source``,
    the directory's last or previous checkpoint): the best copy and the snapshot the checkpoint's ``commit`` entry
    names are made if missing or stale. Only for the process that holds the run directory's lock."""
    commit = ckpt.get("commit") if isinstance(ckpt, dict) else None
    if not commit or Path(source).name != LAST:
        return
    snap = commit.get("snapshot")
    missing = {
        "best": bool(commit.get("best")) and not _holds(run_dir / BEST, ckpt, source),
        "snapshot": snap if snap is not None and not _holds(run_dir / snapshot_name(int(snap)), ckpt, source) else None,
    }
    if missing["best"] or missing["snapshot"] is not None:
        made = _derive(run_dir, missing)
        warn(f"{run_dir}: {', '.join(made)} completed from {LAST} (the last save was interrupted after its commit)")


def remove_temp_files(run_dir: Path) -> list[str]:
    """Remove the temporary files (``.<name>.*.tmp``) of writes a kill interrupted in ``run_dir``; returns their
    names. Only for the process that holds the run directory's lock: nobody else may be writing there."""
    removed = []
    for tmp in sorted(Path(run_dir).glob(".*.tmp")):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def _agent_start_time() -> Optional[float]:
    """When this worker's torchrun agent (its parent process) started, in seconds since the epoch; None if unknown."""
    try:
        fields = Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime: field 22 of stat, in clock ticks after boot
        boot_line = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        boot = float(boot_line.split()[1])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def elastic_restart_resume(
    run_dir: Path, resume: Optional[str], overwrite: bool
) -> tuple[Optional[str], bool, Optional[str]]:
    """``(resume, overwrite, note)`` for this process: under ``torchrun --max-restarts``, a restarted worker group
    (``TORCHELASTIC_RESTART_COUNT`` > 0) continues the run directory's newest checkpoint written by this job, whatever
    the command line said (a fresh start must not be refused, nor an ``--overwrite`` start its own progress).
    A checkpoint older than the job's agent is a previous run's: then the command line's flags stand.

    ``TORCHELASTIC_RESTART_COUNT`` is each agent's own count: with several nodes, the agent whose workers failed
    counts a restart, while another node's agent restarts its healthy workers for the membership change with the
    count unchanged (pytorch/pytorch#135712, #147064). So any worker of an agent allowed to restart
    (``TORCHELASTIC_MAX_RESTARTS`` > 0) looks for a checkpoint of this job; in a job's first group there is none."""
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if count <= 0 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) <= 0:
        return resume, overwrite, None
    ours = [p for p in (run_dir / LAST, run_dir / PREVIOUS) if p.is_file()]
    started = _agent_start_time()
    if started is not None:
        ours = [p for p in ours if p.stat().st_mtime >= started - 1.0]
    elif count <= 0:  # no agent start to tell this job's checkpoints from a previous run's
        ours = []
    if not ours:
        return resume, overwrite, None
    what = f"elastic restart {count}" if count > 0 else "elastic restart (another node's workers failed)"
    return "auto", False, f"{what}: continuing from the newest checkpoint in {run_dir}"


def find_resume_checkpoint(
    resume: Optional[str], run_dir: Path, warn: Callable[[str], None] = print
) -> tuple[Optional[dict[str, Any]], Optional[Path]]:
    """The checkpoint to resume from, read, and its path; ``(None, None)`` for a fresh run.

    ``auto``: the run directory's last checkpoint, else the previous one if the last cannot be read (reported by
    name through ``warn``), else a fresh start when there is none. Any other value is a path that must load.
    """
    if not resume:
        return None, None
    if resume != "auto":
        return read_checkpoint(resume), Path(resume)
    candidates = [p for p in (run_dir / LAST, run_dir / PREVIOUS) if p.is_file()]
    errors = []
    for path in candidates:
        try:
            return read_checkpoint(path), path
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"{e}; trying the previous checkpoint")
    if errors:
        raise CheckpointError(f"--resume auto: no readable checkpoint in {run_dir} ({'; '.join(errors)})")
    return None, None


def carry_best(ckpt_path: Path, best_acc1: float, run_dir: Path, warn=print) -> None:
    """Resuming ``ckpt_path`` (best top-1 ``best_acc1``) into another run directory: copy the ``model_best.pth.tar``
    next to it along, so the new directory has the best weights its log names. It must be the one that top-1 came
    from (not, say, a later epoch's of the same run when resuming a snapshot); an existing one is left alone."""
    src = Path(ckpt_path).parent / BEST
    if src.parent.resolve() == run_dir.resolve() or (run_dir / BEST).exists() or best_acc1 <= 0:
        return
    found = None
    if src.is_file():
        try:
            found = float(read_checkpoint(src).get("best_acc1", -1.0))
        except (CheckpointError, AttributeError):
            found = None
    if found == best_acc1:
        _copy_atomic(src, run_dir / BEST)
    else:
        warn(f"no {BEST} of best acc@1 {best_acc1:.3f} next to {ckpt_path}: {run_dir} gets one when an epoch beats it")


def existing_run_files(run_dir: Path) -> list[str]:
    """The names of the checkpoints and metrics of a run already in ``run_dir`` (empty if it holds none)."""
    return sorted({p.name for pattern in RESULT_FILES for p in Path(run_dir).glob(pattern)})


def check_fresh_start(
    run_dir: Path, resume: Optional[str], overwrite: bool, new_dir_flags: str = "--output-dir"
) -> bool:
    """The rule of both trainers for a run directory: a fresh start (no ``--resume``, or ``--resume auto`` finding no
    checkpoint) where a run's checkpoints or metrics already are is refused (ConfigError, one line) unless
    ``--overwrite``; returns whether that run is to be moved aside (:func:`move_run_aside`) before the first write.
    Run it on every rank before anything is written. ``new_dir_flags``: the program's flags that choose another
    directory, for the message."""

    found = existing_run_files(run_dir)
    if not found:
        return False
    if resume and resume != "auto":
        if Path(resume).resolve().parent == Path(run_dir).resolve():
            return False  # e.g. rolling back to one of this run's snapshots: asked for by name
        raise ConfigError(
            f"--resume {resume}: {run_dir} holds another run ({', '.join(found)}) that resuming there would "
            f"replace; give another {new_dir_flags}"
        )
    if resume == "auto" and any(name in found for name in (LAST, PREVIOUS)):
        return False  # resumed (or refused by name if unreadable) by find_resume_checkpoint
    if not overwrite:
        why = "holds a run" if not resume else "holds a run but no checkpoint to resume"
        raise ConfigError(
            f"{run_dir} {why} ({', '.join(found)}); continue it with --resume auto, start another with a new "
            f"{new_dir_flags}, or start over with --overwrite (the old files are moved aside)"
        )
    return True


def move_run_aside(run_dir: Path) -> Path:
    """Move every file a run writes (checkpoints, metrics, log, config, tb/) from ``run_dir`` into a new
    ``run_dir/replaced-<UTC time>/``, which is returned; other files (e.g. padding_benchmark's run.log) stay."""
    base = Path(run_dir) / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    dest, n = base, 1
    while dest.exists():  # two replacements within a second
        n += 1
        dest = base.with_name(f"{base.name}.{n}")
    dest.mkdir(parents=True)
    for pattern in RUN_FILES:
        for path in sorted(Path(run_dir).glob(pattern)):
            os.replace(path, dest / path.name)  # a rename on the same file system: nothing is copied or lost
    return dest


def check_output_dir(run_dir: Path, flags: str = "--output-dir") -> None:
    """Refuse (ConfigError, one line naming ``flags``) a run directory that cannot be written, before anything is:
    a file where it or a folder above it should be, or a location on a read-only file system or without write
    permission. Nothing is created (a run that fails its checks leaves nothing behind)."""

    run_dir = Path(run_dir)
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "is a file" if existing == run_dir else f"is under {existing}, a file"
        raise ConfigError(f"{flags} {run_dir}: {where}, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise ConfigError(f"{flags} {run_dir}: {existing} {why}; give a writable location")
