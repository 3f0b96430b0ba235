"""The model registry: ``@register_model``, ``create_model(name, **kwargs)``, ``list_models(pattern)``."""

from __future__ import annotations

import difflib
import fnmatch
import functools
from typing import Callable, Optional

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, pd_variant: bool = True):
    """Register ``fn`` under its function name. Architectures whose entry point takes ``padding`` also get the
    seed's ``pd`` name (``resnet50`` -> ``pdresnet50``): the same entry point with ``padding="partial"``."""

    def register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = f
        if pd_variant:
            _MODELS["pd" + name] = functools.partial(f, padding="partial")
        return f

    return register(fn) if fn is not None else register


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (e.g. ``"pdresnet*"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see list_models() ({len(_MODELS)} models)"
    return f"unknown model {name!r}{hint}"


def create_model(name: str, pretrained: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered model. ``padding=zero|partial|reflect|replicate`` applies to every architecture that has
    padded convs; ``num_classes`` sets the classifier width; ``pretrained`` is a local checkpoint path."""
    if name not in _MODELS:
        raise ValueError(unknown_model_message(name))
    entry = _MODELS[name]
    if isinstance(entry, functools.partial) and "padding" in kwargs and kwargs["padding"] != entry.keywords["padding"]:
        raise ValueError(f"model {name!r} is partial padding by name; got padding={kwargs['padding']!r}")
    model = entry(**kwargs)
    if pretrained:
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    return model
