"""Small plain CNNs in any padding: smoke tests, DDP equivalence tests, the CPU demo and quick experiments.

Three 3x3 conv stages (width, 2*width, 4*width) with ReLU and 2x2 max pooling between them, global average pooling
and a linear classifier. ``simple_cnn`` (width 16, about 25k parameters) has no normalisation, so its gradient is a
plain mean over the batch and a run split over processes matches a one-process run at the same global batch;
``simple_cnn_bn`` (width 32) adds BatchNorm after each conv and trains much faster.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import conv_factory
from ._registry import register_model

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 16, padding: str = "zero", batch_norm: bool = False):
        super().__init__()
        conv = conv_factory(padding)
        chans = [3, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(conv(chans[i], chans[i + 1], 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(chans[i + 1]))
            layers.append(nn.ReLU(inplace=True))
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model
def simple_cnn(padding: str = "zero", **kwargs) -> SimpleCNN:
    return SimpleCNN(padding=padding, **kwargs)


@register_model
def simple_cnn_bn(padding: str = "zero", width: int = 32, **kwargs) -> SimpleCNN:
    return SimpleCNN(padding=padding, width=width, batch_norm=True, **kwargs)
