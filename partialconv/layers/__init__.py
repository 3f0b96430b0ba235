from .padding import PADDINGS, conv_factory, convert_padding
from .partial_conv import PartialConv1d, PartialConv2d, PartialConv3d

__all__ = ["PADDINGS", "PartialConv1d", "PartialConv2d", "PartialConv3d", "conv_factory", "convert_padding"]
