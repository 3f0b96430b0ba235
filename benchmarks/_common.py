"""What every benchmark records next to its numbers: the machine, the software, the code and the exact command."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from partialconv.fileio import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def machine_info(device: torch.device, script: str, argv: Sequence[str]) -> dict[str, Any]:
    """The machine and software a benchmark ran on, and the command that reproduces it (``script`` is the file name
    under benchmarks/, run as the module ``benchmarks.<name>`` from the repository root; ``argv`` its arguments)."""
    import torchvision

    cuda = device.type == "cuda"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine skew CPU numbers; the load average at the start says how busy it was.
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "command": shlex.join(["python", "-m", f"benchmarks.{Path(script).stem}", *argv]),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a table caption: the GPU and CUDA, or the CPU, its cores, threads and load."""
    if info["device"].startswith("cuda"):
        return f"{info['device_name']}, CUDA {info['cuda']}"
    load = f", load average {info['loadavg_1min']:.1f}" if info["loadavg_1min"] is not None else ""
    return f"{info['device_name']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads{load}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


def git_commit() -> Optional[str]:
    """HEAD of the checkout (with "+dirty" for uncommitted changes), so a result names the code it measured."""
    try:
        run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        head = run(["git", "rev-parse", "--short=12", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def save_results(base: Path, payload: dict[str, Any], markdown: str) -> Path:
    """Write ``base.json`` and ``base.md`` atomically; returns ``base``."""
    write_text_atomic(base.with_name(base.name + ".json"), json.dumps(payload, indent=2) + "\n")
    write_text_atomic(base.with_name(base.name + ".md"), markdown)
    return base
