"""Per-image quality of an inpainting result against the ground truth: L1 (%), PSNR (dB) and SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l1_percent", "psnr", "ssim"]


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
