"""convert_padding reaches every conv that pads on any side (issue 24): convs padded on one axis only (Inception's
1x7/7x1 with ``padding=(0, 3)``), 1D and 3D convs, ``padding="same"``, on real torchvision/timm models and hand-made
ones. Which convs pad is decided here from each conv's own attributes, not by the code under test."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from partialconv import PartialConv1d, PartialConv2d, PartialConv3d, convert_padding, create_model

PARTIAL = (PartialConv1d, PartialConv2d, PartialConv3d)


def pads(conv: nn.Module) -> bool:
    """Whether a plain conv adds pixels on some side: any non-zero entry of its padding, or "same" with a kernel
    larger than 1 on some axis."""
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p != 0 for p in conv.padding)


def plain_padded(model: nn.Module) -> dict[str, tuple]:
    """name -> padding of every plain (exactly nn.ConvNd) conv that pads."""
    plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {name: m.padding for name, m in model.named_modules() if type(m) in plain and pads(m)}


def one_axis(padding) -> bool:
    return not isinstance(padding, str) and 0 in padding and any(padding)


def check_every_padded_conv_converted(model: nn.Module, expected: dict[str, tuple]) -> None:
    """In partial, reflect, replicate and back to zero, each conv in ``expected`` (name -> padding) is in that
    padding, with its padding unchanged, and no other conv is touched."""
    modules = dict(model.named_modules())
    untouched = {n: m for n, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd) and n not in expected}
    for padding in ("partial", "reflect", "replicate", "zero"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's Conv2dSame cannot reflect: said in a warning, tested elsewhere
            convert_padding(model, padding)
        modules = dict(model.named_modules())
        for name, pad in expected.items():
            conv = modules[name]
            assert conv.padding == pad, (padding, name)
            if padding == "partial":
                assert isinstance(conv, PARTIAL), (name, pad, type(conv).__name__)
            else:
                mode = "zeros" if padding == "zero" else padding
                assert type(conv) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and conv.padding_mode == mode, (padding, name)
        for name, conv in untouched.items():
            assert modules[name] is conv, (padding, name)


# Real models with the conv shapes of their families; (name, least number of one-axis-padded convs).
MODELS = [
    ("inception_v3", 30),  # 1x7, 7x1, 1x3, 3x1 branches
    ("googlenet", 0),
    ("convnext_tiny", 0),  # depthwise 7x7
    ("efficientnet_b0", 0),
    ("regnet_y_400mf", 0),  # grouped 3x3
    ("timm/tf_efficientnet_b0", 0),  # timm's Conv2dSame (hooked, counted apart) next to plain convs
]


@pytest.mark.parametrize("name, min_one_axis", MODELS)
def test_every_conv_padded_on_any_side_of_a_real_model_is_converted(name, min_one_axis):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    model = create_model(name, num_classes=3)
    expected = plain_padded(model)
    counts = (len(expected), sum(one_axis(p) for p in expected.values()))
    assert counts[0] > 0 and counts[1] >= min_one_axis, counts
    same = [m for m in model.modules() if type(m).__name__ == "Conv2dSame"]
    assert bool(same) == name.startswith("timm/")  # timm's TF-"same" convs: padding=0, padded in their forward
    check_every_padded_conv_converted(model, expected)
    convert_padding(model, "partial")
    assert sum(isinstance(m, PARTIAL) for m in model.modules()) == counts[0]
    assert all(len(m._forward_hooks) == 1 for m in same)  # partial padding reaches them as a hook


def test_hand_made_asymmetric_1d_and_3d_convs_are_converted():
    model = nn.Sequential(
        nn.Conv2d(3, 4, (1, 7), padding=(0, 3)),
        nn.Conv2d(4, 4, (7, 1), padding=(3, 0)),
        nn.Conv2d(4, 4, (1, 3), padding="same"),
        nn.Conv2d(4, 4, (3, 1), padding=(1, 0), groups=4),
        nn.Conv2d(4, 4, 1, padding=(0, 0)),  # pads nothing: stays a plain conv
        nn.Conv2d(4, 4, (1, 1), padding="same"),  # "same" with a 1x1 kernel pads nothing
    )
    expected = plain_padded(model)
    assert sorted(expected) == ["0", "1", "2", "3"] and sum(one_axis(p) for p in expected.values()) == 3
    check_every_padded_conv_converted(model, expected)
    x = torch.rand(1, 3, 5, 6)
    zero = model(x)
    convert_padding(model, "partial")
    assert not torch.allclose(model(x), zero)  # the one-axis padding is now partial, so the output changes

    one_d = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(3, 3, 1), nn.Conv1d(3, 3, 4, padding="same"))
    assert sorted(plain_padded(one_d)) == ["0", "2"]
    check_every_padded_conv_converted(one_d, plain_padded(one_d))

    three_d = nn.Sequential(
        nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1)),
        nn.Conv3d(2, 2, (3, 1, 1), padding=(1, 0, 0)),
        nn.Conv3d(2, 2, (1, 1, 3), padding=(0, 0, 1)),
        nn.Conv3d(2, 2, 1),
    )
    assert sorted(plain_padded(three_d)) == ["0", "1", "2"]
    check_every_padded_conv_converted(three_d, plain_padded(three_d))
    # a single conv padded on one axis is converted too (convert_padding returns the new module)
    single = convert_padding(nn.Conv2d(1, 1, (1, 5), padding=(0, 2)), "partial")
    assert isinstance(single, PartialConv2d) and single.padding == (0, 2)
