"""Partial padding for timm's conv subclasses with a forward of their own (TF-"same" ``Conv2dSame``, weight-standardised
``StdConv2d``/``ScaledStdConv2d`` and their ``*Same`` variants): a forward hook rescales their zero-padded output.

The references use timm's own padding code (``pad_same``) on a mask, and our inpainting-mode ``PartialConv2d``
(a zero-padded input with a mask of the image), not the hook's arithmetic."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partialconv import PartialConv2d, convert_padding, create_model

timm = pytest.importorskip("timm")
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame  # noqa: E402
from timm.layers.padding import pad_same  # noqa: E402

SUBCLASSES = [
    (Conv2dSame, dict(kernel_size=3, stride=2)),
    (Conv2dSame, dict(kernel_size=4, stride=1)),
    (Conv2dSame, dict(kernel_size=3, stride=1, dilation=2)),
    (StdConv2d, dict(kernel_size=3, padding=1)),
    (ScaledStdConv2d, dict(kernel_size=5, stride=2)),  # timm's default padding: 2
    (StdConv2dSame, dict(kernel_size=3, stride=2)),  # dynamic: same_pad
    (StdConv2dSame, dict(kernel_size=3, stride=1)),  # static: same_pad False, padding 1
    (ScaledStdConv2dSame, dict(kernel_size=4, stride=2)),
]


def zero_padding_mask(conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """1 on the image, 0 on the zero padding the timm conv applies to it, as timm computes that padding."""
    mask = torch.ones(1, 1, *size, dtype=torch.float64)
    if isinstance(conv, Conv2dSame) or getattr(conv, "same_pad", False):
        mask = pad_same(mask, conv.kernel_size, conv.stride, conv.dilation)
    ph, pw = conv.padding
    return F.pad(mask, (pw, pw, ph, ph))


@pytest.mark.parametrize("cls, kw", SUBCLASSES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("size", [(9, 10), (8, 7)])
def test_partial_output_is_the_zero_output_rescaled_by_timm_padding(cls, kw, size):
    torch.manual_seed(0)
    conv = cls(3, 4, bias=True, **kw).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    zero = conv(x)
    convert_padding(conv, "partial")
    partial = conv(x)
    assert type(conv) is cls and partial.shape == zero.shape
    k = conv.kernel_size
    ones = torch.ones(1, 1, *k, dtype=torch.float64)
    taps = F.conv2d(zero_padding_mask(conv, size), ones, stride=conv.stride, dilation=conv.dilation)
    ratio = torch.where(taps > 0, k[0] * k[1] / taps.clamp(min=1), torch.zeros_like(taps))
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(partial, (zero - bias) * ratio + bias * (taps > 0), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(partial, zero)
    convert_padding(conv, "zero")  # the hook goes again
    torch.testing.assert_close(conv(x), zero, rtol=0, atol=0)


@pytest.mark.parametrize("stride, size", [(2, (9, 10)), (2, (8, 7)), (1, (6, 6))])
def test_tf_same_partial_matches_the_masked_partial_conv(stride, size):
    """Conv2dSame in partial padding == inpainting-mode PartialConv2d over the TF-padded input with the image as the
    mask (and the gradients too)."""
    torch.manual_seed(1)
    conv = convert_padding(Conv2dSame(3, 5, 3, stride=stride).double(), "partial")
    masked = PartialConv2d(3, 5, 3, stride=stride, padding=0, return_mask=True).double()
    masked.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    mask = pad_same(torch.ones(2, 1, *size, dtype=torch.float64), conv.kernel_size, conv.stride, conv.dilation)
    ours = conv(x)
    reference, _ = masked(pad_same(x, conv.kernel_size, conv.stride, conv.dilation), mask)
    torch.testing.assert_close(ours, reference)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, conv.weight, conv.bias], g)
    x_ref = x.detach().clone().requires_grad_(True)
    reference, _ = masked(pad_same(x_ref, conv.kernel_size, conv.stride, conv.dilation), mask)
    ref_grads = torch.autograd.grad(reference, [x_ref, masked.weight, masked.bias], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_tf_efficientnet_converts_fully_keeps_its_keys_and_survives_a_copy():
    torch.manual_seed(0)
    zero = create_model("timm/tf_efficientnet_b0", num_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left zero-padded any more
        partial = create_model("timm/tf_efficientnet_b0", padding="partial", num_classes=3).eval()
    partial.load_state_dict(zero.state_dict())  # same keys, same classes: timm checkpoints load as they are
    assert type(partial.conv_stem) is Conv2dSame
    x = torch.randn(2, 3, 65, 70)
    with torch.no_grad():
        assert not torch.allclose(partial(x), zero(x))
        torch.testing.assert_close(copy.deepcopy(partial)(x), partial(x), rtol=0, atol=0)  # EMA copies the model
        torch.testing.assert_close(convert_padding(partial, "zero")(x), zero(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match=r"keep their zero padding .*: conv_stem \(Conv2dSame\)"):
        convert_padding(partial, "reflect")  # a TF-"same" forward cannot reflect: said, not done


def test_other_conv_subclasses_are_still_named():
    class OwnForward(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(OwnForward(3, 4, 3, padding=1), StdConv2d(4, 4, 3))
    with pytest.warns(UserWarning, match=r"1 module\(s\) keep their zero padding .*: 0 \(OwnForward\)$"):
        convert_padding(model, "partial")
    assert [type(m).__name__ for m in model] == ["OwnForward", "StdConv2d"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_padding(nn.Sequential(StdConv2d(3, 4, 1, padding=0)), "zero")  # 1x1: nothing to do, nothing said


HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
]


def tf_style_block() -> nn.Module:
    return nn.Sequential(
        Conv2dSame(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        StdConv2dSame(8, 8, 3, stride=1),
        ScaledStdConv2d(8, 4, 3, stride=2),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_hooked_convs_under_channels_last_autocast_and_compile(device):
    """The hook in the other execution modes: channels_last and autocast stay close to fp32, a compiled forward
    and backward equal eager's (the GPU suite runs the cuda case)."""
    torch.manual_seed(0)
    model = convert_padding(tf_style_block(), "partial").to(device).eval()
    x = torch.randn(2, 3, 17, 22, device=device)
    with torch.no_grad():
        reference = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, reference, rtol=1e-4, atol=1e-4)
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        with torch.autocast(device, dtype=dtype):
            low = model(x)
        assert low.dtype == dtype and torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)
    model = model.to(memory_format=torch.contiguous_format).train()
    compiled = torch.compile(model)
    results = []
    for forward in (model, compiled):  # train mode: BatchNorm uses the batch statistics in both
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        results.append((out.detach(), torch.autograd.grad(out.square().sum(), xi)[0]))
    (eager_out, eager_grad), (compiled_out, compiled_grad) = results
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-4)
