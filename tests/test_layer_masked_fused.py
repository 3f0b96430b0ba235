"""Inpainting mode's single autograd Function (_MaskedConv): same outputs and gradients as the float64 reference
for every layer option, one graph node, and the paths it must leave to plain ops (transforms, autocast)."""

import pytest
import torch
from test_layer_compat import _random_layer
from test_layers import case_of, check_against_reference, reference_partial_conv
from torch.func import functional_call, grad, vmap

from partialconv import PartialConv2d, PartialConv3d


def _reference(layer, x, mask, weight=None, bias=None):
    weight = layer.weight if weight is None else weight
    bias = layer.bias if bias is None else bias
    return reference_partial_conv(
        x, mask, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups, layer.multi_channel
    )


@pytest.mark.parametrize(
    "case",
    [
        case_of(masked=True, multi_channel=True, per_sample=True, c_in=3, c_out=4),
        case_of(masked=True, multi_channel=False, per_sample=True, bias=False),
        case_of(masked=True, multi_channel=True, groups=2, c_in=4, c_out=6, stride=2, seed=3),
        case_of(masked=True, multi_channel=False, groups=2, c_in=4, c_out=2, dilation=2, padding=2, size=7),
        case_of(masked=True, multi_channel=True, nd=3, k=[1, 3, 2], padding=[0, 1, 1], size=[2, 4, 3], seed=4),
        case_of(masked=True, multi_channel=False, nd=3, k=3, padding=1, size=3, bias=False, seed=5),
        case_of(masked=True, multi_channel=True, padding=3, size=2, seed=6),  # every window a hole
    ],
    ids=["multi", "single-nobias", "groups-multi", "groups-single-dilated", "3d-multi", "3d-single-nobias", "holes"],
)
def test_fused_path_matches_float64_reference(case):
    """Output, update mask and input/weight/bias gradients equal the window-by-window float64 reference."""
    check_against_reference(case)
    layer = (PartialConv2d if case["nd"] == 2 else PartialConv3d)(
        case["c_in"], case["c_out"], case["k"], padding=case["padding"], groups=case["groups"],
        bias=case["bias"], multi_channel=case["multi_channel"],
    ).double()  # fmt: skip
    x = torch.randn(case["batch"], case["c_in"], *case["size"], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, case["c_in"] if case["multi_channel"] else 1, *case["size"], dtype=torch.float64)
    assert type(layer(x, mask).grad_fn).__name__ == "_MaskedConvBackward"


def test_one_graph_node_between_output_and_leaves():
    """No intermediate autograd nodes (mask product, ratio multiply, bias add) with their own saved tensors."""
    layer = _random_layer(PartialConv2d, 3, 4, 3, padding=1, multi_channel=True)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x, (torch.rand(2, 3, 8, 8) > 0.3).double())
    leaves = [fn for fn, _ in out.grad_fn.next_functions if fn is not None]
    assert all(type(fn).__name__ == "AccumulateGrad" for fn in leaves) and len(leaves) == 3
    assert {id(fn.variable) for fn in leaves} == {id(x), id(layer.weight), id(layer.bias)}


def test_gradcheck_and_double_backward_in_inpainting_mode():
    layer = _random_layer(PartialConv2d, 2, 3, 3, stride=2, padding=1, multi_channel=True)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(1, 2, 5, 6, generator=torch.Generator().manual_seed(1)) > 0.4).double()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def fn(x, w, b):
        return functional_call(layer, {"weight": w, "bias": b}, (x, mask))

    assert type(fn(x, w, b).grad_fn).__name__ == "_MaskedConvBackward"
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_input_without_grad_channels_last_and_broadcast_upstream_gradient():
    """A first layer (input needs no gradient), channels_last tensors and an expanded (stride-0) upstream
    gradient from .sum().backward(); the upstream gradient another consumer sees is left intact."""
    layer = _random_layer(PartialConv2d, 4, 6, 3, padding=1, multi_channel=True, groups=2)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    mask = (torch.rand(2, 4, 7, 9) > 0.3).double().to(memory_format=torch.channels_last)
    out = layer(x, mask)
    assert type(out.grad_fn).__name__ == "_MaskedConvBackward"
    out.sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    ref, _ = _reference(layer, x, mask, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    ref.sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-9, atol=1e-9)

    layer.zero_grad()
    xg = x.clone().requires_grad_()
    out = layer(xg, mask)
    upstream = torch.randn(out.shape, dtype=torch.float64).to(memory_format=torch.channels_last)
    kept = upstream.clone()
    other = torch.zeros_like(out, requires_grad=True)
    ((out + other) * 1.0).backward(upstream)
    torch.testing.assert_close(other.grad, kept, rtol=0, atol=0)
    x2 = x.clone().requires_grad_()
    _reference(layer, x2, mask, layer.weight.detach(), layer.bias.detach())[0].backward(upstream)
    torch.testing.assert_close(xg.grad, x2.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("multi_channel", [True, False], ids=["multi", "single"])
def test_cpu_bf16_autocast_output_and_grads(multi_channel):
    """bf16 output, fp32 gradients (parameter/input dtypes), close to the float64 reference; holes exactly 0."""
    torch.manual_seed(0)
    layer = PartialConv2d(8, 8, 3, padding=1, multi_channel=multi_channel, return_mask=True)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    mask = (torch.rand(2, 8 if multi_channel else 1, 12, 12) > 0.4).float()
    mask[..., 3:9, 3:9] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, upd = layer(x, mask)
    assert type(out.grad_fn).__name__ == "_MaskedConvBackward"
    assert out.dtype == torch.bfloat16 and upd.dtype == torch.float32
    assert (out[..., 5:7, 5:7] == 0).all()
    upstream = torch.randn(out.shape)
    out.float().backward(upstream)
    assert x.grad.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == torch.float32
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    x2 = x.detach().double().requires_grad_()
    ref, ref_upd = reference_partial_conv(x2, mask.double(), w, b, (1, 1), (1, 1), (1, 1), 1, multi_channel)
    ref.backward(upstream.double())
    torch.testing.assert_close(upd.double(), ref_upd, rtol=0, atol=0)
    scale = ref.abs().max()
    torch.testing.assert_close(out.double() / scale, ref / scale, rtol=0, atol=0.02)
    for got, want in ((x.grad, x2.grad), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad)):
        torch.testing.assert_close(got.double() / want.abs().max(), want / want.abs().max(), rtol=0, atol=0.02)


def test_vmap_takes_the_plain_path_with_the_same_values():
    """Under vmap the layer uses plain ops (the Function has no batching rule); values equal the fused path's."""
    layer = _random_layer(PartialConv3d, 2, 3, 3, padding=1, multi_channel=True)
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64)
    mask = (torch.rand(3, 2, 4, 5, 5) > 0.4).double()
    params = {name: p.detach() for name, p in layer.named_parameters()}
    per_sample = vmap(grad(lambda p, s, m: functional_call(layer, p, (s, m)).square().sum()), in_dims=(None, 0, 0))
    grads = per_sample(params, x, mask)
    for i in range(len(x)):
        layer.zero_grad()
        out = layer(x[i : i + 1], mask[i : i + 1])
        assert type(out.grad_fn).__name__ == "_MaskedConvBackward"
        out.square().sum().backward()
        torch.testing.assert_close(grads["weight"][i], layer.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grads["bias"][i], layer.bias.grad, rtol=1e-9, atol=1e-9)


def test_unbatched_input_and_mask():
    layer = _random_layer(PartialConv2d, 3, 4, 3, padding=1, return_mask=True)
    x = torch.randn(3, 7, 7, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(1, 7, 7) > 0.4).double()
    out, upd = layer(x, mask)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "_MaskedConvBackward"
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref, ref_upd = _reference(layer, x2[None], mask[None], layer.weight.detach(), layer.bias.detach())
    torch.testing.assert_close(out, ref[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upd, ref_upd[0])
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-9)
