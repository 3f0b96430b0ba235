"""A training run's state: what its checkpoint holds, gathered on every rank and restored for an exact resume.

A checkpoint is a dict of tensors and plain values (loads with ``weights_only=True``): ``state_dict`` (model),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (the epoch in progress, 0-based) and ``step`` (its completed
steps; 0 at an epoch boundary), ``epoch_sums`` (the partial epoch's metric sums), ``best_acc1``, ``rng`` (one
entry per rank: python, numpy, torch, cuda states as tensors/lists), ``config`` and ``epoch_record`` (the last
completed epoch's ``metrics.jsonl`` line, written back on resume if the file lost it), ``data`` (the
:func:`~partialconv.data.image_folder.folder_fingerprint` of each split: what the position in an epoch depends on).

How a run directory's checkpoint files are committed, completed after a kill and chosen for a resume:
:mod:`partialconv.engine.run_files`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint_io import CheckpointError, extract_state_dict, load_state, unwrap_model
from ..errors import ConfigError

if TYPE_CHECKING:  # annotations only: the trainer does not need run_state to import
    from .trainer import TrainingContext

__all__ = [
    "FINISHED_RUN_NOTE",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "finished",
    "run_state",
    "load_resume_weights",
    "restore_run_state",
    "data_fingerprints",
    "check_resumed_data",
]


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


# The line's end that train.py prints when it finds its run already finished: padding_benchmark tells from it that a
# run it launched was trained by another process that shares the root.
FINISHED_RUN_NOTE = "nothing to do (raise --epochs to train on)"


def finished(ckpt: dict[str, Any], epochs: int) -> bool:
    """Whether a run checkpoint is at the end of a run of ``epochs`` epochs (nothing left to train)."""
    return int(ckpt.get("epoch", 0)) >= epochs and int(ckpt.get("step", 0)) == 0


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
