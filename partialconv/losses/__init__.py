"""Training losses: the inpainting loss of Liu et al. (ECCV 2018)."""

from .inpainting import DEFAULT_WEIGHTS, InpaintingLoss, VGG16Features, gram_matrix

__all__ = ["DEFAULT_WEIGHTS", "InpaintingLoss", "VGG16Features", "gram_matrix"]
