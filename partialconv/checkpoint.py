"""Checkpoint I/O: atomic saves, ``weights_only`` loads, prefix stripping and readable key-mismatch errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from partialconv.fileio import atomic_write

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "read_checkpoint",
    "extract_state_dict",
    "load_checkpoint",
    "load_state",
]

PathLike = Union[str, os.PathLike]

# Wrappers that prefix every key: DataParallel/DDP ("module."), torch.compile ("_orig_mod.").
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line naming the file."""


def save_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename: readers see the old file or the
    new one, never a torn write."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load with ``weights_only=True`` (tensors, containers and primitives only; no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(e).__name__}: {reason})") from e


def extract_state_dict(checkpoint: Any, path: PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The model weights of a plain state_dict or of a training checkpoint (``state_dict``/``model`` key), with
    wrapper prefixes stripped."""
    state = checkpoint
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state_dict or a dict with a 'state_dict' entry")
    out = {}
    for k, v in state.items():
        for prefix in _PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _summary(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (unwrapping DDP/DataParallel/compile on either side).

    Raises :class:`CheckpointError` listing missing and unexpected keys and shape mismatches; with
    ``strict=False`` missing/unexpected keys are tolerated but shape mismatches still fail.
    """
    return load_state(model, extract_state_dict(read_checkpoint(path), path), path, strict)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike, strict: bool = True) -> nn.Module:
    """:func:`load_checkpoint` for a state_dict already read from ``path`` (named in the error)."""
    target = model
    while hasattr(target, "module") and isinstance(target.module, nn.Module):  # DDP / DataParallel
        target = target.module
    target = getattr(target, "_orig_mod", target)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_summary(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {_summary(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_summary(unexpected)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(target).__name__}: " + "; ".join(problems))
    target.load_state_dict(state, strict=strict)
    return model
