"""Run-state checkpoints: what exact resume needs, saved atomically, with a previous copy to fall back on.

A checkpoint is a dict of tensors and plain values (loads with ``weights_only=True``): ``state_dict`` (model),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (the epoch in progress, 0-based) and ``step`` (its completed
steps; 0 at an epoch boundary), ``epoch_sums`` (the partial epoch's metric sums), ``best_acc1``, ``rng`` (one
entry per rank: python, numpy, torch, cuda states as tensors/lists), ``config`` and ``epoch_record`` (the last
completed epoch's ``metrics.jsonl`` line, written back on resume if the file lost it), ``data`` (the
:func:`~partialconv.data.image_folder.folder_fingerprint` of each split: what the position in an epoch depends on).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, extract_state_dict, load_state, read_checkpoint, unwrap_model
from ..errors import ConfigError
from ..fileio import atomic_write

if TYPE_CHECKING:  # annotations only: the trainer does not need checkpointing to import
    from .trainer import TrainingContext

__all__ = [
    "FINISHED_RUN_NOTE",
    "LAST",
    "PREVIOUS",
    "BEST",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "save_run_checkpoint",
    "complete_run_files",
    "remove_temp_files",
    "elastic_restart_resume",
    "snapshot_name",
    "find_resume_checkpoint",
    "finished",
    "carry_best",
    "run_state",
    "restore_run_state",
    "data_fingerprints",
    "check_resumed_data",
    "check_output_dir",
    "existing_run_files",
    "move_run_aside",
]

LAST = "checkpoint.pth.tar"
PREVIOUS = "checkpoint.prev.pth.tar"
BEST = "model_best.pth.tar"
# What a train.py run writes in its directory; the checkpoints and metrics are what a fresh start would destroy.
RESULT_FILES = (LAST, PREVIOUS, BEST, "checkpoint_epoch*.pth.tar", "metrics.jsonl")
RUN_FILES = (*RESULT_FILES, "log.txt", "config.yaml", "environment.yaml", "tb")
REPLACED_PREFIX = "replaced-"  # partialconv.analysis skips run folders under such a directory


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain lists (numpy's tuple has an ndarray: not weights_only-safe)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, torch.tensor(py_internal, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(v) for v in py_internal.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective in a distributed run)."""
    mine = rng_state()
    if not dist.is_initialized():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


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


# The line's end that train.py prints when it finds its run already finished: padding_benchmark tells from it that a
# run it launched was trained by another process that shares the root.
FINISHED_RUN_NOTE = "nothing to do (raise --epochs to train on)"


def finished(ckpt: dict[str, Any], epochs: int) -> bool:
    """Whether a run checkpoint is at the end of a run of ``epochs`` epochs (nothing left to train)."""
    return int(ckpt.get("epoch", 0)) >= epochs and int(ckpt.get("step", 0)) == 0


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


def run_state(
    model: torch.nn.Module,
    optim: TrainingContext,
    epoch: int,
    step: int,
    best_acc1: float,
    config: dict[str, Any],
    epoch_sums: Optional[dict[str, float]] = None,
    *,
    data: Optional[dict[str, Any]],
) -> dict[str, Any]:
    """The checkpoint dict (every rank must call it: gathering the RNG states is a collective). ``data``: the run's
    :func:`data_fingerprints` (required: a checkpoint without them cannot tell a changed dataset on resume)."""
    return {
        "arch": config.get("arch"),
        "state_dict": model.state_dict(),
        "optimizer": optim.optimizer.state_dict(),
        "scheduler": optim.scheduler.state_dict(),
        "scaler": optim.scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "epoch_sums": epoch_sums,
        "best_acc1": float(best_acc1),
        "rng": gather_rng_states(),
        "config": config,
        "data": data,
        **({"model_ema": optim.ema.state_dict()} if optim.ema is not None else {}),
    }


def load_resume_weights(ckpt: Any, model: torch.nn.Module, path: Any = "<checkpoint>", arch: Optional[str] = None):
    """Check that ``ckpt`` is a training checkpoint this run can continue and load its weights into ``model``.

    Raises :class:`CheckpointError` (one line naming ``path``) for weights that do not fit, files that are not
    training checkpoints (weights only: they start a run through ``--pretrained``) and a foreign checkpoint whose
    ``arch`` is not ``arch`` (``resnet50`` and ``pdresnet50`` have the same weights: only the name tells the padding
    apart). Called before anything else looks at the checkpoint, so an unfit one never passes for a finished run.
    """
    target = unwrap_model(model)
    state = extract_state_dict(ckpt, path, target.state_dict().keys())
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "epoch" not in ckpt:
        raise CheckpointError(
            f"--resume {path}: holds model weights only (no optimizer state and epoch to continue from); "
            f"to start a new run from these weights use --pretrained {path}"
        )
    load_state(target, state, path)  # weights that do not fit are named first
    if "scheduler" not in ckpt and arch is not None and ckpt.get("arch") not in (None, arch):
        raise CheckpointError(
            f"--resume {path}: written for -a {ckpt['arch']}, this run is -a {arch}; resume with "
            f"-a {ckpt['arch']}, or start a new run from its weights with --pretrained {path}"
        )


def restore_run_state(
    ckpt: Any,
    model: torch.nn.Module,
    optim: TrainingContext,
    rank: int,
    world_size: int,
    warn=print,
    path: Any = "<checkpoint>",
    steps_per_epoch: Optional[int] = None,
    arch: Optional[str] = None,
):
    """Load a :func:`run_state` dict; returns ``(epoch, step, best_acc1, epoch_sums)``. The RNG states are restored
    only when the checkpoint was written by the same number of processes (each rank takes its own).

    A checkpoint of NVIDIA's ``main.py`` (``epoch``, ``arch``, ``state_dict``, ``best_prec1``, ``optimizer``) continues
    too: weights, SGD momentum, the epoch (the LR schedule rebuilt for it from this run's config, which needs
    ``steps_per_epoch``) and best top-1; what it lacks is named through ``warn``. Weights that do not fit the model
    and files that are not training checkpoints raise :class:`CheckpointError` (see :func:`load_resume_weights`).
    """
    load_resume_weights(ckpt, model, path, arch)
    try:
        optim.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"--resume {path}: optimizer state does not fit this model's SGD ({e})") from e
    epoch = int(ckpt["epoch"])
    if "scheduler" not in ckpt:
        return _restore_foreign(ckpt, optim, epoch, warn, path, steps_per_epoch)
    optim.scheduler.load_state_dict(ckpt["scheduler"])
    optim.scaler.load_state_dict(ckpt["scaler"])
    if optim.ema is not None:
        if "model_ema" in ckpt:
            optim.ema.load_state_dict(ckpt["model_ema"])
        else:
            warn(f"{path}: no EMA state (trained without --model-ema): the EMA starts from the weights")
    rngs = ckpt.get("rng") or []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    else:
        warn(f"checkpoint written by {len(rngs)} process(es), resuming with {world_size}: RNG states not restored")
    return epoch, int(ckpt.get("step", 0)), float(ckpt.get("best_acc1", 0.0)), ckpt.get("epoch_sums")


def _restore_foreign(
    ckpt: dict[str, Any], optim: TrainingContext, epoch: int, warn, path: Any, steps_per_epoch: Optional[int]
):
    """The rest of a checkpoint without our scheduler state (NVIDIA's ``main.py``): its ``epoch`` counts finished
    epochs, as ours does at an epoch boundary. The LR schedule is this run's, set to where ``epoch`` epochs of
    ``steps_per_epoch`` iterations leave it; the SGD hyper-parameters of the loaded groups are kept."""
    if steps_per_epoch is None:
        raise ValueError("restoring a checkpoint without scheduler state needs steps_per_epoch")
    sched = optim.scheduler
    sched.last_epoch = epoch * steps_per_epoch
    lrs = [base * factor(sched.last_epoch) for base, factor in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, base, lr in zip(optim.optimizer.param_groups, sched.base_lrs, lrs):
        group["initial_lr"], group["lr"] = base, lr
    sched._last_lr = lrs  # what get_last_lr() reports, as after a step()
    best = ckpt.get("best_acc1", ckpt.get("best_prec1", 0.0))
    best = float(best.item() if hasattr(best, "item") else best)
    arch = f" ({ckpt['arch']})" if ckpt.get("arch") else ""
    warn(
        f"{path}{arch} is not a train.py checkpoint (NVIDIA main.py layout): restored weights, SGD momentum, "
        f"epoch {epoch} and best top-1 {best:.3f}, LR schedule rebuilt from the epoch (lr {lrs[0]:.6g}); "
        "not restored: RNG streams (data order and augmentation restart from --seed) and any mid-epoch position "
        "(it continues at the start of the next epoch)"
    )
    return epoch, 0, best, None


def data_fingerprints(train: Any, val: Any) -> Optional[dict[str, Any]]:
    """``{"train": ..., "val": ...}``: :func:`~partialconv.data.image_folder.folder_fingerprint` of two datasets of
    the image-folder backends (``root``, ``classes``, ``samples``); None for datasets without a file list."""
    from ..data.image_folder import folder_fingerprint

    if not all(hasattr(d, a) for d in (train, val) for a in ("root", "classes", "samples")):
        return None
    return {name: folder_fingerprint(d.root, d.classes, d.samples) for name, d in (("train", train), ("val", val))}


def check_resumed_data(
    saved: Optional[dict[str, Any]],
    now: Optional[dict[str, Any]],
    epoch: int,
    step: int,
    restart_epoch: bool,
    path: Any,
    warn: Callable[[str], None] = print,
) -> bool:
    """Compare the data a checkpoint (``path``, at ``step`` steps of 0-based ``epoch``) was written with to this
    run's; returns whether the epoch is to start over at step 0 (asked for with ``restart_epoch``, or at an epoch
    boundary on changed data, where the schedule is set to the epoch's start for the new number of steps).

    Mid-epoch, changed data is refused (ConfigError, one line saying what changed and the flag that starts the
    epoch over): the position is an index into a permutation of the old file list, so continuing would skip or
    repeat images. At an epoch boundary the next epoch simply draws from the new list: one warning. A checkpoint
    without fingerprints (older versions, other programs) resumes as before; mid-epoch, a warning says it was not
    checked."""
    from ..data.image_folder import fingerprint_changes

    if saved is None or now is None:
        if step and saved is None and now is not None:
            warn(f"{path} records no data fingerprint (an older version): a change of the data cannot be detected")
        return restart_epoch and step > 0
    changes = [
        f"{split}: {c}"
        for split in ("train", "val")
        if split in saved and (c := fingerprint_changes(saved[split], now[split]))
    ]
    if not changes:
        return restart_epoch and step > 0
    what = "; ".join(changes)
    if step and not restart_epoch:
        raise ConfigError(
            f"--resume {path}: the data changed since this checkpoint was written at epoch {epoch + 1} step {step} "
            f"({what}); its place in the epoch does not exist in the new data: add --restart-epoch to start epoch "
            f"{epoch + 1} over on it, or restore the data"
        )
    where = f"epoch {epoch + 1} starts over" if step else f"epoch {epoch + 1} starts"
    warn(f"{path}: the data changed since this checkpoint ({what}); {where} on the new data")
    return True


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
