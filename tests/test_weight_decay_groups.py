"""--norm-weight-decay on every normalisation layer type (issue 24): the optimiser groups of ConvNeXt (LayerNorm,
LayerNorm2d), a ViT (LayerNorm), a GroupNorm ResNet and a hand-made InstanceNorm/BatchNorm1d model against
torchvision's classification reference rule (``set_weight_decay`` in references/classification/utils.py), written
here on its own terms: a recursive walk over children, each module's own parameters, its list of norm classes.

Only --norm-weight-decay (or only --bias-weight-decay) is set here: with both, torchvision gives a norm layer's bias
the bias decay, a rule of its own (and its own tests)."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torchvision
from torch import nn

from partialconv import create_model
from partialconv.engine.optim import build_optimizer

# torchvision's references: norm_classes in set_weight_decay
REFERENCE_NORM_CLASSES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
WD, NORM_WD, BIAS_WD = 0.05, 0.0, 0.5


def reference_groups(
    model: nn.Module, norm_weight_decay: Optional[float], bias_weight_decay: Optional[float]
) -> dict[float, set[int]]:
    """weight decay -> ids of its parameters, by the reference's rule: walk the children recursively; a parameter
    named ``bias`` gets the bias decay when one is given (a custom key), else a norm layer's parameters get the norm
    decay when given, else the weight decay. Frozen parameters are left out."""
    groups: dict[float, set[int]] = {}

    def visit(module: nn.Module) -> None:
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if bias_weight_decay is not None and name == "bias":
                decay = bias_weight_decay
            elif norm_weight_decay is not None and isinstance(module, REFERENCE_NORM_CLASSES):
                decay = norm_weight_decay
            else:
                decay = WD
            groups.setdefault(decay, set()).add(id(p))
        for child in module.children():
            visit(child)

    visit(model)
    return groups


def our_groups(model: nn.Module, **kw) -> dict[float, set[int]]:
    optimizer = build_optimizer("adamw", model, lr=0.1, momentum=0.9, weight_decay=WD, **kw)
    groups: dict[float, set[int]] = {}
    for g in optimizer.param_groups:
        assert g["weight_decay"] not in groups  # one group per decay
        groups[g["weight_decay"]] = {id(p) for p in g["params"]}
    return groups


class InstanceNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.lrn = nn.LocalResponseNorm(2)  # no parameters
        self.inorm3d = nn.InstanceNorm3d(4, affine=True)
        self.bn1d = nn.BatchNorm1d(4)
        self.frozen_norm = nn.LayerNorm(4)
        self.frozen_norm.requires_grad_(False)
        self.fc = nn.Linear(4, 2)


def vit() -> nn.Module:
    # torchvision's ViT class at a tiny size: class token, position embedding, pre-norm LayerNorms, final LayerNorm
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )


MODELS = {
    "convnext_tiny": (lambda: create_model("convnext_tiny", num_classes=3), ("LayerNorm", "LayerNorm2d")),
    "vit": (vit, ("LayerNorm",)),
    "groupnorm_resnet18": (
        lambda: torchvision.models.resnet18(num_classes=3, norm_layer=lambda c: nn.GroupNorm(4, c)),
        ("GroupNorm",),
    ),
    "instancenorm_net": (InstanceNormNet, ("InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d")),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_norms(request) -> tuple[nn.Module, tuple[str, ...]]:
    torch.manual_seed(0)
    build, norms = MODELS[request.param]
    return build(), norms


def test_norm_weight_decay_groups_every_norm_layer_as_torchvisions_references(model_and_norms):
    model, norms = model_and_norms
    kinds = {type(m).__name__ for m in model.modules()}
    assert set(norms) <= kinds  # the layer types this model is here for
    ours, ref = our_groups(model, norm_weight_decay=NORM_WD), reference_groups(model, NORM_WD, None)
    assert ours == ref
    # every trainable parameter of every norm layer type present is in the no-decay group, the others are not
    by_kind: dict[str, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if p.requires_grad and type(m).__name__ in norms:
                assert id(p) in ours[NORM_WD], type(m).__name__
                by_kind[type(m).__name__] = by_kind.get(type(m).__name__, 0) + 1
    assert set(by_kind) == set(norms), by_kind
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ours[WD] == trainable - ours[NORM_WD] and ours[WD]


def test_bias_weight_decay_alone_groups_every_bias_as_torchvisions_references(model_and_norms):
    model, _ = model_and_norms
    ours = our_groups(model, bias_weight_decay=BIAS_WD)
    assert ours == reference_groups(model, None, BIAS_WD)
    norm_biases = {
        id(p)
        for m in model.modules()
        if isinstance(m, REFERENCE_NORM_CLASSES)
        for n, p in m.named_parameters(recurse=False)
        if n == "bias" and p.requires_grad
    }
    assert norm_biases and norm_biases <= ours[BIAS_WD]  # a norm layer's bias is a bias when only this flag is set
