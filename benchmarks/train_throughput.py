"""Training throughput: images/s of full training steps (forward, backward, SGD step) per architecture.

    python -m benchmarks.train_throughput --amp bf16 --channels-last --compile            # model only (synthetic)
    python -m benchmarks.train_throughput --data real -j 16 --archs resnet50 pdresnet50    # the whole step
    python -m benchmarks.train_throughput --data loader-only -j 1 2 --malloc default glibc # the data pipeline alone
    python -m benchmarks.train_throughput --data loader-only -j 1 2 -b 32 --split train val  # train.py's default
                                                                         # path vs torchvision's, per CPU-second

Data modes: ``synthetic`` (one random batch already on the device: measures the model), ``real`` (the training data
path over an ImageFolder of JPEGs, PIL or GPU decode: measures the whole step), ``loader-only`` (the data path alone,
worker counts and worker allocator settings interleaved). Without ``--data-dir`` an ImageNet-like JPEG folder (about
500x375, ~100 KB, photo-like) is generated once under ``--cache-dir``.

All configurations of a run are measured interleaved: after a per-config warm-up (excluded; includes compilation),
each timed window runs every config for ``--steps`` steps, in alternating order, so pd and zero padding see the same
machine state; img/s is the median over ``--windows`` windows and the pd overhead is the median of per-window
pd/zero ratios. Peak GPU memory per config is ``torch.cuda.max_memory_allocated`` during its windows, less the
memory held by the other (idle) configs' parameters and optimizer state.

Results: a table on stdout and ``--output-dir``/train_throughput_<date>_<device>.{json,md} with date, device, torch
version, CPU count and the exact command.

Over ~450 lines because its three modes share one interleaved measurement loop and one results table: split into
files, each mode would carry its own copy of the windows, the reference pipeline and the report.
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
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "benchmarks.train_throughput", *sys.argv[1:]])

import argparse
import datetime as dt
import gc
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import ROOT, machine_info, save_results
from benchmarks._jpeg_folder import make_jpeg_folder
from partialconv import PartialConv2d, create_model
from partialconv.data import DataParams, backend_names, batch_to_device, build_loaders, get_backend
from partialconv.data.allocator import ALLOCATOR_SETTINGS, AllocatorWorkerInit
from partialconv.engine.amp import AMP_DTYPES
from partialconv.engine.distributed import DistInfo
from partialconv.layers.partial_conv import padding_ratio_1d
from partialconv.models._registry import is_model, split_pd_name, unknown_model_message

DEFAULT_ARCHS = ("resnet50", "pdresnet50", "vgg16_bn", "pdvgg16_bn")


# --------------------------------------------------------------------------------------------------- the pd variant
class FullRatioPartialConv2d(PartialConv2d):
    """Benchmark-only baseline: padding-mode partial conv as the straightforward full-tensor multiply.

    ``out = conv(x, W) * ratio + b * update`` with a dense (H_out, W_out) ratio map, i.e. one extra read and write of
    the whole output per layer; the package's layer rescales only the border rows/columns. Same numerics.
    """

    def _padding_forward(self, input: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        pads = self._pads()
        if not any(lo or hi for lo, hi in pads):
            return super()._padding_forward(input)
        raw = self._conv_forward(input, self.weight, None)
        geometry = (tuple(self.kernel_size), tuple(self.stride), pads, tuple(self.dilation))
        ratio, update = _dense_ratio(tuple(input.shape[-2:]), geometry, raw.device, raw.dtype)
        out = raw * ratio
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(-1, 1, 1) * update
        return out, (update.expand(out.shape[0], self._mask_channels(), *out.shape[2:]) if self.return_mask else None)


_VARIANTS = {"full": FullRatioPartialConv2d}
_dense_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _dense_ratio(spatial: tuple[int, ...], geometry: tuple, device: torch.device, dtype: torch.dtype):
    key = (spatial, geometry, device, dtype)
    if not torch.compiler.is_compiling() and key in _dense_cache:
        return _dense_cache[key]
    kernel, stride, pads, dilation = geometry
    rows, cols = (
        torch.tensor(padding_ratio_1d(spatial[d], kernel[d], stride[d], *pads[d], dilation[d])[1], device=device)
        for d in (0, 1)
    )
    ratio = torch.outer(rows, cols)
    value = (ratio.to(dtype), (ratio > 0).to(dtype))
    if not torch.compiler.is_compiling():
        _dense_cache[key] = value
    return value


def use_pd_variant(model: nn.Module, impl: str) -> int:
    """Switch every padding-mode PartialConv2d of ``model`` to a benchmark variant ("full"); returns
    how many were switched. The variants add no state, so swapping the class is enough."""
    count = 0
    for module in model.modules():
        if type(module) is PartialConv2d and not module.multi_channel:
            module.__class__ = _VARIANTS[impl]
            count += 1
    return count


# ------------------------------------------------------------------------------------------------------- arguments
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput",
        description="Training throughput (img/s) of full training steps; pd vs zero padding interleaved.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures to measure, interleaved")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size per step")
    p.add_argument("--image-size", type=int, default=224, help="training crop size in pixels")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="autocast dtype (fp16 uses GradScaler)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is warm-up)")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                   help="torch.compile mode (reduce-overhead: CUDA graphs)")  # fmt: skip
    p.add_argument("--pd-impl", nargs="+", choices=("border", "full"), default=["border"],
                   help="partial-padding implementation(s) for pd archs, measured side by side: border = the "
                   "package's layer (ratio on border rows/columns only, one autograd Function); full = benchmark-only "
                   "full-tensor ratio multiply"
                   )  # fmt: skip
    p.add_argument("--data", choices=("synthetic", "real", "loader-only"), default="synthetic",
                   help="synthetic: one batch on the device (model only); real: the training data path over JPEGs "
                   "(whole step); loader-only: the data path alone")  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="ImageFolder root of JPEGs (default: generate one in --cache-dir)")
    p.add_argument("--data-backend", choices=["auto", *backend_names()], default="auto",
                   help="auto: train.py's default (turbo when its decoder loads, else pil); "
                   + "; ".join(f"{n}: {get_backend(n).help}" for n in backend_names()))  # fmt: skip
    p.add_argument("--split", nargs="+", choices=("train", "val"), default=["train"],
                   help="loader-only: the train loader (random-resized crops; reference: RandomResizedCrop + flip) "
                   "and/or the val loader (reference: Resize(256) + CenterCrop(224)), each beside its reference"
                   )  # fmt: skip
    p.add_argument("--note", default="", help="a line about the machine for the results (e.g. 'busy shared 2-core')")
    p.add_argument("-j", "--workers", type=int, nargs="+", default=[min(16, os.cpu_count() or 1)],
                   help="DataLoader workers (loader-only: several values, measured interleaved)")  # fmt: skip
    p.add_argument("--malloc", nargs="+", choices=sorted(ALLOCATOR_SETTINGS), default=["default"],
                   help="loader-only: worker allocator settings to compare: default; glibc = mallopt trim/mmap "
                   "thresholds (as MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_); pillow = PILLOW_BLOCKS_MAX"
                   )  # fmt: skip
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="loader-only: do not measure the torchvision reference pipeline (pytorch/examples' ImageNet "
                   "transforms in the workers, default collate) side by side")  # fmt: skip
    p.add_argument("--pixel-diff", type=int, default=0, metavar="N",
                   help="loader-only with --data-backend pil_fast: also report the mean/max absolute difference, in "
                   "uint8 levels, of N of its crops to the pil backend's (torchvision transforms) for the same keys, "
                   "per JPEG decode scale")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "bench_jpeg", help="where generated JPEGs live")
    p.add_argument("--gen-images", type=int, default=4096, help="number of generated JPEGs")
    p.add_argument("--gen-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"), help="generated size")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per config before measuring")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows per config (img/s is their median)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 steadies CPU runs on a busy machine")  # fmt: skip
    p.add_argument("--find-max-batch", action="store_true",
                   help="CUDA only: largest batch that fits per arch (double -b until OOM, then bisect)")  # fmt: skip
    p.add_argument("--max-batch-step", type=int, default=8, help="--find-max-batch resolution")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, synthetic data and generated JPEGs")
    p.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    p.add_argument("--no-save", action="store_true", help="print the table only, write no files")
    args = p.parse_args(argv)
    # a repeated value (the GPU suite's -j 1 2 $(nproc) on a 2-core machine) would measure one setting twice and pair
    # each with the other's reference
    args.workers = list(dict.fromkeys(args.workers))
    for arch in args.archs:
        if not is_model(arch, task="classification"):
            p.error(f"--archs: {unknown_model_message(arch, task='classification')}")
    for name in ("batch_size", "image_size", "steps", "windows", "gen_images", "max_batch_step"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.warmup < 0 or min(args.workers) < 0:
        p.error("--warmup and -j/--workers must be >= 0")
    if args.data_dir is not None and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir}: not a directory (expected an ImageFolder root: <dir>/<class>/<img>)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.data != "loader-only" and (len(args.workers) > 1 or args.malloc != ["default"]):
        p.error("several -j values and --malloc are for --data loader-only")
    if args.split != ["train"] and args.data != "loader-only":
        p.error("--split is for --data loader-only")
    if args.pixel_diff and (args.data != "loader-only" or args.data_backend != "pil_fast"):
        p.error("--pixel-diff is for --data loader-only --data-backend pil_fast")
    if args.malloc != ["default"] and min(args.workers) == 0:
        p.error("--malloc applies to worker processes; use -j >= 1")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ------------------------------------------------------------------------------------------------------------ data
def data_root(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return args.data_dir
    print(f"generating {args.gen_images} JPEGs under {args.cache_dir} (once; reused afterwards)", flush=True)
    return make_jpeg_folder(args.cache_dir, args.gen_images, num_classes=16, seed=args.seed, size=tuple(args.gen_size))


def build_real_loader(
    args: argparse.Namespace, root: Path, workers: int, device: torch.device, split: str = "train"
) -> tuple[Any, str]:
    """train.py's ``split`` loader (its data entry point, presets, sampler and backend) over ``root``: batches of
    ``(images, targets, bad)``, on the CPU for the PIL backends and on the device for the gpu backend; and the name
    of the backend that built it (the one ``auto`` picked)."""
    params = DataParams(
        train_dir=str(root),
        val_dir=str(root),
        batch_size=args.batch_size,
        workers=workers,
        backend=args.data_backend,
        train_crop_size=args.image_size,
        val_resize_size=val_resize_size(args.image_size),
        val_crop_size=args.image_size,
        seed=args.seed,
        channels_last=args.channels_last,
    )
    loaders = build_loaders(params, DistInfo(rank=0, local_rank=0, world_size=1, device=device))
    return (loaders.train if split == "train" else loaders.val), loaders.backend


def build_reference_loader(
    args: argparse.Namespace, root: Path, workers: int, device: torch.device, split: str = "train"
) -> Any:
    """The torchvision reference data path (pytorch/examples imagenet/main.py): ImageFolder with PIL decode,
    RandomResizedCrop (antialiased bilinear) + RandomHorizontalFlip (train) or Resize(256) + CenterCrop(224) (val,
    scaled with --image-size) + ToTensor + Normalize in the workers, torch's default collate, pinned memory on CUDA,
    shuffled (train)."""
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if split == "train":
        crop = [transforms.RandomResizedCrop(args.image_size, antialias=True), transforms.RandomHorizontalFlip()]
    else:
        crop = [transforms.Resize(val_resize_size(args.image_size)), transforms.CenterCrop(args.image_size)]
    tf = transforms.Compose([*crop, transforms.ToTensor(), normalize])
    dataset = datasets.ImageFolder(str(root), tf)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=split == "train",
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )


def val_resize_size(crop: int) -> int:
    """The eval resize of the shorter side for a ``crop`` px centre crop: 256 for 224, the same 8/7 ratio else."""
    return round(crop * 256 / 224)


class BatchStream:
    """Endless batches from a loader (restarting it at the end of each pass), moved to the device."""

    def __init__(self, loader: Any, device: torch.device, memory_format: torch.memory_format) -> None:
        self.loader = loader
        self.device = device
        self.memory_format = memory_format
        self.it = iter(loader)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            x, y, *_ = next(self.it)  # (images, targets, bad) from ours; (images, targets) from the reference
        except StopIteration:
            self.it = iter(self.loader)
            x, y, *_ = next(self.it)
        # The one function between a loader and the model (train.py's): uint8 batches are normalised on the device.
        return batch_to_device(x, y, self.device, self.memory_format == torch.channels_last)


# ------------------------------------------------------------------------------------------------------ model steps
@dataclass
class Config:
    arch: str
    pd_impl: str  # "border" | "full" | "-" (no partial convs)
    step: Callable[[Tensor, Tensor], None] = field(repr=False)
    state_bytes: int = 0
    rates: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def label(self) -> str:
        return self.arch if self.pd_impl in ("-", "border") else f"{self.arch} ({self.pd_impl})"


def build_step(args: argparse.Namespace, arch: str, pd_impl: str, device: torch.device) -> tuple[Callable, int]:
    """A closure doing one training step on (x, y), and the bytes of its parameters + grads + optimizer state."""
    torch.manual_seed(args.seed)
    model = create_model(arch, num_classes=args.num_classes)
    if pd_impl in _VARIANTS:
        use_pd_variant(model, pd_impl)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    def step(x: Tensor, y: Tensor) -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    state_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, grads, momentum
    return step, state_bytes


def pd_impls_for(arch: str, impls: list[str]) -> list[str]:
    _, partial = split_pd_name(arch)
    return list(impls) if partial else ["-"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, device: torch.device, configs: list[Config], batches: Callable) -> None:
    """Warm up each config, then run ``--windows`` interleaved timed windows (order alternating per window)."""
    for cfg in configs:
        for _ in range(args.warmup):
            cfg.step(*batches())
        synchronize(device)
        print(f"warmed up {cfg.label}", flush=True)
    for window in range(args.windows):
        order = configs if window % 2 == 0 else configs[::-1]
        for cfg in order:
            if device.type == "cuda":
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                cfg.step(*batches())
            synchronize(device)
            cfg.rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
            if device.type == "cuda":
                idle = base - cfg.state_bytes  # the other configs' resident state
                cfg.peak_bytes = max(cfg.peak_bytes, torch.cuda.max_memory_allocated(device) - max(idle, 0))
        rates = ", ".join(f"{c.label} {c.rates[-1]:.1f}" for c in configs)
        print(f"window {window + 1}/{args.windows}: img/s {rates}", flush=True)


def pd_overheads(configs: list[Config]) -> dict[str, float]:
    """Median over windows of pd img/s / zero img/s, for each pd config whose zero-padded arch was measured."""
    by_arch = {c.arch: c for c in configs if c.pd_impl == "-"}
    out = {}
    for cfg in configs:
        base = by_arch.get(split_pd_name(cfg.arch)[0]) if cfg.pd_impl != "-" else None
        if base is not None:
            out[cfg.label] = statistics.median(p / z for p, z in zip(cfg.rates, base.rates))
    return out


# --------------------------------------------------------------------------------------------------- max batch size
def _is_oom(error: BaseException) -> bool:
    # cuDNN/cuBLAS report some allocation failures as plain RuntimeErrors.
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _fits(args: argparse.Namespace, arch: str, device: torch.device, batch: int) -> bool:
    """Whether two training steps of ``arch`` at ``batch`` run; the caller frees the memory afterwards."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        step, _ = build_step(args, arch, args.pd_impl[0] if split_pd_name(arch)[1] else "-", device)
        x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, args.num_classes, (batch,), device=device)
        for _ in range(2):
            step(x, y)
        synchronize(device)
        return True
    except RuntimeError as e:  # OutOfMemoryError is a RuntimeError
        if not _is_oom(e):
            raise
        return False


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def find_max_batch(args: argparse.Namespace, arch: str, device: torch.device) -> int:
    """Largest batch (to ``--max-batch-step``) for which two training steps run: double, then bisect."""

    def fits(batch: int) -> bool:
        ok = _fits(args, arch, device, batch)
        if device.type == "cuda":
            _release_memory()  # after the exception (and its traceback's tensors) is gone
        return ok

    lo, hi = 0, args.batch_size
    while fits(hi):
        print(f"{arch}: batch {hi} fits", flush=True)
        lo, hi = hi, hi * 2
    while hi - lo > args.max_batch_step:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        print(f"{arch}: max batch in [{lo}, {hi})", flush=True)
    return lo


# ----------------------------------------------------------------------------------------------------- loader-only
@dataclass
class LoaderConfig:
    workers: int
    malloc: str
    stream: BatchStream = field(repr=False)
    rates: list[float] = field(default_factory=list)
    pipeline: str = ""  # the backend name, or "torchvision" for the reference
    split: str = "train"
    # CPU seconds spent in the timed windows by the main process and by this loader's workers, and images timed
    cpu_main: float = 0.0
    cpu_workers: Optional[float] = 0.0  # None where the workers' times cannot be read (no /proc)
    images: int = 0

    @property
    def label(self) -> str:
        label = f"{self.pipeline} {self.split} -j {self.workers}"
        return label + ("" if self.malloc == "default" else f" {self.malloc}")


def _process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a live process, from /proc (Linux); None elsewhere or once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _workers_cpu_seconds(stream: BatchStream) -> Optional[float]:
    """CPU seconds of the worker processes of ``stream``'s live DataLoader iterator (persistent workers: the one the
    DataLoader keeps, also inside a SharedBatchLoader); None if they cannot be read (no /proc, or a loader, like the
    gpu backend's, whose iterator is not torch's multi-process one)."""
    torch_loader = getattr(stream.loader, "loader", stream.loader)
    iterator = getattr(torch_loader, "_iterator", None) or stream.it
    times = [_process_cpu_seconds(w.pid) for w in getattr(iterator, "_workers", [])]
    return sum(times) if times and None not in times else None


def measure_loader(args: argparse.Namespace, root: Path, device: torch.device) -> list[dict]:
    """The data path alone, one train.py loader per (workers, allocator) setting, measured in interleaved windows.

    The allocator setting is applied in each worker process by its ``worker_init_fn``. Each window first drains
    the batches a loader prefetched while it was idle (``2 * workers + 1``, untimed), so only steady-state
    production is timed. Next to img/s, each config's CPU time per image in the timed windows is split into the
    main process (collate handover, normalisation on a CPU device) and its workers: on a machine with as many
    cores as workers, their sum bounds the throughput.
    """
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    configs = []
    for split in args.split:
        for workers in args.workers:
            for malloc in args.malloc:
                loader, backend = build_real_loader(args, root, workers, device, split)
                torch_loader = getattr(loader, "loader", loader)  # the DataLoader inside a GpuDecodeLoader
                torch_loader.worker_init_fn = AllocatorWorkerInit(malloc, torch_loader.worker_init_fn)
                stream = BatchStream(loader, device, fmt)
                configs.append(LoaderConfig(workers, malloc, stream, pipeline=backend, split=split))
            if args.reference:
                loader = build_reference_loader(args, root, workers, device, split)
                stream = BatchStream(loader, device, fmt)
                configs.append(LoaderConfig(workers, "default", stream, pipeline="torchvision", split=split))
    for cfg in configs:
        for _ in range(args.warmup):
            cfg.stream.next()
    for window in range(args.windows):
        for cfg in configs if window % 2 == 0 else configs[::-1]:
            for _ in range(2 * cfg.workers + 1):
                cfg.stream.next()
            synchronize(device)
            workers_before, main_before = _workers_cpu_seconds(cfg.stream), time.process_time()
            start = time.perf_counter()
            for _ in range(args.steps):
                cfg.stream.next()
            synchronize(device)
            cfg.rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
            workers_after = _workers_cpu_seconds(cfg.stream)
            cfg.cpu_main += time.process_time() - main_before
            if cfg.cpu_workers is not None and workers_before is not None and workers_after is not None:
                cfg.cpu_workers += workers_after - workers_before
            else:
                cfg.cpu_workers = None
            cfg.images += args.steps * args.batch_size
        rates = ", ".join(f"{c.label} {c.rates[-1]:.1f}" for c in configs)
        print(f"window {window + 1}/{args.windows}: img/s {rates}", flush=True)
    reference = {(c.workers, c.split): c for c in configs if c.pipeline == "torchvision"}
    rows = []
    for c in configs:
        ref = reference.get((c.workers, c.split))
        ratios = [a / b for a, b in zip(c.rates, ref.rates)] if ref is not None and ref is not c else []
        cpu_s = None if c.cpu_workers is None else (c.cpu_main + c.cpu_workers) / c.images
        ref_cpu_s = None if ref is None or ref.cpu_workers is None else (ref.cpu_main + ref.cpu_workers) / ref.images
        rows.append(
            {
                "pipeline": c.pipeline,
                "split": c.split,
                "workers": c.workers,
                "malloc": c.malloc,
                "env": ALLOCATOR_SETTINGS[c.malloc],
                "rates": c.rates,
                "img_per_s": statistics.median(c.rates),
                # median over windows of this config's img/s / the reference's in the same window
                "vs_torchvision": statistics.median(ratios) if ratios else None,
                "vs_torchvision_range": [min(ratios), max(ratios)] if ratios else None,
                # CPU milliseconds per image in the timed windows (process CPU clocks tick at 10 ms: use long runs)
                "cpu_ms_per_image_main": 1000 * c.cpu_main / c.images,
                "cpu_ms_per_image_workers": None if c.cpu_workers is None else 1000 * c.cpu_workers / c.images,
                # images per CPU-second of all processes (main + workers), and that over the reference's: what the
                # data path costs per core, whatever the number of cores
                "img_per_cpu_s": None if not cpu_s else 1 / cpu_s,
                "vs_torchvision_cpu": ref_cpu_s / cpu_s if cpu_s and ref_cpu_s and ref is not c else None,
            }  # fmt: skip
        )
    return rows


def pixel_difference(args: argparse.Namespace, root: Path) -> dict:
    """Mean/max |pil_fast crop - pil crop| in uint8 levels over ``--pixel-diff`` keys (index, seed), in all and per
    decode scale ("1/1" = full-size decode; "1/2", "1/4", "1/8" = libjpeg's reduced-scale decode)."""
    from PIL import Image

    from partialconv.data import ClassificationFolder
    from partialconv.data.datasets import FastTrainFolder
    from partialconv.data.fast_pil import FastTrainCrop, draft_scale
    from partialconv.data.presets import IMAGENET_MEAN, IMAGENET_STD, train_transform

    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    fast = FastTrainFolder(root, FastTrainCrop(args.image_size))
    reference = ClassificationFolder(root, train_transform(args.image_size))
    per_scale: dict[int, list[tuple[float, float]]] = {}
    for k in range(args.pixel_diff):
        key = (k % len(fast), args.seed * 1_000_003 + k)
        ours, ref = fast[key][0].permute(2, 0, 1).float(), reference[key][0]
        diff = (ours - (ref * std + mean) * 255).abs()
        torch.manual_seed(key[1])
        with Image.open(fast.samples[key[0]][0]) as img:
            _, _, h, w, _ = fast.crop.params(*img.size)
        per_scale.setdefault(draft_scale(w, h, args.image_size), []).append((diff.mean().item(), diff.max().item()))
    rows = {"all": [r for rs in per_scale.values() for r in rs], **{f"1/{s}": per_scale[s] for s in sorted(per_scale)}}
    return {
        name: {"crops": len(r), "mean_levels": statistics.fmean(m for m, _ in r), "max_levels": max(x for _, x in r)}
        for name, r in rows.items()
    }


# --------------------------------------------------------------------------------------------------------- results
def markdown(info: dict, args: argparse.Namespace, configs: list[Config], loader_rows: list[dict], extra: dict) -> str:
    lines = [
        f"# Training throughput, {info['device_name']}",
        "",
        f"- date: {info['date']}; commit {info['git_commit']}",
        f"- torch {info['torch']}, torchvision {info['torchvision']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}",
        f"- CPUs: {info['cpu_count']} ({info['cpus_usable']} usable), torch threads {info['torch_threads']}, "
        f"1-min load average at start {info['loadavg_1min']}",
        f"- command: `{info['command']}`",
        *([f"- machine: {args.note}"] if args.note else []),
        f"- data {args.data}"
        + (f" ({args.data_backend} backend, -j {args.workers[0]})" if args.data == "real" else "")
        + f", batch {args.batch_size}, {args.image_size} px, amp {args.amp}, channels_last {args.channels_last}, "
        f"compile {args.compile} ({args.compile_mode})",
        f"- warm-up {args.warmup} steps per config, then img/s = median of {args.windows} interleaved windows of "
        f"{args.steps} steps",
        "",
    ]
    if configs:
        overhead = pd_overheads(configs)
        lines += [
            "| arch | img/s (median) | min-max | ms/step | pd/zero | peak mem (GiB) |",
            "|---|---|---|---|---|---|",
        ]
        for c in configs:
            med = statistics.median(c.rates)
            ratio = f"{overhead[c.label]:.3f}" if c.label in overhead else ""
            mem = f"{c.peak_bytes / 2**30:.2f}" if c.peak_bytes else "n/a (CPU)"
            lines.append(
                f"| {c.label} | {med:.1f} | {min(c.rates):.1f}-{max(c.rates):.1f} | "
                f"{1000 * args.batch_size / med:.1f} | {ratio} | {mem} |"
            )
    if loader_rows:
        lines += [
            "| pipeline | split | workers | allocator | img/s (median) | min-max | vs torchvision (median, range) "
            "| CPU ms/img: main + workers | img per CPU-s | vs torchvision per CPU-s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in loader_rows:
            env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "default"
            ratio = (
                f"{r['vs_torchvision']:.2f}x ({r['vs_torchvision_range'][0]:.2f}-{r['vs_torchvision_range'][1]:.2f})"
                if r["vs_torchvision"] is not None
                else ""
            )
            main_ms, workers_ms = r["cpu_ms_per_image_main"], r["cpu_ms_per_image_workers"]
            cpu = f"{main_ms:.2f} + n/a" if workers_ms is None else f"{main_ms:.2f} + {workers_ms:.2f}"
            per_cpu = "n/a" if r["img_per_cpu_s"] is None else f"{r['img_per_cpu_s']:.0f}"
            cpu_ratio = "" if r["vs_torchvision_cpu"] is None else f"**{r['vs_torchvision_cpu']:.2f}x**"
            lines.append(
                f"| {r['pipeline']} | {r['split']} | {r['workers']} | {env} | {r['img_per_s']:.1f} | "
                f"{min(r['rates']):.1f}-{max(r['rates']):.1f} | {ratio} | {cpu} | {per_cpu} | {cpu_ratio} |"
            )
    for key, value in extra.items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def write_results(args: argparse.Namespace, info: dict, payload: dict, text: str) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    kind = re.sub(r"[^A-Za-z0-9]+", "-", info["device_name"] if info["device"] != "cpu" else "cpu").strip("-").lower()
    return save_results(args.output_dir / f"train_throughput_{stamp}_{kind}_{args.data}", payload, text)


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: Optional[list[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = machine_info(device, Path(__file__).name, argv)
    configs: list[Config] = []
    loader_rows: list[dict] = []
    extra: dict[str, Any] = {}

    if args.data == "loader-only":
        root = data_root(args)
        loader_rows = measure_loader(args, root, device)
        if args.pixel_diff:
            extra["pixel difference"] = pixel_difference(args, root)
    else:
        for arch in args.archs:
            for impl in pd_impls_for(arch, args.pd_impl):
                step, state = build_step(args, arch, impl, device)
                configs.append(Config(arch, impl, step, state))
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        if args.data == "synthetic":
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
            x = x.to(device).contiguous(memory_format=memory_format)
            y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
            measure(args, device, configs, lambda: (x, y))
        else:
            root = data_root(args)
            stream = BatchStream(build_real_loader(args, root, args.workers[0], device)[0], device, memory_format)
            measure(args, device, configs, stream.next)

    if args.find_max_batch:
        if device.type != "cuda":
            extra["max batch"] = "skipped: --find-max-batch is only meaningful on a CUDA device"
            print(extra["max batch"], flush=True)
        else:
            for cfg in configs:
                cfg.step = None  # free the measured models first
            _release_memory()
            extra["max batch"] = {arch: find_max_batch(args, arch, device) for arch in args.archs}

    text = markdown(info, args, configs, loader_rows, extra)
    print(text)
    payload = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [
            {
                "arch": c.arch,
                "pd_impl": c.pd_impl,
                "label": c.label,
                "img_per_s": statistics.median(c.rates),
                "rates": c.rates,
                "peak_mem_bytes": c.peak_bytes or None,
            }  # fmt: skip
            for c in configs
        ],
        "pd_over_zero": pd_overheads(configs) if configs else {},
        "loader": loader_rows,
        **{k.replace(" ", "_"): v for k, v in extra.items()},
    }
    if not args.no_save:
        base = write_results(args, info, payload, text)
        print(f"wrote {base}.json and {base}.md")
    return payload


if __name__ == "__main__":
    main()
