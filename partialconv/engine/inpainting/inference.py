"""Using a trained PConv U-Net: load it from a checkpoint, fill the holes of images of any size, compose the result
(scripts/inpaint.py, scripts/eval_inpainting.py; the composite also for train_inpainting.py's validation)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint_io import CheckpointError, PathLike, extract_state_dict, load_state, read_checkpoint
from ...models import create_model
from ..amp import autocast

__all__ = ["compose", "inpaint", "load_inpainting_model", "pad_to_multiple"]


def compose(input: Tensor, mask: Tensor, output: Tensor) -> Tensor:
    """The inpainting result: known pixels from the input, holes from the network output."""
    return mask * input + (1.0 - mask) * output.to(input.dtype)


def load_inpainting_model(path: PathLike, device: torch.device, layer_size: Optional[int] = None) -> nn.Module:
    """A PConv U-Net in eval mode from a train_inpainting.py checkpoint (its layer_size is stored) or from a plain
    state_dict (then ``layer_size`` is required)."""
    ckpt = read_checkpoint(path)
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if arch not in (None, "pconv_unet"):
        raise CheckpointError(f"checkpoint {path}: a {arch} checkpoint, not a PConv U-Net (train_inpainting.py's)")
    stored = ckpt.get("layer_size") if isinstance(ckpt, dict) else None
    size = layer_size or stored
    if size is None:
        raise CheckpointError(f"checkpoint {path}: no stored layer_size; pass --layer-size")
    model = create_model("pconv_unet", layer_size=int(size))
    try:
        load_state(model, extract_state_dict(ckpt, path), path)
    except CheckpointError as e:
        hint = f"--layer-size {size}" if layer_size else f"its stored layer_size {size}"
        raise CheckpointError(f"{e} (is it a PConv U-Net with {hint}?)") from e
    return model.to(device).eval()


def pad_to_multiple(image: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Pad (B, C, H, W) image and mask at the bottom/right to multiples of ``multiple``; the padding is a hole, so
    the network never treats invented pixels as known (the caller crops the result back)."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
        mask = F.pad(mask, (0, pw, 0, ph), value=0.0)
    return image, mask


@torch.no_grad()
def inpaint(model: nn.Module, image: Tensor, mask: Tensor, amp: str = "none") -> Tensor:
    """Composite of (B, 3, H, W) [0, 1] images with (B, 1, H, W) masks (1 = valid), any H and W."""
    h, w = image.shape[-2:]
    masked = image * mask
    padded, pmask = pad_to_multiple(masked, mask, model.multiple)
    with autocast(image.device, amp):
        output, _ = model(padded, pmask)
    return compose(masked, mask, output[..., :h, :w].float()).clamp(0.0, 1.0)
