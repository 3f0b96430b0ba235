"""ResNet, ResNeXt and Wide ResNet with the padding injected as a conv factory.

Module names, state_dict keys and initialisation match torchvision's ResNet (v1.5: stride on the 3x3 conv), so its
checkpoints load here and NVIDIA's released pd checkpoints load into the ``padding="partial"`` models.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..layers import conv_factory
from ._registry import register_model

__all__ = ["ResNet", "BasicBlock", "Bottleneck"]

ConvLayer = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = conv_layer(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_layer(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv_layer(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv_layer(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv_layer(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[Union[BasicBlock, Bottleneck]],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv_layer = conv_layer
        self.conv1 = conv_layer(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual branch starts as identity (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                self.conv_layer(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        kw = dict(groups=self.groups, base_width=self.base_width, conv_layer=self.conv_layer)
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def _resnet(block, layers: list[int], padding: str, **kwargs) -> ResNet:
    return ResNet(block, layers, conv_layer=conv_factory(padding), **kwargs)


@register_model
def resnet18(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], padding, **kwargs)


@register_model
def resnet34(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], padding, **kwargs)


@register_model
def resnet50(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], padding, **kwargs)


@register_model
def resnet101(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 23, 3], padding, **kwargs)


@register_model
def resnet152(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 8, 36, 3], padding, **kwargs)


@register_model
def resnext50_32x4d(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], padding, groups=32, width_per_group=4, **kwargs)


@register_model
def wide_resnet50_2(padding: str = "zero", **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], padding, width_per_group=128, **kwargs)
