"""Train (or evaluate) an image classifier on ImageFolder data with zero/partial/reflect/replicate padding.

One GPU:   python train.py -a pdresnet50 --data_train /path/train --data_val /path/val -b 192 -j 32 --prefix run1
8 GPUs:    torchrun --nproc_per_node 8 train.py -a pdresnet50 ...
Demo:      python train.py          (no data flags: a small embedded dataset, a small model, ~30 s on 2 cores)

Every flag: python train.py --help. The run directory, resume and preemption: docs/training.md.
Installed (pip install), from any directory: partialconv-train ... or torchrun ... -m partialconv.programs.train ...
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m partialconv.programs.train (the padding benchmark starts its runs so): stop
    # signals during torch's import below end the program with its exit code, as launch.py does otherwise
    from partialconv.programs.startup_signals import exit_on_stop_signals

    exit_on_stop_signals()

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import NoReturn, Optional, Sequence

import yaml
from torch import nn

from partialconv.checkpoint_io import CheckpointError, extract_state_dict, load_state, read_checkpoint, unwrap_model
from partialconv.config import (
    DATA_IDENTITY_KEY,
    check_same_data,
    compare_resumed_config,
    config_to_yaml,
    eval_sizes_from_run,
    flags_given,
    parse_config,
    run_dir_of,
)
from partialconv.data import DataError
from partialconv.engine.cli import EXIT_FAILED, EXIT_USER_ERROR, exit_program, run_cli
from partialconv.engine.data_setup import (
    data_errors_as_flags,
    drop_last_warning,
    loaders_from_config,
    resolve_data_dirs,
)
from partialconv.engine.distributed import barrier, cleanup, init_distributed, shared_store_restart_warning
from partialconv.engine.metrics import EpochMeter
from partialconv.engine.preemption import Preemption
from partialconv.engine.resume_state import resume_state
from partialconv.engine.run_files import (
    LAST,
    carry_best,
    check_fresh_start,
    check_output_dir,
    complete_run_files,
    elastic_restart_resume,
    find_resume_checkpoint,
    move_run_aside,
    remove_temp_files,
    save_run_checkpoint,
)
from partialconv.engine.run_lock import EXIT_RUN_DIR_BUSY, RunDirBusy, RunDirLock
from partialconv.engine.run_state import (
    FINISHED_RUN_NOTE,
    data_fingerprints,
    finished,
    load_resume_weights,
    run_state,
)
from partialconv.engine.runlog import RunLogger
from partialconv.engine.setup import (
    broadcast_buffers,
    check_input_size,
    configure_backends,
    override_batchnorm,
    prepare_model,
    run_environment,
    seed_everything,
)
from partialconv.engine.trainer import (
    AMP_DTYPES,
    EpochResult,
    EvalSettings,
    NonFiniteLossError,
    TrainingContext,
    build_training_context,
    evaluate,
    train_one_epoch,
)
from partialconv.errors import ConfigError
from partialconv.fileio import WriteError, write_text_atomic
from partialconv.models import create_model
from partialconv.run_dir_names import CONFIG_FILE, ENVIRONMENT_FILE

# The recipe of a bare `python train.py` (no data flags, no --config); package data, so an install has it too
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
# What the user fixes before the same command can work (exit 2); a NaN/Inf loss is the run failing (exit 1).
USER_ERRORS = (ConfigError, DataError, CheckpointError, WriteError)
RUN_DIR_FLAGS = "--prefix or --output-dir"


@data_errors_as_flags()  # the data layer's errors, also those of DataLoader workers, in flag names
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(argv, demo_config=DEMO_CONFIG)
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    configure_backends(cfg, dist.device)
    seed_everything(cfg.seed)
    run_dir = run_dir_of(cfg)
    eval_weights = eval_checkpoint(cfg, run_dir, flags_given(argv, DEMO_CONFIG)) if cfg.evaluate else None
    # what a stopped run advises (before an elastic restart may set --resume): the command as typed resumes already
    resume_advice = "rerun the same command (it has --resume auto)" if cfg.resume == "auto" else None
    restart_note = None
    if not cfg.evaluate:  # torchrun --max-restarts: a restarted group continues its own newest checkpoint
        cfg.resume, cfg.overwrite, restart_note = elastic_restart_resume(run_dir, cfg.resume, cfg.overwrite)
    owner = dist.is_main and not cfg.evaluate  # the one process that writes in the run directory holds its lock
    lock = RunDirLock(run_dir, RUN_DIR_FLAGS, warn=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    if owner:
        check_output_dir(run_dir, RUN_DIR_FLAGS)  # a file in the way, a read-only location: one line, exit 2
        try:
            lock.acquire()
        except OSError as e:
            raise ConfigError(f"{RUN_DIR_FLAGS} {run_dir}: cannot create the run directory ({e.strerror})") from e
        remove_temp_files(run_dir)  # of writes a kill interrupted; nobody else writes here now
    with lock if owner else contextlib.nullcontext():
        return run(cfg, dist, run_dir, restart_note, eval_weights, resume_advice)


def run(cfg, dist, run_dir: Path, restart_note: Optional[str], eval_weights=None, resume_advice=None) -> int:
    """The run itself, in a run directory this process holds (or, off rank 0, whose holder it works with)."""
    # every rank, before rank 0 may write anything
    replace = not cfg.evaluate and check_fresh_start(run_dir, cfg.resume, cfg.overwrite, "--prefix or --output-dir")
    if dist.is_main:
        resolve_data_dirs(cfg)  # the demo dataset, made once by rank 0
    barrier()
    resolve_data_dirs(cfg)
    loaders = loaders_from_config(cfg, dist)
    if cfg.num_classes is not None and cfg.num_classes < len(loaders.classes):
        raise ConfigError(
            f"--num-classes {cfg.num_classes}: the data has {len(loaders.classes)} classes; the classifier needs "
            "at least as many outputs"
        )
    cfg.num_classes = cfg.num_classes or len(loaders.classes)
    data = data_fingerprints(loaders.train.dataset, loaders.val.dataset)  # recorded in every checkpoint
    check_input_size(cfg)
    model = create_model(
        cfg.arch, pretrained=cfg.pretrained, task="classification", padding=cfg.padding, num_classes=cfg.num_classes
    )
    log = RunLogger(None if cfg.evaluate else run_dir, dist.is_main, cfg.tensorboard and not cfg.evaluate)
    bn_flags = [f for f, v in (("--bn-momentum", cfg.bn_momentum), ("--bn-eps", cfg.bn_eps)) if v is not None]
    if override_batchnorm(model, cfg.bn_momentum, cfg.bn_eps) == 0 and bn_flags:
        log.warn(f"{' and '.join(bn_flags)}: {cfg.arch} has no BatchNorm layer; ignored")
    if cfg.evaluate:
        return evaluate_only(cfg, model, loaders, dist, eval_weights, log)
    if restart_note:
        log.info(restart_note)
    store_warning = shared_store_restart_warning()
    if store_warning:
        log.warn(store_warning)
    ckpt, ckpt_path = find_resume_checkpoint(cfg.resume, run_dir, log.warn)
    if ckpt is not None and check_resume(cfg, ckpt, ckpt_path, model, run_dir, loaders.identity, dist, log):
        return 0  # the checkpoint's run is finished: nothing to train
    model, train_model = prepare_model(model, cfg, dist)
    steps_per_epoch = loaders.train_sampler.steps_per_epoch()
    ctx = build_training_context(cfg, model, train_model, dist.device, steps_per_epoch)
    resume = resume_state(
        ckpt, ckpt_path, model, ctx, steps_per_epoch, data, cfg.restart_epoch, cfg.start_epoch, cfg.arch, dist, log
    )
    start_step, best_acc1, last_record = resume.start_step, resume.best_acc1, resume.last_record
    if replace and dist.is_main:  # the last check passed: the old run makes room just before the first write
        log.info(f"--overwrite: the previous run in {run_dir} was moved to {move_run_aside(run_dir)}")
    if dist.is_main:
        log.truncate_metrics(resume.start_epoch, last_record)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, config_to_yaml(cfg))
        write_text_atomic(run_dir / ENVIRONMENT_FILE, yaml.safe_dump(run_environment(dist.device, dist.world_size)))
    log.info(
        f"{cfg.arch} ({cfg.padding} padding, {cfg.num_classes} classes) on {dist.world_size} x {dist.device}; "
        f"{len(loaders.train.dataset)} train / {len(loaders.val.dataset)} val images"
        + (f" ({loaders.identity})" if loaders.identity else "")
        + f"; run dir {run_dir}"
    )
    dropped = drop_last_warning(len(loaders.train.dataset), cfg.batch_size, steps_per_epoch)
    if dropped:
        log.warn(dropped)

    with Preemption(cfg.checkpoint_every_minutes) as preemption:
        config = vars(cfg).copy()
        config[DATA_IDENTITY_KEY] = loaders.identity  # the data itself (shard fingerprints), checked on resume
        for epoch in range(resume.start_epoch, cfg.epochs):
            epoch_start = time.time()
            meter = EpochMeter(dist.device)
            meter.load_state_dict(resume.epoch_sums if start_step else None)
            lr = ctx.lr_at(epoch * steps_per_epoch)  # the epoch's first step's, also when resumed mid-epoch
            save_mid = functools.partial(
                save_mid_epoch, run_dir, model, ctx, epoch, best_acc1, config, data, meter, last_record, dist.is_main
            )
            if start_step < steps_per_epoch:
                loaders.train_sampler.set_epoch(epoch, start_step)
                result = train_one_epoch(
                    ctx,
                    loaders.train,
                    epoch,
                    meter,
                    start_step=start_step,
                    total_steps=steps_per_epoch,
                    print_freq=cfg.print_freq,
                    log=log.info,
                    preemption=preemption,
                    show_progress=dist.is_main,
                    drops_bad_images=cfg.on_bad_image == "skip",
                    checkpoint=save_mid,
                    checkpoint_every_steps=cfg.checkpoint_every_steps,
                )
                if result.preempted and result.steps_done < steps_per_epoch:
                    save_mid(result.steps_done)
                    return preempted_exit(preemption, log, run_dir, epoch, result.steps_done, resume_advice)
                # Every rank validates rank 0's BatchNorm statistics, the ones saved (DDP syncs them before each
                # forward, so the last step left each rank its own), also after a resume from the save below.
                broadcast_buffers(model)
                # The epoch's training is saved before validation: a stop or kill during validation loses only the
                # validation, which the resume runs again.
                save_mid(steps_per_epoch, {"seconds": result.seconds, "images": result.images})
            else:  # resumed between this epoch's training and its validation
                done = resume.epoch_train
                result = EpochResult(
                    steps_per_epoch, False, float(done.get("seconds", 0.0)), int(done.get("images", 0))
                )
            train = meter.reduce()
            settings = ctx.eval_settings()
            val = evaluate(
                model, loaders.val, settings, print_freq=cfg.print_freq, log=log.info, show_progress=dist.is_main
            )
            ema_val = evaluate(ctx.ema, loaders.val, settings, log=log.info) if ctx.ema is not None else None
            top1 = ema_val["acc1"] if ema_val and cfg.best_from_ema else val["acc1"]
            is_best = top1 > best_acc1
            best_acc1 = max(best_acc1, top1)
            record = last_record = epoch_record(
                cfg, epoch, lr, train, val, best_acc1, result, dist.world_size, epoch_start
            )
            if loaders.identity:
                record[DATA_IDENTITY_KEY] = loaders.identity
            if ema_val:
                record.update(ema_val_loss=ema_val["loss"], ema_val_acc1=ema_val["acc1"], ema_val_acc5=ema_val["acc5"])
            state = run_state(model, ctx, epoch + 1, 0, best_acc1, config, data=data)
            state["epoch_record"] = record
            if dist.is_main:
                snapshot = epoch + 1 if cfg.save_every and (epoch + 1) % cfg.save_every == 0 else None
                save_run_checkpoint(run_dir, state, is_best, snapshot, keep_previous=cfg.keep_prev)
            log_epoch(log, cfg, epoch, train, val, best_acc1, record)
            start_step = 0
            if result.preempted:
                return preempted_exit(preemption, log, run_dir, epoch + 1, 0, resume_advice)
    log.info(f"done: {cfg.epochs} epochs, best val acc@1 {best_acc1:.3f}; checkpoints in {run_dir}")
    log.close()
    return 0


def check_resume(cfg, ckpt: dict, path: Path, model: nn.Module, run_dir: Path, identity: str, dist, log) -> bool:
    """The checkpoint to resume, before the model is wrapped: its weights loaded into ``model`` (an unfit file is
    refused before it could pass for a finished run), the best/snapshot files a kill left unmade in ``run_dir``, its
    config and data (``identity``) checked against this run's. Returns True when its run is already finished (said
    on stdout; only a metrics line the disk lost is written back)."""
    load_resume_weights(ckpt, model, path, cfg.arch)
    if dist.is_main and Path(path).parent.resolve() == run_dir.resolve():
        complete_run_files(run_dir, ckpt, Path(path), log.warn)  # best/snapshot a kill left unmade
    if isinstance(ckpt.get("config"), dict):
        changed = compare_resumed_config(ckpt["config"], cfg, str(path))
        check_same_data(ckpt["config"].get(DATA_IDENTITY_KEY), identity, str(path))
        if changed:
            log.info(f"resuming {path} with changed settings: {'; '.join(changed)}")
    else:
        log.warn(f"{path} stores no training config: the settings of this run cannot be checked against it")
    if cfg.start_epoch is None and finished(ckpt, cfg.epochs):
        if dist.is_main:  # nothing is rewritten; only a metrics line the disk lost is written back
            log.truncate_metrics(int(ckpt["epoch"]), ckpt.get("epoch_record"))
            print(
                f"{path}: the run is finished ({ckpt['epoch']} of --epochs {cfg.epochs}, best acc@1 "
                f"{float(ckpt.get('best_acc1', 0.0)):.3f}); {FINISHED_RUN_NOTE}",
                flush=True,
            )
        return True
    if dist.is_main:
        carry_best(path, float(ckpt.get("best_acc1", 0.0)), run_dir, log.warn)
    return False


def epoch_record(
    cfg, epoch: int, lr: float, train: dict, val: dict, best_acc1: float, result, world: int, start: float
) -> dict:
    """One ``metrics.jsonl`` line (the shared contract's keys, plus best_acc1 and bad_images)."""
    return {
        "epoch": epoch + 1,
        "epochs": cfg.epochs,
        "arch": cfg.arch,
        "padding": cfg.padding,
        "seed": cfg.seed,
        "lr": lr,
        "train_loss": train["loss"],
        "train_acc1": train["acc1"],
        "train_acc5": train["acc5"],
        "val_loss": val["loss"],
        "val_acc1": val["acc1"],
        "val_acc5": val["acc5"],
        "best_acc1": best_acc1,
        "bad_images": int(train["bad"] + val["bad"]),
        "images_per_sec": result.images * world / max(result.seconds, 1e-9),
        "epoch_seconds": time.time() - start,
        "time": time.time(),
    }


def eval_checkpoint(cfg, run_dir: Path, given: set[str]) -> tuple[object, Path, str]:
    """``-e``: the checkpoint to evaluate (``--resume``, ``auto``: the run directory's last; or ``--pretrained``),
    read once, its path, and the eval sizes, which become those of the run that wrote it (``eval_sizes_from_run``:
    top-1 at another resolution is another number)."""
    how = "--resume" if cfg.resume else "--pretrained"
    path = Path(run_dir / LAST if cfg.resume == "auto" else cfg.resume or cfg.pretrained)
    ckpt = read_checkpoint(path)
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    return ckpt, path, eval_sizes_from_run(cfg, saved, str(path), given, how)


def evaluate_only(cfg, model, loaders, dist, weights: tuple[object, Path, str], log: RunLogger) -> int:
    """``-e``: top-1/top-5 of the checkpoint ``eval_checkpoint`` read, at the sizes it chose."""
    ckpt, path, sizes = weights
    target = unwrap_model(model)
    load_state(target, extract_state_dict(ckpt, path, target.state_dict().keys()), path)
    model, _ = prepare_model(model, cfg, dist)
    settings = EvalSettings(nn.CrossEntropyLoss(), dist.device, AMP_DTYPES[cfg.amp], cfg.channels_last)
    val = evaluate(model, loaders.val, settings, print_freq=cfg.print_freq, log=log.info, show_progress=dist.is_main)
    log.info(
        f"evaluate {cfg.arch} ({cfg.padding} padding) on {int(val['count'])} images of {cfg.data_val} at {sizes}: "
        f"top-1 {val['acc1']:.3f} top-5 {val['acc5']:.3f} loss {val['loss']:.4f}"
    )
    return 0


def log_epoch(log: RunLogger, cfg, epoch: int, train: dict, val: dict, best_acc1: float, record: dict) -> None:
    """The epoch's line in metrics.jsonl and its summary in the log."""
    log.epoch(record)
    log.info(
        f"Epoch {epoch + 1}/{cfg.epochs}: train loss {train['loss']:.4f} acc@1 {train['acc1']:.2f} | "
        f"val loss {val['loss']:.4f} acc@1 {val['acc1']:.3f} acc@5 {val['acc5']:.3f} (best {best_acc1:.3f}) | "
        + (
            f"ema acc@1 {record['ema_val_acc1']:.3f} acc@5 {record['ema_val_acc5']:.3f} | "
            if "ema_val_acc1" in record
            else ""
        )
        + f"{record['images_per_sec']:.1f} img/s, {record['epoch_seconds']:.1f} s [all ranks]"
    )
    if record["bad_images"]:
        log.warn(f"epoch {epoch + 1}: {record['bad_images']} bad image(s) skipped (named in the warnings above)")


def save_mid_epoch(
    run_dir: Path,
    model: nn.Module,
    ctx: TrainingContext,
    epoch: int,
    best_acc1: float,
    config: dict,
    data: Optional[dict],
    meter: EpochMeter,
    last_record: Optional[dict],
    is_main: bool,
    steps_done: int,
    epoch_train: Optional[dict] = None,
) -> None:
    """The checkpoint after ``steps_done`` steps of ``epoch`` (every rank calls it: gathering RNG states and metric
    sums are collectives; rank 0 writes), with the line of the last completed epoch. ``epoch_train``: the timing of
    a finished epoch's training, saved before its validation."""
    state = run_state(model, ctx, epoch, steps_done, best_acc1, config, meter.state_dict(), data=data)
    state["epoch_record"] = last_record
    if epoch_train is not None:
        state["epoch_train"] = epoch_train
    if is_main:
        save_run_checkpoint(run_dir, state, keep_previous=config.get("keep_prev", True))


def preempted_exit(
    preemption: Preemption, log: RunLogger, run_dir: Path, epoch: int, step: int, advice: Optional[str] = None
) -> int:
    """``epoch``: 0-based, with ``step`` of its steps done (0: ``epoch`` epochs completed). ``advice``: how to
    resume, when the command's own words are not "the same command plus --resume auto"."""
    where = f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}"
    log.info(
        f"preempted by {preemption.name}: stopped at {where}, checkpoint written to {run_dir / LAST}; "
        + (advice or "resume with the same command plus --resume auto")
    )
    log.close()
    return preemption.exit_code


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``main`` with expected failures as one ``error:`` line and the exit code of the rule in engine/cli.py: 2 for
    what the user must fix (flags, config, data, checkpoint files, output paths), 1 for a failed run (NaN/Inf loss);
    75 when another process holds the run directory."""
    errors = [(RunDirBusy, EXIT_RUN_DIR_BUSY), (USER_ERRORS, EXIT_USER_ERROR), (NonFiniteLossError, EXIT_FAILED)]
    return run_cli(main, argv, "train.py", errors, cleanup=cleanup, timeout_flag="--dist-timeout")


def entry() -> NoReturn:
    """The program (train.py, partialconv-train, ``python -m partialconv.programs.train``): ``cli``'s exit code,
    whatever stop signals arrive while the process shuts down."""
    exit_program(cli())


if __name__ == "__main__":
    entry()
