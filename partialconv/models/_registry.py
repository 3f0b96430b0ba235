"""The model registry: ``@register_model``, ``create_model(name, **kwargs)``, ``list_models(pattern)``.

Names resolve in order: our registered models (torchvision-identical ResNet/VGG, the inpainting U-Net, ...), then
every torchvision classification model by its name, then ``timm/<name>`` when timm is installed (``_external.py``).
The ``pd`` prefix (partial padding) works on all of them: ``pdresnet50``, ``pdconvnext_tiny``, ``pdtimm/resnet18``.

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

from ._external import SOURCES, TIMM_PREFIX, build_external, external_names, external_source, timm_available

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


def list_models(pattern: str = "*", task: Optional[str] = None, source: Optional[str] = None) -> list[str]:
    """Model names matching a shell-style ``pattern`` (e.g. ``"pdresnet*"``), sorted: ours, torchvision's and timm's
    (``timm/...``, when installed), each also with the ``pd`` prefix. ``task`` keeps one task's models (the external
    ones are classifiers); ``source`` one of ``"partialconv"``, ``"torchvision"``, ``"timm"``."""
    if source not in (None, "partialconv", *SOURCES):
        raise ValueError(f"source must be partialconv, {', '.join(SOURCES)} or None; got {source!r}")
    names = set()
    if source in (None, "partialconv"):
        names.update(n for n in _MODELS if task in (None, _MODELS[n].task))
    for src in SOURCES:
        if source in (None, src) and task in (None, "classification"):
            plain = [n for n in external_names(src) if n not in _MODELS]
            names.update(plain)
            names.update(PD_PREFIX + n for n in plain)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def _external(name: str) -> Optional[tuple[str, bool]]:
    """``(base, partial)`` when ``name`` is an external classifier, with or without the ``pd`` prefix."""
    if name in _MODELS:
        return None
    if external_source(name) is not None:
        return name, False
    base, partial = split_pd_name(name)
    if partial and base not in _MODELS and external_source(base) is not None:
        return base, True
    return None


def is_model(name: str, task: Optional[str] = None) -> bool:
    """Whether ``name`` is a model (for ``task``, if given): registered, or external (a classifier)."""
    if name in _MODELS:
        return task in (None, _MODELS[name].task)
    return task in (None, "classification") and _external(name) is not None


def unknown_model_message(name: str, task: Optional[str] = None) -> str:
    """Why ``name`` is not a model (of ``task``): unknown (with close names), or registered for another task."""
    names = list_models(task=task)
    base, partial = split_pd_name(name)
    if base.startswith(TIMM_PREFIX) and not timm_available():
        return f"{name!r}: timm is not installed (pip install -e '.[timm]' in this checkout, or pip install timm)"
    if name not in _MODELS and partial and base in _MODELS:
        return f"{name!r}: {base!r} has no partial-padding variant"
    if name in _MODELS:
        other = _MODELS[name].task
        return f"{name!r} is a model for {other}, not {task}; see list_models(task={task!r}) ({len(names)} models)"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    where = f"list_models(task={task!r})" if task else "list_models()"
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see {where} ({len(names)} models)"
    return f"unknown model {name!r}{hint}"


def create_model(name: str, pretrained: Optional[str] = None, task: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a model (of ``task``, if given: another task's model is a ValueError).
    ``padding=zero|partial|reflect|replicate`` applies to every architecture that has padded convs; ``num_classes``
    sets the classifier width; ``pretrained`` is a local checkpoint path. Other keyword arguments go to the model's
    builder (ours, ``torchvision.models.get_model`` or ``timm.create_model``)."""
    if not is_model(name, task):
        raise ValueError(unknown_model_message(name, task))
    external = _external(name)
    if external is not None:
        base, partial = external
        entry = functools.partial(build_external, base, **({"padding": "partial"} if partial else {}))
    else:
        entry = _MODELS[name].build
    if isinstance(entry, functools.partial) and "padding" in entry.keywords and "padding" in kwargs:
        if kwargs["padding"] != entry.keywords["padding"]:
            raise ValueError(f"model {name!r} is partial padding by name; got padding={kwargs['padding']!r}")
        kwargs.pop("padding")
    model = entry(**kwargs)
    if pretrained:
        from ..checkpoint_io import load_checkpoint

        load_checkpoint(model, pretrained)
    return model
