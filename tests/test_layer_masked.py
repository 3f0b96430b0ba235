"""Inpainting mode (forward with a mask), next to test_layer_masked_fused.py: depthwise, 3D and bias-free cases with a
batch-1 (broadcast) mask against the window-by-window float64 reference, and the 1D layer."""

from __future__ import annotations

import pytest
import torch
from test_layers import reference_partial_conv

from partialconv import PartialConv1d, PartialConv2d, PartialConv3d

CASES = [
    dict(cls=PartialConv2d, c_in=4, c_out=6, groups=2, multi_channel=True, bias=True, stride=1),
    dict(cls=PartialConv2d, c_in=3, c_out=4, groups=1, multi_channel=False, bias=True, stride=2),
    dict(cls=PartialConv2d, c_in=4, c_out=4, groups=4, multi_channel=True, bias=False, stride=1),  # depthwise
    dict(cls=PartialConv3d, c_in=2, c_out=3, groups=1, multi_channel=True, bias=True, stride=1),
]


def make(case: dict, batch: int = 2, size: int = 7, mask_batch: int = 2):
    torch.manual_seed(0)
    nd = 3 if case["cls"] is PartialConv3d else 2
    layer = case["cls"](
        case["c_in"], case["c_out"], 3, stride=case["stride"], padding=1, groups=case["groups"],
        bias=case["bias"], multi_channel=case["multi_channel"], return_mask=True,
    ).double()  # fmt: skip
    x = torch.randn(batch, case["c_in"], *[size] * nd, dtype=torch.float64, requires_grad=True)
    c_mask = case["c_in"] if case["multi_channel"] else 1
    mask = (torch.rand(mask_batch, c_mask, *[size] * nd) > 0.4).double()
    mask[..., :3, :3] = 0  # a hole larger than the kernel: some windows see nothing
    return layer, x, mask


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['cls'].__name__}-g{c['groups']}-mc{c['multi_channel']}")
@pytest.mark.parametrize("mask_batch", [2, 1])
def test_fused_matches_the_float64_reference(case, mask_batch):
    layer, x, mask = make(case, mask_batch=mask_batch)
    out, update = layer(x, mask)
    nd = x.dim() - 2
    ref, ref_update = reference_partial_conv(
        x, mask, layer.weight, layer.bias, (case["stride"],) * nd, (1,) * nd, (1,) * nd, case["groups"],
        case["multi_channel"],
    )  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(update.expand_as(ref_update), ref_update)
    grad = torch.randn_like(out)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref, params, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_conv1d_inpainting_mode_is_the_2d_layer_on_one_row():
    torch.manual_seed(0)
    one = PartialConv1d(3, 4, 5, padding=2, multi_channel=True).double()
    two = PartialConv2d(3, 4, (1, 5), padding=(0, 2), multi_channel=True).double()
    two.weight.data, two.bias.data = one.weight.data[:, :, None], one.bias.data
    x = torch.randn(2, 3, 13, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 3, 13) > 0.4).double()
    out1, out2 = one(x, mask), two(x[:, :, None], mask[:, :, None])[:, :, 0]
    torch.testing.assert_close(out1, out2)
    g1 = torch.autograd.grad(out1.sum(), (x, one.weight))
    g2 = torch.autograd.grad(out2.sum(), (x, two.weight))
    torch.testing.assert_close(g1[0], g2[0])
    torch.testing.assert_close(g1[1], g2[1][:, :, 0])
