"""Partial convolution (Liu et al., 2018) as drop-in subclasses of ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``.

For a mask M (1 = valid, 0 = hole) and a window of size S (k_h*k_w, or C_in/groups*k_h*k_w with ``multi_channel``):

    count = number of valid mask entries under the window
    out   = conv(X * M, W) * S / count + b   where count > 0
    out   = 0                                 where count == 0 (bias included)

Padding mode (no ``mask_in``): M is 1 inside the image and 0 in the zero padding. The ratio S / count then depends
only on the spatial size and the conv geometry, is separable per spatial dimension, and differs from 1 only on a few
border rows/columns. We compute it in closed form once per geometry, cache it per device/dtype in a module-level
table (no per-module state, so DataParallel replicas, DDP, torch.compile and torch.export all see a pure function),
and rescale only the border boxes of the conv output, forward and backward. A conv whose padding is 0 is a plain
conv. The plan and its cache live in _padding_plan.py, the autograd Functions of both modes in _autograd.py; this
file is the layer: argument checks and the choice of path.

The in-place border function supports neither torch.func transforms (vmap, grad, jvp, jacrev, ...) nor forward-mode
AD; while one of them is active, padding mode takes a plain out-of-place path instead: conv * dense ratio map + b.

Inpainting mode (``mask_in`` given): the count is a channel sum of the mask followed by one box filter (a depthwise
conv with a ones kernel per group), never a C_out x C_in x k x k ones-kernel convolution. Counts and ratios are
computed in fp32 with autocast off and holes are masked explicitly, so fp16/bf16 never see an epsilon or a 1/0.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

from ._autograd import _BorderRescaledConv, _MaskedConv
from ._padding_plan import _border_plan, padding_ratio_1d, rescale_to_partial, resolve_pads

# padding_ratio_1d and rescale_to_partial are imported above only to stay public here: this module's __all__ named them
# before the plan had its own file, and tests, benchmarks and users import them from it.
__all__ = ["PartialConv1d", "PartialConv2d", "PartialConv3d", "padding_ratio_1d", "rescale_to_partial", "resolve_pads"]


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
