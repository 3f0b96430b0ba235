"""The inpainting loss of Liu et al. (ECCV 2018), Eq. 1-7.

    L = 1*L_valid + 6*L_hole + 0.05*L_perceptual + 120*(L_style_out + L_style_comp) + 0.1*L_tv

with I_comp = M*I_in + (1-M)*I_out (1 = valid). L1 terms are means over all elements; perceptual and style terms use
VGG-16 pool1, pool2 and pool3 features of I_out and I_comp against I_gt; Gram matrices are normalised by C*H*W in
two smaller divisions so fp16 never overflows; the TV term covers only pixel pairs that both lie in the one-pixel
(3x3) dilation of the hole region, summed and divided by the element count of I_comp. The loss always runs in
fp32, also under autocast. Images are in [0, 1]; they are ImageNet-normalised only on their way into the VGG.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..checkpoint_io import CheckpointError, read_checkpoint

__all__ = [
    "DEFAULT_WEIGHTS",
    "InpaintingLoss",
    "VGG16Features",
    "default_vgg_weights_path",
    "VGG_TERMS",
    "vgg_file_is_torchvisions",
    "gram_matrix",
    "hole_dilation",
    "total_variation",
]

DEFAULT_WEIGHTS = {"valid": 1.0, "hole": 6.0, "perceptual": 0.05, "style_out": 120.0, "style_comp": 120.0, "tv": 0.1}
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16 weights
VGG_FETCH = f"curl -LO https://download.pytorch.org/models/{VGG16_FILE}, 528 MiB"
# The programs' flag that trains without the VGG terms (offline, no weights file): valid/hole L1 and TV only.
NO_VGG_FLAGS = "--loss-weights perceptual=0,style_out=0,style_comp=0"
VGG_TERMS = ("perceptual", "style_out", "style_comp")  # the terms that run the VGG
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Ends of pool1, pool2, pool3 in torchvision's vgg16().features.
_POOL_ENDS = (5, 10, 17)


def default_vgg_weights_path() -> Path:
    """Where torchvision itself caches its VGG-16 weights ($TORCH_HOME/hub/checkpoints/vgg16-397923af.pth)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def vgg_file_is_torchvisions(path: Union[str, os.PathLike]) -> bool:
    """Whether the file is named like torchvision's VGG-16 download, ``vgg16-<sha256 prefix>.pth``
    (``vgg16-397923af.pth``); such a file is checked against that prefix when loaded, any other is used unchecked."""
    found = torch.hub.HASH_REGEX.search(Path(path).name)
    return Path(path).name.startswith("vgg16-") and found is not None and len(found.group(1)) >= 6


def _check_hash(path: Path) -> None:
    """torch.hub's rule for its downloads: the hex digits after the '-' of the name start the file's sha256."""
    prefix = torch.hub.HASH_REGEX.search(path.name).group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise CheckpointError(
            f"VGG-16 weights {path}: sha256 {digest.hexdigest()[:12]}... does not start with {prefix} (from the file "
            f"name): a damaged or different file; download {VGG16_FILE} again"
        )


def _vgg_state(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        default = default_vgg_weights_path()
        where = f"to {path}" if path == default else f"to {path} (or to {default}, the default)"
        raise FileNotFoundError(
            f"VGG-16 weights {path}: no such file; the perceptual and style losses need torchvision's ImageNet "
            f"VGG-16 weights: fetch them once on a machine with internet access ({VGG_FETCH}), copy the file {where} "
            f"or pass --vgg-weights PATH; or train without those terms: {NO_VGG_FLAGS}"
        )
    if vgg_file_is_torchvisions(path):
        _check_hash(path)
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"VGG-16 weights {path}: expected a state_dict of torchvision's vgg16")
    # Accept the full torchvision classifier checkpoint or a features-only one.
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    return features or state


class VGG16Features(nn.Module):
    """Frozen VGG-16 (torchvision's layers) returning pool1, pool2 and pool3 features of [0, 1] images."""

    def __init__(self, weights: Optional[Union[str, os.PathLike]] = None) -> None:
        super().__init__()
        # torchvision's VGG-16 feature layers (same module indices as vgg16().features), without building the
        # 120M-parameter classifier the loss never uses.
        layers = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])[: _POOL_ENDS[-1]]
        if weights is not None:
            state = _vgg_state(weights)
            wanted = layers.state_dict()
            missing = [k for k in wanted if k not in state]
            bad = [k for k in wanted if k in state and state[k].shape != wanted[k].shape]
            if missing or bad:
                raise CheckpointError(
                    f"VGG-16 weights {weights}: not torchvision's vgg16 (missing {missing[:4]}, mismatched {bad[:4]})"
                )
            layers.load_state_dict({k: state[k] for k in wanted})
        starts = (0,) + _POOL_ENDS[:-1]
        self.blocks = nn.ModuleList(layers[a:b] for a, b in zip(starts, _POOL_ENDS))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        return super().train(False)  # a fixed feature extractor, whatever the caller's mode

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


def gram_matrix(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix divided by C*H*W, in two smaller divisions (fp16-safe)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    # Only one factor is pre-divided: (F / (C*H)) F^T / W == F F^T / (C*H*W) without an fp16 overflow in between.
    return torch.bmm(f / (c * h), f.transpose(1, 2)) / w


def hole_dilation(mask: Tensor) -> Tensor:
    """The hole region (mask == 0) grown by one pixel in every direction (3x3), as a {0, 1} tensor."""
    return F.max_pool2d(1.0 - mask, kernel_size=3, stride=1, padding=1)


def total_variation(image: Tensor, region: Tensor) -> Tensor:
    """Sum of |horizontal| and |vertical| neighbour differences over pairs with both pixels in ``region``,
    divided by the number of elements of ``image``."""
    region = region.expand_as(image)
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs() * region[..., :, 1:] * region[..., :, :-1]
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs() * region[..., 1:, :] * region[..., :-1, :]
    return (dx.sum() + dy.sum()) / image.numel()


class InpaintingLoss(nn.Module):
    """``loss(input, mask, output, target)`` -> dict of the six weighted terms (``valid``, ``hole``,
    ``perceptual``, ``style_out``, ``style_comp``, ``tv``) plus ``total``.

    ``vgg_weights``: path to torchvision's VGG-16 ImageNet state_dict; ``None`` gives a randomly initialised VGG
    (tests only). ``weights`` overrides any of :data:`DEFAULT_WEIGHTS`; with every :data:`VGG_TERMS` weight 0 no
    VGG is built (and no file read), those terms are 0.
    """

    def __init__(
        self, vgg_weights: Optional[Union[str, os.PathLike]] = None, weights: Optional[dict[str, float]] = None
    ) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(
                f"InpaintingLoss: unknown loss weight(s) {sorted(unknown)}; known: {list(DEFAULT_WEIGHTS)}"
            )
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.vgg = VGG16Features(vgg_weights) if any(self.weights[t] for t in VGG_TERMS) else None

    def forward(self, input: Tensor, mask: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        with torch.autocast(device_type=output.device.type, enabled=False):
            return self._terms(input.float(), mask.float(), output.float(), target.float())

    def _terms(self, input: Tensor, mask: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        hole = 1.0 - mask
        comp = mask * input + hole * output
        terms = {
            "valid": (mask * (output - target)).abs().mean(),
            "hole": (hole * (output - target)).abs().mean(),
        }
        if self.vgg is None:
            terms.update({t: output.new_zeros(()) for t in VGG_TERMS})
        else:
            terms.update(self._vgg_terms(output, comp, target))
        terms["tv"] = total_variation(comp, hole_dilation(mask))
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        weighted["total"] = sum(weighted.values())
        return weighted

    def _vgg_terms(self, output: Tensor, comp: Tensor, target: Tensor) -> dict[str, Tensor]:
        b = output.shape[0]
        # One VGG pass for output and composite (both need gradients), one without autograd for the target.
        feats = self.vgg(torch.cat([output, comp], dim=0))
        with torch.no_grad():
            feats_gt = self.vgg(target)
        perceptual = style_out = style_comp = output.new_zeros(())
        for f, f_gt in zip(feats, feats_gt):
            f_out, f_comp = f[:b], f[b:]
            perceptual = perceptual + (f_out - f_gt).abs().mean() + (f_comp - f_gt).abs().mean()
            g_gt = gram_matrix(f_gt)
            style_out = style_out + (gram_matrix(f_out) - g_gt).abs().mean()
            style_comp = style_comp + (gram_matrix(f_comp) - g_gt).abs().mean()
        return {"perceptual": perceptual, "style_out": style_out, "style_comp": style_comp}
