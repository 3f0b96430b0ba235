"""Inpainting training step, evaluation metrics (L1 %, PSNR, SSIM), image grids and preemption handling used by
scripts/train_inpainting.py, scripts/inpaint.py and scripts/eval_inpainting.py."""

from __future__ import annotations

import signal
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AMP_DTYPES",
    "PreemptionFlag",
    "autocast",
    "compose",
    "image_grid",
    "inpaint",
    "l1_percent",
    "load_inpainting_model",
    "pad_to_multiple",
    "psnr",
    "ssim",
    "train_step",
]

AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def compose(input: Tensor, mask: Tensor, output: Tensor) -> Tensor:
    """The inpainting result: known pixels from the input, holes from the network output."""
    return mask * input + (1.0 - mask) * output.to(input.dtype)


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


def l1_percent(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean absolute error in percent of the [0, 1] range, shape (B,)."""
    return (pred - target).abs().flatten(1).mean(1) * 100.0


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB for [0, 1] images, shape (B,); identical images give +inf."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse)).float()


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, K1=0.01, K2=0.03, data range 1), the
    mean over channels and over the valid (unpadded) window positions, shape (B,)."""
    x, y = pred.double(), target.double()
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


def image_grid(masked: Tensor, mask: Tensor, output: Tensor, target: Tensor, rows: int = 4) -> Tensor:
    """A (3, H', W') grid, one sample per row: input, mask, output, composite, ground truth."""
    from torchvision.utils import make_grid

    n = min(rows, masked.shape[0])
    masked, mask, output, target = (t[:n].detach().float().cpu() for t in (masked, mask, output, target))
    mask3 = mask.expand(-1, 3, -1, -1)
    comp = compose(masked, mask, output)
    tiles = torch.stack([masked, mask3, output.clamp(0, 1), comp.clamp(0, 1), target], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=5, padding=2, pad_value=1.0)


class PreemptionFlag:
    """Turns SIGTERM/SIGUSR1 into a flag the loop checks between steps (checkpoint, then exit 128+signum)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> PreemptionFlag:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


def load_inpainting_model(path, device: torch.device, layer_size: Optional[int] = None) -> nn.Module:
    """A PConv U-Net in eval mode from a train_inpainting.py checkpoint (its layer_size is stored) or from a plain
    state_dict (then ``layer_size`` is required)."""
    from ..checkpoint import CheckpointError, extract_state_dict, load_state, read_checkpoint
    from ..models import create_model

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
