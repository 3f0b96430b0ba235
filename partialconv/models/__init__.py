from . import pconv_unet, resnet, small, vgg  # noqa: F401  (registers the architectures)
from ._external import pytorch_official
from ._registry import TASKS, create_model, is_model, list_models, register_model, split_pd_name
from .pconv_unet import PConvUNet
from .resnet import ResNet
from .small import SimpleCNN
from .vgg import VGG

__all__ = [
    "TASKS",
    "PConvUNet",
    "ResNet",
    "SimpleCNN",
    "VGG",
    "create_model",
    "is_model",
    "list_models",
    "pytorch_official",
    "register_model",
    "split_pd_name",
]
