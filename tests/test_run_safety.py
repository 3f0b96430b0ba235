"""Nothing already written is lost, and a run tells its user what it is doing: full disks (injected ENOSPC and a real
small tmpfs), inpaint.py's inputs, resuming into a new directory or a finished run, progress lines, worker counts,
and train_inpainting.py's start."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from partialconv.checkpoint import read_checkpoint
from partialconv.data.demo import make_demo_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "3",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--deterministic",
    "--no-tensorboard",
]  # fmt: skip
TIMING = {"images_per_sec", "epoch_seconds", "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


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


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.cli(args(data, out, "--epochs", "2")) == 0
    return out


# ---------------------------------------------------------------------------------------------------- full disk


def test_checkpoint_on_full_disk_is_one_line_and_the_last_checkpoint_stays(
    data, straight, tmp_path, monkeypatch, capsys
):
    """ENOSPC from the file write inside torch.save of epoch 2's checkpoint (after 4 KiB of it were written)."""
    real_save = torch.save
    calls = []

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written + len(b) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *a, **kw):
        calls.append(f)
        return real_save(obj, FullDisk(f) if len(calls) == 2 else f, *a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save)
    assert train.cli(args(data, out, "--epochs", "2")) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert str(out / "checkpoint.pth.tar") in lines[0] and "no space left" in lines[0]
    monkeypatch.setattr(torch, "save", real_save)
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 1  # epoch 1's, where --resume auto looks
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert [m["epoch"] for m in metrics(out)] == [1]
    assert train.cli(args(data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert untimed(metrics(out)) == untimed(metrics(straight))


def test_metrics_line_on_full_disk_fails_loudly_and_resume_records_it(data, straight, tmp_path, monkeypatch, capsys):
    """os.write of epoch 2's metrics line returns a short count (the disk filled up mid-line)."""
    real_write = os.write

    def short_write(fd, b):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl") and b'"epoch": 2,' in b:
            return real_write(fd, b[: len(b) // 2])
        return real_write(fd, b)

    out = tmp_path / "run"
    monkeypatch.setattr(os, "write", short_write)
    assert train.cli(args(data, out, "--epochs", "2")) == 1
    monkeypatch.setattr(os, "write", real_write)
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(out / "metrics.jsonl") in lines[0] and "no space left" in lines[0], lines
    assert [m["epoch"] for m in metrics(out)] == [1]  # whole lines only: the torn half was taken back
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 2
    # A torn line left by an older version (or a kill mid-write) is dropped; epoch 2 is recorded from the checkpoint.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "ep')
    assert train.cli(args(data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert untimed(metrics(out)) == untimed(metrics(straight))


FILL = """
import os, sys
path, keep = sys.argv[1], int(sys.argv[2])
with open(path, "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"\\0" * 4096)
    except OSError:
        pass
    f.truncate(max(0, os.fstat(f.fileno()).st_size - keep))
"""


def test_real_full_tmpfs(data, straight, tmp_path):
    """A real 4 MiB tmpfs in a private mount namespace (needs root; skipped otherwise), filled to 16 KiB free after
    epoch 1: log and metrics lines still fit, epoch 2's checkpoint does not."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to mount a tmpfs")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], check=False)
    if probe.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    cmd = " ".join(args(data, mnt / "run", "--epochs", "2"))
    py = sys.executable
    script = f"""
        mount -t tmpfs -o size=4m tmpfs {mnt} || exit 99
        {py} train.py {cmd.replace("--epochs 2", "--epochs 1")} >/dev/null 2>&1 || exit 98
        {py} -c '{FILL}' {mnt}/filler 16384
        {py} train.py {cmd} --resume auto >/dev/null 2>{tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp -r {mnt}/run {tmp_path}/after_full
        rm {mnt}/filler
        {py} train.py {cmd} --resume auto >/dev/null 2>{tmp_path}/again.err; echo $? > {tmp_path}/again.rc
        cp -r {mnt}/run {keep}
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env, timeout=600, check=False)
    assert done.returncode == 0, done
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", full_err
    lines = error_lines(full_err)
    assert len(lines) == 1 and "checkpoint.pth.tar" in lines[0] and "no space left" in lines[0], lines
    assert read_checkpoint(tmp_path / "after_full" / "checkpoint.pth.tar")["epoch"] == 1
    assert [m["epoch"] for m in metrics(tmp_path / "after_full")] == [1]
    assert (tmp_path / "again.rc").read_text().strip() == "0", (tmp_path / "again.err").read_text()
    ignore = {"epochs"}  # the first run planned one epoch
    assert [{k: v for k, v in r.items() if k not in ignore} for r in untimed(metrics(keep))] == [
        {k: v for k, v in r.items() if k not in ignore} for r in untimed(metrics(straight))
    ]
