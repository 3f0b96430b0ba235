"""torchrun-aware process-group setup and the few collectives the programs need.

A run started without torchrun is a one-process run: no process group, every helper here degrades to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_main_process",
    "world_size",
    "barrier",
    "all_reduce_sum",
    "cpu_group",
    "collective_timeout",
    "shared_store_restart_warning",
    "global_count",
    "cleanup",
    "DEFAULT_TIMEOUT_MINUTES",
]

# How long a collective may wait for the other ranks before it fails (train.py --dist-timeout). torch's own default
# (30 min for gloo) would keep a group whose rank hung idle for half an hour before torchrun can restart it.
DEFAULT_TIMEOUT_MINUTES = 10.0

_timeout: Optional[timedelta] = None  # what init_distributed gave the process group (cpu_group's too)
_cpu_group = None


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(requested: Optional[str], local_rank: int) -> torch.device:
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as e:  # ValueError: what every program's cli() reports as one line
        raise ValueError(f"--device {requested}: not a device ({str(e).splitlines()[0]})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: Optional[str] = None, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU), or none.
    ``timeout_minutes``: how long any collective (also those of :func:`cpu_group`) waits for the other ranks."""
    global _timeout
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        _timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, timeout=_timeout, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (and return it); the identity in a one-process run."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def collective_timeout() -> Optional[timedelta]:
    """The timeout :func:`init_distributed` gave every collective; None without a process group made there."""
    return _timeout if dist.is_initialized() else None


def shared_store_restart_warning() -> Optional[str]:
    """A warning for a torchrun job that may restart its workers through torch's shared rendezvous store (the
    default since torch 2.5), None otherwise. Its keys outlive a failed group, so a restarted group can read the
    previous group's addresses and hang in its process-group setup until the timeout (pytorch/pytorch#135712; seen
    here with gloo on one and on two agents): TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives every group a store of its
    own."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) <= 0:
        return None
    return (
        "torchrun --max-restarts with torch's shared rendezvous store: a restarted group can hang in its setup "
        "(pytorch/pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (on every node)"
    )


def cpu_group():
    """A gloo group over all ranks for small host-side agreements (a few numbers per step, no GPU synchronisation);
    made on first use, which is a collective: every rank must first ask for it at the same point of the program."""
    global _cpu_group
    if _cpu_group is None:
        # new_group does not inherit init_process_group's timeout (it takes the backend's default, 30 min for gloo)
        _cpu_group = dist.new_group(backend="gloo", timeout=_timeout)
    return _cpu_group


def global_count(n: int) -> int:
    """The sum of ``n`` over ranks, through :func:`cpu_group` (host values: no device synchronisation); ``n`` in a
    one-process run."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    total = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(total, group=cpu_group())
    return int(total.item())


def cleanup() -> None:
    global _cpu_group, _timeout
    if dist.is_initialized():
        dist.destroy_process_group()
    _cpu_group = _timeout = None
