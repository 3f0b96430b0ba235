"""train_inpainting.py on the shared engine: checkpoint rotation and the --resume auto fall-back, metrics lines not
repeated by a resume, preemption through the process group (SIGINT included, DataLoader workers ignoring it) and the
ranks of a torchrun agreeing on the step to stop at when only one of them was signalled."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partialconv.checkpoint_io import read_checkpoint
from partialconv.programs import train_inpainting
from tests.signalling import child_with_env, no_process_left, signal_at_line, to_group

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_inpainting.py"
NO_VGG = ["--loss-weights", "perceptual=0,style_out=0,style_comp=0"]  # the VGG-16 file is then never read


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def argv(photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(photos), "--vgg-weights", str(out.parent / "unused.pth"), "--output-dir", str(out),
        "--image-size", "32", "--layer-size", "3", "-b", "2", "-j", "0", "--val-images", "2", "--device", "cpu",
        *NO_VGG, *extra,
    ]  # fmt: skip


def iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    x, y = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_checkpoints_rotate_and_auto_resume_falls_back_without_repeating_metrics(photos, tmp_path, capsys):
    """Every save keeps the one before as checkpoint.prev.pth.tar. A last checkpoint that cannot be read (a torn
    copy, a bad disk block) is named, the previous one resumed, and the validation lines after its iteration are
    not written twice; the result is the uninterrupted run's."""
    common = ["--iters", "4", "--log-every", "1", "--val-every", "2"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert train_inpainting.cli(argv(photos, straight, *common)) == 0
    assert train_inpainting.cli(argv(photos, run, *common)) == 0
    assert read_checkpoint(run / "checkpoint.pth.tar")["iteration"] == 4
    assert read_checkpoint(run / "checkpoint.prev.pth.tar")["iteration"] == 2
    assert iterations(run) == [2, 4]
    capsys.readouterr()
    (run / "checkpoint.pth.tar").write_bytes(b"torn")
    assert train_inpainting.cli(argv(photos, run, *common, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert "checkpoint.pth.tar" in err and "trying the previous checkpoint" in err, err
    log = (run / "log.txt").read_text()
    assert f"resumed from {run / 'checkpoint.prev.pth.tar'} at iteration 2" in log, log
    assert "trying the previous checkpoint" in log  # warnings are in the run's log too
    assert iterations(run) == [2, 4]  # line 4 of the first session dropped, written again by the resumed one
    assert same_weights(straight / "checkpoint.pth.tar", run / "checkpoint.pth.tar")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_to_the_process_group_checkpoints_and_resumes(photos, tmp_path, workers):
    """SIGINT (a terminal's Ctrl-C reaches the whole group, DataLoader workers included) stops like SIGTERM: the
    step in progress finishes, the checkpoint is written, exit code 130, no traceback; --resume auto completes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-u", str(SCRIPT), *argv(photos, out, "-j", workers, "--iters", "200", "--log-every", "1")]
    code, output, pgid = signal_at_line(cmd, "iter 2/200", to_group(signal.SIGINT))
    assert no_process_left(pgid), "DataLoader workers outlived the run"
    assert code == 130, output
    assert "preempted by SIGINT" in output and "--resume auto" in output, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    stopped = read_checkpoint(out / "checkpoint.pth.tar")["iteration"]
    assert 2 <= stopped < 200
    assert train_inpainting.cli(argv(photos, out, "--iters", str(stopped + 1), "--resume", "auto")) == 0
    assert read_checkpoint(out / "checkpoint.pth.tar")["iteration"] == stopped + 1


def test_torchrun_one_rank_signalled_stops_both_at_the_next_step(photos, tmp_path):
    """SIGUSR1 to rank 1 only (ranks differ): both ranks agree within a step or two, long before the next log line
    (the old per-log-interval vote stopped at iteration 10), rank 0 names the signal and writes the checkpoint."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    flags = argv(photos, out, "--iters", "200", "--log-every", "5", "--val-every", "1000", "-b", "1")
    send = lambda pid: os.kill(child_with_env(pid, "RANK=1"), signal.SIGUSR1)  # noqa: E731
    code, output, pgid = signal_at_line([*torchrun, str(SCRIPT), *flags], "iter 5/200", send)
    assert no_process_left(pgid), "ranks outlived torchrun"
    assert code != 0, output
    assert "preempted by SIGUSR1" in output, output  # rank 0's line: it learnt of rank 1's signal
    assert "DataLoader worker" not in output, output
    stopped = read_checkpoint(out / "checkpoint.pth.tar")["iteration"]
    assert 5 <= stopped < 10, output
