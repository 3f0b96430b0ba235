from . import pconv_unet, resnet, small, vgg  # noqa: F401  (registers the architectures)
from ._registry import create_model, is_model, list_models, register_model
from .pconv_unet import PConvUNet
from .resnet import ResNet
from .small import SimpleCNN
from .vgg import VGG

__all__ = ["PConvUNet", "ResNet", "SimpleCNN", "VGG", "create_model", "is_model", "list_models", "register_model"]
