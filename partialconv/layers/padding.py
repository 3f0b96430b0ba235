"""One conv factory for the four padding schemes the seed compares, and ``convert_padding`` built on it."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Callable, Optional

from torch import Tensor, nn

from ._padding_plan import rescale_to_partial, resolve_pads
from .partial_conv import PartialConv1d, PartialConv2d, PartialConv3d

__all__ = ["PADDINGS", "conv_factory", "convert_padding"]

PADDINGS = ("zero", "partial", "reflect", "replicate")

_CONV_CLASSES = {1: (nn.Conv1d, PartialConv1d), 2: (nn.Conv2d, PartialConv2d), 3: (nn.Conv3d, PartialConv3d)}
_PLAIN = tuple(plain for plain, _ in _CONV_CLASSES.values())
_PARTIAL = tuple(partial for _, partial in _CONV_CLASSES.values())


def _check(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")


def conv_factory(padding: str = "zero", dim: int = 2) -> Callable[..., nn.Module]:
    """A constructor with ``nn.Conv2d``'s signature (``nn.Conv1d``'s/``nn.Conv3d``'s for ``dim=1/3``) that pads as
    requested.

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


# timm's conv subclasses whose forward was read to pad as (TF "same" padding computed from the input size, when
# dynamic) + their static ``padding``, with zeros, then convolve: partial padding reaches them as a rescaling of their
# output (_PartialPaddingHook). Their other differences (weight standardisation) are in the weight, which the
# rescaling does not touch. Known by module and name, so timm is never imported here.
_TIMM_DYNAMIC_SAME = ("Conv2dSame", "Conv2dSameExport")
_TIMM_SAME_PAD_FLAG = ("StdConv2dSame", "ScaledStdConv2dSame")  # dynamic when their ``same_pad`` is True
_TIMM_STATIC = ("StdConv2d", "ScaledStdConv2d")


def _subclass_rule(module: nn.Module) -> Optional[bool]:
    """For a timm conv subclass whose padding rule is known: whether it pads TF-"same" dynamically (else only its
    static ``padding``); None for any other module."""
    cls = type(module)
    if not cls.__module__.startswith("timm.") or not isinstance(module, nn.Conv2d):
        return None
    if cls.__name__ in _TIMM_DYNAMIC_SAME:
        return True
    if cls.__name__ in _TIMM_SAME_PAD_FLAG:
        return bool(getattr(module, "same_pad", False))
    if cls.__name__ in _TIMM_STATIC:
        return False
    return None


def _tf_same_pads(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]):
    """TensorFlow's "SAME" padding of an input of ``spatial`` size: total = max((ceil(n / s) - 1) * s + (k - 1) * d
    + 1 - n, 0), the odd pixel after."""
    pads = []
    for n, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


class _PartialPaddingHook:
    """A forward hook turning a known conv subclass's zero-padded output into partial padding's (the module, its
    parameters and state_dict keys stay as they are)."""

    def __init__(self, dynamic_same: bool) -> None:
        self.dynamic_same = dynamic_same

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        nd = len(module.kernel_size)
        spatial = tuple(args[0].shape[-nd:])
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        pads = resolve_pads(module.padding, kernel, dilation)
        if self.dynamic_same:
            pads = tuple(
                (lo + a, hi + b) for (lo, hi), (a, b) in zip(pads, _tf_same_pads(spatial, kernel, stride, dilation))
            )
        if not any(lo or hi for lo, hi in pads):
            return output
        return rescale_to_partial(output, module.bias, spatial, kernel, stride, pads, dilation)


def _partial_hooks(module: nn.Module) -> list[int]:
    return [key for key, hook in module._forward_hooks.items() if isinstance(hook, _PartialPaddingHook)]


def _set_subclass_padding(module: nn.Module, padding: str, dynamic_same: bool) -> bool:
    """Partial (a hook) or zero (no hook) padding on a known timm conv subclass (``dynamic_same``: its
    :func:`_subclass_rule`); False for other paddings, which such a forward cannot take, and for convs that never
    pad."""
    for key in _partial_hooks(module):
        del module._forward_hooks[key]
    may_pad = any(k > 1 for k in module.kernel_size) if dynamic_same else _is_padded(module)
    if padding == "partial" and may_pad:
        module.register_forward_hook(_PartialPaddingHook(dynamic_same))
    return padding in ("zero", "partial") and may_pad


def _padding_of(conv: nn.Module) -> str:
    if isinstance(conv, _PARTIAL) or _partial_hooks(conv):
        return "partial"
    return {"zeros": "zero", "reflect": "reflect", "replicate": "replicate"}.get(conv.padding_mode, conv.padding_mode)


def _is_padded(conv: nn.Module) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _convertible(module: nn.Module) -> bool:
    """Plain or partial padding convs only: subclasses with their own forward (timm's ``Conv2dSame``, weight-
    standardised convs, ...) and inpainting-mode partial convs, whose forward takes a mask, are left alone."""
    if type(module) in _PLAIN:
        return True
    if type(module) in _PARTIAL:
        return not module.multi_channel and not module.return_mask
    return False


def _left_padding(module: nn.Module) -> bool:
    """Zero padding that stays: a conv we cannot convert that may pad (its padding attribute, or a kernel > 1:
    ``Conv2dSame`` pads in its forward and keeps ``padding=0``), or an explicit zero-padding layer in front of a conv
    (``nn.ZeroPad2d``, as TF-style asymmetric "same" padding is often written)."""
    if isinstance(module, nn.modules.padding._ConstantPadNd) and module.value == 0:
        return True
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and not module.transposed
        and not _convertible(module)
        and not isinstance(module, _PARTIAL)  # inpainting-mode partial convs: masked, not zero-padded
        and (_is_padded(module) or any(k > 1 for k in module.kernel_size))
    )


def convert_padding(model: nn.Module, padding: str) -> nn.Module:
    """Switch every padded 1D/2D/3D convolution of ``model`` (torchvision, timm, your own) to ``padding`` in place.

    Parameters are kept (the same Parameter objects, so optimizers built before stay valid); convs without padding
    and convs already in the requested scheme are untouched. timm's TF-"same" and weight-standardised conv subclasses
    (``Conv2dSame``, ``StdConv2d``, ``ScaledStdConv2d`` and their ``*Same`` variants) get partial padding as a
    forward hook that rescales their output (their class, parameters and keys stay). Other conv subclasses with a
    forward of their own, those timm convs for reflect/replicate, and explicit zero-padding layers (``nn.ZeroPad2d``)
    are left as they are and named in one warning (for any padding but zero). Returns ``model``; also works when
    ``model`` is a conv.
    """
    _check(padding)
    if _convertible(model) and _is_padded(model):
        return _converted(model, padding)
    hooked = 0  # timm conv subclasses now in the requested padding
    for module in model.modules():
        rule = _subclass_rule(module)
        if rule is not None:
            hooked += _set_subclass_padding(module, padding, rule)
    _convert_children(model, padding)
    if padding != "zero":
        skipped = [
            f"{name or '(model)'} ({type(m).__name__})"
            for name, m in model.named_modules()
            if _left_padding(m) and not _partial_hooks(m)
        ]
        if skipped:
            shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            warnings.warn(
                f"convert_padding({padding!r}): {len(skipped)} module(s) keep their zero padding (convs with a forward "
                f"of their own, zero-padding layers): {shown}",
                stacklevel=2,
            )
        if not hooked and not any(
            (_convertible(m) and _is_padded(m)) or isinstance(m, _PARTIAL) for m in model.modules()
        ):
            # ViTs, Swin: patch embeddings without padding; a padding comparison of such a model compares nothing
            warnings.warn(f"convert_padding({padding!r}): the model has no padded convolution to convert", stacklevel=2)
    return model


def _convert_children(model: nn.Module, padding: str) -> None:
    for name, child in model.named_children():
        if _convertible(child) and _is_padded(child) and _padding_of(child) != padding:
            setattr(model, name, _converted(child, padding))
        else:
            _convert_children(child, padding)


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
