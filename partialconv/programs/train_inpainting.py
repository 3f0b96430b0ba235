"""Train the PConv U-Net for irregular-hole inpainting (Liu et al., ECCV 2018).

Phase 1:  python -m scripts.train_inpainting --data DIR --vgg-weights vgg16-397923af.pth --output-dir runs/pconv
Phase 2:  python -m scripts.train_inpainting --data DIR --vgg-weights ... --finetune
              --pretrained runs/pconv/checkpoint.pth.tar --output-dir runs/pconv_ft
Multi-GPU: torchrun --nproc_per_node 8 scripts/train_inpainting.py ...
Without --data it trains a few steps on the photos bundled with scikit-image (the embedded demo).
SIGTERM/SIGUSR1/SIGINT (to the process, its group or one torchrun rank): all ranks finish the same step, the
checkpoint is written, exit 143/138/130; the same command plus --resume auto continues exactly.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m partialconv.programs.train_inpainting: stop signals during torch's import
    # below end the program with its exit code, as launch.py does otherwise
    from partialconv.programs.startup_signals import exit_on_stop_signals

    exit_on_stop_signals()

import argparse
import datetime
import math
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from partialconv.checkpoint_io import CheckpointError, extract_state_dict, read_checkpoint
from partialconv.data.inpainting import InpaintingDataset, InpaintingSampler, skimage_demo_folder
from partialconv.data.loaders import resolve_workers
from partialconv.data.masks import IrregularMaskGenerator, MaskFolder
from partialconv.data.worker_signals import ignore_stop_signals, worker_start_context
from partialconv.engine import distributed as dist
from partialconv.engine.amp import AMP_DTYPES
from partialconv.engine.cli import command_name, exit_program, run_cli
from partialconv.engine.inpainting import CLI_ERRORS
from partialconv.engine.inpainting.grid import image_grid
from partialconv.engine.inpainting.training import evaluate, train_step
from partialconv.engine.preemption import Preemption
from partialconv.engine.run_files import (
    LAST,
    check_fresh_start,
    check_output_dir,
    find_resume_checkpoint,
    move_run_aside,
    save_run_checkpoint,
)
from partialconv.engine.runlog import RunLogger
from partialconv.fileio import write_text_atomic
from partialconv.losses.inpainting import (
    DEFAULT_WEIGHTS,
    NO_VGG_FLAGS,
    VGG16_FILE,
    VGG_FETCH,
    InpaintingLoss,
    default_vgg_weights_path,
    vgg_file_is_torchvisions,
)
from partialconv.models import create_model

DEMO_DIR = Path("data/demo_inpainting")
# Demo-mode defaults, used only for flags the user did not give when --data is absent.
DEMO_DEFAULTS = {"image_size": 128, "iters": 20, "batch_size": 2, "log_every": 5, "val_every": 10, "workers": 0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog=command_name("python -m scripts.train_inpainting"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="folder of training images (searched recursively); default: the embedded demo")
    p.add_argument("--val-data", help="folder of validation images (default: the training folder, fixed masks)")
    p.add_argument("--masks", help="folder of training mask PNGs (NVIDIA format, white = hole); default: generated")
    p.add_argument("--val-masks", help="folder of validation mask PNGs; default: generated, fixed per image")
    p.add_argument("--image-size", type=int, help="square training crop in pixels (default 512; demo 128)")
    p.add_argument(
        "--layer-size", type=int, help="encoder/decoder stages (default: 8 for >= 512 px, else log2(size)-1)"
    )
    p.add_argument("-b", "--batch-size", type=int, help="images per GPU/process per step (default 6, the paper's)")
    p.add_argument(
        "-j",
        "--workers",
        type=int,
        help="data-loading worker processes per GPU/process (default: the CPUs available to each local rank less "
        "one; demo 0); more than those CPUs is capped",
    )
    p.add_argument("--iters", type=int, help="total optimisation steps of this phase (default 1000000; demo 20)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4, or 5e-5 with --finetune)")
    p.add_argument("--finetune", action="store_true", help="fine-tuning phase: encoder BN frozen, lr 5e-5")
    p.add_argument("--pretrained", help="initialise the weights from this checkpoint (e.g. phase 1's, for --finetune)")
    p.add_argument(
        "--resume",
        help="continue a run from PATH, or 'auto': OUTPUT_DIR/checkpoint.pth.tar if it exists (if it cannot be read, "
        "the checkpoint.prev.pth.tar kept beside it; neither: a fresh start)",
    )
    p.add_argument("--output-dir", default="runs/inpainting", help="run directory (default runs/inpainting)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --output-dir that holds a run (refused otherwise): its files are moved to "
        "OUTPUT_DIR/replaced-<time>/, nothing is deleted",
    )
    p.add_argument(
        "--keep-prev",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the checkpoint before the last as checkpoint.prev.pth.tar (the fallback if the last cannot be "
        "read); --no-keep-prev saves one checkpoint's disk space",
    )
    p.add_argument(
        "--vgg-weights",
        default=str(default_vgg_weights_path()),
        help="torchvision's ImageNet VGG-16 state_dict for the perceptual/style losses, read only when one of them "
        "has a non-zero weight; a file named vgg16-<sha256 prefix>.pth (torchvision's name) is checked against "
        "that prefix, any other is used with a warning (default: %(default)s). Fetch it once on a machine with "
        f"internet access ({VGG_FETCH}); without it: {NO_VGG_FLAGS}",
    )
    p.add_argument(
        "--loss-weights",
        default="",
        help="override loss weights, e.g. 'hole=6,tv=0.1' (terms: " + ",".join(DEFAULT_WEIGHTS) + ")",
    )
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="mixed precision for the network")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (small per-GPU batches)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, sample order, crops and masks")
    p.add_argument("--log-every", type=int, help="steps between log lines / TensorBoard scalars (default 100)")
    p.add_argument("--val-every", type=int, help="steps between validation, image grids and checkpoints (default 5000)")
    p.add_argument("--val-images", type=int, default=100, help="validation images used (default 100)")
    args = p.parse_args(argv)
    demo = args.data is None
    defaults = {
        "image_size": 512,
        "iters": 1_000_000,
        "batch_size": 6,
        "log_every": 100,
        "val_every": 5000,
        "workers": None,  # resolved in main(): the CPUs each local rank has
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, DEMO_DEFAULTS[key] if demo else value)
    if args.workers is not None and args.workers < 0:
        p.error(f"-j/--workers must be >= 0, got {args.workers}")
    if args.lr is None:
        args.lr = 5e-5 if args.finetune else 2e-4
    if args.layer_size is None:
        args.layer_size = min(8, max(1, int(math.log2(args.image_size)) - 1))
    if args.image_size % 2**args.layer_size:
        p.error(f"--image-size {args.image_size} must be a multiple of 2**--layer-size = {2**args.layer_size}")
    for key in ("batch_size", "iters", "log_every", "val_every", "val_images"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    args.loss_weight_overrides = _parse_weights(p, args.loss_weights)
    return args


def _parse_weights(p: argparse.ArgumentParser, text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        if key not in DEFAULT_WEIGHTS:
            p.error(f"--loss-weights: unknown term {key!r}; expected one of {', '.join(DEFAULT_WEIGHTS)}")
        try:
            out[key] = float(value)
        except ValueError:
            p.error(f"--loss-weights: {item!r} is not TERM=NUMBER")
    return out


def build_data(args, info: dist.DistInfo, start_step: int):
    if args.data is None:
        if info.is_main:  # one writer; the other ranks wait for the files
            skimage_demo_folder(DEMO_DIR)
        dist.barrier()
    data = Path(args.data) if args.data else DEMO_DIR
    train_masks = MaskFolder(args.masks, args.image_size, augment=True) if args.masks else None
    train = InpaintingDataset(data, args.image_size, train=True, masks=train_masks, seed=args.seed)
    val_masks = MaskFolder(args.val_masks, args.image_size) if args.val_masks else None
    val_gen = IrregularMaskGenerator(args.image_size, bucket=None, border=None)
    val = InpaintingDataset(
        args.val_data or data, args.image_size, train=False, masks=val_masks, seed=args.seed + 1, generator=val_gen
    )
    val = Subset(val, range(info.rank, min(len(val), args.val_images), info.world_size))
    sampler = InpaintingSampler(len(train), args.batch_size, info.rank, info.world_size, args.seed, start_step)
    common = {
        "num_workers": args.workers,
        "pin_memory": info.device.type == "cuda",
        "worker_init_fn": ignore_stop_signals,  # a signal to the process group is the main process's to handle
    }
    if args.workers > 0:
        common["persistent_workers"] = True
        common["multiprocessing_context"] = worker_start_context(info.world_size > 1)
    train_loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val, batch_size=args.batch_size, shuffle=False, **common)
    return train_loader, val_loader


def save_state(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    iteration: int,
    args: argparse.Namespace,
) -> None:
    """The run checkpoint, written atomically to OUTPUT_DIR/checkpoint.pth.tar; the one before it is kept as
    checkpoint.prev.pth.tar (what --resume auto falls back to if the last cannot be read)."""
    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    save_run_checkpoint(
        out_dir,
        {
            "arch": "pconv_unet",
            "layer_size": args.layer_size,
            "image_size": args.image_size,
            "finetune": args.finetune,
            "iteration": iteration,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "config": config,
        },
        keep_previous=args.keep_prev,
    )


def load_state(
    ckpt: Any,
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    args: argparse.Namespace,
) -> int:
    """Continue the run checkpoint ``ckpt`` (read from ``path``); returns its iteration."""
    if not isinstance(ckpt, dict) or "iteration" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a train_inpainting.py run checkpoint (no 'iteration')")
    if ckpt.get("layer_size") != args.layer_size or bool(ckpt.get("finetune")) != args.finetune:
        raise CheckpointError(
            f"checkpoint {path}: layer_size={ckpt.get('layer_size')} finetune={ckpt.get('finetune')} does not match "
            f"this run (--layer-size {args.layer_size}{' --finetune' if args.finetune else ''}); to start the "
            f"fine-tuning phase from a phase-1 run use --pretrained, not --resume"
        )
    model.load_state_dict(extract_state_dict(ckpt, path))
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["iteration"])


def main(argv=None) -> int:
    args = parse_args(argv)
    info = dist.init_distributed(args.device)
    device = info.device
    args.workers = resolve_workers(args.workers, info.is_main, "-j/--workers")
    out_dir = Path(args.output_dir)
    check_output_dir(out_dir)
    replace = check_fresh_start(out_dir, args.resume, args.overwrite)  # every rank, before anything is written
    log = RunLogger(out_dir, info.is_main)  # log.txt lines carry the time, as train.py's
    try:
        return _train(args, info, device, out_dir, log, replace)
    finally:
        log.close()
        dist.cleanup()


def _train(args, info: dist.DistInfo, device: torch.device, out_dir: Path, log: RunLogger, replace: bool) -> int:
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = create_model("pconv_unet", layer_size=args.layer_size)
    if args.pretrained:
        model.load_state_dict(extract_state_dict(read_checkpoint(args.pretrained), args.pretrained))
    if args.sync_bn and info.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.finetune:
        model.freeze_encoder_bn()
    model.to(device)
    criterion = InpaintingLoss(args.vgg_weights, args.loss_weight_overrides).to(device)
    unchecked_vgg = criterion.vgg is not None and not vgg_file_is_torchvisions(args.vgg_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    start = 0
    ckpt, path = find_resume_checkpoint(args.resume, out_dir, log.warn)
    if ckpt is not None:
        start = load_state(ckpt, path, model, optimizer, scaler, args)
        log.info(f"resumed from {path} at iteration {start}")
    if start >= args.iters:
        log.info(f"run already finished ({start}/{args.iters} iterations)")
        return 0
    train_loader, val_loader = build_data(args, info, start)  # before anything is written: data errors end clean
    if replace and info.is_main:  # the checks passed: the old run makes room just before the first write
        log.info(f"--overwrite: the previous run in {out_dir} was moved to {move_run_aside(out_dir)}")
    if unchecked_vgg:  # a warning goes to log.txt too: only once the checks have passed
        log.warn(
            f"--vgg-weights {args.vgg_weights}: not named like torchvision's {VGG16_FILE}, so not checked; using it "
            "as VGG-16 ImageNet weights for the perceptual/style losses as it is"
        )
    if ckpt is not None:  # validation lines after the checkpoint's iteration are written again: no duplicates
        log.truncate_metrics(start, key="iteration")
    if info.is_main:
        config = {k: v for k, v in vars(args).items() if k != "loss_weight_overrides"}
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=True))
    ddp = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if info.distributed
        else model
    )
    log.info(
        f"training pconv_unet (layer_size {args.layer_size}, {args.image_size}px) from iteration {start} to "
        f"{args.iters} on {info.world_size} x {device}, batch {args.batch_size}/process, lr {args.lr}"
        f"{', encoder BN frozen' if args.finetune else ''}, amp {args.amp}"
    )

    model.train()
    sums, count, t0 = None, 0, time.perf_counter()
    session = t0  # the ETA follows this session's pace, validations included (train.py's rule)
    with Preemption() as preemption:
        it = iter(train_loader)
        for iteration in range(start + 1, args.iters + 1):
            batch = tuple(t.to(device, non_blocking=True) for t in next(it))
            losses, output = train_step(ddp, criterion, optimizer, scaler, batch, args.amp)
            stacked = torch.stack(list(losses.values()))
            sums = stacked if sums is None else sums + stacked
            count += 1
            last = iteration == args.iters
            if iteration % args.log_every == 0 or last:
                dist.all_reduce_sum(sums)
                means = dict(zip(losses, (sums / (count * info.world_size)).tolist()))
                elapsed = time.perf_counter() - t0
                ips = count * args.batch_size * info.world_size / elapsed
                log.info(
                    f"iter {iteration}/{args.iters} "
                    + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                    + f" | {ips:.1f} img/s | eta {eta(args.iters - iteration, iteration - start, session)}"
                )
                if log.tb is not None:
                    for k, v in means.items():
                        log.tb.add_scalar(f"loss/{k}", v, iteration)
                    log.tb.add_scalar("images_per_sec", ips, iteration)
                sums, count, t0 = None, 0, time.perf_counter()
            saved = iteration % args.val_every == 0 or last
            if saved:
                metrics, shown = evaluate(ddp, val_loader, device, args.amp)
                log.info(
                    f"iter {iteration} val: L1 {metrics['val_l1']:.3f}% PSNR {metrics['val_psnr']:.2f} dB "
                    f"SSIM {metrics['val_ssim']:.4f}"
                )
                log.metrics({"iteration": iteration, "iters": args.iters, **metrics, "time": time.time()})
                if log.tb is not None:
                    for k, v in metrics.items():
                        log.tb.add_scalar(k.replace("val_", "val/"), v, iteration)
                    log.tb.add_image(
                        "train/input_mask_output_composite_gt", image_grid(*batch[:2], output, batch[2]), iteration
                    )
                    if shown is not None:
                        log.tb.add_image("val/input_mask_output_composite_gt", image_grid(*shown), iteration)
                if info.is_main:
                    save_state(out_dir, model, optimizer, scaler, iteration, args)
            if preemption.requested():  # every rank, every step: all stop after the same step
                if info.is_main and not saved:
                    save_state(out_dir, model, optimizer, scaler, iteration, args)
                dist.barrier()
                log.info(
                    f"preempted by {preemption.name} at iteration {iteration}; checkpoint written to "
                    f"{out_dir / LAST}; resume with the same command plus --resume auto"
                )
                return preemption.exit_code
    log.info(f"done: {args.iters} iterations; checkpoint {out_dir / LAST}")
    return 0


def eta(left: int, done: int, since: float) -> datetime.timedelta:
    """Time for ``left`` more steps at the pace of the ``done`` steps since ``since`` (perf_counter)."""
    return datetime.timedelta(seconds=round(left * (time.perf_counter() - since) / max(done, 1)))


def cli(argv=None) -> int:
    """main() with expected failures (bad paths, unreadable files, bad values) as one line on stderr, exit 2."""
    return run_cli(main, argv, Path(__file__).name, CLI_ERRORS)


def entry() -> NoReturn:
    """The program (scripts/train_inpainting.py, partialconv-train-inpainting): ``cli``'s exit code, whatever stop
    signals arrive while the process shuts down."""
    exit_program(cli())


if __name__ == "__main__":
    entry()
