"""Padding mode's border plan: where, and by how much, partial padding rescales a zero-padded conv's output.

With no mask the ratio S / count (window size over valid taps) depends only on the spatial size and the conv
geometry, is separable per spatial dimension (:func:`padding_ratio_1d`, in closed form) and differs from 1 only on
a few border rows/columns. A plan lists the output boxes where it does, with their ratios (or, for the few
geometries the border path does not cover, the dense ratio map). Plans are built once per geometry and cached per
device/dtype in a module-level table, not on the module, so DataParallel replicas, DDP, torch.compile and
torch.export all see a pure function. :func:`rescale_to_partial` applies a dense plan to any conv's output.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["padding_ratio_1d", "rescale_to_partial", "resolve_pads"]

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
