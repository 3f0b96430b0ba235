"""Optimiser choice and parameter groups, with torchvision's classification-reference semantics (``--opt``,
``--norm-weight-decay``, ``--bias-weight-decay``): torch's own optimisers, parameters split by module type and name.

With none of the group flags set, one group holds every parameter: the same optimiser as before these flags.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["OPTIMISERS", "NORM_LAYERS", "parameter_groups", "build_optimizer"]

OPTIMISERS = ("sgd", "adamw", "rmsprop")
# What torchvision's references count as normalisation layers (their affine parameters get --norm-weight-decay).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    norm_weight_decay: Optional[float] = None,
    bias_weight_decay: Optional[float] = None,
) -> list[dict[str, Any]]:
    """Trainable parameters in groups by weight decay: parameters named ``bias`` get ``bias_weight_decay``, the
    other parameters of a norm layer ``norm_weight_decay``, the rest ``weight_decay``. ``None`` means "like the rest".
    Empty groups are left out; the groups come in torchvision's order (other, norm, bias).

    torchvision's ``set_weight_decay`` checks its custom keys (``bias`` for ``--bias-weight-decay``) before the
    norm-layer type, so with both flags a norm layer's bias (``bn1.bias``) takes the bias decay, not the norm one."""
    groups: dict[str, list[nn.Parameter]] = {"other": [], "norm": [], "bias": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))  # a shared parameter goes in one group only
            if bias_weight_decay is not None and name == "bias":
                groups["bias"].append(p)
            elif norm_weight_decay is not None and isinstance(module, NORM_LAYERS):
                groups["norm"].append(p)
            else:
                groups["other"].append(p)
    decay = {"other": weight_decay, "norm": norm_weight_decay, "bias": bias_weight_decay}
    return [{"params": ps, "weight_decay": decay[k]} for k, ps in groups.items() if ps]


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    norm_weight_decay: Optional[float] = None,
    bias_weight_decay: Optional[float] = None,
) -> torch.optim.Optimizer:
    """``name`` (one of :data:`OPTIMISERS`) over :func:`parameter_groups`. SGD and RMSprop take ``momentum``;
    RMSprop uses torchvision's reference settings (alpha 0.9, eps 0.0316, TF-style); AdamW its defaults."""
    params = parameter_groups(model, weight_decay, norm_weight_decay, bias_weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=0.0316, alpha=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; expected one of {', '.join(OPTIMISERS)}")
