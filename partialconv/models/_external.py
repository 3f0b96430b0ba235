"""Classifiers from outside our registry: every torchvision classification model by its torchvision name
(``convnext_tiny``), and every timm model as ``timm/<name>`` when timm is installed. Both are built untrained
(``weights=None`` / ``pretrained=False``: nothing is downloaded), then switched to the requested padding with
:func:`~partialconv.layers.convert_padding`. The registry (``_registry.py``) asks here only for names it does not
have itself, so our torchvision-identical ResNet/VGG keep precedence.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

from torch import nn

from ..layers import convert_padding

__all__ = [
    "TIMM_PREFIX",
    "SOURCES",
    "timm_available",
    "external_names",
    "external_source",
    "build_external",
    "pytorch_official",
]

TIMM_PREFIX = "timm/"
SOURCES = ("torchvision", "timm")
_AUX_LOGITS = ("googlenet", "inception_v3")


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision

    # module= keeps the classification models (detection, segmentation, video, quantized live in submodules)
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _timm():
    try:
        import timm
    except ImportError:
        return None
    except Exception as e:  # installed but broken (e.g. built for another torch): our own models must still work
        warnings.warn(
            f"timm is installed but cannot be imported ({type(e).__name__}: {e}); timm/<name> is off", stacklevel=2
        )
        return None
    return timm


def timm_available() -> bool:
    return _timm() is not None


def external_names(source: str) -> list[str]:
    """The names ``source`` (one of :data:`SOURCES`) provides, as ``-a`` takes them; [] for timm when not installed."""
    if source == "torchvision":
        return sorted(_torchvision_names())
    timm = _timm()
    return [TIMM_PREFIX + n for n in timm.list_models()] if timm is not None else []


def external_source(name: str) -> Optional[str]:
    """``"torchvision"`` or ``"timm"`` when that library builds ``name`` (a plain name, no ``pd`` prefix), else None.
    timm names may carry a pretrained tag (``timm/resnet50.a1_in1k``): it selects the model's default config."""
    if name in _torchvision_names():
        return "torchvision"
    if name.startswith(TIMM_PREFIX):
        timm = _timm()
        if timm is not None and timm.is_model(name[len(TIMM_PREFIX) :]):
            return "timm"
    return None


def build_external(name: str, padding: str = "zero", num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build ``name`` (see :func:`external_source`) untrained with ``num_classes`` outputs and ``padding``.
    Further keyword arguments go to the library's builder (``torchvision.models.get_model`` / ``timm.create_model``)."""
    source = external_source(name)
    if source == "torchvision":
        import torchvision

        if name in _AUX_LOGITS:
            # They return (logits, aux logits) in training by default; our trainers train on the logits alone.
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)  # today's default, stated so that torchvision does not warn
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    elif source == "timm":
        model = _timm().create_model(name[len(TIMM_PREFIX) :], pretrained=False, num_classes=num_classes, **kwargs)
    else:
        raise ValueError(f"{name!r} is neither a torchvision classification model nor timm/<a timm model>")
    return convert_padding(model, padding)


@functools.cache
def pytorch_official(name: str) -> Optional[tuple[float, float]]:
    """torchvision's published ImageNet-1K (top-1, top-5) of ``name``'s ``IMAGENET1K_V1`` weights, from the weight
    enum's metadata shipped in the package (nothing is downloaded); None when torchvision has no such weights.
    V1 is the reference the seed's "PT_official" column used (for ResNet/VGG, the weights trained with the 2018
    recipe; newer families have only recipes of their own time)."""
    if name not in _torchvision_names():
        return None
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = torchvision.models.get_model_weights(name)
    if "IMAGENET1K_V1" not in weights.__members__:
        return None
    metrics = weights["IMAGENET1K_V1"].meta.get("_metrics", {}).get("ImageNet-1K")
    if not metrics:
        return None
    return float(metrics["acc@1"]), float(metrics["acc@5"])
