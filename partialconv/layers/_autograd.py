"""The layer's two custom autograd Functions, each one autograd node with no full-size pass beyond the conv's.

:class:`_BorderRescaledConv` (padding mode) rescales the border boxes of a :mod:`._padding_plan` plan forward and
backward; :class:`_MaskedConv` (inpainting mode) fuses the mask product, ratio and bias. Neither supports torch.func
transforms or forward-mode AD; :mod:`.partial_conv` takes plain ops while those are active.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._padding_plan import _box


def _writable_dense(t: Tensor) -> bool:
    """No overlapping or broadcast (stride-0) memory, so in-place writes touch each element once."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return t.is_contiguous() or (t.dim() in formats and t.is_contiguous(memory_format=formats[t.dim()]))


class _BorderRescaledConv(torch.autograd.Function):
    """conv(x, W) * ratio + b where the ratio differs from 1 only on a few border boxes.

    A plain ``raw * ratio`` costs a full pass over the output forward and another over its gradient backward. Here
    forward rescales the border boxes of the conv output in place, and backward scales the border boxes of the
    incoming gradient in place, runs the conv backward on it, and puts the saved border values back: the gradient
    is unchanged for any other consumer once this returns, and the overhead over nn.Conv2d is a few border-sized ops.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], params: tuple, regions: tuple) -> Tensor:
        stride, padding, dilation, groups = params
        nd = weight.dim() - 2
        out = torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * nd, groups)
        for starts, lengths, pair, ratio, one_minus_ratio in regions:
            box = _box(out, starts, lengths, pair).mul_(ratio)
            if bias is not None:  # out * r + b * (1 - r)
                box.addcmul_(bias.view(-1, *([1] * (box.dim() - 2))), one_minus_ratio)
        ctx.save_for_backward(x, weight)
        ctx.params, ctx.regions, ctx.has_bias = params, regions, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.params
        nd = weight.dim() - 2
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        in_place = not torch.is_grad_enabled() and _writable_dense(grad)
        scaled = grad if in_place else grad.clone(memory_format=torch.preserve_format)
        originals = []
        for starts, lengths, pair, ratio, _ in ctx.regions:
            box = _box(scaled, starts, lengths, pair)
            # A contiguous copy (cheap to read back below), or the untouched input gradient.
            originals.append(box.clone() if in_place else _box(grad, starts, lengths, pair))
            box.mul_(ratio)
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grad_x, grad_w, grad_bias = torch.ops.aten.convolution_backward(
            scaled, x, weight, bias_sizes, stride, padding, dilation, False, [0] * nd, groups, [need_x, need_w, need_b]
        )
        for (starts, lengths, pair, _, one_minus_ratio), original in zip(ctx.regions, originals):
            if need_b:
                # The bias is added after the rescaling: its gradient sums the unscaled gradient, i.e. the conv's
                # sum plus what the rescaling took off the boxes.
                grad_bias = grad_bias + (original * one_minus_ratio).sum([d for d in range(original.dim()) if d != 1])
            if in_place:
                _box(scaled, starts, lengths, pair).copy_(original)
        return grad_x, grad_w, grad_bias, None, None


class _MaskedConv(torch.autograd.Function):
    """conv(x * m, W) * ratio + b * update, inpainting mode's output, with one autograd node.

    As separate ops, the ratio multiply and the bias add are full-size passes forward, each with its own full-size
    pass (and temporary) backward. Here forward scales the conv output in place and adds ``b * update`` in place;
    backward makes one scaled copy of the gradient for the conv backward (input and weight gradients in one call),
    masks the input gradient in place, and takes the bias gradient as a matrix product of the gradient with the
    update mask (no full-size temporary). ``ratio``/``update`` have shape (B or 1, groups, 1, *out_spatial) in the
    conv's dtype; the mask is not differentiated.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        mask: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        ratio: Tensor,
        update: Tensor,
        params: tuple,
    ) -> Tensor:
        stride, padding, dilation, groups = params
        nd = weight.dim() - 2
        # The product in the input's dtype, then the cast autocast would apply to the conv's input.
        xm = (x * mask).to(weight.dtype)
        raw = torch.convolution(xm, weight, None, stride, padding, dilation, False, [0] * nd, groups)
        grouped = raw.view(raw.shape[0], ratio.shape[1], -1, *raw.shape[2:])
        bias_view = bias.view(1, ratio.shape[1], -1, *([1] * nd)) if bias is not None else None
        # Without hole windows (most layers past the first), update is all ones: out = b + raw * ratio in one pass,
        # written over raw. Checked on CPU only, where reading the flag costs no device sync, and never while
        # compiling (the compiler fuses the two ops below anyway, and a data-dependent branch would break the graph).
        ctx.no_holes = (
            bias is not None and raw.device.type == "cpu" and not torch.compiler.is_compiling() and bool(update.all())
        )
        if ctx.no_holes:
            torch.addcmul(bias_view, grouped, ratio, out=grouped)
        else:
            grouped.mul_(ratio)
            if bias is not None:
                grouped.addcmul_(bias_view, update)
        # x itself too (a reference, no copy): a double backward must differentiate the product again (see below).
        ctx.save_for_backward(x, xm, mask, weight, ratio, update)
        ctx.params, ctx.has_bias, ctx.x_dtype = params, bias is not None, x.dtype
        return raw

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, xm, mask, weight, ratio, update = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: the saved product is a constant to autograd, so the weight gradient would lose its
            # dependence on x; recompute it as a tracked op.
            xm = (x * mask).to(weight.dtype)
        stride, padding, dilation, groups = ctx.params
        nd = weight.dim() - 2
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        g = ratio.shape[1]
        grouped = grad.reshape(grad.shape[0], g, -1, *grad.shape[2:])
        grad_x = grad_w = grad_bias = None
        if need_x or need_w:
            scaled = (grouped * ratio).reshape(grad.shape)
            grad_xm, grad_w, _ = torch.ops.aten.convolution_backward(
                scaled, xm, weight, None, stride, padding, dilation, False, [0] * nd, groups, [need_x, need_w, False]
            )
            if need_x:
                grad_xm = grad_xm.to(ctx.x_dtype)
                # In place on the fresh conv gradient unless a double backward differentiates through it.
                grad_x = grad_xm.mul_(mask) if not torch.is_grad_enabled() else grad_xm * mask
        if need_b and ctx.no_holes:
            grad_bias = grad.sum([0, *range(2, grad.dim())])
        elif need_b and grad.dtype in (torch.float16, torch.bfloat16):
            # sum over batch and positions of grad * update with fp32 accumulation, as autograd's sum does; a
            # half-precision matmul may reduce in half precision (allow_fp16_reduced_precision_reduction)
            dims = [0, *range(3, grouped.dim())]
            grad_bias = (grouped * update).sum(dims, dtype=torch.float32).reshape(-1).to(grad.dtype)
        elif need_b:
            # sum over batch and positions of grad * update: a batched matrix-vector product, no full-size product.
            flat = grouped.reshape(grad.shape[0], g, grouped.shape[2], -1)
            upd = update.reshape(update.shape[0], g, -1, 1).to(flat.dtype)
            grad_bias = torch.matmul(flat, upd).sum(0).reshape(-1)
        return grad_x, None, grad_w, grad_bias, None, None, None
