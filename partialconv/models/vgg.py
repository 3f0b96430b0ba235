"""VGG 11/13/16/19 with and without BatchNorm, padding injected as a conv factory; torchvision's layout and init."""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor, nn

from ..layers import conv_factory
from ._registry import register_model

__all__ = ["VGG"]

# Channel counts per conv, "M" for a 2x2 max-pool.
_CONFIGS: dict[str, list[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: list[Union[int, str]], batch_norm: bool, conv_layer: Callable[..., nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(conv_layer(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        # Adaptive pooling to 7x7 keeps the classifier's shape for any input of at least 32 px.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(cfg: str, batch_norm: bool, padding: str, **kwargs) -> VGG:
    return VGG(make_features(_CONFIGS[cfg], batch_norm, conv_factory(padding)), **kwargs)


@register_model
def vgg11(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("A", False, padding, **kwargs)


@register_model
def vgg11_bn(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("A", True, padding, **kwargs)


@register_model
def vgg13(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("B", False, padding, **kwargs)


@register_model
def vgg13_bn(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("B", True, padding, **kwargs)


@register_model
def vgg16(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("D", False, padding, **kwargs)


@register_model
def vgg16_bn(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("D", True, padding, **kwargs)


@register_model
def vgg19(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("E", False, padding, **kwargs)


@register_model
def vgg19_bn(padding: str = "zero", **kwargs) -> VGG:
    return _vgg("E", True, padding, **kwargs)
