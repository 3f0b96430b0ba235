"""One optimisation step of the PConv U-Net (scripts/train_inpainting.py, benchmarks/inpainting_speed.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .amp import autocast

__all__ = ["train_step"]


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: tuple[Tensor, Tensor, Tensor],
    amp: str,
) -> tuple[dict[str, Tensor], Tensor]:
    """One optimisation step; returns the detached loss terms (no host sync) and the network output."""
    masked, mask, target = batch
    device = masked.device
    with autocast(device, amp):
        output, _ = model(masked, mask)
    losses = criterion(masked, mask, output, target)  # fp32 inside, whatever the autocast state
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in losses.items()}, output.detach()
