"""Runs that recover by themselves (issue 20): faults delivered the way clusters deliver them, then the whole run
directory checked against a run that never stopped.

- a real SIGKILL right after each ``os.replace`` of a run in turn (every point between two file writes), and at
  random moments over and over; each followed by ``--resume auto``;
- SIGTERM during a long validation and SIGKILL after a grace period shorter than it;
- a real ``torchrun --max-restarts`` whose workers are SIGKILLed at random moments: it finishes by itself;
- a second train.py, and a second padding_benchmark, on the same directory.

After every fault: weights, optimiser state, best and snapshots equal to the straight run's, every epoch once in
metrics.jsonl, no temporary file left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from signalling import ROOT, child_with_env

from partialconv.checkpoint_io import read_checkpoint
from partialconv.data.demo import make_demo_dataset
from partialconv.programs import train

BASE = ["-a", "simple_cnn_bn", "-j", "0", "-b", "4", "--train-crop-size", "16", "--val-resize-size", "20"]
BASE += ["--val-crop-size", "16", "--no-tensorboard", "--device", "cpu", "--seed", "3", "--lr", "0.05"]
BASE += ["--deterministic", "-p", "1"]
LAUNCHER = [sys.executable, str(ROOT / "tests" / "fault_launcher.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING = {"images_per_sec", "epoch_seconds", "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes x 2 train images, batch 4: 5 steps per epoch; 10 val images
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "d", train_per_class=2, val_per_class=1, size=20)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *BASE,
        "--data_train",
        str(data / "train"),
        "--data_val",
        str(data / "val"),
        "--output-dir",
        str(out),
        *extra,
    ]


def launch(argv: list[str], timeout: float = 180, **fault: str) -> subprocess.CompletedProcess:
    env = {**ENV, **{f"FAULT_{k.upper()}": str(v) for k, v in fault.items()}}
    return subprocess.run([*LAUNCHER, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def records(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines]


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert (ca["epoch"], ca["step"], ca["best_acc1"]) == (cb["epoch"], cb["step"], cb["best_acc1"]), (a, b)
    for key in ("state_dict", "optimizer", "scheduler"):
        assert_same_tensors(ca[key], cb[key], f"{a.name}:{key}")


def assert_same_run(run: Path, straight: Path) -> None:
    """The whole directory: final checkpoint, best, snapshots, metrics; nothing left over."""
    names = {p.name for p in run.iterdir()}
    assert names == {p.name for p in straight.iterdir()}, names ^ {p.name for p in straight.iterdir()}
    assert {"checkpoint.pth.tar", "metrics.jsonl", ".lock"} <= names and not [n for n in names if n.endswith(".tmp")]
    for name in ("checkpoint.pth.tar", *(n for n in names if n.startswith(("model_best", "checkpoint_epoch")))):
        assert_same_checkpoint(run / name, straight / name)
    assert records(run) == records(straight)  # every epoch once, the same numbers


def mtime(path: Path) -> float:
    """0 while ``path`` is missing (also for the instant a checkpoint rotation has renamed it away)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def finish(data: Path, out: Path, *extra: str) -> None:
    """--resume auto until the run is finished (in-process, like the straight run)."""
    assert train.cli(args(data, out, "--resume", "auto", *extra)) == 0


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.cli(args(data, out, "--epochs", "2", "--save-every", "1")) == 0
    return out


def test_kill_after_every_file_rename_then_resume_is_the_straight_run(data, straight, tmp_path):
    """SIGKILL right after the K-th os.replace of a 2-epoch --save-every 1 run, for every K the run reaches, each
    followed by --resume auto: the finished directory equals the straight run's (and the kill at K really hit)."""
    k = 0
    while True:
        k += 1
        out = tmp_path / f"k{k}"
        res = launch(args(data, out, "--epochs", "2", "--save-every", "1"), kill_after_replace=k)
        if res.returncode == 0:
            break  # the run makes fewer than k renames: every point was hit
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        finish(data, out, "--epochs", "2", "--save-every", "1")
        assert_same_run(out, straight)
    assert k > 8  # config, 2 x (training save, epoch save with rotation, best, snapshot)


def test_kill_at_random_moments_over_and_over(data, tmp_path):
    """--checkpoint-every-steps 2; SIGKILL at random moments (seeded: 0-0.4 s after the process saved new progress,
    so every kill lands in real work, whatever the machine's speed), each restart a new process with --resume auto,
    until the run finishes: equal to the straight run with the same flags."""
    flags = ["--epochs", "4", "--checkpoint-every-steps", "2"]
    straight = tmp_path / "straight"
    assert train.cli(args(data, straight, *flags)) == 0
    out, rng, kills = tmp_path / "killed", random.Random(20), 0
    ckpt = out / "checkpoint.pth.tar"
    for attempt in range(12):
        seen = mtime(ckpt)
        proc = subprocess.Popen(
            [*LAUNCHER, *args(data, out, *flags, "--resume", "auto")],
            cwd=ROOT,
            env={**ENV, "FAULT_STEP_DELAY": "0.1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while attempt < 4 and proc.poll() is None and mtime(ckpt) <= seen and time.monotonic() < deadline:
            time.sleep(0.02)
        if attempt < 4 and proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.4))
            proc.kill()
            kills += proc.wait() == -signal.SIGKILL
            continue
        assert proc.wait(timeout=180) == 0
        break
    assert proc.returncode == 0 and kills >= 3
    assert_same_run(out, straight)


def test_stop_during_validation_then_kill_after_the_grace_period_keeps_the_epoch(data, straight, tmp_path):
    """SIGTERM to the process group while epoch 2 validates (slowly), SIGKILL 1 s later (the grace period ran out
    before validation did): the epoch's training is in the checkpoint; the resume runs only the validation."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*LAUNCHER, *args(data, out, "--epochs", "2", "--save-every", "1")],
        cwd=ROOT,
        env={**ENV, "FAULT_VALIDATION_DELAY": "4"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = 0
    try:
        for line in proc.stdout:
            seen += line.startswith("FAULT: validating")
            if seen == 2:
                os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(1.0)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    assert seen == 2 and proc.returncode == -signal.SIGKILL
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)  # epoch 2's 5 steps, not yet validated
    assert [r["epoch"] for r in records(out)] == [1]
    finish(data, out, "--epochs", "2", "--save-every", "1")
    assert "resumed from" in (out / "log.txt").read_text() and "epoch 2, step 5" in (out / "log.txt").read_text()
    assert_same_run(out, straight)


def test_second_process_on_the_same_run_dir_is_refused_with_the_holder(data, tmp_path):
    """Two real processes: the second (another seed, --resume auto) gets one line naming the first's pid and exits
    75 while the first trains; the first's run is untouched by it."""
    out, gate = tmp_path / "run", tmp_path / "go-on"
    first = subprocess.Popen(
        [*LAUNCHER, *args(data, out, "--epochs", "2")],
        cwd=ROOT,
        env={**ENV, "FAULT_VALIDATION_GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in first.stdout:
            if line.startswith("FAULT: validating"):
                break
        second = launch([*args(data, out, "--epochs", "2", "--resume", "auto"), "--seed", "5"])
        gate.touch()
        rest = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 75, second.stderr
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and f"in use by pid {first.pid} " in err[0]
    assert first.returncode == 0, rest[-2000:]
    assert [(r["epoch"], r["seed"]) for r in records(out)] == [(1, 3), (2, 3)]


def test_lock_of_a_killed_process_is_free_and_a_failed_start_leaves_nothing(data, tmp_path):
    out = tmp_path / "new" / "run"
    res = launch([*args(data, out, "--epochs", "1"), "--num-classes", "3"])
    assert res.returncode == 2 and not (tmp_path / "new").exists()  # the lock made the directory; it is gone again
    res = launch(args(data, out, "--epochs", "1"), kill_after_replace=1)  # killed holding the lock
    assert res.returncode == -signal.SIGKILL and (out / ".lock").exists()
    finish(data, out, "--epochs", "1")


def test_torchrun_max_restarts_recovers_from_random_worker_kills(data, tmp_path):
    """torchrun --nproc-per-node 2 --max-restarts 5: a killer SIGKILLs a random rank at a random moment of training
    3 times (each time once the restarted group has saved new progress); the run finishes with nobody touching it,
    equal (weights, optimiser, best, metrics) to a straight torchrun run."""
    flags = ["--epochs", "4", "--checkpoint-every-steps", "1", "-b", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    torchrun += ["--monitor-interval", "0.2"]

    def start(out: Path, restarts: int) -> subprocess.Popen:
        cmd = [*torchrun, "--max-restarts", str(restarts), "train.py", *args(data, out, *flags)]
        # torch's shared rendezvous store keeps a failed group's keys: a restarted group can hang in its setup
        # (pytorch/pytorch#135712); docs/preemption.md tells users to set this too
        env = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        log = open(f"{out}.log", "w")  # a file, not a pipe: nobody reads while the killer waits
        try:
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    straight = tmp_path / "straight"
    proc = start(straight, 0)
    assert proc.wait(timeout=300) == 0, Path(f"{straight}.log").read_text()[-3000:]

    run = tmp_path / "killed"
    ckpt = run / "checkpoint.pth.tar"
    proc, rng, kills, seen = start(run, 5), random.Random(7), [], 0.0
    try:
        deadline = time.monotonic() + 300
        while len(kills) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if mtime(ckpt) <= seen:
                continue  # no progress since the last kill yet: the group is (re)starting
            time.sleep(rng.uniform(0.0, 0.5))
            rank = rng.randrange(2)
            try:
                pid = child_with_env(proc.pid, f"RANK={rank}")
            except AssertionError:
                continue  # between two attempts
            os.kill(pid, signal.SIGKILL)
            kills.append((rank, pid))
            seen = max(mtime(ckpt), seen + 1e-6)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = Path(f"{run}.log").read_text()
    assert len(kills) == 3 and proc.returncode == 0, out[-3000:]
    assert out.count("elastic restart") >= 3, out[-3000:]
    assert_same_run(run, straight)


def test_checkpoint_every_minutes_saves_mid_epoch_and_a_kill_there_resumes_exactly(data, tmp_path):
    """--checkpoint-every-minutes 0.008 (0.48 s) with 0.25 s steps: a checkpoint lands inside the first epoch (its
    step between 1 and 4 of 5) by the clock alone; SIGKILL right then, --resume auto: equal to the straight run."""
    flags = ["--epochs", "2", "--checkpoint-every-minutes", "0.008"]
    straight = tmp_path / "straight"
    assert train.cli(args(data, straight, *flags)) == 0
    out = tmp_path / "killed"
    ckpt = out / "checkpoint.pth.tar"
    proc = subprocess.Popen(
        [*LAUNCHER, *args(data, out, *flags)],
        cwd=ROOT,
        env={**ENV, "FAULT_STEP_DELAY": "0.25"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved, deadline, seen = None, time.monotonic() + 120, 0.0
    try:
        while saved is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            if mtime(ckpt) <= seen:
                continue
            seen = mtime(ckpt)
            try:
                state = read_checkpoint(ckpt)
            except FileNotFoundError:
                continue  # renamed away by a rotation this instant
            if state["epoch"] == 0 and 0 < state["step"] < 5:
                proc.kill()
                saved = state["step"]
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert saved is not None and proc.returncode == -signal.SIGKILL, "no checkpoint inside the first epoch"
    finish(data, out, *flags)
    assert_same_run(out, straight)
