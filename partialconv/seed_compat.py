"""NVIDIA main.py's (the seed's) command line, understood by train.py: ``--gpu N`` means ``--device cuda:N``,
apex's ``--amp-opt-level`` an autocast dtype, and its distributed flags, which torchrun replaces, a one-line error
that prints the equivalent torchrun command instead of argparse's "unrecognized arguments".
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .errors import ConfigError

__all__ = ["APEX_LEVELS", "add_seed_flags", "check_seed_flags", "torchrun_command"]

# apex's opt levels, for users coming from the seed: O0 is fp32, O1..O3 all mean fp16 mixed precision today.
APEX_LEVELS = {"O0": "none", "O1": "fp16", "O2": "fp16", "O3": "fp16"}


def add_seed_flags(p: argparse.ArgumentParser) -> None:
    """NVIDIA main.py's launch flags, accepted so a seed command line gets a one-line answer instead of argparse's."""
    g = p.add_argument_group("seed (NVIDIA main.py) flags")
    g.add_argument("--gpu", type=int, default=None, metavar="N", help="use GPU N only: the same as --device cuda:N")
    g.add_argument("--world-size", type=int, default=None, help="not used: prints the equivalent torchrun command")
    g.add_argument("--rank", type=int, default=None, help="not used: prints the equivalent torchrun command")
    g.add_argument("--dist-url", default=None, help="not used: prints the equivalent torchrun command")
    g.add_argument("--dist-backend", default=None, help="not used (nccl on CUDA, gloo on CPU): prints torchrun's")
    g.add_argument(
        "--multiprocessing-distributed", action="store_true", help="not used: prints the equivalent torchrun command"
    )


_SEED_DIST_FLAGS = ("--world-size", "--rank", "--dist-url", "--dist-backend")
# Where the seed's downloads came from, for --pretrained without a path (this program downloads nothing).
_WEIGHTS_HINT = (
    "get the file on a machine with internet access, e.g. torchvision's "
    "https://download.pytorch.org/models/resnet50-0676ba61.pth for resnet50 or one of NVIDIA's released pd*/zero "
    "padding checkpoints (links in NVIDIA/partialconv's README), then pass --pretrained /path/to/file.pth"
)


def check_seed_flags(cfg: argparse.Namespace, argv: Sequence[str]) -> None:
    """Map NVIDIA main.py's flags: ``--gpu N`` becomes ``--device cuda:N``; its distributed flags and a bare
    ``--pretrained`` raise :class:`ConfigError` with what to do instead (``argv`` rebuilds the torchrun command)."""
    if cfg.pretrained == "" or cfg.pretrained is True:
        raise ConfigError(
            f"--pretrained needs a PATH: weights load from a local file, nothing is downloaded; {_WEIGHTS_HINT}"
        )
    if cfg.gpu is not None:
        if cfg.gpu < 0:
            raise ConfigError(f"--gpu must be >= 0; got {cfg.gpu}")
        if cfg.device not in ("auto", f"cuda:{cfg.gpu}"):
            raise ConfigError(f"--gpu {cfg.gpu} means --device cuda:{cfg.gpu}; it conflicts with --device {cfg.device}")
        cfg.device = f"cuda:{cfg.gpu}"
    if cfg.world_size is None and cfg.rank is None and cfg.dist_url is None and cfg.dist_backend is None:
        if not cfg.multiprocessing_distributed:
            return
    raise ConfigError(
        "--world-size/--rank/--dist-url/--dist-backend/--multiprocessing-distributed are not used: launch with "
        f"torchrun instead: {torchrun_command(cfg, argv)}"
    )


def torchrun_command(cfg: argparse.Namespace, argv: Sequence[str]) -> str:
    """The torchrun command line doing what NVIDIA main.py's distributed flags did. With
    ``--multiprocessing-distributed`` the seed's world size and rank count nodes (one process per GPU); without it
    they count processes (one per node here)."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in (*_SEED_DIST_FLAGS, "--multiprocessing-distributed"):
            skip = name != "--multiprocessing-distributed" and "=" not in arg
            continue
        rest.append(arg)
    nodes = cfg.world_size or 1
    per_node = "<GPUs per node>" if cfg.multiprocessing_distributed else "1"
    cmd = ["torchrun", f"--nnodes {nodes}", f"--node-rank {cfg.rank or 0}", f"--nproc-per-node {per_node}"]
    url = (cfg.dist_url or "").split("://", 1)[-1]
    if url and nodes > 1:
        host, _, port = url.rpartition(":")
        cmd += [f"--master-addr {host or url}"] + ([f"--master-port {port}"] if host else [])
    return " ".join([*cmd, "train.py", *rest])
