"""Image grids of inpainting batches for TensorBoard (scripts/train_inpainting.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from .inference import compose

__all__ = ["image_grid"]


def image_grid(masked: Tensor, mask: Tensor, output: Tensor, target: Tensor, rows: int = 4) -> Tensor:
    """A (3, H', W') grid, one sample per row: input, mask, output, composite, ground truth."""
    from torchvision.utils import make_grid  # imported when a grid is drawn: only rank 0 at validation draws one

    n = min(rows, masked.shape[0])
    masked, mask, output, target = (t[:n].detach().float().cpu() for t in (masked, mask, output, target))
    mask3 = mask.expand(-1, 3, -1, -1)
    comp = compose(masked, mask, output)
    tiles = torch.stack([masked, mask3, output.clamp(0, 1), comp.clamp(0, 1), target], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=5, padding=2, pad_value=1.0)
