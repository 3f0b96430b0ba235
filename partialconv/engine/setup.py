"""Process-level set-up of a run: seeding, determinism, and wrapping the model (SyncBN, NHWC, compile, DDP)."""

from __future__ import annotations

import argparse
import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..models import create_model
from .distributed import DistInfo

__all__ = ["seed_everything", "configure_backends", "prepare_model", "broadcast_buffers", "run_environment"]


def run_environment(device: torch.device, world_size: int) -> dict[str, object]:
    """The software and devices of a run: Python, torch and torchvision versions, the device kind and name, and
    the number of processes."""
    import platform

    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion (str subclass) that yaml.safe_dump refuses
        "torchvision": str(torchvision.__version__),
        "device": device.type,
        "device_name": name,
        "processes": world_size,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_backends(cfg: argparse.Namespace, device: torch.device) -> None:
    """``--deterministic``: deterministic kernels (warn where none exists), no cuDNN autotuning. Otherwise cuDNN
    benchmark on GPU, and TF32 matmuls/convs (the usual ImageNet trade-off on Ampere and later)."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def override_batchnorm(model: nn.Module, momentum: Optional[float] = None, eps: Optional[float] = None) -> int:
    """Set ``momentum`` and/or ``eps`` (None: leave as built) on every BatchNorm layer of ``model`` (torch's
    1d/2d/3d and SyncBatchNorm, and subclasses such as timm's BatchNormAct2d); returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        if momentum is not None:
            layer.momentum = momentum
        if eps is not None:
            layer.eps = eps
    return len(layers)


def prepare_model(model: nn.Module, cfg: argparse.Namespace, dist: DistInfo) -> tuple[nn.Module, nn.Module]:
    """Returns ``(model, train_model)``: the plain module (saved, evaluated, optimised) on the device, and what the
    training step calls (compiled and/or DDP-wrapped around the same parameters)."""
    if cfg.sync_bn and dist.distributed:
        if dist.device.type != "cuda":
            raise ConfigError(f"--sync-bn: SyncBatchNorm runs on CUDA only; this run is on {dist.device.type}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dist.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if cfg.compile else model
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = DistributedDataParallel(train_model, device_ids=ids)
    return model, train_model


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP syncs them at the start of each
    forward, so after the last step of an epoch they differ by that step's update."""
    if tdist.is_initialized():
        for buf in model.buffers():
            tdist.broadcast(buf, src=0)


def check_input_size(cfg: argparse.Namespace) -> None:
    """Fail before any training when a crop does not fit the architecture: too small (reflect padding reaching a 1x1
    feature map, ResNets below 64 px, Inception below 75 px) or not the fixed size a model takes (ViT: 224 px).
    The probe runs on the meta device (no memory, no compute); a model that cannot run there is probed on the CPU."""
    sizes = (("--train-crop-size", cfg.train_crop_size), ("--val-crop-size", cfg.val_crop_size))
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):  # some builders compute on tensors (RegNet's widths): not on meta
                probe = create_model(cfg.arch, padding=cfg.padding, num_classes=cfg.num_classes or 2)
            for flag, size in sizes:
                reason = _forward_error(probe, size, device)
                if reason is not None:
                    raise ConfigError(f"{flag} {size} does not fit {cfg.arch} with {cfg.padding} padding ({reason})")
            return
        except NotImplementedError:  # a builder or an op that cannot run on meta: probe for real
            continue


def _forward_error(model: nn.Module, size: int, device: str) -> Optional[str]:
    """The first line of the error a forward of two ``size`` x ``size`` images raises, or None if it runs.
    Shape checks surface as RuntimeError (convs, reshapes), AssertionError (``torch._assert`` in ViTs) or
    ValueError; an error naming the meta device is the probe's own limit, raised as NotImplementedError."""
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=device))
    except NotImplementedError:
        raise
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        text = str(e).strip()
        if device == "meta" and "meta" in text.lower():
            raise NotImplementedError(text) from e
        return text.splitlines()[0] if text else type(e).__name__
    return None
