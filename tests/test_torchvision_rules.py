"""Issue 25: the last differences from torchvision's classification references, each compared with the reference's
own rule on the same inputs.

The reference rules are restated here from torchvision's references/classification (train.py, utils.py) as plain
rules over names, not taken from the code under test: weight decay by parameter name first (``bias`` with
``--bias-weight-decay``), then by owning module type (norm layers with ``--norm-weight-decay``); the LR schedule is
``SequentialLR([LinearLR|ConstantLR, StepLR|CosineAnnealingLR], milestones=[warmup])`` stepped once per epoch.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from partialconv.engine.optim import build_optimizer, parameter_groups

pytestmark = pytest.mark.usefixtures("one_thread")

# torchvision's default norm classes for set_weight_decay (torchvision.ops / references utils).
REFERENCE_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def reference_decay(model: nn.Module, qualified: str, wd: float, norm_wd, bias_wd) -> float:
    """The reference's weight decay of one parameter, from its qualified name: the custom key ``bias`` (matched
    against the parameter's own name) wins, then the owning module's type, then --weight-decay."""
    owner, _, leaf = qualified.rpartition(".")
    if bias_wd is not None and leaf == "bias":
        return bias_wd
    if norm_wd is not None and isinstance(model.get_submodule(owner), REFERENCE_NORMS):
        return norm_wd
    return wd


def small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)


MODELS = {
    "resnet50": torchvision.models.resnet50,
    "convnext_tiny": torchvision.models.convnext_tiny,
    "vit": small_vit,
}


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("norm_wd, bias_wd", [(0.0, 0.5), (0.25, 0.0), (None, 0.5), (0.0, None)])
def test_weight_decay_groups_follow_the_reference_per_tensor(arch, norm_wd, bias_wd):
    with torch.device("meta"):  # the groups depend on names and types only: no memory, no init time
        model = MODELS[arch]()
    wd = 1e-4
    groups = parameter_groups(model, wd, norm_wd, bias_wd)
    got = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(got) == len(names)  # every parameter in exactly one group
    expected = {n: reference_decay(model, n, wd, norm_wd, bias_wd) for n in names}
    wrong = [n for n, p in names.items() if got[id(p)] != expected[n]]
    assert not wrong, f"{len(wrong)} tensors in another group than torchvision's, e.g. {wrong[:3]}"
    # the reference's group order: other, norm, then the custom key (bias); empty groups left out
    order = [d for d in (wd, norm_wd, bias_wd) if d is not None and d in expected.values()]
    assert [g["weight_decay"] for g in groups] == order[: len(groups)]
    if arch != "vit" and norm_wd is not None and bias_wd is not None:
        # the case: norm-layer biases (bn1.bias, ...) take the bias decay
        norm_biases = [n for n in names if n.endswith(".bias") and isinstance(
            model.get_submodule(n.rpartition(".")[0]), REFERENCE_NORMS)]  # fmt: skip
        assert norm_biases and all(got[id(names[n])] == bias_wd for n in norm_biases)


def test_optimizer_carries_the_groups():
    model = small_vit()
    opt = build_optimizer("adamw", model, lr=0.1, momentum=0.9, weight_decay=0.05, norm_weight_decay=0.0,
                          bias_weight_decay=0.01)  # fmt: skip
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.encoder.ln.bias)] == 0.01 and by_id[id(model.encoder.ln.weight)] == 0.0
    assert by_id[id(model.heads.head.weight)] == 0.05 and by_id[id(model.heads.head.bias)] == 0.01
