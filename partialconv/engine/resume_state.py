"""Where a run starts: the position, best top-1 and epoch bookkeeping its checkpoint holds (or a fresh start's),
read once into a :class:`ResumeState` that train.py's loop reads, instead of testing for a checkpoint at each use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from torch import nn

from .distributed import DistInfo
from .run_state import check_resumed_data, restore_run_state
from .runlog import RunLogger
from .trainer import seek_schedule

if TYPE_CHECKING:
    from .trainer import TrainingContext

__all__ = ["ResumeState", "resume_state"]


@dataclass
class ResumeState:
    """Where the epoch loop starts; a fresh run's is the default."""

    start_epoch: int = 0  # 0-based: the first epoch to run
    start_step: int = 0  # its steps already done (equal to the epoch's steps: trained, not yet validated)
    best_acc1: float = 0.0
    epoch_sums: Optional[dict[str, Any]] = None  # the interrupted epoch's metric sums (EpochMeter.state_dict)
    last_record: Optional[dict[str, Any]] = None  # the last completed epoch's metrics.jsonl line (written back)
    epoch_train: dict[str, Any] = field(default_factory=dict)  # a trained, unvalidated epoch's seconds and images


def resume_state(
    ckpt: Optional[dict[str, Any]],
    path: Optional[Path],
    model: nn.Module,
    ctx: TrainingContext,
    steps_per_epoch: int,
    data: Optional[dict[str, Any]],
    restart_epoch: bool,
    start_epoch: Optional[int],
    arch: str,
    dist: DistInfo,
    log: RunLogger,
) -> ResumeState:
    """Restore ``ckpt`` (read from ``path``; None: a fresh run) into ``model`` and ``ctx`` and return where the run
    starts. ``data``: this run's data fingerprints, checked against the checkpoint's (changed data starts the epoch
    over, or is refused mid-epoch; ``restart_epoch`` asks for the start over). ``start_epoch`` (``--start-epoch``)
    overrides the position: that epoch from its first step, the LR schedule put there, no epoch record carried."""
    state = ResumeState()
    if ckpt is not None:
        state.start_epoch, state.start_step, state.best_acc1, state.epoch_sums = restore_run_state(
            ckpt, model, ctx, dist.rank, dist.world_size, log.warn, path, steps_per_epoch, arch
        )
        if check_resumed_data(
            ckpt.get("data"), data, state.start_epoch, state.start_step, restart_epoch, path, log.warn
        ):
            state.start_step, state.epoch_sums = 0, None
            seek_schedule(ctx, state.start_epoch * steps_per_epoch)
        log.info(
            f"resumed from {path}: epoch {state.start_epoch + 1}, step {state.start_step}, "
            f"best acc@1 {state.best_acc1:.3f}"
        )
        state.last_record = ckpt.get("epoch_record")
        state.epoch_train = ckpt.get("epoch_train") or {}
    if start_epoch is not None:
        state.start_epoch, state.start_step, state.epoch_sums, state.last_record = start_epoch, 0, None, None
        seek_schedule(ctx, start_epoch * steps_per_epoch)
    return state
