"""The model zoo: registry, torchvision equivalence, paddings."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from partialconv import PartialConv2d, conv_factory, create_model, list_models
from partialconv.models import _registry, register_model

ZOO = (
    ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]
    + [f"vgg{d}" for d in (11, 13, 16, 19)]
    + [f"vgg{d}_bn" for d in (11, 13, 16, 19)]
)


def test_registry_lists_every_architecture_with_pd_variant():
    names = set(list_models())
    for name in ZOO:
        assert name in names and "pd" + name in names
    assert list_models("pdvgg16*") == ["pdvgg16", "pdvgg16_bn"]
    assert list_models("nothing*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet05'.*did you mean .*resnet50"):
        create_model("resnet05")


def test_pd_name_conflicting_padding_is_an_error():
    with pytest.raises(ValueError, match="partial padding by name"):
        create_model("pdresnet18", padding="zero")
    assert isinstance(create_model("pdresnet18", padding="partial").conv1, PartialConv2d)


def test_register_model_adds_pd_variant_and_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    def tiny_net(padding="zero", num_classes=2):
        return nn.Sequential(conv_factory(padding)(3, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(num_classes))

    register_model(tiny_net)
    assert isinstance(create_model("pdtiny_net")[0], PartialConv2d)
    assert type(create_model("tiny_net", padding="reflect")[0]) is nn.Conv2d
    with pytest.raises(ValueError, match="'tiny_net' is registered twice"):
        register_model(tiny_net)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn"])
def test_same_initialisation_and_outputs_as_torchvision(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(num_classes=10)
    built = {}
    for padding in ("zero", "partial"):
        torch.manual_seed(0)
        built[padding] = create_model(name, padding=padding, num_classes=10)
        ref_state, our_state = reference.state_dict(), built[padding].state_dict()
        assert list(ref_state) == list(our_state)
        for key in ref_state:
            assert torch.equal(ref_state[key], our_state[key]), key
    reference.eval()
    ours = built["zero"].eval()  # the same weights as the reference (checked above), loaded again all the same
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reference(x), ours(x))


def test_torchvision_weights_load_into_every_padding_variant():
    reference = torchvision.models.wide_resnet50_2().state_dict()
    for padding in ("partial", "reflect", "replicate"):
        create_model("wide_resnet50_2", padding=padding).load_state_dict(reference)


@pytest.mark.parametrize("padding", ["zero", "partial", "reflect", "replicate"])
def test_padding_kwarg_selects_conv_type(padding):
    model = create_model("resnet18", padding=padding, num_classes=3)
    conv = model.layer1[0].conv1
    if padding == "partial":
        assert isinstance(conv, PartialConv2d)
    else:
        assert type(conv) is nn.Conv2d and conv.padding_mode == {"zero": "zeros"}.get(padding, padding)
    assert model.fc.out_features == 3


class FormulaPartialConv(nn.Module):
    """Padding-mode partial convolution straight from the paper's formula with plain F.conv2d calls:
    conv(x) * window / count + b, count = valid taps of the zero-padded all-ones image (no holes in these models)."""

    def __init__(self, conv: PartialConv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self
        raw = F.conv2d(x, c.weight, None, c.stride, c.padding, c.dilation, c.groups)
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype)
        count = F.conv2d(ones, torch.ones(1, 1, *c.kernel_size, dtype=x.dtype), None, c.stride, c.padding, c.dilation)
        out = raw * (c.kernel_size[0] * c.kernel_size[1] / count)
        return out + c.bias.view(-1, 1, 1) if c.bias is not None else out


def with_formula_convs(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, PartialConv2d):
            setattr(model, name, FormulaPartialConv(child))
        else:
            with_formula_convs(child)
    return model


@pytest.fixture(scope="module", params=["pdresnet18", "pdvgg11"])
def float64_model_and_formula(request) -> tuple[nn.Module, nn.Module]:
    """A pd network in float64 and its copy with every partial conv computed from the formula; built once for all
    input sizes (eval mode: the forward changes neither)."""
    torch.manual_seed(0)
    model = create_model(request.param, num_classes=5).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PartialConv2d) and m.bias is not None:
                m.bias.normal_()  # VGG initialises biases to 0, which would hide the border bias term
    reference = with_formula_convs(copy.deepcopy(model))
    assert not any(isinstance(m, PartialConv2d) for m in reference.modules())
    return model, reference


@pytest.mark.parametrize("size", [32, 45])
def test_small_and_odd_inputs_match_the_formula(float64_model_and_formula, size):
    """Small and odd sizes (stride-2 convs on odd maps, 1x1 and 2x2 maps at the end): the whole network in float64
    equals the same network with every partial conv computed from the formula."""
    model, reference = float64_model_and_formula
    torch.manual_seed(size)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, reference(x), rtol=1e-10, atol=1e-10)
    assert out.shape == (2, 5)


def test_partial_padding_changes_border_but_not_unpadded_convs():
    zero = create_model("resnet18", num_classes=4).eval()
    pd = create_model("pdresnet18", num_classes=4).eval()
    pd.load_state_dict(zero.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(zero(x), pd(x))
        # a 1x1 downsample conv has no padding: identical in both models
        torch.testing.assert_close(
            zero.layer2[0].downsample(x[:, :1].repeat(1, 64, 1, 1)),
            pd.layer2[0].downsample(x[:, :1].repeat(1, 64, 1, 1)),
        )
