#!/usr/bin/env python3
"""Training throughput of the PConv U-Net, with our mask path vs the seed's naive ones-kernel mask convolution.

For each image size the same network (same weights) is built twice: with ``PartialConv2d`` (mask counted by a
channel sum + one box filter) and with ``NaivePartialConv2d`` below (the seed's approach: a C_out x C_in x k x k
ones-kernel convolution of the mask in every layer). One training step = forward, the full inpainting loss (VGG-16
up to pool3), backward and Adam. The two variants alternate step by step so that machine load hits both alike.

    python -m benchmarks.inpainting_speed --sizes 256 512 --batch-size 1 --steps 5
    python -m benchmarks.inpainting_speed --device cuda --batch-size 6 --amp fp16 --steps 30

Writes a markdown table (machine, date, torch version, command) to benchmarks/results/.
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
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "benchmarks.inpainting_speed", *sys.argv[1:]])

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import RESULTS_DIR, describe_machine, machine_info
from partialconv.data.masks import IrregularMaskGenerator
from partialconv.engine.amp import AMP_DTYPES, autocast
from partialconv.engine.inpainting.training import train_step
from partialconv.fileio import write_text_atomic
from partialconv.layers.partial_conv import PartialConv2d
from partialconv.losses.inpainting import InpaintingLoss
from partialconv.models import create_model


class NaivePartialConv2d(nn.Conv2d):
    """The seed's inpainting layer, for comparison only: the valid count comes from convolving the mask with a
    C_out x C_in x k x k ones kernel, ratio = window / (count + 1e-8)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer(
            "ones", torch.ones(self.out_channels, self.in_channels, *self.kernel_size), persistent=False
        )
        self.window = self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def forward(self, input: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            count = F.conv2d(mask.to(self.ones.dtype), self.ones, None, self.stride, self.padding, self.dilation)
            ratio = self.window / (count + 1e-8)
            update = count.clamp(0, 1)
            ratio = ratio * update
        raw = F.conv2d(input * mask.to(input.dtype), self.weight, self.bias, self.stride, self.padding, self.dilation)
        if self.bias is not None:
            bias = self.bias.view(1, -1, 1, 1)
            out = ((raw - bias) * ratio.to(raw.dtype) + bias) * update.to(raw.dtype)
        else:
            out = raw * ratio.to(raw.dtype)
        return out, update


def naive_copy(model: nn.Module) -> nn.Module:
    """The same network and weights with every PartialConv2d replaced by NaivePartialConv2d."""
    naive = copy.deepcopy(model)
    for module in list(naive.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PartialConv2d):
                layer = NaivePartialConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    bias=child.bias is not None,
                )
                layer.load_state_dict(child.state_dict())
                setattr(module, name, layer.to(child.weight.device))
    return naive


def batch(size: int, n: int, device: torch.device):
    g = torch.Generator().manual_seed(size)
    target = torch.rand(n, 3, size, size, generator=g)
    mask = torch.stack([IrregularMaskGenerator(size, bucket=i % 6)(i) for i in range(n)])
    return tuple(t.to(device) for t in (target * mask, mask, target))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_size(size: int, args, device: torch.device) -> dict:
    layer_size = min(8, size.bit_length() - 2)
    torch.manual_seed(0)
    ours = create_model("pconv_unet", layer_size=layer_size).to(device).train()
    naive = naive_copy(ours).train()
    data = batch(size, args.batch_size, device)
    with torch.no_grad():  # both variants compute the same function
        a, _ = ours.eval()(data[0], data[1])
        b, _ = naive.eval()(data[0], data[1])
    ours.train(), naive.train()
    err = (a - b).abs().max().item() / max(a.abs().max().item(), 1e-12)
    if err > 1e-3:
        raise RuntimeError(f"naive and ours disagree at {size}px (relative error {err:.2e})")
    criterion = InpaintingLoss(None).to(device)  # random VGG: same cost as the real one
    variants = {}
    for name, model in (("ours", ours), ("naive", naive)):
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        variants[name] = (model, opt, scaler)

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds); CPU time is robust to other jobs on a shared CPU."""
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    def forward(model):
        with torch.no_grad(), autocast(device, args.amp):
            model(data[0], data[1])

    samples = {(name, kind): [] for name in variants for kind in ("fwd", "train")}
    for model, _, _ in variants.values():
        model.eval()
    for step in range(args.warmup + args.steps):
        for name, (model, _, _) in variants.items():
            t = timed(lambda: forward(model))  # noqa: B023 (called at once)
            if step >= args.warmup:
                samples[name, "fwd"].append(t)
    for step in range(args.warmup + args.steps):
        for name, (model, opt, scaler) in variants.items():
            model.train()
            t = timed(lambda: train_step(model, criterion, opt, scaler, data, args.amp))  # noqa: B023
            if step >= args.warmup:
                samples[name, "train"].append(t)
            print(
                f"{size}px train step {step + 1}/{args.warmup + args.steps} {name}: {t[0]:.3f}s wall, {t[1]:.3f}s CPU",
                flush=True,
            )
    row = {"size": size, "layer_size": layer_size, "err": err}
    for (name, kind), values in samples.items():
        for i, clock in enumerate(("wall", "cpu")):
            row[f"{name}_{kind}_{clock}"] = sorted(v[i] for v in values)[len(values) // 2]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.inpainting_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (256: 7 stages, 512: 8)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (default 1)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="mixed precision for the network")
    p.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's choice)")
    p.add_argument("--output", help="markdown file (default benchmarks/results/inpainting_speed_DATE_DEVICE.md)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = machine_info(device, Path(__file__).name, argv)  # before measuring: the load average at the start
    rows = [bench_size(s, args, device) for s in args.sizes]
    today = info["date"][:10]
    out = Path(args.output or RESULTS_DIR / f"inpainting_speed_{today}_{device.type}.md")
    lines = [
        "# PConv U-Net training speed: our mask path vs the naive ones-kernel mask convolution",
        "",
        f"- date: {today}; machine: {describe_machine(info)}; commit {info['git_commit']}",
        f"- torch {info['torch']}; batch {args.batch_size}; amp {args.amp}; median of {args.steps} steps "
        f"after {args.warmup} warm-up step(s); step = forward + full loss (VGG-16 to pool3) + backward + Adam",
        f"- command: `{info['command']}`",
        "",
        "| size | stages | ours train img/s | naive train img/s | ours CPU s/img | naive CPU s/img "
        "| train speed-up (wall) | train speed-up (CPU time) "
        "| fwd speed-up (wall) | fwd speed-up (CPU time) | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [str(r["size"]), str(r["layer_size"])]
        cells += [f"{args.batch_size / r[f'{v}_train_wall']:.3f}" for v in ("ours", "naive")]
        cells += [f"{r[f'{v}_train_cpu'] / args.batch_size:.2f}" for v in ("ours", "naive")]
        for kind in ("train", "fwd"):
            cells += [f"{r[f'naive_{kind}_{c}'] / r[f'ours_{kind}_{c}']:.2f}x" for c in ("wall", "cpu")]
        cells.append(f"{r['err']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "img/s: wall clock; CPU s/img: this process's CPU seconds per image of a training step. Speed-up: naive "
        "time / our time for the whole training step (train) and for the inference forward alone (fwd), by wall "
        "clock and by this process's CPU time (the latter is robust to other jobs on a shared machine; with one "
        "thread it is the compute time).",
    ]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out, text)
    print(text + f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
