"""The PConv U-Net's optimisation step (scripts/train_inpainting.py, benchmarks/inpainting_speed.py) and its
validation (the composite's L1, PSNR and SSIM over all ranks)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import distributed as dist
from ..amp import autocast
from .inference import compose
from .metrics import l1_percent, psnr, ssim

__all__ = ["train_step", "evaluate"]


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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, amp: str
) -> tuple[dict[str, float], Optional[tuple[Tensor, Tensor, Tensor, Tensor]]]:
    """Mean L1 (%), PSNR and SSIM of the composite over the validation set (summed over ranks), and the first
    batch's (masked, mask, output, target) for image grids."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    shown = None
    for masked, mask, target in loader:
        masked, mask, target = (t.to(device, non_blocking=True) for t in (masked, mask, target))
        with autocast(device, amp):
            output, _ = model(masked, mask)
        comp = compose(masked, mask, output.float()).clamp(0, 1)
        sums += torch.stack(
            [
                l1_percent(comp, target).sum(),
                psnr(comp, target).clamp(max=100).sum(),
                ssim(comp, target).sum(),
                torch.tensor(float(len(target)), device=device),
            ]
        ).double()
        if shown is None:
            shown = (masked, mask, output, target)
    dist.all_reduce_sum(sums)
    model.train()
    n = max(sums[3].item(), 1.0)
    return {"val_l1": sums[0].item() / n, "val_psnr": sums[1].item() / n, "val_ssim": sums[2].item() / n}, shown
