"""Run-state checkpoints: what exact resume needs, saved atomically, with a previous copy to fall back on.

A checkpoint is a dict of tensors and plain values (loads with ``weights_only=True``): ``state_dict`` (model),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (the epoch in progress, 0-based) and ``step`` (its completed
steps; 0 at an epoch boundary), ``epoch_sums`` (the partial epoch's metric sums), ``best_acc1``, ``rng`` (one
entry per rank: python, numpy, torch, cuda states as tensors/lists) and ``config``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, extract_state_dict, read_checkpoint, save_checkpoint
from ..fileio import atomic_write

__all__ = [
    "LAST",
    "PREVIOUS",
    "BEST",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "save_run_checkpoint",
    "find_resume_checkpoint",
    "run_state",
    "restore_run_state",
    "existing_run_files",
    "move_run_aside",
]

LAST = "checkpoint.pth.tar"
PREVIOUS = "checkpoint.prev.pth.tar"
BEST = "model_best.pth.tar"
# What a train.py run writes in its directory; the checkpoints and metrics are what a fresh start would destroy.
RESULT_FILES = (LAST, PREVIOUS, BEST, "checkpoint_epoch*.pth.tar", "metrics.jsonl")
RUN_FILES = (*RESULT_FILES, "log.txt", "config.yaml", "tb")
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
    run_dir: Path, state: dict[str, Any], is_best: bool = False, snapshot_epoch: Optional[int] = None
) -> None:
    """Keep the last checkpoint as ``checkpoint.prev.pth.tar`` and write the new one; copy to best/snapshot."""
    last = run_dir / LAST
    if last.is_file():
        os.replace(last, run_dir / PREVIOUS)
    save_checkpoint(state, last)
    if is_best:
        _copy_atomic(last, run_dir / BEST)
    if snapshot_epoch is not None:
        _copy_atomic(last, run_dir / f"checkpoint_epoch{snapshot_epoch}.pth.tar")


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as f_src, atomic_write(dst) as f_dst:
        shutil.copyfileobj(f_src, f_dst)


def find_resume_checkpoint(
    resume: Optional[str], run_dir: Path, warn=print
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


def existing_run_files(run_dir: Path) -> list[str]:
    """The names of the checkpoints and metrics of a run already in ``run_dir`` (empty if it holds none)."""
    return sorted({p.name for pattern in RESULT_FILES for p in Path(run_dir).glob(pattern)})


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
    ctx,
    epoch: int,
    step: int,
    best_acc1: float,
    config: dict[str, Any],
    epoch_sums: Optional[dict[str, float]] = None,
) -> dict[str, Any]:
    """The checkpoint dict (every rank must call it: gathering the RNG states is a collective)."""
    return {
        "arch": config.get("arch"),
        "state_dict": model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "epoch_sums": epoch_sums,
        "best_acc1": float(best_acc1),
        "rng": gather_rng_states(),
        "config": config,
    }


def restore_run_state(ckpt: dict[str, Any], model: torch.nn.Module, ctx, rank: int, world_size: int, warn=print):
    """Load a :func:`run_state` dict; returns ``(epoch, step, best_acc1, epoch_sums)``. The RNG states are restored
    only when the checkpoint was written by the same number of processes (each rank takes its own)."""
    model.load_state_dict(extract_state_dict(ckpt))
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    ctx.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt.get("rng") or []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    else:
        warn(f"checkpoint written by {len(rngs)} process(es), resuming with {world_size}: RNG states not restored")
    return int(ckpt["epoch"]), int(ckpt.get("step", 0)), float(ckpt.get("best_acc1", 0.0)), ckpt.get("epoch_sums")
