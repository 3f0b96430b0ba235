"""Optimiser choice, parameter groups and the learning-rate curve, with torchvision's classification-reference
semantics (``--opt``, ``--norm-weight-decay``, ``--bias-weight-decay``, ``--lr-scheduler``, ``--lr-warmup-*``):
torch's own optimisers, parameters split by name and module type, the LR curve as a ``LambdaLR`` factor.

With none of the group flags set, one group holds every parameter: the same optimiser as before these flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = [
    "OPTIMIZERS",
    "NORM_LAYERS",
    "LR_SCHEDULES",
    "WARMUP_METHODS",
    "LR_UPDATES",
    "STEP_ORIGINS",
    "LRSchedule",
    "parameter_groups",
    "build_optimizer",
]

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
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
    """``name`` (one of :data:`OPTIMIZERS`) over :func:`parameter_groups`. SGD and RMSprop take ``momentum``;
    RMSprop uses torchvision's reference settings (alpha 0.9, eps 0.0316, TF-style); AdamW its defaults."""
    params = parameter_groups(model, weight_decay, norm_weight_decay, bias_weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=0.0316, alpha=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; expected one of {', '.join(OPTIMIZERS)}")


LR_SCHEDULES = ("step", "cosine")
WARMUP_METHODS = ("linear", "constant")
LR_UPDATES = ("iteration", "epoch")
STEP_ORIGINS = ("warmup", "start")


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate curve as a multiplier of the peak LR (``LambdaLR``'s factor) at each global iteration.

    Warm-up of ``warmup_epochs``: ``linear`` from ``warmup_decay`` to 1, or ``constant`` at ``warmup_decay``. Then
    ``step`` (x ``gamma`` every ``step_size`` epochs, counted from the end of warm-up with ``step_origin="warmup"``
    as torchvision's ``SequentialLR`` does, or from epoch 0 with ``"start"``) or ``cosine`` from 1 down to
    ``min_factor`` (``--lr-min`` / ``--lr``) at ``epochs``.

    ``update="epoch"`` is torchvision's reference: the LR changes once per epoch, every step of epoch ``e`` uses
    ``SequentialLR([LinearLR|ConstantLR, StepLR|CosineAnnealingLR(T_max=epochs - warmup)])`` after ``e`` steps.
    ``update="iteration"`` changes it every step: the linear ramp reaches 1 at the warm-up's last iteration (a
    fractional ``warmup_epochs`` works), the cosine is laid out over iterations.
    """

    schedule: str
    epochs: int
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    warmup_method: str = "linear"
    warmup_decay: float = 0.01
    update: str = "iteration"
    step_origin: str = "warmup"
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        for value, allowed in (
            (self.schedule, LR_SCHEDULES),
            (self.warmup_method, WARMUP_METHODS),
            (self.update, LR_UPDATES),
            (self.step_origin, STEP_ORIGINS),
        ):
            if value not in allowed:
                raise ValueError(f"LR schedule: {value!r} is not one of {', '.join(allowed)}")
        if self.update == "epoch" and self.warmup_epochs != int(self.warmup_epochs):
            raise ValueError(f"per-epoch LR updates need whole warm-up epochs; got {self.warmup_epochs}")

    def factor_fn(self, steps_per_epoch: int) -> Callable[[int], float]:
        """``iteration -> factor`` for ``steps_per_epoch`` iterations per epoch."""
        per_epoch = self.update == "epoch"
        unit = steps_per_epoch if per_epoch else 1  # iterations per schedule position
        warmup = self.warmup_epochs * steps_per_epoch / unit  # in positions (epochs, or iterations)
        total = self.epochs * steps_per_epoch / unit
        step_every = self.step_size * steps_per_epoch / unit
        decay, lo = self.warmup_decay, self.min_factor

        def factor(it: int) -> float:
            t = it // unit
            if t < warmup:
                if self.warmup_method == "constant":
                    return decay
                # LinearLR's t / total_iters per epoch; per iteration the ramp ends at 1 on its last step
                return decay + (1.0 - decay) * (t / warmup if per_epoch else (t + 1) / warmup)
            if self.schedule == "step":
                since = t - warmup if self.step_origin == "warmup" else t
                return self.gamma ** math.floor(since / step_every + 1e-9)
            progress = (t - warmup) / max(1.0, total - warmup)
            return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return factor
