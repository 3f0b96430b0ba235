from . import pconv_unet, resnet, vgg  # noqa: F401  (registers the architectures)
from ._registry import create_model, is_model, list_models, register_model
from .pconv_unet import PConvUNet
from .resnet import ResNet
from .vgg import VGG

__all__ = ["PConvUNet", "ResNet", "VGG", "create_model", "is_model", "list_models", "register_model"]
