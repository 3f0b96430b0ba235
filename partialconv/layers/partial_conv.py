"""Partial convolution (Liu et al., 2018) as drop-in subclasses of ``nn.Conv2d`` / ``nn.Conv3d``.

For a mask M (1 = valid, 0 = hole) and a window of size S (k_h*k_w, or C_in/groups*k_h*k_w with ``multi_channel``):

    count = number of valid mask entries under the window
    out   = conv(X * M, W) * S / count + b   where count > 0
    out   = 0                                 where count == 0 (bias included)

Padding mode (no ``mask_in``): M is 1 inside the image and 0 in the zero padding. The ratio S / count then depends
only on the spatial size and the conv geometry, is separable per spatial dimension, and differs from 1 only on a few
border rows/columns. We compute it in closed form once per geometry, cache it per device/dtype in a module-level
table (no per-module state, so DataParallel replicas, DDP, torch.compile and torch.export all see a pure function),
and rescale only the border slices of the conv output (in eager autograd through one custom Function whose
backward is a single copy of the gradient, not one full copy per in-place border slice). A conv whose padding is 0
is a plain conv.

Inpainting mode (``mask_in`` given): the count is a channel sum of the mask followed by one box filter (a depthwise
conv with a ones kernel per group), never a C_out x C_in x k x k ones-kernel convolution. Counts and ratios are
computed in fp32 with autocast off and holes are masked explicitly, so fp16/bf16 never see an epsilon or a 1/0.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PartialConv2d", "PartialConv3d", "padding_ratio_1d"]

_CACHE_SIZE = 512


def _output_length(length: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    return (length + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def padding_ratio_1d(
    length: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int
) -> tuple[list[int], list[float]]:
    """Per-output-position tap counts and ratios kernel/count (0 where count is 0) along one spatial dimension.

    Output position o reads input positions start + j*dilation (start = o*stride - pad_lo) for j in [0, kernel); the
    count is how many fall inside [0, length). Closed form: the valid taps are the interval
    [ceil(-start/d), floor((L-1-start)/d)] clipped to [0, kernel-1].
    """
    counts, ratios = [], []
    for o in range(_output_length(length, kernel, stride, pad_lo, pad_hi, dilation)):
        start = o * stride - pad_lo
        first = 0 if start >= 0 else (-start + dilation - 1) // dilation
        last = min(kernel - 1, (length - 1 - start) // dilation)
        count = max(0, last - first + 1)
        counts.append(count)
        ratios.append(kernel / count if count else 0.0)
    return counts, ratios


# A padding-mode plan: (has_holes, borders, dense_ratio, update_mask). borders holds per spatial dim
# (lead, trail, head_ratio, tail_ratio): output positions [0, lead) and [trail, L) are rescaled by head/tail.
# dense_ratio/update_mask exist only when some window lies entirely in the padding (padding >= kernel extent).
_Plan = tuple


def _make_plan(counts: list[list[int]], ratios: list[list[float]], device: torch.device, dtype: torch.dtype) -> _Plan:
    ndim = len(counts)
    has_holes = any(c == 0 for dim in counts for c in dim)
    borders = []
    for d, r in enumerate(ratios):
        lead = next((i for i, v in enumerate(r) if v == 1.0), len(r))
        trail = len(r) - next((i for i, v in enumerate(reversed(r)) if v == 1.0), 0)
        trail = max(trail, lead)
        shape = [-1 if i == d else 1 for i in range(ndim)]
        head = torch.tensor(r[:lead], dtype=dtype, device=device).view(shape) if lead else None
        tail = torch.tensor(r[trail:], dtype=dtype, device=device).view(shape) if trail < len(r) else None
        borders.append((lead, trail, head, tail))
    dense_ratio = update_mask = None
    if has_holes:
        dense_ratio = _outer([torch.tensor(r, dtype=torch.float32, device=device) for r in ratios])
        update_mask = (dense_ratio > 0).to(dtype)
        dense_ratio = dense_ratio.to(dtype)
    return has_holes, tuple(borders), dense_ratio, update_mask


def _outer(vectors: Sequence[Tensor]) -> Tensor:
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


_plan_cache: OrderedDict[tuple, _Plan] = OrderedDict()
_plan_lock = threading.Lock()


def _border_plan(spatial: Sequence[int], geometry: tuple, device: torch.device, dtype: torch.dtype) -> _Plan:
    kernel, stride, pads, dilation = geometry
    per_dim = [
        padding_ratio_1d(spatial[i], kernel[i], stride[i], pads[i][0], pads[i][1], dilation[i])
        for i in range(len(spatial))
    ]
    counts = [c for c, _ in per_dim]
    ratios = [r for _, r in per_dim]
    if torch.compiler.is_compiling():
        # Traced code must not read mutable globals; the plan becomes graph constants instead.
        return _make_plan(counts, ratios, device, dtype)
    key = (tuple(spatial), geometry, device, dtype)
    with _plan_lock:
        plan = _plan_cache.get(key)
        if plan is not None:
            _plan_cache.move_to_end(key)
            return plan
    # Built outside inference mode so cached tensors can be saved for backward by later training steps.
    with torch.inference_mode(False):
        plan = _make_plan(counts, ratios, device, dtype)
    with _plan_lock:
        _plan_cache[key] = plan
        while len(_plan_cache) > _CACHE_SIZE:
            _plan_cache.popitem(last=False)
    return plan


def _rescale_borders(out: Tensor, bias: Optional[Tensor], borders: tuple) -> None:
    """In place: out = out * R + bias * (1 - R) on the border slabs, R the product of the per-dim ratios (applied
    one dimension after another, so corners get the product)."""
    nd = len(borders)
    for d, (lead, trail, head, tail) in enumerate(borders):
        axis = out.dim() - nd + d
        for ratio, start, stop in ((head, 0, lead), (tail, trail, out.shape[axis])):
            if ratio is None:
                continue
            border = out.narrow(axis, start, stop - start)
            border.mul_(ratio)
            if bias is not None:
                border.add_(bias * (1 - ratio))


def _traced() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or is_exporting() or torch.jit.is_tracing()


class _RescaleBorders(torch.autograd.Function):
    """Eager autograd for :func:`_rescale_borders`. In-place ops on narrow views would each record a CopySlices
    node whose backward copies the whole gradient (four full copies for a 3x3 conv); here the backward is one copy
    of the gradient with its border slabs rescaled, plus a border-only reduction for the bias."""

    @staticmethod
    def forward(ctx, out: Tensor, bias: Optional[Tensor], borders: tuple) -> Tensor:
        _rescale_borders(out, bias, borders)
        ctx.mark_dirty(out)
        ctx.borders = borders
        ctx.bias_shape = bias.shape if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_out = None
        if ctx.needs_input_grad[0]:
            grad_out = grad.clone()
            _rescale_borders(grad_out, None, ctx.borders)
        grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_bias = _border_bias_grad(grad, ctx.borders).view(ctx.bias_shape)
        return grad_out, grad_bias, None


def _border_bias_grad(grad: Tensor, borders: tuple) -> Tensor:
    """Sum over batch and space of grad * (1 - R), per channel, reading only the border slabs.

    Slab d is border along dim d and interior along dims < d (so slabs are disjoint); on it R is the ratio of dim d
    times the full ratio profiles of the dims after d.
    """
    nd = len(borders)
    profiles = []
    for d, (lead, trail, head, tail) in enumerate(borders):
        pieces = [head.reshape(-1)] if head is not None else []
        pieces.append(grad.new_ones(trail - lead))
        pieces += [tail.reshape(-1)] if tail is not None else []
        profiles.append(torch.cat(pieces).view([-1 if i == d else 1 for i in range(nd)]))
    reduce_dims = [0, *range(grad.dim() - nd, grad.dim())]
    acc = torch.promote_types(grad.dtype, torch.float32)  # low-precision grads are summed in fp32
    total = grad.new_zeros(grad.shape[1], dtype=acc)
    view = grad
    for d, (lead, trail, head, tail) in enumerate(borders):
        axis = grad.dim() - nd + d
        later = [profiles[e] for e in range(d + 1, nd)]
        for ratio, start, stop in ((head, 0, lead), (tail, trail, grad.shape[axis])):
            if ratio is None:
                continue
            slab = view.narrow(axis, start, stop - start)
            r = ratio
            for profile in later:
                r = r * profile
            total += (slab * (1 - r)).sum(reduce_dims, dtype=acc)
        view = view.narrow(axis, lead, trail - lead)
    return total.to(grad.dtype)


class _PartialConvMixin:
    """Shared forward of PartialConv2d/3d. Relies on the nn.ConvNd attributes of the concrete class."""

    multi_channel: bool
    return_mask: bool

    def _init_partial(self, multi_channel: bool, return_mask: bool) -> None:
        if self.padding_mode != "zeros":
            raise ValueError(
                f"{type(self).__name__}: padding_mode must be 'zeros' (partial convolution replaces zero padding), "
                f"got {self.padding_mode!r}"
            )
        self.multi_channel = multi_channel
        self.return_mask = return_mask

    def _pads(self) -> tuple[tuple[int, int], ...]:
        """(before, after) padding per spatial dimension, resolving 'same'/'valid' like nn.ConvNd does."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return tuple((0, 0) for _ in self.kernel_size)
            pads = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        return tuple((p, p) for p in self.padding)

    def forward(self, input: Tensor, mask_in: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        if mask_in is None:
            out, mask = self._padding_forward(input)
        else:
            out, mask = self._masked_forward(input, mask_in)
        if self.return_mask:
            return out, mask
        return out

    def _padding_forward(self, input: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        pads = self._pads()
        nd = len(self.kernel_size)
        if not any(lo or hi for lo, hi in pads):
            out = self._conv_forward(input, self.weight, self.bias)
            return out, (out.new_ones(()).expand(out.shape) if self.return_mask else None)

        # The conv keeps its fused bias: raw * r + b == out * r + b * (1 - r), and with an update mask u (r is 0
        # wherever u is) raw * r + b * u == out * r + b * (u - r).
        out = self._conv_forward(input, self.weight, self.bias)
        geometry = (tuple(self.kernel_size), tuple(self.stride), pads, tuple(self.dilation))
        has_holes, borders, dense_ratio, update_mask = _border_plan(
            tuple(input.shape[-nd:]), geometry, out.device, out.dtype
        )
        bias = self.bias.to(out.dtype).view(-1, *([1] * nd)) if self.bias is not None else None
        if has_holes:
            out = out * dense_ratio
            if bias is not None:
                out = out + bias * (update_mask - dense_ratio)
            return out, (update_mask.expand(out.shape) if self.return_mask else None)

        if _traced() or not (
            torch.is_grad_enabled() and (out.requires_grad or (bias is not None and bias.requires_grad))
        ):
            _rescale_borders(out, bias, borders)  # compilers functionalise this; no autograd graph to keep small
        else:
            out = _RescaleBorders.apply(out, bias, borders)
        return out, (out.new_ones(()).expand(out.shape) if self.return_mask else None)

    def _masked_forward(self, input: Tensor, mask_in: Tensor) -> tuple[Tensor, Tensor]:
        nd = len(self.kernel_size)
        expected_c = self.in_channels if self.multi_channel else 1
        if mask_in.dim() != nd + 2 or mask_in.shape[1] != expected_c or mask_in.shape[-nd:] != input.shape[-nd:]:
            spatial = ", ".join(map(str, input.shape[-nd:]))
            raise ValueError(
                f"{type(self).__name__}: mask_in must have shape (B or 1, {expected_c}, {spatial}) "
                f"for multi_channel={self.multi_channel}, got {tuple(mask_in.shape)}"
            )
        mask = mask_in.detach()
        groups = self.groups if self.multi_channel else 1
        window = math.prod(self.kernel_size) * (self.in_channels // self.groups if self.multi_channel else 1)

        # fp32 at least, whatever autocast says: counts are exact integers and ratios never overflow.
        exact = torch.float64 if input.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=input.device.type, enabled=False):
            m = mask.to(exact)
            summed = m.view(m.shape[0], groups, -1, *m.shape[2:]).sum(2) if m.shape[1] > 1 else m
            box = torch.ones((groups, 1, *self.kernel_size), dtype=exact, device=input.device)
            count = self._conv_forward(summed, box, None, groups=groups)
            valid = count > 0
            ratio = torch.where(valid, window / count.clamp_min(1.0), torch.zeros_like(count))
            update = valid.float()

        raw = self._conv_forward(input * mask.to(input.dtype), self.weight, None)
        b, c_out = raw.shape[0], raw.shape[1]
        out_spatial = raw.shape[2:]
        grouped = raw.view(b, groups, c_out // groups, *out_spatial)
        ratio_b = ratio.unsqueeze(2)
        update_b = update.unsqueeze(2)
        if window > torch.finfo(raw.dtype).max:
            out = (grouped.to(exact) * ratio_b).to(raw.dtype)
        else:
            out = grouped * ratio_b.to(raw.dtype)
        if self.bias is not None:
            bias = self.bias.to(raw.dtype).view(1, groups, c_out // groups, *([1] * nd))
            out = out + bias * update_b.to(raw.dtype)
        out = out.view_as(raw)

        mask_dtype = mask_in.dtype if mask_in.is_floating_point() else out.dtype
        update_b = update_b.to(mask_dtype)
        if groups == 1:
            update_mask = update_b.squeeze(2).expand(out.shape[0], c_out, *out_spatial)
        else:
            update_mask = update_b.expand(update_b.shape[0], groups, c_out // groups, *out_spatial).reshape(
                update_b.shape[0], c_out, *out_spatial
            )
        if update_mask.shape[0] != out.shape[0]:
            update_mask = update_mask.expand(out.shape[0], *update_mask.shape[1:])
        return out, update_mask


class PartialConv2d(_PartialConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with partial-convolution padding, or masked (inpainting) convolution when given ``mask_in``.

    Extra arguments: ``multi_channel`` (the mask has one channel per input channel and the window size counts them),
    ``return_mask`` (forward returns ``(output, update_mask)``). ``state_dict()`` holds only ``weight``/``bias``.
    """

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_partial(multi_channel, return_mask)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Optional[int] = None):
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, groups or self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"


class PartialConv3d(_PartialConvMixin, nn.Conv3d):
    """``nn.Conv3d`` counterpart of :class:`PartialConv2d` (same arguments and semantics, three spatial dims)."""

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_partial(multi_channel, return_mask)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Optional[int] = None):
        return F.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, groups or self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"
