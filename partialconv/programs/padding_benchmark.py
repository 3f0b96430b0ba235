"""Run the padding comparison matrix (archs x paddings x runs) with train.py, then write the report.

    python -m scripts.padding_benchmark --archs resnet50 vgg16_bn --runs 5 --root results/padding \\
        --data_train /data/imagenet/train --data_val /data/imagenet/val -- --epochs 90 --amp bf16

Every run is a train.py run in <root>/<arch>/<padding>/run<k>/ (seed k + --seed-offset, the same seed for every
padding, so paddings are compared on equal terms). Finished runs are skipped and interrupted ones are resumed
(--resume auto): stop the benchmark at any time (Ctrl-C) and run the same command again to continue.

Several benchmarks may share one root (e.g. started on several machines over a shared file system): each run
directory is locked by the train.py that trains it, so a run another instance is training is left to it and
checked again later; every run is trained once, and each instance ends when the whole matrix is done.

Exit codes: 0 every run attempted finished; 1 at least one run failed (each is named with its log); 2 bad arguments;
130/143 interrupted by SIGINT/SIGTERM (runs were stopped with SIGTERM so train.py saves a resumable checkpoint).

Over the ~450 lines of a module because it is one program's flat flow: the matrix, the launch of each run (locks,
torchrun or a plain process, the stop signals passed on), the bookkeeping of runs done here, by another instance or
failed, and its CLI; split into files, each would be read only with the others.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from partialconv.analysis import PADDING_ORDER, ReportError, load_run, run_status, write_report
from partialconv.engine.cli import EXIT_FAILED, EXIT_USER_ERROR, DefaultsHelpFormatter, command_name
from partialconv.engine.run_lock import EXIT_RUN_DIR_BUSY, lock_holder
from partialconv.engine.run_state import FINISHED_RUN_NOTE
from partialconv.models import is_model, split_pd_name
from partialconv.models._registry import unknown_model_message
from partialconv.run_dir_names import METRICS_FILE

# train.py's program, run as a module: found the way this program found the package (an install, the checkout's
# root as the working directory, or the PYTHONPATH a run by path set), which every run inherits
TRAIN = ["-m", "partialconv.programs.train"]
RUN_LOG = "run.log"
LAUNCH_HEADER = "=== padding_benchmark "  # starts the line the benchmark writes to a run's log before each launch
# Set per run by the benchmark; passing them after `--` would silently break the matrix layout.
RESERVED_FLAGS = (
    "-a",
    "--arch",
    "--padding",
    "--seed",
    "--output-dir",
    "--resume",
    "--device",
    "--data_train",
    "--data-train",
    "--data_val",
    "--data-val",
    "--prefix",
    "--ckptdirprefix",
    "--overwrite",
)


class UsageError(Exception):
    """Bad command line; the message is one line."""


@dataclass
class Job:
    arch: str
    padding: str
    index: int  # 1-based run number within its (arch, padding) cell
    seed: int
    run_dir: Path
    status: str  # 'new' | 'partial' | 'finished' when planned

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.padding}/run{self.index}"


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's own arguments and the train.py arguments given after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    own, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog=command_name("python -m scripts.padding_benchmark"),
        description="Train every (arch, padding, run) of a padding comparison with train.py, resumably, then "
        "write results.md/results.csv/figures at the results root. train.py flags go after `--`.",
        formatter_class=DefaultsHelpFormatter,
        epilog="example: %(prog)s --archs resnet50 --root results/padding --data_train T --data_val V "
        "-- --epochs 90 --amp bf16",
    )
    parser.add_argument("--archs", nargs="+", required=True, help="architectures (registry names, e.g. resnet50)")
    parser.add_argument(
        "--paddings", nargs="+", default=list(PADDING_ORDER), choices=PADDING_ORDER, help="padding schemes"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per (arch, padding); run k uses seed k+offset")
    parser.add_argument("--seed-offset", type=int, default=0, help="run k trains with seed k + this offset")
    parser.add_argument("--data_train", default=None, help="training ImageFolder (default: train.py's demo data)")
    parser.add_argument("--data_val", default=None, help="validation ImageFolder (default: train.py's demo data)")
    parser.add_argument("--root", type=Path, default=Path("results/padding"), help="results root directory")
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available, else cpu"
    )
    parser.add_argument(
        "--gpus",
        default=None,
        help="comma-separated GPU ids to use (default: all visible, from CUDA_VISIBLE_DEVICES or the driver)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="concurrent runs (GPU only), each on its own GPUs")
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        default=None,
        help="GPUs per run, via torchrun when > 1 (default: all GPUs divided by --parallel)",
    )
    parser.add_argument(
        "--max-runs", type=int, default=None, help="start at most this many runs in this invocation, then stop"
    )
    parser.add_argument(
        "--kill-timeout",
        type=float,
        default=120.0,
        help="seconds a run has to save its checkpoint after SIGTERM on Ctrl-C before it is killed",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    args = parser.parse_args(own)
    for name in ("runs", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.gpus_per_run is not None and args.gpus_per_run < 1:
        parser.error("--gpus-per-run must be >= 1")
    if args.max_runs is not None and args.max_runs < 0:
        parser.error("--max-runs must be >= 0")
    if (args.data_train is None) != (args.data_val is None):
        parser.error("--data_train and --data_val go together (give both, or neither for train.py's demo data)")
    for flag, path in (("--data_train", args.data_train), ("--data_val", args.data_val)):
        if path is not None and "://" not in path and not Path(path).is_dir():  # a URL: train.py's shards backend
            parser.error(f"{flag} {path}: not a directory")
    if args.root.exists() and not args.root.is_dir():
        parser.error(f"--root {args.root}: exists and is not a directory")
    for arch in args.archs:
        if not is_model(arch, task="classification"):
            parser.error(f"--archs: {unknown_model_message(arch, task='classification')}")
        base, partial = split_pd_name(arch)
        if partial:
            parser.error(f"--archs: use {base} (the padding comes from --paddings), not {arch}")
    for token in passthrough:
        if _is_reserved(token):
            flag = token.split("=", 1)[0]
            parser.error(f"train.py flag {flag} after `--` is set by the benchmark for each run; use its own options")
    return args, passthrough


def _is_reserved(token: str) -> bool:
    """Whether a train.py argument would override a per-run setting; argparse also accepts unambiguous prefixes
    of long flags (``--pad``), so those count too."""
    flag = token.split("=", 1)[0]
    if flag.startswith("--"):
        return len(flag) > 2 and any(r.startswith(flag) for r in RESERVED_FLAGS if r.startswith("--"))
    return flag.startswith("-a")


# ------------------------------------------------------------------------------------------------------ planning


def plan_matrix(archs: list[str], paddings: list[str], runs: int, root: Path, seed_offset: int = 0) -> list[Job]:
    """Every (arch, padding, run) in a fixed order, each with its directory's current status."""
    jobs = []
    for arch in dict.fromkeys(archs):
        for padding in dict.fromkeys(paddings):
            for k in range(1, runs + 1):
                run_dir = root / arch / padding / f"run{k}"
                jobs.append(Job(arch, padding, k, k + seed_offset, run_dir, run_status(run_dir)))
    return jobs


def visible_gpus(gpus: Optional[str]) -> list[str]:
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def resolve_device(device: str, gpus: Optional[str]) -> str:
    if device != "auto":
        return device
    if gpus:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_slots(device: str, gpus: list[str], parallel: int, gpus_per_run: Optional[int]) -> list[Optional[list[str]]]:
    """The GPU ids of each concurrent slot; ``[None]`` (one slot, no pinning) on CPU."""
    if device == "cpu":
        if parallel > 1 or gpus_per_run:
            raise UsageError("--parallel/--gpus-per-run need --device cuda; on CPU runs are sequential")
        return [None]
    if not gpus:
        raise UsageError("--device cuda: no GPU visible (check CUDA_VISIBLE_DEVICES or pass --gpus)")
    per_run = gpus_per_run or len(gpus) // parallel
    if per_run < 1 or per_run * parallel > len(gpus):
        raise UsageError(
            f"--parallel {parallel} x --gpus-per-run {gpus_per_run or per_run} needs "
            f"{parallel * max(per_run, 1)} GPUs; {len(gpus)} available ({','.join(gpus)})"
        )
    return [gpus[i * per_run : (i + 1) * per_run] for i in range(parallel)]


def build_command(
    job: Job, device: str, nproc: int, data_train: Optional[str], data_val: Optional[str], passthrough: list[str]
) -> list[str]:
    """The train.py command line of one run (torchrun when it spans several GPUs)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + TRAIN + ["-a", job.arch, "--padding", job.padding, "--seed", str(job.seed)]
    cmd += ["--output-dir", str(job.run_dir), "--resume", "auto", "--device", device]
    if data_train:
        cmd += ["--data_train", data_train]
    if data_val:
        cmd += ["--data_val", data_val]
    return cmd + passthrough


def format_command(cmd: list[str], gpus: Optional[list[str]]) -> str:
    prefix = f"CUDA_VISIBLE_DEVICES={','.join(gpus)} " if gpus is not None else ""
    return prefix + shlex.join(cmd)


# ----------------------------------------------------------------------------------------------------- running


class _Stop:
    """Signal bookkeeping: the first SIGINT/SIGTERM stops the matrix gracefully, a second one kills at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        self.count += 1


def _found_finished(log_path: Path, start: int) -> bool:
    """Whether the train.py whose output begins at ``start`` of ``log_path`` found its run already finished (and so
    trained nothing). Instances that share a root append to one log; this launch's part ends at the next header."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            part = f.read(1 << 20).decode(errors="replace")
    except OSError:
        return False
    return FINISHED_RUN_NOTE in part.split(LAUNCH_HEADER, 1)[0]


@dataclass
class _Active:
    job: Job
    proc: subprocess.Popen
    log: IO[bytes]
    started: float
    position: int
    slot: int
    log_start: int  # where this launch's part of the run's log begins


class Runner:
    """Runs jobs on slots (one process per slot at a time) with progress lines, failure reports and Ctrl-C
    handling. Each child runs in its own session so a terminal Ctrl-C reaches only the benchmark, which then
    sends SIGTERM to every child's process group (train.py checkpoints and exits) and SIGKILL after a timeout."""

    def __init__(self, slots: list[Optional[list[str]]], device: str, args: argparse.Namespace, passthrough: list[str]):
        self.slots = slots
        self.device = device
        self.args = args
        self.passthrough = passthrough
        self.stop = _Stop()
        self.failed: list[tuple[Job, str]] = []
        self.succeeded: list[Job] = []
        self.elsewhere: list[Job] = []  # finished by another process sharing the root
        self.durations: list[float] = []
        self.deferred: dict[str, tuple[int, Job]] = {}  # runs another process is training: checked again later

    def _defer(self, position: int, job: Job, total: int, holder: Optional[str]) -> None:
        self.deferred[job.name] = (position, job)
        who = holder or "another process"
        print(f"[{position}/{total}] busy    {job.name}: trained by {who}; checked again later", flush=True)

    def _recheck_deferred(self, pending: deque, total: int) -> None:
        """Runs whose lock is free again: finished by the other process, or (it stopped) to be resumed here."""
        for name, (position, job) in list(self.deferred.items()):
            if lock_holder(job.run_dir) is not None:
                continue
            del self.deferred[name]
            job.status = run_status(job.run_dir)
            if job.status == "finished":
                self.elsewhere.append(job)
                print(f"[{position}/{total}] done    {job.name} by another process", flush=True)
            else:
                pending.append((position, job))

    def _launch(self, job: Job, slot: int, position: int, total: int) -> Optional[_Active]:
        """Start one run; None (reported as a failure) when its directory or process cannot be set up."""
        gpus = self.slots[slot]
        nproc = len(gpus) if gpus is not None else 1
        cmd = build_command(job, self.device, nproc, self.args.data_train, self.args.data_val, self.passthrough)
        log_path = job.run_dir / RUN_LOG
        env = dict(os.environ)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        try:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "ab")
        except OSError as e:
            self.failed.append((job, f"cannot write {log_path} ({e.strerror})"))
            print(f"[{position}/{total}] FAILED  {job.name}: cannot write {log_path} ({e.strerror})", flush=True)
            return None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"{LAUNCH_HEADER}{stamp}: {format_command(cmd, gpus)}\n".encode())
        log.flush()
        log_start = log.tell()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            log.close()
            self.failed.append((job, f"cannot start {cmd[0]} ({e.strerror})"))
            print(f"[{position}/{total}] FAILED  {job.name}: cannot start {cmd[0]} ({e.strerror})", flush=True)
            return None
        where = f" on GPU {','.join(gpus)}" if gpus is not None else ""
        what = "resume" if job.status == "partial" else "start "
        print(f"[{position}/{total}] {what} {job.name} (seed {job.seed}){where}, log {log_path}", flush=True)
        return _Active(job, proc, log, time.monotonic(), position, slot, log_start)

    def _finish(self, active: _Active, total: int) -> None:
        active.log.close()
        job, code = active.job, active.proc.returncode
        took = time.monotonic() - active.started
        head = f"[{active.position}/{total}]"
        run, _ = load_run(job.run_dir) if (job.run_dir / METRICS_FILE).is_file() else (None, [])
        if code == 0 and run is not None and run.finished and _found_finished(job.run_dir / RUN_LOG, active.log_start):
            self.elsewhere.append(job)  # another instance trained it between our look at its lock and our child's
            print(f"{head} done    {job.name} by another process", flush=True)
            return
        if code == 0 and run is not None and run.finished:
            self.succeeded.append(job)
            self.durations.append(took)
            print(f"{head} done    {job.name} in {took:.1f} s: best val top-1 {run.best_acc1:.2f}{self._eta(total)}")
            sys.stdout.flush()
            return
        if code == EXIT_RUN_DIR_BUSY and not self.stop.signum:  # another process took the run since we looked
            self._defer(active.position, job, total, lock_holder(job.run_dir))
            return
        if code == 0:
            why = "exited 0 but metrics.jsonl does not record the last epoch"
        elif code in (138, 143, -signal.SIGTERM, -signal.SIGKILL) and self.stop.signum:
            why = "stopped (resumable: run the same command again)"
        else:
            why = f"exit code {code}"
        if not self.stop.signum:
            self.failed.append((job, why))
        label = "stopped" if self.stop.signum else "FAILED "
        print(f"{head} {label} {job.name} after {took:.1f} s: {why}; log {job.run_dir / RUN_LOG}", flush=True)

    def _eta(self, total: int) -> str:
        """Remaining time from the mean duration of the runs finished so far (runs of one matrix are alike)."""
        left = total - len(self.succeeded) - len(self.failed)
        if not left or not self.durations:
            return ""
        seconds = sum(self.durations) / len(self.durations) * math.ceil(left / len(self.slots))
        return f"; {left} left, about {seconds / 3600:.1f} h" if seconds >= 3600 else f"; {left} left, ~{seconds:.0f} s"

    def _signal_all(self, active: dict[int, _Active], sig: int) -> None:
        for a in active.values():
            if a.proc.poll() is None:
                try:
                    os.killpg(a.proc.pid, sig)
                except ProcessLookupError:
                    pass

    def run(self, jobs: list[Job]) -> Optional[int]:
        """Run ``jobs``; returns the signal number if interrupted, else None."""
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        pending = deque(enumerate(jobs, 1))
        active: dict[int, _Active] = {}
        kill_at: Optional[float] = None
        recheck_at = 0.0
        try:
            while pending or active or self.deferred:
                if self.stop.signum and kill_at is None:
                    pending.clear()
                    self.deferred.clear()
                    print(f"padding_benchmark: stopping {len(active)} run(s) (SIGTERM, checkpoint)...", flush=True)
                    self._signal_all(active, signal.SIGTERM)
                    kill_at = time.monotonic() + self.args.kill_timeout
                if kill_at is not None and (self.stop.count > 1 or time.monotonic() > kill_at):
                    self._signal_all(active, signal.SIGKILL)
                if self.deferred and time.monotonic() >= recheck_at:
                    self._recheck_deferred(pending, len(jobs))
                    recheck_at = time.monotonic() + 1.0
                while pending and len(active) < len(self.slots):
                    slot = next(i for i in range(len(self.slots)) if i not in active)
                    position, job = pending.popleft()
                    holder = lock_holder(job.run_dir)
                    if holder is not None:
                        self._defer(position, job, len(jobs), holder)
                        continue
                    launched = self._launch(job, slot, position, len(jobs))
                    if launched is not None:
                        active[slot] = launched
                for slot, a in list(active.items()):
                    if a.proc.poll() is not None:
                        del active[slot]
                        self._finish(a, len(jobs))
                time.sleep(0.1)
        finally:
            self._signal_all(active, signal.SIGKILL)
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.stop.signum


# -------------------------------------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    args, passthrough = parse_args(argv)
    try:
        device = resolve_device(args.device, args.gpus)
        gpus = visible_gpus(args.gpus) if device == "cuda" else []
        slots = gpu_slots(device, gpus, args.parallel, args.gpus_per_run)
    except UsageError as e:
        print(f"padding_benchmark: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    jobs = plan_matrix(args.archs, args.paddings, args.runs, args.root, args.seed_offset)
    todo = [j for j in jobs if j.status != "finished"]
    counts = {s: sum(j.status == s for j in jobs) for s in ("finished", "partial", "new")}
    print(
        f"padding_benchmark: {len(jobs)} runs ({len(set(args.archs))} archs x {len(set(args.paddings))} paddings x "
        f"{args.runs}) under {args.root}: {counts['finished']} finished (skipped), {counts['partial']} to resume, "
        f"{counts['new']} new; device {device}, {len(slots)} concurrent slot(s)",
        flush=True,
    )
    limited = todo if args.max_runs is None else todo[: args.max_runs]

    if args.dry_run:
        for job in jobs:
            if job.status == "finished":
                print(f"# skip {job.name}: finished")
        for i, job in enumerate(limited):
            gpus_i = slots[i % len(slots)]
            nproc = len(gpus_i) if gpus_i is not None else 1
            cmd = build_command(job, device, nproc, args.data_train, args.data_val, passthrough)
            print(f"# {job.name} ({job.status}), log {job.run_dir / RUN_LOG}\n{format_command(cmd, gpus_i)}")
        return 0

    runner = Runner(slots, device, args, passthrough)
    signum = runner.run(limited)
    if signum:
        print(f"padding_benchmark: interrupted; rerun the same command to continue ({args.root})", file=sys.stderr)
        return 128 + signum

    left = len(todo) - len(limited)
    print(
        f"padding_benchmark: {len(runner.succeeded)} run(s) finished, {len(runner.failed)} failed, "
        f"{counts['finished']} skipped"
        + (f", {len(runner.elsewhere)} finished by another process" if runner.elsewhere else "")
        + (f", {left} not started (--max-runs {args.max_runs})" if left else ""),
        flush=True,
    )
    for job, why in runner.failed:
        print(f"padding_benchmark: FAILED {job.name}: {why}; log {job.run_dir / RUN_LOG}", file=sys.stderr)
    if not args.no_report:
        try:
            files = write_report(args.root)
            print(f"padding_benchmark: report {files.markdown}", flush=True)
        except ReportError as e:
            print(f"padding_benchmark: no report: {e}", file=sys.stderr)
    return EXIT_FAILED if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
