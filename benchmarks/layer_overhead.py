"""Forward+backward time of PartialConv2d relative to nn.Conv2d on ResNet-50's 3x3 conv shapes.

Variants per shape, interleaved in one run so machine noise hits all of them alike:
  conv        nn.Conv2d, bias on (the baseline)
  partial     PartialConv2d in padding mode (no mask)
  masked      PartialConv2d(multi_channel=True) with a random per-sample, per-channel mask (inpainting mode)
  naive_mask  the seed's inpainting recipe: a C_out x C_in x k x k ones-kernel conv of the mask each forward

    python -m benchmarks.layer_overhead               # CPU, batch 16, prints a markdown table
    python -m benchmarks.layer_overhead --device cuda --save
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # Run by path (python or torchrun with the file's path): run again, in this same process, as `python -m` with
    # this checkout on PYTHONPATH (child processes such as DataLoader workers inherit it), before anything is imported.
    import os
    import sys

    _CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))
    _ORIG = getattr(sys, "orig_argv", sys.argv)  # Python >= 3.10; 3.9 keeps no interpreter options
    _FLAGS = _ORIG[1 : len(_ORIG) - len(sys.argv)]  # the interpreter's own options (-u, -X ...), kept
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "benchmarks.layer_overhead", *sys.argv[1:]])

import argparse
import ctypes
import ctypes.util
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import RESULTS_DIR, describe_machine, machine_info, save_results
from partialconv import PartialConv2d
from partialconv.data.allocator import apply_allocator_setting

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # (channels, spatial) of ResNet-50's 3x3 convs
VARIANTS = ("conv", "partial", "masked", "naive_mask")


def naive_masked_conv(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The seed's per-forward mask update: a full ones-kernel convolution of the mask, then ratio and clamp."""
    with torch.no_grad():
        ones = torch.ones(conv.out_channels, conv.in_channels, *conv.kernel_size, device=x.device, dtype=x.dtype)
        update = F.conv2d(mask, ones, None, conv.stride, conv.padding, conv.dilation)
        ratio = ones[0].numel() / (update + 1e-8)
        update = update.clamp(0, 1)
        ratio = ratio * update
    raw = F.conv2d(x * mask, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    bias = conv.bias.view(1, -1, 1, 1)
    return ((raw - bias) * ratio + bias) * update


def _keep_heap() -> None:
    """Raise glibc's trim threshold to 1 GiB in this process. The variants' peak heap differs (the naive one frees
    well over the 128 MiB threshold of the "glibc" setting), so with trimming the variant after a smaller one grows the
    heap again and pays its page faults: the inpainting variant, which runs after the padding variant in 3 of 4
    rotations, measured ~9,400 minor faults (~6 ms, +0.15x at 64ch@56) per step, and 0 with this. No-op off glibc."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(channels: int, size: int, batch: int, reps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of one forward+backward per variant."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device)
    partial = PartialConv2d(channels, channels, 3, padding=1).to(device)
    masked = PartialConv2d(channels, channels, 3, padding=1, multi_channel=True).to(device)
    partial.load_state_dict(conv.state_dict())
    masked.load_state_dict(conv.state_dict())
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    mask = (torch.rand(batch, channels, size, size, device=device) > 0.25).float()
    grad = torch.randn(batch, channels, size, size, device=device)
    steps = {
        "conv": lambda: conv(x),
        "partial": lambda: partial(x),
        "masked": lambda: masked(x, mask),
        "naive_mask": lambda: naive_masked_conv(conv, x, mask),
    }
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(warmup + reps):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]  # rotate who goes first
        for name in order:
            _sync(device)
            start = time.perf_counter()
            steps[name]().backward(grad)
            _sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
            x.grad = None
    return {name: statistics.median(values) for name, values in times.items()}


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Layer overhead, forward+backward, batch {meta['batch']}, median of {meta['reps']} interleaved reps.",
        f"{meta['date']} | {meta['machine']} | torch {meta['torch']} | `{meta['command']}`",
        "",
        "| shape | nn.Conv2d ms | partial (padding) | masked (inpainting) | naive ones-kernel mask |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['channels']}ch@{r['size']} | {r['conv_ms']:.2f} | {r['partial_ratio']:.3f}x | "
            f"{r['masked_ratio']:.3f}x | {r['naive_mask_ratio']:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.layer_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per variant (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default: 3)")
    parser.add_argument("--shapes", default=None, help="comma list of CxS, e.g. 64x56,512x7 (default: ResNet-50's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--save", action="store_true", help="write JSON + markdown to benchmarks/results/")
    args = parser.parse_args(argv)
    # glibc otherwise returns freed activation buffers to the OS and every variant pays page faults on fresh
    # ones, depending on what ran before it: timings swing by 10-20%. Keeping them in the heap steadies the ratios.
    apply_allocator_setting("glibc")
    _keep_heap()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shapes = SHAPES
    if args.shapes:
        try:
            shapes = tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
        except ValueError:
            parser.error(f"--shapes expects a comma list like 64x56,512x7; got {args.shapes!r}")
    # Recorded before measuring: the load average at the start says how busy the machine was.
    info = machine_info(device, Path(__file__).name, argv)
    rows = []
    for channels, size in shapes:
        t = measure(channels, size, args.batch, args.reps, args.warmup, device)
        row = {"channels": channels, "size": size, "conv_ms": t["conv"] * 1e3}
        row.update({f"{name}_ratio": t[name] / t["conv"] for name in VARIANTS[1:]})
        rows.append(row)
        print(
            f"{channels}ch@{size}: conv {row['conv_ms']:.2f} ms | partial {row['partial_ratio']:.3f}x | "
            f"masked {row['masked_ratio']:.3f}x | naive_mask {row['naive_mask_ratio']:.3f}x",
            flush=True,
        )
    meta = {**info, "machine": describe_machine(info), "batch": args.batch, "reps": args.reps}
    table = to_markdown(rows, meta)
    print("\n" + table)
    if args.save:
        base = save_results(
            RESULTS_DIR / f"layer_overhead_{device.type}_{info['date'][:10]}", {"meta": meta, "rows": rows}, table
        )
        print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
