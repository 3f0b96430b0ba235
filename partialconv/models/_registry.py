"""The model registry: ``@register_model``, ``create_model(name, **kwargs)``, ``list_models(pattern)``.

Every model is tagged with its task: ``"classification"`` (image in, class logits out: what train.py trains) or
``"inpainting"`` (image and mask in, image out). ``task=`` on :func:`list_models`, :func:`is_model` and
:func:`create_model` restricts a lookup to one task.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from typing import Callable, NamedTuple, Optional

from torch import nn

__all__ = ["TASKS", "register_model", "create_model", "list_models", "is_model", "split_pd_name"]

TASKS = ("classification", "inpainting")
# The seed's naming rule: ``pd<name>`` is ``<name>`` with partial padding (``pdresnet50``).
PD_PREFIX = "pd"


class _Entry(NamedTuple):
    build: Callable[..., nn.Module]
    task: str


_MODELS: dict[str, _Entry] = {}


def split_pd_name(name: str) -> tuple[str, bool]:
    """``(base, partial)``: ``"pdresnet50"`` -> ``("resnet50", True)``, ``"resnet50"`` -> ``("resnet50", False)``.
    The one place the ``pd`` prefix is read; names need not be registered (run logs may name older models)."""
    if name.startswith(PD_PREFIX) and len(name) > len(PD_PREFIX):
        return name[len(PD_PREFIX) :], True
    return name, False


def register_model(
    fn: Optional[Callable[..., nn.Module]] = None, *, pd_variant: bool = True, task: str = "classification"
):
    """Register ``fn`` under its function name for ``task`` (one of :data:`TASKS`). Architectures whose entry point
    takes ``padding`` also get the seed's ``pd`` name (``resnet50`` -> ``pdresnet50``): the same entry point with
    ``padding="partial"``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")

    def register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        if split_pd_name(name)[1]:
            # it would read as the partial-padding variant of another model
            raise ValueError(f"model {name!r}: names starting with {PD_PREFIX!r} are the partial-padding variants")
        _MODELS[name] = _Entry(f, task)
        if pd_variant:
            _MODELS[PD_PREFIX + name] = _Entry(functools.partial(f, padding="partial"), task)
        return f

    return register(fn) if fn is not None else register


def list_models(pattern: str = "*", task: Optional[str] = None) -> list[str]:
    """Registered names matching a shell-style ``pattern`` (e.g. ``"pdresnet*"``), of ``task`` if given, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern) and task in (None, _MODELS[n].task))


def is_model(name: str, task: Optional[str] = None) -> bool:
    """Whether ``name`` is registered (for ``task``, if given)."""
    return name in _MODELS and task in (None, _MODELS[name].task)


def unknown_model_message(name: str, task: Optional[str] = None) -> str:
    """Why ``name`` is not a model (of ``task``): unknown (with close names), or registered for another task."""
    names = list_models(task=task)
    if name in _MODELS:
        other = _MODELS[name].task
        return f"{name!r} is a model for {other}, not {task}; see list_models(task={task!r}) ({len(names)} models)"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    where = f"list_models(task={task!r})" if task else "list_models()"
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see {where} ({len(names)} models)"
    return f"unknown model {name!r}{hint}"


def create_model(name: str, pretrained: Optional[str] = None, task: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered model (of ``task``, if given: another task's model is a ValueError).
    ``padding=zero|partial|reflect|replicate`` applies to every architecture that has padded convs; ``num_classes``
    sets the classifier width; ``pretrained`` is a local checkpoint path."""
    if not is_model(name, task):
        raise ValueError(unknown_model_message(name, task))
    entry = _MODELS[name].build
    if isinstance(entry, functools.partial) and "padding" in kwargs and kwargs["padding"] != entry.keywords["padding"]:
        raise ValueError(f"model {name!r} is partial padding by name; got padding={kwargs['padding']!r}")
    model = entry(**kwargs)
    if pretrained:
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    return model
