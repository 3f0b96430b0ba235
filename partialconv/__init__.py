"""Partial convolutions: the layer, a model zoo in four paddings, and checkpoint helpers."""

from .checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from .layers import PADDINGS, PartialConv1d, PartialConv2d, PartialConv3d, conv_factory, convert_padding
from .models import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "PADDINGS",
    "CheckpointError",
    "PartialConv1d",
    "PartialConv2d",
    "PartialConv3d",
    "conv_factory",
    "convert_padding",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
]
