"""The PConv U-Net of Liu et al., *Image Inpainting for Irregular Holes Using Partial Convolutions* (ECCV 2018).

Encoder: ``layer_size`` partial-conv stages, all stride 2 (7x7/64 without BN, 5x5/128, 5x5/256, then 3x3/512),
BN + ReLU. Decoder: nearest x2 upsampling of features *and* mask, concatenation with the skip features and skip
masks, 3x3 partial conv, BN + LeakyReLU(0.2); the last stage maps to the image channels with no BN/activation and
its skip is the input image and mask. Every partial conv is ``multi_channel`` (the concatenated masks count per
channel) and returns its updated mask. Masks use 1 = valid, 0 = hole.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.partial_conv import PartialConv2d
from ._registry import register_model

__all__ = ["PConvUNet", "pconv_unet"]

# (kernel, channels) of the paper's eight encoder stages.
_ENCODER = ((7, 64), (5, 128), (5, 256), (3, 512), (3, 512), (3, 512), (3, 512), (3, 512))


class PConvStage(nn.Module):
    """Partial conv -> optional BN -> optional activation, carrying the mask along."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, bn: bool, activation: Optional[nn.Module]
    ) -> None:
        super().__init__()
        # BN follows every stage but the first encoder / last decoder one; a conv bias before BN is redundant.
        self.conv = PartialConv2d(
            in_ch, out_ch, kernel, stride, kernel // 2, bias=not bn, multi_channel=True, return_mask=True
        )
        self.bn = nn.BatchNorm2d(out_ch) if bn else None
        self.act = activation

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = self.conv(x, mask)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x, mask


class PConvUNet(nn.Module):
    """``forward(image, mask) -> (output, update_mask)``.

    ``image``: (B, C, H, W); ``mask``: (B, 1 or C, H, W), binary, 1 = valid. H and W must be multiples of
    ``2**layer_size``. The output is the raw network prediction (compose it with the input for the final result).
    """

    def __init__(self, layer_size: int = 8, in_channels: int = 3, out_channels: Optional[int] = None) -> None:
        super().__init__()
        if not 1 <= layer_size <= len(_ENCODER):
            raise ValueError(f"PConvUNet: layer_size must be in 1..{len(_ENCODER)}, got {layer_size}")
        self.layer_size = layer_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self._encoder_bn_frozen = False

        widths = [in_channels] + [c for _, c in _ENCODER[:layer_size]]
        self.encoder = nn.ModuleList(
            PConvStage(widths[i], widths[i + 1], _ENCODER[i][0], 2, bn=i > 0, activation=nn.ReLU(inplace=True))
            for i in range(layer_size)
        )
        # decoder[i] takes upsample(stage i+1 features) ++ skip i (skip 0 is the input image) -> width of skip i.
        decoder = []
        for i in range(layer_size):
            last = i == 0
            out_ch = self.out_channels if last else widths[i]
            act = None if last else nn.LeakyReLU(0.2, inplace=True)
            decoder.append(PConvStage(widths[i + 1] + widths[i], out_ch, 3, 1, bn=not last, activation=act))
        self.decoder = nn.ModuleList(decoder)

    @property
    def multiple(self) -> int:
        """Height and width of inputs must be multiples of this."""
        return 2**self.layer_size

    def _check(self, image: Tensor, mask: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"PConvUNet: image must be (B, {self.in_channels}, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"PConvUNet(layer_size={self.layer_size}): height and width must be multiples of {self.multiple} "
                f"(2**layer_size), got {h}x{w}; resize/crop/pad the input or use a smaller layer_size"
            )
        if mask.dim() != 4 or mask.shape[1] not in (1, self.in_channels) or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"PConvUNet: mask must be (B, 1 or {self.in_channels}, {h}, {w}), got {tuple(mask.shape)}")
        mask = mask.to(image.dtype)
        return mask.expand(image.shape[0], self.in_channels, h, w)

    def forward(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._check(image, mask)
        feats, masks = [image], [mask]
        x, m = image, mask
        for stage in self.encoder:
            x, m = stage(x, m)
            feats.append(x)
            masks.append(m)
        for i in reversed(range(self.layer_size)):
            # Nearest upsampling keeps the mask binary; the mask channels concatenate like the features do. The
            # update mask of a multi-channel partial conv is the same in every channel, so one channel is upsampled
            # and broadcast instead of all of them.
            up = F.interpolate(m[:, :1], scale_factor=2.0, mode="nearest").expand(-1, x.shape[1], -1, -1)
            x = torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), feats[i]], dim=1)
            m = torch.cat([up, masks[i]], dim=1)
            x, m = self.decoder[i](x, m)
        return x, m

    def freeze_encoder_bn(self, freeze: bool = True) -> PConvUNet:
        """Fine-tuning phase of the paper: encoder BN layers use (and keep) their running statistics and their
        affine parameters stop training. Call before building the optimizer and before wrapping in DDP."""
        self._encoder_bn_frozen = freeze
        for stage in self.encoder:
            if stage.bn is not None:
                stage.bn.requires_grad_(not freeze)
        return self.train(self.training)

    def train(self, mode: bool = True) -> PConvUNet:
        super().train(mode)
        if self._encoder_bn_frozen:
            for stage in self.encoder:
                if stage.bn is not None:
                    stage.bn.eval()
        return self


@register_model(pd_variant=False, task="inpainting")
def pconv_unet(layer_size: int = 8, in_channels: int = 3, **kwargs) -> PConvUNet:
    """The paper's inpainting network: 8 stages for 512 px inputs, 7 for 256 px."""
    return PConvUNet(layer_size=layer_size, in_channels=in_channels, **kwargs)
