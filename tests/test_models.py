"""The model zoo: registry, torchvision equivalence, paddings."""

import pytest
import torch
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
    for padding in ("zero", "partial"):
        torch.manual_seed(0)
        ours = create_model(name, padding=padding, num_classes=10)
        ref_state, our_state = reference.state_dict(), ours.state_dict()
        assert list(ref_state) == list(our_state)
        for key in ref_state:
            assert torch.equal(ref_state[key], our_state[key]), key
    reference.eval()
    ours = create_model(name, num_classes=10).eval()
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


@pytest.mark.parametrize("name", ["pdresnet18", "pdvgg11"])
@pytest.mark.parametrize("size", [32, 45])
def test_small_and_odd_inputs_work(name, size):
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


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
