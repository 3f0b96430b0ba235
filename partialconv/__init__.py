"""Partial convolutions: the layer, a model zoo in four paddings, and checkpoint helpers.

The public names load on first use (PEP 562): ``import partialconv`` and its torch-free modules
(``partialconv.programs.launch``, which sets the stop-signal handlers of the long-running programs before torch is
imported) do not load torch; ``from partialconv import PartialConv2d`` works as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint_io",
    "load_checkpoint": "checkpoint_io",
    "save_checkpoint": "checkpoint_io",
    "PADDINGS": "layers",
    "PartialConv1d": "layers",
    "PartialConv2d": "layers",
    "PartialConv3d": "layers",
    "conv_factory": "layers",
    "convert_padding": "layers",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # found once, then an ordinary attribute
        return value
    try:  # a submodule as an attribute (``partialconv.models`` after a bare ``import partialconv``)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see (ruff does not read __all__ built from _EXPORTS)
    from .checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint  # noqa: F401
    from .layers import PADDINGS, PartialConv1d, PartialConv2d, PartialConv3d, conv_factory, convert_padding  # noqa: F401
    from .models import create_model, list_models, register_model  # noqa: F401
