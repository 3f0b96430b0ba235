"""PartialConv2d/3d where NVIDIA's layer and nn.Conv2d/3d work: single-channel mask chaining, torch.func transforms
and forward-mode AD, float64 under autocast, unbatched input."""

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from test_layers import reference_partial_conv
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

from partialconv import PartialConv2d, PartialConv3d


def _random_layer(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = cls(*args, **kwargs).double()
    with torch.no_grad():
        layer.weight.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def _reference(layer, x, mask):
    """The float64 window-by-window reference run with ``layer``'s weights and geometry."""
    return reference_partial_conv(
        x,
        mask,
        layer.weight,
        layer.bias,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.multi_channel,
    )


def _nvidia_semantics(layer, x, mask):
    """What NVIDIA's models/partialconv2d.py computes for ``mask`` (1 = valid), restated in float64: the window count
    is a convolution of the mask with a ones kernel of shape (1, 1, k, k) (single-channel) or (C_out, C_in, k, k)
    (multi-channel), the ratio is S / (count + 1e-8) clamped to the valid windows, and the returned update mask is
    clamp(count, 0, 1) with the mask's own batch size and 1 (or C_out) channels."""
    shape = (layer.out_channels, layer.in_channels) if layer.multi_channel else (1, 1)
    ones = torch.ones(*shape, *layer.kernel_size, dtype=torch.float64)
    count = F.conv2d(mask, ones, None, layer.stride, layer.padding, layer.dilation)
    update = count.clamp(0, 1)
    ratio = math.prod(ones.shape[1:]) / (count + 1e-8) * update
    raw = F.conv2d(x * mask, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    bias = layer.bias.view(1, -1, 1, 1)
    return ((raw - bias) * ratio + bias) * update, update


# ------------------------------------------------------------------------------------- single-channel mask chaining
@pytest.mark.parametrize("mask_batch", [1, 3])
def test_single_channel_layers_chain_on_their_one_channel_update_mask(mask_batch):
    first = _random_layer(PartialConv2d, 2, 4, 3, padding=1, return_mask=True, seed=1)
    second = _random_layer(PartialConv2d, 4, 3, 3, stride=2, padding=1, return_mask=True, seed=2)
    torch.manual_seed(3)
    x = torch.randn(3, 2, 9, 8, dtype=torch.float64)
    mask = (torch.rand(mask_batch, 1, 9, 8) > 0.5).double()
    mask[..., 2:7, 2:7] = 0  # windows that see only holes

    y, m1 = first(x, mask)
    assert m1.shape == (3, 1, 9, 8)
    z, m2 = second(y, m1)  # rejected before: the returned mask had 4 channels
    assert m2.shape == (3, 1, 5, 4)

    ref_y, ref_m1 = _reference(first, x, mask)
    ref_z, ref_m2 = _reference(second, ref_y, ref_m1)
    torch.testing.assert_close(y, ref_y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(z, ref_z, rtol=1e-9, atol=1e-9)
    assert torch.equal(m1, ref_m1) and torch.equal(m2, ref_m2)

    # NVIDIA's layer: same outputs; its update mask has the mask's batch size and one channel, ours the input's.
    with torch.no_grad():
        nv_y, nv_m1 = _nvidia_semantics(first, x, mask)
        nv_z, nv_m2 = _nvidia_semantics(second, nv_y, nv_m1)
    assert nv_m1.shape == (mask_batch, 1, 9, 8) and nv_m2.shape == (mask_batch, 1, 5, 4)
    torch.testing.assert_close(z, nv_z, rtol=1e-6, atol=1e-6)  # their 1e-8 epsilon in the ratio
    assert torch.equal(m1, nv_m1.expand_as(m1)) and torch.equal(m2, nv_m2.expand_as(m2))


def test_padding_mode_mask_feeds_a_masked_layer_and_multi_channel_keeps_c_out_channels():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    single = PartialConv2d(3, 4, 3, padding=1, return_mask=True).double()
    y, m = single(x)
    assert m.shape == (2, 1, 6, 6) and torch.all(m == 1)
    PartialConv2d(4, 2, 3, padding=1).double()(y, m)
    # 3D and the dense padding path (windows entirely in the padding: update 0 there) too.
    _, m3 = PartialConv3d(3, 4, 2, padding=2, return_mask=True)(torch.randn(2, 3, 3, 3, 3))
    assert m3.shape == (2, 1, 6, 6, 6) and m3[0, 0, 0, 0, 0] == 0 and m3[0, 0, 2, 2, 2] == 1

    multi = PartialConv2d(3, 4, 3, padding=1, multi_channel=True, return_mask=True).double()
    assert multi(x)[1].shape == (2, 4, 6, 6)
    assert multi(x, torch.ones(1, 3, 6, 6, dtype=torch.float64))[1].shape == (2, 4, 6, 6)


# ------------------------------------------------------------------------------------- torch.func and forward AD
GEOMETRIES = [
    (PartialConv2d, dict(kernel_size=3, padding=1), (7, 6)),
    (PartialConv2d, dict(kernel_size=3, stride=2, padding=2, dilation=2), (9, 8)),
    (PartialConv2d, dict(kernel_size=3, padding=3), (5, 5)),  # dense plan: windows entirely in the padding
    (PartialConv3d, dict(kernel_size=3, padding=1), (4, 5, 3)),
]


def _plain_reference(layer, x, weight, bias):
    """Padding mode with plain ops: conv(x, W) * S / count + b where count > 0 (count from a ones convolution)."""
    conv = F.conv2d if layer.weight.dim() == 4 else F.conv3d
    geometry = (layer.stride, layer.padding, layer.dilation)
    ones = torch.ones(1, 1, *x.shape[-(weight.dim() - 2) :], dtype=torch.float64)
    count = conv(ones, torch.ones(1, 1, *layer.kernel_size, dtype=torch.float64), None, *geometry)[0, 0]
    ratio = torch.where(count > 0, math.prod(layer.kernel_size) / count.clamp_min(1), 0)
    out = conv(x, weight, None, *geometry, layer.groups) * ratio
    return out + bias.view(-1, *[1] * (weight.dim() - 2)) * (count > 0)


@pytest.mark.parametrize("cls,kwargs,size", GEOMETRIES)
def test_per_sample_gradients_with_vmap_of_grad(cls, kwargs, size):
    layer = _random_layer(cls, 2, 3, **kwargs)
    x = torch.randn(4, 2, *size, dtype=torch.float64)
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def loss(params, sample):
        return functional_call(layer, params, (sample.unsqueeze(0),)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    # Unbatched samples under vmap: the layer sees (C, *spatial), as nn.Conv2d/3d would.
    unbatched = vmap(grad(lambda p, s: functional_call(layer, p, (s,)).square().sum()), in_dims=(None, 0))(params, x)
    for i in range(len(x)):
        w = layer.weight.detach().clone().requires_grad_()
        b = layer.bias.detach().clone().requires_grad_()
        _plain_reference(layer, x[i : i + 1], w, b).square().sum().backward()
        for name, expected in (("weight", w.grad), ("bias", b.grad)):
            torch.testing.assert_close(per_sample[name][i], expected, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(unbatched[name][i], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls,kwargs,size", GEOMETRIES)
def test_jvp_jacrev_and_forward_ad_match_plain_ops(cls, kwargs, size):
    layer = _random_layer(cls, 2, 3, **kwargs)
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    w, b = layer.weight.detach(), layer.bias.detach()
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)

    def ours(x, w, b):
        return functional_call(layer, {"weight": w, "bias": b}, (x,))

    def plain(x, w, b):
        return _plain_reference(layer, x, w, b)

    out, tangent = jvp(ours, (x, w, b), (tx, tw, tb))
    ref_out, ref_tangent = jvp(plain, (x, w, b), (tx, tw, tb))
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-9, atol=1e-9)

    ref_jac = jacrev(plain, argnums=(0, 1, 2))(x[:1], w, b)
    for transform in (jacrev, jacfwd):
        jac = transform(ours, argnums=(0, 1, 2))(x[:1], w, b)
        for got, expected in zip(jac, ref_jac):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)

    with fwAD.dual_level():
        dual = fwAD.unpack_dual(ours(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), fwAD.make_dual(b, tb)))
    torch.testing.assert_close(dual.primal, ref_out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dual.tangent, ref_tangent, rtol=1e-9, atol=1e-9)


def test_per_sample_gradients_under_torch_compile():
    torch._dynamo.reset()
    layer = _random_layer(PartialConv2d, 2, 3, 3, stride=2, padding=1)
    params = {name: p.detach() for name, p in layer.named_parameters()}
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    per_sample = vmap(grad(lambda p, s: functional_call(layer, p, (s,)).square().sum()), in_dims=(None, 0))
    compiled = torch.compile(per_sample, fullgraph=True, backend="aot_eager")(params, x)
    for name, expected in per_sample(params, x).items():
        torch.testing.assert_close(compiled[name], expected, rtol=1e-9, atol=1e-9)


def test_inpainting_mode_under_vmap():
    layer = _random_layer(PartialConv2d, 2, 3, 3, padding=1, multi_channel=True)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    mask = (torch.rand(4, 2, 6, 6) > 0.4).double()
    params = {name: p.detach() for name, p in layer.named_parameters()}
    # An ensemble of biases over one input: the output is batched only through the bias (the in-place bias add
    # used to fail here).
    biases = torch.randn(5, 3, dtype=torch.float64)
    outs = vmap(lambda b: functional_call(layer, {"weight": params["weight"], "bias": b}, (x, mask)))(biases)
    for out, b in zip(outs, biases):
        expected, _ = reference_partial_conv(x, mask, params["weight"], b, (1, 1), (1, 1), (1, 1), 1, True)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # Per-sample gradients with unbatched samples and masks.
    per_sample = vmap(grad(lambda p, s, m: functional_call(layer, p, (s, m)).square().sum()), in_dims=(None, 0, 0))
    grads = per_sample(params, x, mask)
    for i in range(len(x)):
        w = layer.weight.detach().clone().requires_grad_()
        b = layer.bias.detach().clone().requires_grad_()
        out, _ = reference_partial_conv(x[i : i + 1], mask[i : i + 1], w, b, (1, 1), (1, 1), (1, 1), 1, True)
        out.square().sum().backward()
        torch.testing.assert_close(grads["weight"][i], w.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grads["bias"][i], b.grad, rtol=1e-9, atol=1e-9)


def test_ordinary_training_keeps_the_border_function():
    # The plain path is for transforms only: an ordinary forward still rescales just the border boxes.
    out = PartialConv2d(2, 3, 3, padding=1)(torch.randn(1, 2, 8, 8, requires_grad=True))
    assert type(out.grad_fn).__name__ == "_BorderRescaledConvBackward"


def test_meta_device_shapes():
    layer = PartialConv2d(3, 4, 3, stride=2, padding=1, return_mask=True, device="meta")
    x = torch.empty(2, 3, 9, 9, device="meta")
    for args, mask_shape in (((x,), (2, 1, 5, 5)), ((x, torch.empty(1, 1, 9, 9, device="meta")), (2, 1, 5, 5))):
        out, mask = layer(*args)
        assert out.shape == (2, 4, 5, 5) and mask.shape == mask_shape and out.device.type == "meta"
    out, mask = layer(x[0])
    assert out.shape == (4, 5, 5) and mask.shape == (1, 5, 5)


# ----------------------------------------------------------------------------------- float64 under autocast
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),  # border path
        dict(kernel_size=5, padding=5),  # dense path; ratios such as 5/3 are not bf16 numbers
        dict(kernel_size=3, padding=1, multi_channel=True),  # inpainting mode (already right: a guard)
    ],
)
def test_float64_input_stays_float64_under_autocast(kwargs):
    layer = _random_layer(PartialConv2d, 3, 4, **kwargs)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(1, 3, 8, 8) > 0.3).double() if layer.multi_channel else None
    expected = layer(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float64  # what nn.Conv2d does
        out = layer(x, mask)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert x.grad.dtype == layer.weight.grad.dtype == torch.float64


# ------------------------------------------------------------------------------------------------ unbatched input
@pytest.mark.parametrize(
    "cls,conv_cls,size", [(PartialConv2d, nn.Conv2d, (7, 6)), (PartialConv3d, nn.Conv3d, (4, 5, 3))]
)
@pytest.mark.parametrize("mode", ["padding", "single", "multi"])
def test_unbatched_input_like_nn_conv(cls, conv_cls, size, mode):
    multi = mode == "multi"
    layer = _random_layer(cls, 2, 3, 3, stride=2, padding=1, multi_channel=multi, return_mask=True)
    x = torch.randn(2, *size, dtype=torch.float64, requires_grad=True)
    mask = None if mode == "padding" else (torch.rand(2 if multi else 1, *size) > 0.4).double()
    out, upd = layer(x, mask)
    assert out.shape == conv_cls(2, 3, 3, stride=2, padding=1)(x.float()).shape
    assert upd.shape == (3 if multi else 1, *out.shape[1:])
    batched_out, batched_upd = layer(x.detach().unsqueeze(0), None if mask is None else mask.unsqueeze(0))
    torch.testing.assert_close(out, batched_out[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(upd, batched_upd[0])
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_unbatched_and_wrong_rank_inputs_get_clear_errors():
    layer = PartialConv2d(2, 3, 3, padding=1)
    with pytest.raises(ValueError, match=r"mask_in must have shape \(1, 6, 6\) \(unbatched\)"):
        layer(torch.randn(2, 6, 6), torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match=r"expected a 3D \(unbatched\) or 4D \(batched\) input, got shape \(6, 6\)"):
        layer(torch.randn(6, 6))
