"""Nothing already written is lost: a rerun without --resume is refused (or, with --overwrite, moves the old run
aside), and --resume refuses a config that changes the experiment while allowing and logging the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partialconv.analysis import collect_runs
from partialconv.checkpoint_io import read_checkpoint, save_checkpoint
from partialconv.data.demo import make_demo_dataset
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-a", "simple_cnn", "-j", "0", "-b", "4", "--train-crop-size", "16", "--val-resize-size", "20"]
BASE += ["--val-crop-size", "16", "--no-tensorboard", "--device", "cpu", "--seed", "3", "--lr", "0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    return [*BASE, *dirs, "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished one-epoch run (step schedule)."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert train.cli(args(data, out, "--epochs", "1")) == 0
    return out


@pytest.fixture()
def run_dir(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run, byte for byte, but the run directory's lock (which names its last holder)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    return err[0]


def test_rerun_without_resume_is_refused_and_touches_nothing(data, run_dir, capsys):
    before = snapshot(run_dir)
    assert train.cli(args(data, run_dir, "--epochs", "1")) == 2
    line = error_line(capsys)
    assert (
        f"{run_dir} holds a run (checkpoint.prev.pth.tar, checkpoint.pth.tar, metrics.jsonl, model_best.pth.tar)"
        in line
    )
    assert "--resume auto" in line and "--prefix or --output-dir" in line and "--overwrite" in line
    assert snapshot(run_dir) == before


def test_resume_auto_without_a_checkpoint_does_not_start_over_on_metrics(data, run_dir, capsys):
    (run_dir / "checkpoint.pth.tar").unlink()
    (run_dir / "checkpoint.prev.pth.tar").unlink()  # the epoch's training, saved before its validation
    before = snapshot(run_dir)
    assert train.cli(args(data, run_dir, "--epochs", "1", "--resume", "auto")) == 2
    assert "holds a run but no checkpoint to resume (metrics.jsonl, model_best.pth.tar)" in error_line(capsys)
    assert snapshot(run_dir) == before


def test_overwrite_moves_the_old_run_aside_and_starts_over(data, run_dir, capsys):
    before = snapshot(run_dir)
    (run_dir / "notes.txt").write_text("mine")  # not a train.py file: stays where it is
    assert train.cli(args(data, run_dir, "--epochs", "1", "--overwrite", "--lr", "0.01")) == 0
    (aside,) = run_dir.glob("replaced-*")
    assert snapshot(aside) == before  # every old file, byte for byte
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (
        f"was moved to {aside}" in capsys.readouterr().out
        and f"was moved to {aside}" in (run_dir / "log.txt").read_text()
    )
    assert read_checkpoint(run_dir / "checkpoint.pth.tar")["config"]["lr"] == 0.01
    runs, _ = collect_runs(run_dir)  # the report counts the new run only, not the one moved aside
    assert len(runs) == 1


def test_overwrite_that_fails_its_checks_moves_nothing(data, run_dir, capsys):
    before = snapshot(run_dir)
    assert train.cli(args(data, run_dir, "--epochs", "1", "--overwrite", "--num-classes", "3")) == 2
    assert "--num-classes 3: the data has 10 classes" in error_line(capsys)
    assert snapshot(run_dir) == before and not list(run_dir.glob("replaced-*"))


@pytest.mark.parametrize(
    "extra, was, now",
    [
        (["-b", "8"], "batch_size=4", "batch_size=8"),
        (["--lr", "0.1", "--padding", "reflect"], "padding=zero, lr=0.05", "padding=reflect, lr=0.1"),
        (["--seed", "4", "--label-smoothing", "0.1"], "label_smoothing=0.0, seed=3", "label_smoothing=0.1, seed=4"),
    ],
)
def test_resume_with_a_changed_experiment_is_refused(data, run_dir, capsys, extra, was, now):
    before = snapshot(run_dir)
    assert train.cli(args(data, run_dir, "--epochs", "2", "--resume", "auto", *extra)) == 2
    line = error_line(capsys)
    assert f"--resume {run_dir / 'checkpoint.pth.tar'}: the checkpoint was trained with {was}; " in line, line
    assert f"this run has {now}." in line and "start a new run" in line
    assert snapshot(run_dir) == before


def test_resume_with_allowed_changes_logs_them(data, finished, run_dir, capsys):
    argv = args(data, run_dir, "--epochs", "2", "--resume", "auto", "-p", "3", "-j", "1", "--save-every", "2")
    assert train.cli(argv) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "with changed settings: " in x]
    for change in ("epochs 1 -> 2", "print_freq 10 -> 3", "save_every 0 -> 2", "workers 0 -> 1"):
        assert change in line, line
    assert f"output_dir {finished} -> {run_dir}" in line  # the run was copied: resumed in another directory
    assert read_checkpoint(run_dir / "checkpoint.pth.tar")["epoch"] == 2


def test_cosine_run_cannot_change_its_epochs_on_resume(data, tmp_path, capsys):
    out = tmp_path / "cosine"
    assert train.cli(args(data, out, "--epochs", "1", "--lr-schedule", "cosine")) == 0
    assert train.cli(args(data, out, "--epochs", "2", "--lr-schedule", "cosine", "--resume", "auto")) == 2
    assert "trained with epochs=1; this run has epochs=2" in error_line(capsys)


def test_checkpoint_config_with_a_bad_value_is_one_line(data, run_dir, capsys):
    ckpt = read_checkpoint(run_dir / "checkpoint.pth.tar")
    ckpt["config"]["lr_schedule"] = "linear"
    save_checkpoint(ckpt, run_dir / "edited.pth.tar")
    path = run_dir / "edited.pth.tar"
    assert train.cli(args(data, run_dir, "--epochs", "2", "--resume", str(path))) == 2
    assert f"{path}: config: key 'lr_schedule': invalid choice: 'linear'" in error_line(capsys)


def test_checkpoint_without_config_skips_the_comparison_with_a_note(data, run_dir, capsys):
    ckpt = read_checkpoint(run_dir / "checkpoint.pth.tar")
    del ckpt["config"]
    path = run_dir / "noconfig.pth.tar"
    save_checkpoint(ckpt, path)
    assert train.cli(args(data, run_dir, "--epochs", "2", "--resume", str(path), "-b", "8")) == 0
    assert f"{path} stores no training config" in capsys.readouterr().err


def test_resume_path_into_a_directory_holding_another_run_is_refused(data, finished, run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    before = snapshot(other)
    ckpt = run_dir / "checkpoint.pth.tar"
    assert train.cli(args(data, other, "--epochs", "2", "--resume", str(ckpt))) == 2
    assert f"--resume {ckpt}: {other} holds another run" in error_line(capsys)
    assert snapshot(other) == before
    # a checkpoint of the run directory itself is taken as asked for
    assert train.cli(args(data, run_dir, "--epochs", "2", "--resume", str(ckpt))) == 0


def test_torchrun_refuses_then_overwrites_once(data, run_dir):
    """Every rank checks the directory before rank 0 may write; only rank 0 moves the old run aside."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = snapshot(run_dir)
    refused = subprocess.run(
        [*cmd, *args(data, run_dir, "--epochs", "1")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert refused.returncode != 0 and f"train.py: error: {run_dir} holds a run" in refused.stderr
    assert snapshot(run_dir) == before
    res = subprocess.run(
        [*cmd, *args(data, run_dir, "--epochs", "1", "--overwrite")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (aside,) = run_dir.glob("replaced-*")
    assert snapshot(aside) == before and "on 2 x cpu" in res.stdout
    assert read_checkpoint(run_dir / "checkpoint.pth.tar")["epoch"] == 1
