"""The training loop's parts: optimiser/schedule/AMP setup, one step, one epoch, evaluation.

No host synchronisation per step: losses, hits and the first non-finite step are accumulated on the device and
read at the print frequency and at the end of the epoch.
"""

from __future__ import annotations

import argparse
import datetime
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..data.loaders import batch_to_device
from ..data.sampler import seeded_draws
from .amp import AMP_DTYPES, autocast
from .distributed import global_count
from .metrics import EpochMeter
from .optim import LRSchedule, build_optimizer
from .preemption import Preemption
from .runlog import Progress

__all__ = [
    "AMP_DTYPES",
    "NonFiniteLossError",
    "TrainingContext",
    "EvalSettings",
    "EpochResult",
    "build_training_context",
    "lr_factor",
    "lr_schedule_of",
    "seek_schedule",
    "train_step",
    "train_one_epoch",
    "evaluate",
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the message names the epoch and step."""


@dataclass(frozen=True)
class EvalSettings:
    """What :func:`evaluate` needs besides the model and the data."""

    criterion: nn.Module
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False


@dataclass
class TrainingContext:
    """Everything a training step needs besides the batch: the model that runs forward (DDP- and/or compile-wrapped),
    loss, optimizer, LR schedule, AMP scaler and dtype, the input's form, gradient clipping, MixUp/CutMix and the
    model EMA. Built by :func:`build_training_context`."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    input_shape: tuple[int, int, int] = (3, 224, 224)  # of one training image: an empty local batch gets this shape
    clip_grad_norm: Optional[float] = None  # --clip-grad-norm: max total gradient norm (None: no clipping)
    mix: Optional[Callable] = None  # --mixup-alpha/--cutmix-alpha: (images, targets) -> (images, soft targets)
    seed: int = 0  # of the per-(epoch, step) MixUp/CutMix draws
    ema: Optional[torch.optim.swa_utils.AveragedModel] = None  # --model-ema: averaged copy of the (unwrapped) model
    ema_source: Optional[nn.Module] = None  # the unwrapped model the EMA follows
    ema_steps: int = 32  # --model-ema-steps: optimiser steps between EMA updates
    ema_warmup_epochs: float = 0.0  # during LR warm-up the EMA restarts from the weights (torchvision's references)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def eval_settings(self) -> EvalSettings:
        """How :func:`evaluate` runs the val split under this training (same loss, device, AMP and memory format)."""
        return EvalSettings(self.criterion, self.device, self.amp_dtype, self.channels_last)

    def lr_at(self, iteration: int) -> float:
        """The first parameter group's LR at global ``iteration`` by the schedule, wherever the scheduler is now (the
        LR of an epoch's first step, logged also when the run resumed mid-epoch)."""
        return self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](iteration)


def lr_schedule_of(cfg: argparse.Namespace) -> LRSchedule:
    """The config's :class:`~partialconv.engine.optim.LRSchedule`. A namespace without the newer keys (older
    callers) gets this version's defaults; a resumed run's missing keys are settled by the resume check."""
    lr_min = getattr(cfg, "lr_min", 0.0)
    return LRSchedule(
        schedule=cfg.lr_schedule,
        epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        step_size=cfg.lr_step_size,
        gamma=cfg.lr_gamma,
        warmup_method=getattr(cfg, "lr_warmup_method", "linear"),
        warmup_decay=getattr(cfg, "lr_warmup_decay", 0.01),
        update=getattr(cfg, "lr_update", "iteration"),
        step_origin=getattr(cfg, "lr_step_origin", "warmup"),
        min_factor=lr_min / cfg.lr if cfg.lr > 0 else 0.0,  # every group has the peak LR --lr
    )


def lr_factor(cfg: argparse.Namespace, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at a global iteration (:class:`~partialconv.engine.optim.LRSchedule`)."""
    return lr_schedule_of(cfg).factor_fn(steps_per_epoch)


def seek_schedule(ctx: TrainingContext, iteration: int) -> None:
    """Put the LR schedule at global ``iteration`` (``--start-epoch``): the LR of a run that got there, whatever the
    checkpoint or a fresh start left the scheduler at."""
    with warnings.catch_warnings():
        # "scheduler.step() before optimizer.step()": on a fresh run; no optimiser step is skipped by this.
        warnings.simplefilter("ignore", UserWarning)
        ctx.scheduler.last_epoch = iteration - 1
        ctx.scheduler.step()


def build_training_context(
    cfg: argparse.Namespace, model: nn.Module, train_model: nn.Module, device: torch.device, steps_per_epoch: int
) -> TrainingContext:
    """The optimiser of ``--opt`` (default SGD with weight decay on every parameter: the seed's recipe; parameter
    groups by ``--norm-weight-decay``/``--bias-weight-decay``), the per-iteration LR schedule and the GradScaler
    (active for fp16 only)."""
    optimizer = build_optimizer(
        getattr(cfg, "opt", "sgd"),
        model,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        norm_weight_decay=getattr(cfg, "norm_weight_decay", None),
        bias_weight_decay=getattr(cfg, "bias_weight_decay", None),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    return TrainingContext(
        model=train_model,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        amp_dtype=AMP_DTYPES[cfg.amp],
        channels_last=cfg.channels_last,
        input_shape=(3, cfg.train_crop_size, cfg.train_crop_size),
        clip_grad_norm=getattr(cfg, "clip_grad_norm", None),
        mix=batch_mix(getattr(cfg, "mixup_alpha", 0.0), getattr(cfg, "cutmix_alpha", 0.0), cfg.num_classes)
        if getattr(cfg, "mixup_alpha", 0.0) or getattr(cfg, "cutmix_alpha", 0.0)
        else None,
        seed=getattr(cfg, "seed", 0),
        ema=build_ema(model, cfg) if getattr(cfg, "model_ema", False) else None,
        ema_source=model,
        ema_steps=getattr(cfg, "model_ema_steps", 32),
        ema_warmup_epochs=cfg.warmup_epochs,
    )


def build_ema(model: nn.Module, cfg: argparse.Namespace) -> torch.optim.swa_utils.AveragedModel:
    """torch's AveragedModel with the EMA averaging function over parameters and buffers. As in torchvision's
    references the decay per update is adjusted for updating every ``model_ema_steps`` steps: 1 - decay is scaled
    by (global batch x steps / epochs), capped at 1."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    alpha = min(1.0, (1.0 - cfg.model_ema_decay) * cfg.batch_size * cfg.model_ema_steps / cfg.epochs)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1.0 - alpha), use_buffers=True)


def update_ema(ctx: TrainingContext, epoch: int, step: int) -> None:
    """After step ``step`` (0-based in ``epoch``): every ``ema_steps`` steps fold the model into the EMA."""
    if ctx.ema is None or step % ctx.ema_steps:
        return
    ctx.ema.update_parameters(ctx.ema_source)
    if epoch < ctx.ema_warmup_epochs:
        ctx.ema.n_averaged.fill_(0)  # during warm-up the average restarts: it copies the weights


def batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable:
    """torchvision.transforms.v2's MixUp and/or CutMix (one of the two, chosen at random per batch, as in
    torchvision's references): ``(images, int targets) -> (mixed images, soft targets)``."""
    from torchvision.transforms import v2

    mixes = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
    mixes += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def mix_batch(ctx: TrainingContext, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int, rank: int = 0):
    """``ctx.mix`` on a device batch with its random draws (choice, lambda, box) from a generator seeded by
    (seed, epoch, step, rank): a resumed run replays them; the caller's RNG is untouched. Each rank draws its own
    (as each GPU of torchvision's reference does), so a global batch mixes with world-size draws, not one."""
    # rank 0 keeps the seed of runs started before ranks drew apart, so that they still resume exactly
    key = (ctx.seed, epoch, step) if rank == 0 else (ctx.seed, epoch, step, rank)
    with seeded_draws(hash(key) & (2**63 - 1)):  # the draws are CPU ones (torch.distributions, randint)
        return ctx.mix(images, targets)


def train_step(
    ctx: TrainingContext, images: torch.Tensor, targets: torch.Tensor, loss_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, optimiser and schedule step on a device batch; returns the (detached) loss and logits.

    The gradient is that of ``loss_weight`` x the batch's mean loss. An empty batch (all its images bad, under DDP
    where this rank must still join the gradient all-reduce) runs the model on zero images and contributes zeros.
    """
    with ctx.autocast():
        logits = ctx.model(images)
        loss = ctx.criterion(logits, targets) if targets.numel() else logits.sum() * 0.0
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss * loss_weight if loss_weight != 1.0 else loss).backward()
    if ctx.clip_grad_norm is not None:  # on the true gradients: unscaled first (the scaler's step skips unscaling)
        ctx.scaler.unscale_(ctx.optimizer)
        nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.clip_grad_norm)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.scheduler.step()
    return loss.detach(), logits.detach()


@dataclass
class EpochResult:
    steps_done: int  # completed steps of this epoch, counting those before a mid-epoch resume
    preempted: bool
    seconds: float
    images: int  # images this rank trained on in this session of the epoch


def train_one_epoch(
    ctx: TrainingContext,
    loader: DataLoader,
    epoch: int,
    meter: EpochMeter,
    *,
    start_step: int = 0,
    total_steps: Optional[int] = None,
    print_freq: int = 10,
    log: Callable[[str], None] = print,
    preemption: Optional[Preemption] = None,
    show_progress: bool = False,
    drops_bad_images: bool = True,
    checkpoint: Optional[Callable[[int], None]] = None,
    checkpoint_every_steps: int = 0,
) -> EpochResult:
    """Train over ``loader`` (already positioned at ``start_step``); ``epoch`` is 0-based.

    Stops after the current step when ``preemption`` was signalled (in a distributed run, after the step at which
    all ranks know of it). Raises :class:`NonFiniteLossError`.

    ``checkpoint(steps_done)`` is called by every rank after the same step, inside the epoch (its end has its own
    checkpoint): every ``checkpoint_every_steps`` iterations of the run (counted from the run's start, so a resumed
    run saves at the same steps) and whenever ``preemption``'s wall-clock interval is over.

    Bad images dropped by the loader (``drops_bad_images``: ``--on-bad-image skip``) leave short or empty local
    batches, and all ranks still take every step together (DDP's collectives must pair up): the ranks add up their
    good images (one small CPU all-reduce per step) and weight each rank's mean loss by its share, so the optimiser
    sees the gradient of the mean loss over the step's good images of all ranks: what one process training on the
    same global batch computes. A rank without images joins with zeros. A step where no rank has an image is
    skipped by all: no optimiser update, while the LR schedule and the step count follow the data position.
    """
    ctx.model.train()
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    total_steps = total_steps if total_steps is not None else start_step + len(loader)
    first_bad = torch.full((), -1, dtype=torch.long, device=ctx.device)
    progress = Progress(total_steps, f"epoch {epoch + 1}", show_progress, initial=start_step)
    step, images_seen, preempted = start_step, 0, False
    start = step_end = time.perf_counter()
    window = _Window(start_step)
    try:
        for images, targets, bad in loader:
            window.data_seconds += time.perf_counter() - step_end  # waiting for the loader (host time)
            meter.bad += bad
            local = targets.shape[0]
            # same decision on every rank (a collective): counted whenever the loader may drop bad images
            count = global_count(local) if drops_bad_images and world > 1 else local * world
            if count == 0:  # no rank has an image: every rank skips the update; the position moves on
                _step_schedule_only(ctx)
            else:
                if local == 0:
                    images = torch.zeros((0, *ctx.input_shape))
                    targets = torch.zeros((0,), dtype=torch.long)
                images, targets = batch_to_device(images, targets, ctx.device, ctx.channels_last)
                if ctx.mix is not None and local:
                    images, targets = mix_batch(ctx, images, targets, epoch, step, rank)
                loss, logits = train_step(ctx, images, targets, local * world / count)
                if local:
                    # soft (mixed) targets: train top-1/top-5 count the class with the largest share as the label
                    meter.update(loss, logits, targets if targets.ndim == 1 else targets.argmax(1))
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
                if ctx.ema is not None:
                    update_ema(ctx, epoch, step)
            step += 1
            images_seen += local
            at_print = step % print_freq == 0 or step == total_steps
            progress.update(meter.local_summary() if at_print and progress.interactive else None)
            if at_print:
                _check_finite(first_bad, epoch)
                if not progress.interactive:
                    s = meter.local_summary()
                    log(
                        f"Epoch: [{epoch + 1}][{step}/{total_steps}] loss {s['loss']:.4f} acc@1 {s['acc1']:.2f} "
                        f"acc@5 {s['acc5']:.2f} lr {ctx.optimizer.param_groups[0]['lr']:.5f} "
                        f"{images_seen / max(time.perf_counter() - start, 1e-9):.1f} img/s/rank "
                        + window.line(step, total_steps)
                    )
            if preemption is not None and preemption.requested():
                preempted = True
                break
            every = checkpoint_every_steps and (epoch * total_steps + step) % checkpoint_every_steps == 0
            if checkpoint is not None and step < total_steps and (every or (preemption and preemption.checkpoint_due)):
                checkpoint(step)
                if preemption is not None:
                    preemption.checkpoint_written()
            step_end = time.perf_counter()
    finally:
        progress.close()
    _check_finite(first_bad, epoch)
    return EpochResult(step, preempted, time.perf_counter() - start, images_seen)


def _step_schedule_only(ctx: TrainingContext) -> None:
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()" when the first step is skipped
        warnings.simplefilter("ignore", UserWarning)
        ctx.scheduler.step()


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    bad_step = int(first_bad.item())
    if bad_step >= 0:
        raise NonFiniteLossError(
            f"loss is NaN/Inf at epoch {epoch + 1} step {bad_step + 1}; stopping (the last checkpoint is untouched). "
            "Lower --lr, add --warmup-epochs, or use --amp bf16 instead of fp16"
        )


class _Window:
    """The tail of a progress line: mean data-loading wait per step since the previous line, the ETA of the loop
    from this session's pace, and whose numbers the line shows (this rank's: no collective at print time)."""

    def __init__(self, start_step: int) -> None:
        self.start, self.first_step, self.last_step = time.perf_counter(), start_step, start_step
        self.data_seconds = 0.0

    def line(self, step: int, total: int) -> str:
        done = step - self.first_step
        eta = (total - step) * (time.perf_counter() - self.start) / max(done, 1)
        data = self.data_seconds / max(step - self.last_step, 1)
        self.data_seconds, self.last_step = 0.0, step
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return f"data {data * 1000:.1f} ms/step eta {datetime.timedelta(seconds=round(eta))} [rank {rank} of {world}]"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    settings: EvalSettings,
    *,
    print_freq: int = 0,
    log: Callable[[str], None] = print,
    show_progress: bool = False,
) -> dict[str, float]:
    """Loss and top-1/top-5 (percent) over the whole split, summed exactly over ranks (a collective). With
    ``show_progress`` a bar on a terminal, else (``print_freq`` > 0) a ``Val:`` line every ``print_freq`` steps with
    this rank's running numbers."""
    model.eval()
    device = settings.device
    meter = EpochMeter(device)
    amp = autocast(device, settings.amp_dtype)
    total = len(loader)
    progress = Progress(total, "val", show_progress)
    window = _Window(0)
    step_end = time.perf_counter()
    try:
        for step, (images, targets, bad) in enumerate(loader, 1):
            window.data_seconds += time.perf_counter() - step_end
            meter.bad += bad
            if images.numel() > 0:
                images, targets = batch_to_device(images, targets, device, settings.channels_last)
                with amp:
                    logits = model(images)
                    loss = settings.criterion(logits, targets)
                meter.update(loss.float(), logits.float(), targets)
            progress.update()
            if print_freq > 0 and not progress.interactive and (step % print_freq == 0 or step == total):
                s = meter.local_summary()
                log(
                    f"Val: [{step}/{total}] loss {s['loss']:.4f} acc@1 {s['acc1']:.2f} acc@5 {s['acc5']:.2f} "
                    + window.line(step, total)
                )
            step_end = time.perf_counter()
    finally:
        progress.close()
    return meter.reduce()
