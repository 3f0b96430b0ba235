"""Issue 20's faults delivered the way they happen: a malicious checkpoint, data changed under a mid-epoch stop,
symlink loops in the data, a damaged metrics.jsonl, unusable output directories, Ctrl-C during start-up and TERMs
in a row. Each answer is one line (or one warning) and the documented exit code; never a traceback."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import train
from partialconv.checkpoint import CheckpointError, read_checkpoint
from partialconv.data.demo import make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-a", "simple_cnn", "-j", "0", "-b", "4", "--train-crop-size", "16", "--val-resize-size", "20"]
BASE += ["--val-crop-size", "16", "--no-tensorboard", "--device", "cpu", "--seed", "3", "--lr", "0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    return [*BASE, *dirs, "--output-dir", str(out), *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------ malicious checkpoints


class _RunsShell:
    """Unpickling this runs ``os.system`` (``posix.system`` on Linux): it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize(
    "payload, writer, refused",
    [
        (_RunsShell, "torch.save", f"{os.system.__module__}.system"),
        (_RunsEval, "torch.save", "builtins.eval"),
        (_RunsShell, "pickle.dump", f"{os.system.__module__}.system"),  # torch stops at its framing, not the global
    ],
    ids=["os.system", "builtins.eval", "plain-pickle"],
)
def test_malicious_checkpoint_is_refused_by_its_global(data, tmp_path, capsys, payload, writer, refused):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth.tar"
    obj = {"state_dict": {}, "optimizer": {}, "epoch": 1, "payload": payload(marker)}
    if writer == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(evil)
    assert refused in str(e.value) and "\n" not in str(e.value)
    assert train.cli(args(data, tmp_path / "run", "--epochs", "1", "--resume", str(evil))) == 1
    line = error_line(capsys)
    assert f"it needs the global {refused}, which weights_only loading does not allow" in line
    assert "False" not in line and "trust" not in line  # never torch's advice to load it unsafely
    assert not marker.exists()
