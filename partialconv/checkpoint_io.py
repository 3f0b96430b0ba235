"""Checkpoint files, whoever wrote them: atomic saves, ``weights_only`` loads (safetensors too), wrapper-segment key
matching, foreign layouts (NVIDIA's ``main.py``) and readable key-mismatch errors.

What a training run's checkpoint holds and how it is restored is ``engine/run_state.py``; how a run directory's
checkpoint files are committed, completed after a kill and chosen for a resume is ``engine/run_files.py``."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from partialconv.fileio import atomic_write

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "read_checkpoint",
    "strip_wrapper_segments",
    "match_keys",
    "extract_state_dict",
    "unwrap_model",
    "load_state",
    "load_checkpoint",
]

PathLike = Union[str, os.PathLike]

# Key segments added by wrappers: DataParallel/DDP ("module"), torch.compile ("_orig_mod"). They stand first for a
# wrapped model, or inside a key for a wrapped submodule (NVIDIA's main.py wraps only a VGG's ``features`` in
# DataParallel: ``features.module.0.weight``), in any order and repetition (compile of DDP and the reverse).
_WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line naming the file."""


def save_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename: readers see the old file or the
    new one, never a torn write."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def _numpy_safe_globals() -> list[Any]:
    """numpy's reconstruction globals: what a pickled numpy scalar/array (``np.float64`` best accuracy, ``np.int64``
    epoch, often found in other programs' checkpoints) needs. Data only: these rebuild numbers from bytes and a dtype
    (object dtypes are not listed), they run no code. numpy < 2 pickles them as ``numpy.core.multiarray.*``, numpy 2
    as ``numpy._core.multiarray.*``: both names are listed (as ``(object, name)`` pairs where torch takes them)."""
    multiarray = np._core.multiarray if int(np.__version__.split(".")[0]) >= 2 else np.core.multiarray
    dtype_types = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    out: list[Any] = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *sorted(dtype_types, key=str)]
    for name in ("scalar", "_reconstruct"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if f"{module}.{name}" != f"{getattr(multiarray, name).__module__}.{name}":
                out.append((getattr(multiarray, name), f"{module}.{name}"))
    return out


@functools.cache
def _allowed_numpy_globals() -> tuple[Any, ...]:
    """:func:`_numpy_safe_globals`, without the ``(object, name)`` pairs where this torch cannot take them (older
    versions fail on every load with a pair in the allowlist): found out once with an in-memory load."""
    entries = _numpy_safe_globals()
    buf = io.BytesIO()
    torch.save({"x": np.float64(0.0)}, buf)  # a numpy global: what consults the allowlist
    try:
        with torch.serialization.safe_globals(entries):
            torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    except Exception:
        entries = [e for e in entries if not isinstance(e, tuple)]
    return tuple(entries)


def _safe_globals() -> contextlib.AbstractContextManager:
    """numpy's globals allowed for one ``torch.load`` (``torch.serialization.safe_globals``, torch >= 2.5); on
    torch 2.4 they are added to the process-wide allowlist (``add_safe_globals``), pairs left out."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(_allowed_numpy_globals()))
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([e for e in _numpy_safe_globals() if not isinstance(e, tuple)])
    return contextlib.nullcontext()


def _load_error_reason(e: Exception, path: Optional[Path] = None) -> str:
    """One line for a failed ``torch.load``: the global that is not allowed when that is the cause (torch's message
    spans many lines with ANSI bold codes and advice to turn ``weights_only`` off, which we never give: it would run
    whatever code the file carries)."""
    text = _ANSI.sub("", str(e))
    unsafe = (
        re.search(r"GLOBAL (\S+) was not an allowed global", text)
        or re.search(r"unsupported GLOBAL (\S+) whose module", text)
        or re.search(r"but got <class '([^']+)'>", text)
    )
    # the file's own opcodes name every refused global with its module (torch's text names one, or none)
    refused = _refused_globals(path) if path is not None and "Weights only load failed" in text else []
    refused = refused or ([unsafe.group(1)] if unsafe else [])
    if refused:
        names = ", ".join(refused[:5]) + (f" (+{len(refused) - 5} more)" if len(refused) > 5 else "")
        which = "the global" if len(refused) == 1 else "the globals"
        return f"it needs {which} {names}, which weights_only loading does not allow"
    # torch's own advice (re-run with weights_only=False, allowlist the global) is left out: it runs the file's code
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _ADVICE.search(line)]
    return f"{type(e).__name__}: {lines[0] if lines else 'not a checkpoint torch.load can read'}"


# The sentences of torch's weights_only errors that advise loading the file unsafely or are boilerplate.
_ADVICE = re.compile(r"weights_only|trust|file an issue|Check the documentation|safe_globals|two options", re.I)
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING"})


def _refused_globals(path: Path) -> list[str]:
    """The globals a checkpoint's pickle names that ``weights_only`` loading does not allow, found by reading its
    opcodes (:func:`pickletools.genops` executes nothing). For a refusal whose message names no global, e.g. a
    plain ``pickle.dump`` file (protocol 4 framing) that torch stops at an unsupported opcode first."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                streams = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:  # the legacy format: several pickles in a row (magic number, protocol, sys info, the object...)
            streams = [path.read_bytes()]
        allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    except Exception:  # not readable as a pickle container, or another torch: no names to add
        return []
    allowed |= {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" for g in _allowed_numpy_globals()}
    found: list[str] = []
    for data in streams:
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if op.name in _STRING_OPS:
                        strings.append(str(arg))
                    elif op.name in ("GLOBAL", "INST"):
                        found.append(".".join(str(arg).split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # a torn or hand-made stream: what was read so far is named
                break
    # protocol 2 (torch.save's) spells builtins the Python 2 way
    found = [f"builtins.{n.split('.', 1)[1]}" if n.startswith("__builtin__.") else n for n in found]
    return list(dict.fromkeys(name for name in found if name not in allowed))


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load with ``weights_only=True`` (tensors, containers, primitives and numpy numbers only; no arbitrary
    unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if _is_safetensors(path):
        return _read_safetensors(path, map_location)
    try:
        with _safe_globals(), warnings.catch_warnings():
            # a pickle of another protocol gets a multi-line UserWarning before the refusal that says it all
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(f"checkpoint {path}: cannot be read ({_load_error_reason(e, path)})") from e


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout (timm's and Hugging Face's weight files): an 8-byte little-endian header length, then
    a JSON header. A torch.save file starts with a zip or pickle signature instead."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100 << 20


def _read_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    """A safetensors file as a plain state dict (tensors only by construction: nothing is unpickled)."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(
            f"checkpoint {path}: a safetensors file; reading it needs the safetensors package (pip install safetensors)"
        ) from e
    device = map_location if isinstance(map_location, str) else "cpu"
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"checkpoint {path}: cannot be read as safetensors ({_load_error_reason(e)})") from e


def strip_wrapper_segments(key: str) -> str:
    """``key`` without its ``module``/``_orig_mod`` segments (``features.module.0.weight`` -> ``features.0.weight``)."""
    return ".".join(part for part in key.split(".") if part not in _WRAPPER_SEGMENTS)


def match_keys(
    state: Mapping[str, torch.Tensor], target_keys: Optional[Iterable[str]] = None, path: PathLike = "<memory>"
) -> dict[str, Any]:
    """``state`` with its keys matched to the model's through wrapper segments.

    The rule: a key the model has as it is stays as it is (a model whose real submodule is named ``module`` keeps
    it); otherwise a key whose form without wrapper segments equals exactly one model key's form without them is
    renamed to that model key (so wrapped checkpoints load into plain models and plain ones into wrapped models);
    keys that match nothing lose their wrapper segments, so mismatch messages name them as a plain model would.
    Without ``target_keys`` every wrapper segment goes.

    Never guessed, a :class:`CheckpointError` naming ``path``: a key that could load into two model keys (the model
    has both ``module.features.0.weight`` and ``features.module.0.weight``), and two keys that would load into the
    same model key (the checkpoint has both).
    """
    if target_keys is None:
        pairs = [(strip_wrapper_segments(k), k) for k in state]
    else:
        own = set(target_keys)
        by_stripped: dict[str, list[str]] = {}
        for k in sorted(own):
            by_stripped.setdefault(strip_wrapper_segments(k), []).append(k)
        pairs = []
        for k in state:
            if k in own:
                pairs.append((k, k))
                continue
            stripped = strip_wrapper_segments(k)
            candidates = by_stripped.get(stripped, [stripped])
            if len(candidates) > 1:
                raise CheckpointError(
                    f"checkpoint {path}: key {k} could load into model keys {' and '.join(candidates)}; "
                    "rename it to one of them"
                )
            pairs.append((candidates[0], k))
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for target, k in pairs:
        if target in source:
            raise CheckpointError(
                f"checkpoint {path}: keys {source[target]} and {k} would both load into {target}; keep one of them"
            )
        source[target] = k
        out[target] = state[k]
    return out


def extract_state_dict(
    checkpoint: Any, path: PathLike = "<memory>", target_keys: Optional[Iterable[str]] = None
) -> dict[str, torch.Tensor]:
    """The model weights of a plain state_dict or of a training checkpoint (``state_dict``/``model`` key), with
    wrapper segments removed (see :func:`match_keys`)."""
    state = checkpoint
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state_dict or a dict with a 'state_dict' entry")
    return match_keys(state, target_keys, path)


def _summary(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DataParallel/DDP and torch.compile wrappers (by type: a real submodule named ``module``
    is left alone)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike, strict: bool = True) -> None:
    """Load weights (keys already matched with :func:`match_keys`) into ``model`` after checking that they fit.

    Raises :class:`CheckpointError` (one line naming ``path``) listing missing and unexpected keys and shape
    mismatches; with ``strict=False`` missing/unexpected keys are tolerated but shape mismatches still fail.
    BatchNorm's ``num_batches_tracked`` may be missing (checkpoints of PyTorch < 0.4.1): ``load_state_dict``
    accepts that and keeps the counter at 0.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
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
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(problems))
    state = dict(state)
    for k in own:  # what load_state_dict does for an old BatchNorm state, made explicit for any state_dict version
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(own[k])
    model.load_state_dict(state, strict=strict)


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (wrapper segments matched on either side: DDP/DataParallel,
    torch.compile, NVIDIA's DataParallel-wrapped VGG ``features``).

    Raises :class:`CheckpointError` listing missing and unexpected keys and shape mismatches; with
    ``strict=False`` missing/unexpected keys are tolerated but shape mismatches still fail.
    """
    target = unwrap_model(model)
    state = extract_state_dict(read_checkpoint(path), path, target.state_dict().keys())
    load_state(target, state, path, strict)
    return model
