"""Partial convolution (Liu et al., 2018) as drop-in subclasses of ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``.

For a mask M (1 = valid, 0 = hole) and a window of size S (k_h*k_w, or C_in/groups*k_h*k_w with ``multi_channel``):

    count = number of valid mask entries under the window
    out   = conv(X * M, W) * S / count + b   where count > 0
    out   = 0                                 where count == 0 (bias included)

Padding mode (no ``mask_in``): M is 1 inside the image and 0 in the zero padding. The ratio S / count then depends
only on the spatial size and the conv geometry, is separable per spatial dimension, and differs from 1 only on a few
border rows/columns. We compute it in closed form once per geometry, cache it per device/dtype in a module-level
table (no per-module state, so DataParallel replicas, DDP, torch.compile and torch.export all see a pure function),
and rescale only the border boxes of the conv output, forward and backward (see _BorderRescaledConv). A conv whose
padding is 0 is a plain conv.

The in-place border function supports neither torch.func transforms (vmap, grad, jvp, jacrev, ...) nor forward-mode
AD; while one of them is active, padding mode takes a plain out-of-place path instead: conv * dense ratio map + b.

Inpainting mode (``mask_in`` given): the count is a channel sum of the mask followed by one box filter (a depthwise
conv with a ones kernel per group), never a C_out x C_in x k x k ones-kernel convolution. Counts and ratios are
computed in fp32 with autocast off and holes are masked explicitly, so fp16/bf16 never see an epsilon or a 1/0.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from contextlib import nullcontext
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

__all__ = ["PartialConv1d", "PartialConv2d", "PartialConv3d", "padding_ratio_1d", "rescale_to_partial", "resolve_pads"]

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


def resolve_pads(
    padding: Union[str, Sequence[int]], kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """(before, after) zero padding per spatial dimension of a conv's ``padding`` attribute, resolving 'same'
    (the extra pixel of an even kernel after, as nn.ConvNd does) and 'valid'."""
    if isinstance(padding, str):
        if padding == "valid":
            return tuple((0, 0) for _ in kernel_size)
        pads = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return tuple((p, p) for p in padding)


def rescale_to_partial(
    output: Tensor,
    bias: Optional[Tensor],
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> Tensor:
    """The output of a zero-padded conv (with ``bias`` added) turned into partial padding's: the bias-free part
    scaled by kernel window / valid taps at each position, ``pads`` being the zero padding the conv applied to an
    input of ``spatial`` size. For convs whose forward is not ours (timm's TF-"same" and weight-standardised
    convs); :class:`PartialConv2d` itself rescales only its border rows and columns."""
    nd = len(kernel_size)
    geometry = (tuple(kernel_size), tuple(stride), tuple(tuple(p) for p in pads), tuple(dilation))
    plan = _border_plan(tuple(spatial), geometry, output.device, output.dtype, dense=True)
    # raw * r + b * u == out * r + b * (u - r), as in the dense path of PartialConv2d.
    out = output * plan.dense_ratio
    if bias is not None:
        out = out + bias.to(out.dtype).view(-1, *([1] * nd)) * (plan.update_mask - plan.dense_ratio)
    return out


class _Plan(NamedTuple):
    """A padding-mode plan. ``regions``: disjoint output boxes (starts, lengths, pair, ratio, 1 - ratio) covering
    every position whose ratio is not 1; a box's ratio is the outer product of the per-dimension ratio vectors over
    it; pair = (dim, run, tail start) when one box holds both the leading and the same-sized trailing run of a dim
    (see _box). ``dense`` plans carry ``dense_ratio``/``update_mask`` instead, for the rare geometries the border path
    does not cover: a window entirely in the padding (padding >= kernel extent, so some outputs are holes) or
    asymmetric padding ('same' with an even kernel)."""

    dense: bool
    regions: tuple
    dense_ratio: Optional[Tensor]
    update_mask: Optional[Tensor]


def _make_plan(
    counts: list[list[int]],
    ratios: list[list[float]],
    symmetric: bool,
    device: torch.device,
    dtype: torch.dtype,
    paired: bool = True,
    dense: bool = False,
) -> _Plan:
    nd = len(counts)
    dense = dense or not symmetric or any(c == 0 for dim in counts for c in dim)
    if dense:
        # float64 products rounded once to dtype: float32 ratios such as 5/3 would cost float64 layers 1e-7.
        dense_ratio = _outer([torch.tensor(r, dtype=torch.float64) for r in ratios]).to(dtype).to(device)
        update_mask = (dense_ratio > 0).to(dtype)
        return _Plan(True, (), dense_ratio, update_mask)

    # Per dimension the ratio differs from 1 on a leading and a trailing run of positions only.
    spans = []
    for r in ratios:
        lead = next((i for i, v in enumerate(r) if v == 1.0), len(r))
        trail = max(lead, len(r) - next((i for i, v in enumerate(reversed(r)) if v == 1.0), 0))
        spans.append((lead, trail))
    regions = []
    for d in range(nd):
        lead, trail = spans[d]
        length = len(ratios[d])
        # Earlier dims: their interior only (their borders are boxes of their own); later dims: everything.
        starts = [spans[e][0] for e in range(d)] + [0] + [0] * (nd - d - 1)
        stops = [spans[e][1] for e in range(d)] + [0] + [len(ratios[e]) for e in range(d + 1, nd)]
        if any(hi <= lo for e, (lo, hi) in enumerate(zip(starts, stops)) if e != d):
            continue
        if paired and lead and lead == length - trail:
            # Leading and trailing runs of equal length: one strided view holds both (a new dim of size 2), so
            # each border op runs once per dimension instead of twice.
            pieces = [((0, lead), (trail, length))]
        else:
            pieces = [((start, stop),) for start, stop in ((0, lead), (trail, length)) if stop > start]
        for piece in pieces:
            boxes = []
            for start, stop in piece:
                starts[d], stops[d] = start, stop
                vectors = [torch.tensor(ratios[e][starts[e] : stops[e]], dtype=torch.float64) for e in range(nd)]
                boxes.append(_outer(vectors))
            if len(boxes) == 2:
                # Laid out like the unfold view of _box: the pair index at d, the run's positions last.
                ratio = torch.stack(boxes, dim=d).movedim(d + 1, -1).contiguous()
                starts[d], stops[d] = 0, length
                pair = (d, lead, trail)
            else:
                ratio = boxes[0]
                starts[d], stops[d] = piece[0]
                pair = None
            ratio = ratio.to(dtype).to(device)
            lengths = tuple(hi - lo for lo, hi in zip(starts, stops))
            regions.append((tuple(starts), lengths, pair, ratio, 1 - ratio))
    return _Plan(False, tuple(regions), None, None)


def _outer(vectors: Sequence[Tensor]) -> Tensor:
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


_plan_cache: OrderedDict[tuple, _Plan] = OrderedDict()
_plan_lock = threading.Lock()


def _border_plan(
    spatial: Sequence[int], geometry: tuple, device: torch.device, dtype: torch.dtype, dense: bool = False
) -> _Plan:
    """The cached plan of a geometry; ``dense`` asks for the dense ratio/update mask whatever the geometry."""
    if torch.compiler.is_compiling():
        # Traced code must not read mutable globals; the plan becomes graph constants instead. Paired (unfold)
        # boxes are eager-only: compilers fuse the border ops anyway, and in-place writes through unfold views
        # are not reliably functionalised.
        return _make_plan(*_ratios(spatial, geometry), device, dtype, paired=False, dense=dense)
    key = (tuple(spatial), geometry, device, dtype, dense)
    with _plan_lock:
        plan = _plan_cache.get(key)
        if plan is not None:
            _plan_cache.move_to_end(key)
            return plan
    # Built outside inference mode so cached tensors can be saved for backward by later training steps.
    with torch.inference_mode(False):
        plan = _make_plan(*_ratios(spatial, geometry), device, dtype, dense=dense)
    with _plan_lock:
        _plan_cache[key] = plan
        while len(_plan_cache) > _CACHE_SIZE:
            _plan_cache.popitem(last=False)
    return plan


def _ratios(spatial: Sequence[int], geometry: tuple) -> tuple[list[list[int]], list[list[float]], bool]:
    """Per-dimension counts and ratios of a geometry, and whether its padding is symmetric."""
    kernel, stride, pads, dilation = geometry
    per_dim = [
        padding_ratio_1d(spatial[i], kernel[i], stride[i], pads[i][0], pads[i][1], dilation[i])
        for i in range(len(spatial))
    ]
    return [c for c, _ in per_dim], [r for _, r in per_dim], all(lo == hi for lo, hi in pads)


def _narrow(t: Tensor, starts: Sequence[int], lengths: Sequence[int]) -> Tensor:
    for d, (start, length) in enumerate(zip(starts, lengths)):
        t = t.narrow(2 + d, start, length)
    return t


def _box(t: Tensor, starts: Sequence[int], lengths: Sequence[int], pair: Optional[tuple[int, int, int]]) -> Tensor:
    """The view of a plan region. A paired region (dim d, run length m, tail start) spans all of d and is unfolded
    into windows of m positions every ``tail`` positions: exactly the leading and the trailing run (tail >= m, so
    the two never overlap), as a size-2 dim at d with the run's positions moved last."""
    view = _narrow(t, starts, lengths)
    if pair is None:
        return view
    d, run, tail = pair
    return view.unfold(2 + d, run, tail)


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


def _autocast_available(device_type: str) -> bool:
    # Devices without autocast (meta, used for shape probes) must not reach the autocast queries, which raise.
    return device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "xla")


def _autocast_dtype(input: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run a conv of ``input`` in, or None where it leaves the conv alone. Like autocast's
    own casts, float64 is never touched: a float64 conv stays float64 under any autocast, as nn.Conv2d's does."""
    device_type = input.device.type
    if input.dtype != torch.float64 and _autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _transforms_active() -> bool:
    """torch.func transforms (vmap, grad, jvp, jacrev, ...) or forward-mode AD are active. The in-place border
    rescaling of _BorderRescaledConv supports neither; under them the layer takes a plain out-of-place path."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _autocast_off(device_type: str):
    return torch.autocast(device_type, enabled=False) if _autocast_available(device_type) else nullcontext()


class _PartialConvMixin:
    """Shared forward of PartialConv1d/2d/3d. Relies on the nn.ConvNd attributes of the concrete class."""

    multi_channel: bool
    return_mask: bool
    _conv_fn: Callable[..., Tensor]  # F.conv1d, F.conv2d or F.conv3d

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"{type(self).__name__}: padding_mode must be 'zeros' (partial convolution replaces zero padding), "
                f"got {self.padding_mode!r}"
            )
        self.multi_channel = multi_channel
        self.return_mask = return_mask

    def _pads(self) -> tuple[tuple[int, int], ...]:
        return resolve_pads(self.padding, self.kernel_size, self.dilation)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Optional[int] = None):
        return self._conv_fn(input, weight, bias, self.stride, self.padding, self.dilation, groups or self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"

    def forward(self, input: Tensor, mask_in: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        nd = len(self.kernel_size)
        if input.dim() not in (nd + 1, nd + 2):
            raise ValueError(
                f"{type(self).__name__}: expected a {nd + 1}D (unbatched) or {nd + 2}D (batched) input, "
                f"got shape {tuple(input.shape)}"
            )
        batched = input.dim() == nd + 2
        if mask_in is not None:
            self._check_mask(input, mask_in, batched)
        if not batched:
            # As nn.ConvNd does: a batch of one, removed again from the output and the returned mask.
            input = input.unsqueeze(0)
            mask_in = mask_in.unsqueeze(0) if mask_in is not None else None
        if mask_in is None:
            out, mask = self._padding_forward(input)
        else:
            out, mask = self._masked_forward(input, mask_in)
        if not batched:
            out, mask = out.squeeze(0), (mask.squeeze(0) if mask is not None else None)
        if self.return_mask:
            return out, mask
        return out

    def _mask_channels(self) -> int:
        """Channels of the returned update mask: one per output channel with ``multi_channel``, else one (the
        update is the same for every output channel, and the next single-channel layer takes a 1-channel mask)."""
        return self.out_channels if self.multi_channel else 1

    def _check_mask(self, input: Tensor, mask_in: Tensor, batched: bool) -> None:
        nd = len(self.kernel_size)
        expected_c = self.in_channels if self.multi_channel else 1
        lead = 1 if batched else 0  # dims before the channel dim
        if (
            mask_in.dim() != nd + 1 + lead
            or mask_in.shape[lead] != expected_c
            or mask_in.shape[-nd:] != input.shape[-nd:]
        ):
            spatial = ", ".join(map(str, input.shape[-nd:]))
            expected = f"(B or 1, {expected_c}, {spatial})" if batched else f"({expected_c}, {spatial}) (unbatched)"
            raise ValueError(
                f"{type(self).__name__}: mask_in must have shape {expected} "
                f"for multi_channel={self.multi_channel} and input {tuple(input.shape)}, got {tuple(mask_in.shape)}"
            )

    def _ones_mask(self, out: Tensor) -> Optional[Tensor]:
        if not self.return_mask:
            return None
        return out.new_ones(()).expand(out.shape[0], self._mask_channels(), *out.shape[2:])

    def _padding_forward(self, input: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        pads = self._pads()
        nd = len(self.kernel_size)
        if not any(lo or hi for lo, hi in pads):
            out = self._conv_forward(input, self.weight, self.bias)
            return out, self._ones_mask(out)

        device_type = input.device.type
        autocast_dtype = _autocast_dtype(input)
        dtype = autocast_dtype or input.dtype
        geometry = (tuple(self.kernel_size), tuple(self.stride), pads, tuple(self.dilation))
        # torch.func transforms and forward AD (eager, or traced by torch.compile, which folds the check to a
        # constant) get the plain dense path; everything else the border function.
        plain = _transforms_active()
        dense, regions, dense_ratio, update_mask = _border_plan(
            tuple(input.shape[-nd:]), geometry, input.device, dtype, dense=plain
        )
        if dense:
            # raw * r + b * u == out * r + b * (u - r), since r is 0 wherever u is.
            out = self._conv_forward(input, self.weight, self.bias) * dense_ratio
            if self.bias is not None:
                out = out + self.bias.to(out.dtype).view(-1, *([1] * nd)) * (update_mask - dense_ratio)
            mask = update_mask.expand(out.shape[0], self._mask_channels(), *out.shape[2:]) if self.return_mask else None
            return out, mask

        weight, bias = self.weight, self.bias
        if autocast_dtype is not None:
            # Cast as autocast would for a conv; the function itself then runs with autocast off so that its
            # backward sees the same dtypes as its forward.
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        params = (tuple(self.stride), tuple(lo for lo, _ in pads), tuple(self.dilation), self.groups)
        with _autocast_off(device_type):
            out = _BorderRescaledConv.apply(input, weight, bias, params, regions)
        return out, self._ones_mask(out)

    def _masked_forward(self, input: Tensor, mask_in: Tensor) -> tuple[Tensor, Tensor]:
        nd = len(self.kernel_size)
        mask = mask_in.detach()
        groups = self.groups if self.multi_channel else 1
        window = math.prod(self.kernel_size) * (self.in_channels // self.groups if self.multi_channel else 1)

        # fp32 at least, whatever autocast says: counts are exact integers and ratios never overflow.
        exact = torch.float64 if input.dtype == torch.float64 else torch.float32
        with _autocast_off(input.device.type):
            m = mask.to(exact)
            summed = m.view(m.shape[0], groups, -1, *m.shape[2:]).sum(2) if m.shape[1] > 1 else m
            box = torch.ones((groups, 1, *self.kernel_size), dtype=exact, device=input.device)
            count = self._conv_forward(summed, box, None, groups=groups)
            valid = count > 0
            ratio = torch.where(valid, window / count.clamp_min(1.0), torch.zeros_like(count))
            update = valid.float()

        ratio_b = ratio.unsqueeze(2)
        update_b = update.unsqueeze(2)
        autocast_dtype = _autocast_dtype(input)
        conv_dtype = autocast_dtype or input.dtype
        pads = self._pads()
        symmetric = all(lo == hi for lo, hi in pads)
        if not _transforms_active() and symmetric and window <= torch.finfo(conv_dtype).max:
            # One autograd node (see _MaskedConv). torch.func transforms and forward AD, asymmetric 'same' padding
            # (even kernels; aten's convolution takes one pad per dim) and window sizes beyond the conv dtype's
            # range take the plain ops below.
            weight, bias = self.weight, self.bias
            if autocast_dtype is not None:
                weight = weight.to(autocast_dtype)
                bias = bias.to(autocast_dtype) if bias is not None else None
            params = (tuple(self.stride), tuple(lo for lo, _ in pads), tuple(self.dilation), self.groups)
            with _autocast_off(input.device.type):
                out = _MaskedConv.apply(
                    input,
                    mask.to(input.dtype),
                    weight,
                    bias,
                    ratio_b.to(conv_dtype),
                    update_b.to(conv_dtype),
                    params,
                )
            return out, self._update_mask(out, mask_in, update_b, groups)

        raw = self._conv_forward(input * mask.to(input.dtype), self.weight, None)
        b, c_out = raw.shape[0], raw.shape[1]
        out_spatial = raw.shape[2:]
        grouped = raw.view(b, groups, c_out // groups, *out_spatial)
        if window > torch.finfo(raw.dtype).max:
            out = (grouped.to(exact) * ratio_b).to(raw.dtype)
        else:
            out = grouped * ratio_b.to(raw.dtype)
        if self.bias is not None:
            # In place and broadcast: one pass over the output, no full-size bias * update temporary. Out of place
            # under torch.func transforms, where vmap cannot write a batched bias into an unbatched output.
            bias = self.bias.to(raw.dtype).view(1, groups, c_out // groups, *([1] * nd))
            if not _transforms_active():
                out.addcmul_(bias, update_b.to(raw.dtype))
            else:
                out = out.addcmul(bias, update_b.to(raw.dtype))
        out = out.view_as(raw)
        return out, self._update_mask(out, mask_in, update_b, groups)

    def _update_mask(self, out: Tensor, mask_in: Tensor, update_b: Tensor, groups: int) -> Tensor:
        """The returned update mask from the (B or 1, groups, 1, *out_spatial) update, shaped as the docs say."""
        c_out, out_spatial = out.shape[1], out.shape[2:]
        mask_dtype = mask_in.dtype if mask_in.is_floating_point() else out.dtype
        update_b = update_b.to(mask_dtype)
        if not self.multi_channel:
            update_mask = update_b.squeeze(2)  # (B or 1, 1, *out_spatial)
        elif groups == 1:
            update_mask = update_b.squeeze(2).expand(out.shape[0], c_out, *out_spatial)
        else:
            update_mask = update_b.expand(update_b.shape[0], groups, c_out // groups, *out_spatial).reshape(
                update_b.shape[0], c_out, *out_spatial
            )
        if update_mask.shape[0] != out.shape[0]:
            update_mask = update_mask.expand(out.shape[0], *update_mask.shape[1:])
        return update_mask


class PartialConv2d(_PartialConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with partial-convolution padding, or masked (inpainting) convolution when given ``mask_in``.

    Extra arguments: ``multi_channel`` (the mask has one channel per input channel and the window size counts them),
    ``return_mask`` (forward returns ``(output, update_mask)``; the update mask has shape ``(B, C_out, *spatial)``
    with ``multi_channel``, else ``(B, 1, *spatial)`` as in NVIDIA's layer, so single-channel layers chain).
    Unbatched ``(C, H, W)`` input (with an unbatched ``(C_mask, H, W)`` mask) gives unbatched output and mask.
    ``state_dict()`` holds only ``weight``/``bias``.
    """

    _conv_fn = staticmethod(F.conv2d)


class PartialConv1d(_PartialConvMixin, nn.Conv1d):
    """``nn.Conv1d`` counterpart of :class:`PartialConv2d` (same arguments and semantics, one spatial dim)."""

    _conv_fn = staticmethod(F.conv1d)


class PartialConv3d(_PartialConvMixin, nn.Conv3d):
    """``nn.Conv3d`` counterpart of :class:`PartialConv2d` (same arguments and semantics, three spatial dims)."""

    _conv_fn = staticmethod(F.conv3d)
