"""Distributed runs under the faults of a cluster, through real torchrun agents (gloo on CPU): a rank that hangs
(SIGSTOP) or dies (SIGKILL), and two agents standing for two nodes (c10d rendezvous on 127.0.0.1) that share one run
directory: the run itself, one node preempted by a SIGTERM to its agent only, and the resume of both.

Every launch runs in a session of its own, every wait has a deadline, and whatever a test started is killed at its
end (ranks included: torchrun starts them in sessions of their own)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest
import torch
from signalling import child_with_env, kill_tree

from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.engine.data_setup import loaders_from_config
from partialconv.engine.distributed import DistInfo, shared_store_restart_warning
from partialconv.engine.run_files import LAST, elastic_restart_resume
from partialconv.engine.run_lock import LOCK_NAME
from partialconv.engine.trainer import EvalSettings, evaluate
from partialconv.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 80 train images at -b 4 over 2 ranks: 20 steps per epoch; 39 val images (odd: 20 on one rank, 19 on the other).
# simple_cnn has no BatchNorm; --deterministic: the same run twice gives the same bits.
BASE = [
    "-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "4", "--lr", "0.05", "--seed", "3", "-p", "1",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--deterministic",
    "--no-tensorboard",
]  # fmt: skip
STEPS = 20
TIMING = {"images_per_sec", "epoch_seconds", "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=8, val_per_class=4, size=24)
    next((root / "val" / "dots").iterdir()).unlink()
    return root


def args(data: Path, out: Path, *extra: str) -> list[str]:
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    return [*BASE, *dirs, "--output-dir", str(out), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_cmd(port: int, node: int, argv: Sequence[str], *torchrun_flags: str) -> list[str]:
    """The agent of node ``node``: what each node of a two-node job runs (docs/training.md, "Two nodes")."""
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]
    nodes = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"]
    return [*TORCHRUN, *nodes, *rdzv, *torchrun_flags, str(ROOT / "train.py"), *argv]


def start_two_nodes(
    runs: Launched, argv: Sequence[str], *torchrun_flags: str, env: Optional[dict[str, str]] = None
) -> None:
    port = free_port()
    for node in (0, 1):
        runs.start(node_cmd(port, node, argv, *torchrun_flags), env)


class Launched:
    """Processes started in sessions of their own, each writing its output to a file; killed with everything below
    them on :meth:`close`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.procs, self.logs = log_dir, [], []

    def start(self, cmd: list[str], env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        log = self.log_dir / f"launch{len(self.logs)}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def outputs(self) -> str:
        """Every launch's output without the progress lines (for assertions and failure messages)."""
        return "".join(
            f"--- launch {i}\n" + "".join(line for line in self.output(i).splitlines(True) if ": [" not in line[:12])
            for i in range(len(self.logs))
        )

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Poll the outputs until one has a line matching ``pattern``; the time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, self.output(i), re.M) for i in range(len(self.logs))):
                return time.monotonic()
            if all(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.02)
        pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.outputs()}")

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running after {timeout} s:\n{self.outputs()}")
        return [p.returncode for p in self.procs]

    def rank_pids(self) -> dict[int, tuple[int, int]]:
        """Global rank -> (launch index, pid) of every rank (torchrun's children, by their RANK)."""
        found = {}
        for i, proc in enumerate(self.procs):
            for rank in (0, 1):
                try:
                    found[rank] = (i, child_with_env(proc.pid, f"RANK={rank}"))
                except AssertionError:
                    pass
        return found

    def close(self) -> None:
        for proc in self.procs:
            kill_tree(proc.pid)
            proc.wait(timeout=30)


@pytest.fixture()
def launched(tmp_path):
    runs = Launched(tmp_path)
    try:
        yield runs
    finally:
        runs.close()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "train.py: error:" in line]


def rank_tracebacks(output: str) -> list[str]:
    """The ranks' own tracebacks (torchrun prefixes rank output with "[rankN]:"); torchrun's report is not one."""
    return [line for line in output.splitlines() if re.match(r"\[rank\d+\]:.*Traceback", line)]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_equal_state(a: Any, b: Any, where: str = "checkpoint") -> None:
    """``a`` and ``b`` the same to the bit: tensors by torch.equal, containers entry by entry, the rest by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a: Path, b: Path) -> None:
    """The final checkpoints hold the same weights, optimiser, scheduler and RNG states; the same metrics lines."""
    ca, cb = read_checkpoint(a / "checkpoint.pth.tar"), read_checkpoint(b / "checkpoint.pth.tar")
    for key in ("state_dict", "optimizer", "scheduler", "rng", "epoch", "step", "best_acc1"):
        assert_equal_state(ca[key], cb[key], key)
    assert untimed(metrics(a)) == untimed(metrics(b))


def no_temp_files(run_dir: Path) -> list[Path]:
    """Temp files (``.name.*.tmp``) and other hidden files in the run directory, but for its lock file."""
    return [
        p for p in run_dir.rglob("*") if p.name != LOCK_NAME and (p.name.startswith(".") or p.name.endswith(".tmp"))
    ]


# --------------------------------------------------------------------------------------- a rank that hangs or dies


def test_hung_rank_times_out_in_one_line_naming_the_rank(data, tmp_path, launched):
    """SIGSTOP one rank mid-epoch (a rank stuck in a driver call, a swapped-out node): the other rank's next
    collective fails after --dist-timeout (6 s here) with one line naming that rank, and torchrun ends the group
    (its 30 s grace to the stopped rank, then SIGKILL) with a non-zero exit. Also the gloo group of the per-step
    agreements (preemption, sample counts) must honour the timeout: torch gives new groups 30 minutes."""
    torchrun = launched.start(
        [*TORCHRUN, "--standalone", "--nproc-per-node", "2", str(ROOT / "train.py"),
         *args(data, tmp_path / "run", "--epochs", "2", "--dist-timeout", "0.1")]
    )  # fmt: skip
    launched.wait_for(r"^Epoch: \[1\]\[3/20\]", timeout=120)
    hung = child_with_env(torchrun.pid, "RANK=1")
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    seen = launched.wait_for("train.py: error:", timeout=60)
    (code,) = launched.wait(timeout=60)
    ended = time.monotonic()
    output = launched.output(0)
    assert code != 0, output
    lines = error_lines(output)
    assert len(lines) == 1, output
    line = lines[0]
    assert "rank 0 of 2: no answer from the other ranks within 0.1 min (--dist-timeout) in " in line, line
    assert "a rank hung or died" in line and not rank_tracebacks(output), output
    assert 5 < seen - stopped < 30, f"{seen - stopped:.1f} s from the stop to the error line"
    assert ended - stopped < 6 + 30 + 20, f"torchrun ended {ended - stopped:.1f} s after the stop"
    assert not Path(f"/proc/{hung}").exists() or "zombie" in Path(f"/proc/{hung}/status").read_text()


def test_killed_rank_on_one_node_ends_the_other_node_in_one_line(data, tmp_path, launched):
    """Two agents (two nodes); the rank of the node without rank 0 is SIGKILLed mid-epoch (the OOM killer): rank 0,
    on the other node, stops with one line instead of waiting, and both agents exit non-zero promptly."""
    start_two_nodes(launched, args(data, tmp_path / "run", "--epochs", "2", "--dist-timeout", "5"))
    launched.wait_for(r"^Epoch: \[1\]\[3/20\]", timeout=120)
    ranks = launched.rank_pids()
    assert set(ranks) == {0, 1} and ranks[0][0] != ranks[1][0], ranks  # one rank per agent
    os.kill(ranks[1][1], signal.SIGKILL)
    killed = time.monotonic()
    codes = launched.wait(timeout=60)
    output = launched.outputs()
    assert all(code != 0 for code in codes), output
    assert time.monotonic() - killed < 40, output  # not the 5-minute collective timeout
    lines = error_lines(output)
    assert len(lines) == 1 and "rank 0 stopped: another rank failed" in lines[0], output
    assert not rank_tracebacks(output), output


# ------------------------------------------------------------------------------ two agents standing for two nodes


def run_two_nodes(runs: Launched, argv: Sequence[str], timeout: float = 240) -> list[int]:
    start_two_nodes(runs, argv)
    return runs.wait(timeout)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """Two agents, one rank each, two epochs without interruption: the reference."""
    tmp = tmp_path_factory.mktemp("straight")
    runs = Launched(tmp)
    try:
        codes = run_two_nodes(runs, args(data, tmp / "run", "--epochs", "2"))
        assert codes == [0, 0], runs.outputs()
        (tmp / "output.txt").write_text(runs.output(0) + runs.output(1))
    finally:
        runs.close()
    return tmp / "run"


def test_two_nodes_train_one_run_with_exact_validation(data, straight):
    """The shared run directory holds one run: every epoch once in metrics.jsonl, one log, no temp file; the
    validation of the two nodes counts the 39 images once each (the numbers of one process on the same weights)."""
    output = (straight.parent / "output.txt").read_text()
    assert output.count("on 2 x cpu") == 1 and output.count("done: 2 epochs") == 1, output
    assert "node_rank is only used for static rdzv_backend" in output  # c10d ranks by arrival: see docs/training.md
    assert [m["epoch"] for m in metrics(straight)] == [1, 2]
    assert (straight / "log.txt").read_text().count("done: 2 epochs") == 1
    assert not no_temp_files(straight), no_temp_files(straight)
    cfg = parse_config(args(data, straight))
    loaders = loaders_from_config(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    model = create_model("simple_cnn", task="classification", padding=cfg.padding, num_classes=10)
    model.load_state_dict(read_checkpoint(straight / "checkpoint.pth.tar")["state_dict"])
    one = evaluate(model, loaders.val, EvalSettings(torch.nn.CrossEntropyLoss(), torch.device("cpu")))
    last = metrics(straight)[-1]
    assert one["count"] == 39
    assert last["val_acc1"] == one["acc1"] and last["val_acc5"] == one["acc5"]
    assert last["val_loss"] == pytest.approx(one["loss"], rel=1e-6)


@pytest.mark.parametrize("preempted", ["node-of-rank-1", "node-of-rank-0"])
def test_one_node_preempted_stops_both_at_one_step_and_the_resume_equals_a_straight_run(
    data, straight, tmp_path, launched, preempted
):
    """SIGTERM to one agent only (its node is preempted; torchrun passes it to its rank): both ranks stop after
    the same step, rank 0 writes one mid-epoch checkpoint (also when its own node got no signal), and both agents
    started again with --resume auto finish the run with the straight run's weights, optimiser state and metrics."""
    out = tmp_path / "run"
    start_two_nodes(launched, args(data, out, "--epochs", "2"))
    launched.wait_for(r"^Epoch: \[1\]\[3/20\]", timeout=120)
    ranks = launched.rank_pids()
    assert set(ranks) == {0, 1} and ranks[0][0] != ranks[1][0], ranks
    victim = ranks[0 if preempted == "node-of-rank-0" else 1][0]
    for _, pid in ranks.values():  # frozen, so the signal lands mid-epoch wherever the ranks are
        os.kill(pid, signal.SIGSTOP)
    try:
        os.kill(launched.procs[victim].pid, signal.SIGTERM)
        time.sleep(0.5)  # the agent's handler forwards it to its rank
    finally:
        for _, pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
    codes = launched.wait(timeout=90)
    output = launched.outputs()
    assert all(code != 0 for code in codes), output
    # Mostly inside epoch 1; on a loaded machine the 0.7 s epoch may be over before the ranks are stopped: any step
    # of either epoch is a mid-epoch stop that the resume must make exact.
    stops = re.findall(r"preempted by SIGTERM: stopped at epoch (\d+) step (\d+)", output)
    assert len(stops) == 1, output
    assert not error_lines(output) and not rank_tracebacks(output), output
    survivor = launched.output(1 - victim)
    assert re.search(r"exitcode\s*:\s*143", survivor), survivor  # the rank of the node without the signal stopped too
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert (ckpt["epoch"] + 1, ckpt["step"]) == tuple(map(int, stops[0])) and 1 <= ckpt["step"] < STEPS, stops
    done = metrics(out) if (out / "metrics.jsonl").exists() else []
    assert [m["epoch"] for m in done] == list(range(1, ckpt["epoch"] + 1)), done
    assert not no_temp_files(out), no_temp_files(out)

    resumed = Launched(tmp_path / "resume")
    (tmp_path / "resume").mkdir()
    try:
        codes = run_two_nodes(resumed, args(data, out, "--epochs", "2", "--resume", "auto"))
        assert codes == [0, 0], resumed.outputs()
        where = f"epoch {ckpt['epoch'] + 1}, step {ckpt['step']}"
        assert f"resumed from {out / 'checkpoint.pth.tar'}: {where}" in resumed.outputs()
    finally:
        resumed.close()
    assert_same_run(straight, out)
    assert not no_temp_files(out), no_temp_files(out)


def test_two_nodes_under_max_restarts_recover_from_a_killed_rank_by_themselves(data, straight, tmp_path, launched):
    """Both agents with --max-restarts 3 and a checkpoint every 5 steps, no --resume: the rank on one node is
    SIGKILLed once mid-epoch. The group restarts on both nodes (on the other node torchrun restarts the healthy rank
    without counting a restart: its TORCHELASTIC_RESTART_COUNT stays 0), continues from the newest checkpoint and
    ends with the straight run's weights, optimiser state and metrics, every epoch once in metrics.jsonl.
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with torch's shared rendezvous store the restarted group can hang in its
    setup (pytorch/pytorch#135712), which train.py warns about."""
    out = tmp_path / "run"
    argv = args(data, out, "--epochs", "2", "--checkpoint-every-steps", "5")
    start_two_nodes(launched, argv, "--max-restarts", "3", env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    launched.wait_for(r"^Epoch: \[1\]\[8/20\]", timeout=120)
    ranks = launched.rank_pids()
    assert set(ranks) == {0, 1} and ranks[0][0] != ranks[1][0], ranks
    os.kill(ranks[1][1], signal.SIGKILL)
    codes = launched.wait(timeout=180)
    output = launched.outputs()
    assert codes == [0, 0], output
    assert re.search(r"^elastic restart .*: continuing from the newest checkpoint", output, re.M), output
    resumed = re.search(r"^resumed from .*: epoch 1, step (\d+)", output, re.M)
    assert resumed and 5 <= int(resumed.group(1)) < STEPS, output  # a periodic checkpoint of epoch 1
    assert output.count("done: 2 epochs") == 1 and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in output, output
    # no rank refused to start ("holds a run") for want of a restart count: the one line is the failed rank's peer
    assert [line for line in error_lines(output) if "another rank failed" not in line] == [], output
    assert_same_run(straight, out)
    assert not no_temp_files(out), no_temp_files(out)


def test_a_restart_for_another_nodes_failure_continues_this_jobs_checkpoint(tmp_path, monkeypatch):
    """torchrun restarts a healthy node's workers for another node's failure with TORCHELASTIC_RESTART_COUNT
    unchanged (0 on the first failure): under --max-restarts they continue the job's newest checkpoint all the same;
    a previous run's checkpoint (older than the agent) is left to the command line's flags, as is any checkpoint
    without --max-restarts."""
    ckpt = tmp_path / LAST
    ckpt.write_bytes(b"written by this job")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    resume, overwrite, note = elastic_restart_resume(tmp_path, None, True)
    assert (resume, overwrite) == ("auto", False) and "another node's workers failed" in note
    os.utime(ckpt, (1e9, 1e9))  # 2001: before this process's parent started
    assert elastic_restart_resume(tmp_path, None, True) == (None, True, None)
    os.utime(ckpt)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert elastic_restart_resume(tmp_path, None, False) == (None, False, None)


def test_restarts_over_nodes_through_the_shared_rendezvous_store_are_warned_about(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # what torchrun sets unless the store is disabled
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in shared_store_restart_warning()
    for name, value in [("TORCHELASTIC_USE_AGENT_STORE", "False"), ("TORCHELASTIC_MAX_RESTARTS", "0")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert shared_store_restart_warning() is None, name
