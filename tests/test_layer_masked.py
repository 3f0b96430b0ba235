"""Inpainting mode (forward with a mask) beyond the hypothesis reference test of test_layers.py: depthwise, 3D and
bias-free cases with a batch-1 (broadcast) mask against the window-by-window float64 reference, second derivatives,
incoming gradients left intact, channels_last input, bf16 autocast on CPU, and vmap."""

from __future__ import annotations

import pytest
import torch
from test_layers import reference_partial_conv

from partialconv import PartialConv2d, PartialConv3d

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


def test_gradcheck_and_double_backward_in_inpainting_mode():
    layer, x, mask = make(CASES[0], size=5)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def fn(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x, mask))[0]

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_incoming_gradient_is_left_intact_and_channels_last_works():
    layer, x, mask = make(CASES[0])
    seen = []
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out, _ = layer(x_cl, mask)
    out.register_hook(lambda g: seen.append((g, g.clone())))
    (out * 3 + out.pow(2)).sum().backward()
    grad, snapshot = seen[0]
    assert torch.equal(grad, snapshot)
    ref_out, _ = layer(x.detach(), mask)
    torch.testing.assert_close(out, ref_out)


def test_bf16_autocast_on_cpu_is_close_to_fp32_and_keeps_fp32_parameter_grads():
    layer, x, mask = make(CASES[0])
    layer = layer.float()
    x32 = x.detach().float().requires_grad_()
    out32, _ = layer(x32, mask.float())
    out32.sum().backward()
    grad32 = layer.weight.grad.clone()
    layer.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, _ = layer(x32, mask.float())
    assert out16.dtype == torch.bfloat16
    out16.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(out16.float(), out32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(layer.weight.grad, grad32, rtol=0.05, atol=0.5)


def test_vmap_gives_the_batched_values():
    layer, x, mask = make(CASES[1])
    x = x.detach()
    fused, _ = layer(x, mask)

    def one(sample, sample_mask):
        return layer(sample.unsqueeze(0), sample_mask.unsqueeze(0))[0].squeeze(0)

    mapped = torch.func.vmap(one)(x, mask)
    torch.testing.assert_close(mapped, fused)
