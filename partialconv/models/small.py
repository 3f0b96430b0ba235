"""A small plain CNN (no BatchNorm) in any padding: smoke tests, DDP equivalence tests and quick experiments.

Three 3x3 conv stages (width, 2*width, 4*width) with ReLU and max pooling, global average pooling and a linear
classifier; about 25k parameters at width 16. Without BatchNorm its gradient is a plain mean over the batch, so a
run split over processes matches a one-process run at the same global batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import conv_factory
from ._registry import register_model

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 16, padding: str = "zero") -> None:
        super().__init__()
        conv = conv_factory(padding)
        chans = [3, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [conv(chans[i], chans[i + 1], 3, padding=1), nn.ReLU(inplace=True)]
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
