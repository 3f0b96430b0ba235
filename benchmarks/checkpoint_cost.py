"""What one run checkpoint costs: the time the ranks wait while rank 0 writes it (``run_state`` + the commit of
``save_run_checkpoint``), and its size, for a model with an SGD momentum state, as train.py saves it.

    python -m benchmarks.checkpoint_cost -a resnet50 --reps 5 --save

The time is wall clock on the machine's file system under --dir (default: a temporary directory).
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
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "benchmarks.checkpoint_cost", *sys.argv[1:]])

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import RESULTS_DIR, describe_machine, machine_info, save_results
from partialconv.engine.run_files import LAST, save_run_checkpoint
from partialconv.engine.run_state import run_state
from partialconv.engine.trainer import TrainingContext
from partialconv.models import create_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.checkpoint_cost", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("-a", "--arch", default="resnet50", help="model (registry name)")
    p.add_argument("--reps", type=int, default=5, help="checkpoints written (the first one is also timed)")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--save", action="store_true", help="write JSON + markdown under benchmarks/results/")
    args = p.parse_args(argv)

    device = torch.device("cpu")
    info = machine_info(device, "checkpoint_cost.py", sys.argv[1:] if argv is None else argv)
    model = create_model(args.arch, num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # a momentum buffer per parameter, as after the first training step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    ctx = TrainingContext(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, torch.amp.GradScaler("cpu"), device)
    times = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run_dir = Path(tmp)
        for _ in range(args.reps):
            start = time.perf_counter()
            state = run_state(model, ctx, 0, 1, 0.0, {"arch": args.arch}, data=None)
            save_run_checkpoint(run_dir, state)
            times.append(time.perf_counter() - start)
        size_mb = (run_dir / LAST).stat().st_size / 1e6
    row = {
        "arch": args.arch,
        "size_mb": size_mb,
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "mb_per_s": size_mb / statistics.median(times),
    }
    meta = {**info, "machine": describe_machine(info), "reps": args.reps}
    table = (
        f"# Checkpoint cost ({meta['date']})\n\n{meta['machine']}\n\nCommand: `{info.get('command', '')}`\n\n"
        "| model | size | write (median) | min | max | MB/s |\n|---|---|---|---|---|---|\n"
        f"| {args.arch} | {size_mb:.1f} MB | {row['seconds_median']:.3f} s | {row['seconds_min']:.3f} s | "
        f"{row['seconds_max']:.3f} s | {row['mb_per_s']:.0f} |\n"
    )
    print(table)
    if args.save:
        base = save_results(
            RESULTS_DIR / f"checkpoint_cost_{args.arch}_cpu_{info['date'][:10]}", {"meta": meta, "row": row}, table
        )
        print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
