"""One conv factory for the four padding schemes the seed compares, and ``convert_padding`` built on it."""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from .partial_conv import PartialConv2d, PartialConv3d

__all__ = ["PADDINGS", "conv_factory", "convert_padding"]

PADDINGS = ("zero", "partial", "reflect", "replicate")

_CONV_CLASSES = {2: (nn.Conv2d, PartialConv2d), 3: (nn.Conv3d, PartialConv3d)}


def _check(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")


def conv_factory(padding: str = "zero", dim: int = 2) -> Callable[..., nn.Module]:
    """A constructor with ``nn.Conv2d``'s signature (``nn.Conv3d``'s for ``dim=3``) that pads as requested.

    zero: ``nn.Conv2d``; partial: ``PartialConv2d``; reflect/replicate: ``nn.Conv2d(padding_mode=...)``.
    All four have identical parameters and state_dict keys, so weights move freely between them.
    """
    _check(padding)
    conv, partial = _CONV_CLASSES[dim]
    if padding == "zero":
        return conv
    if padding == "partial":
        return partial
    return functools.partial(conv, padding_mode=padding)


def _padding_of(conv: nn.Module) -> str:
    if isinstance(conv, (PartialConv2d, PartialConv3d)):
        return "partial"
    return {"zeros": "zero", "reflect": "reflect", "replicate": "replicate"}.get(conv.padding_mode, conv.padding_mode)


def _is_padded(conv: nn.Module) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _convertible(module: nn.Module) -> bool:
    """Plain or partial padding convs only: subclasses with their own forward (and inpainting-mode partial convs,
    whose forward takes a mask) are left alone."""
    if type(module) in (nn.Conv2d, nn.Conv3d):
        return True
    if type(module) in (PartialConv2d, PartialConv3d):
        return not module.multi_channel and not module.return_mask
    return False


def convert_padding(model: nn.Module, padding: str) -> nn.Module:
    """Switch every padded 2D/3D convolution of ``model`` (torchvision, timm, your own) to ``padding`` in place.

    Parameters are kept (the same Parameter objects, so optimizers built before stay valid); convs without padding
    and convs already in the requested scheme are untouched. Returns ``model``; also works when ``model`` is a conv.
    """
    _check(padding)
    if _convertible(model) and _is_padded(model):
        return _converted(model, padding)
    for name, child in model.named_children():
        if _convertible(child) and _is_padded(child) and _padding_of(child) != padding:
            setattr(model, name, _converted(child, padding))
        else:
            convert_padding(child, padding)
    return model


def _converted(conv: nn.Module, padding: str) -> nn.Module:
    if _padding_of(conv) == padding:
        return conv
    factory = conv_factory(padding, dim=len(conv.kernel_size))
    new = factory(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        device="meta",
    )
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new
