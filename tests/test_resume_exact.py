"""Exact resume of train.py with a model that draws from the global RNG (dropout) (issue 15, bug 3).

Augmentation is seeded per sample, so only a model that consumes the global torch RNG during training notices whether
the RNG state was restored on resume. The runs are in-process (train.cli); the mid-epoch interruption is a real
SIGUSR1 sent by the process to itself after a chosen training step, handled by the run's Preemption handler.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from partialconv.checkpoint_io import read_checkpoint
from partialconv.data.demo import make_demo_dataset
from partialconv.models import is_model, register_model
from partialconv.models.small import SimpleCNN
from partialconv.programs import train

MODEL = "dropout_cnn_test"


class DropoutCNN(SimpleCNN):
    """simple_cnn with dropout before the classifier; ``signal_after`` sends SIGUSR1 to this process after that
    many training forwards (counted on real tensors: the meta-device input-size probe does not count)."""

    signal_after = None
    forwards = 0

    def __init__(self, **kwargs) -> None:
        super().__init__(width=8, **kwargs)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.device.type != "meta":
            DropoutCNN.forwards += 1
            if DropoutCNN.forwards == DropoutCNN.signal_after:
                os.kill(os.getpid(), signal.SIGUSR1)
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


if not is_model(MODEL):

    @register_model(pd_variant=False)
    def dropout_cnn_test(padding: str = "zero", **kwargs) -> DropoutCNN:
        return DropoutCNN(padding=padding, **kwargs)


BASE = ["-a", MODEL, "--device", "cpu", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "4", "--no-tensorboard"]
BASE += ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16", "-p", "100"]
BASE += ["--deterministic", "--lr-schedule", "step", "--lr-step-size", "1", "--lr-gamma", "0.5"]
TIMING = {"images_per_sec", "epoch_seconds", "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes x 4 train images, batch 8: 5 steps per epoch
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "d", train_per_class=4, val_per_class=2, size=20)


@pytest.fixture(autouse=True)
def no_signal():
    DropoutCNN.signal_after, DropoutCNN.forwards = None, 0
    yield
    DropoutCNN.signal_after, DropoutCNN.forwards = None, 0


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [*BASE, "--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(out)]


def records(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING | {"epochs"}} for r in lines]


def assert_same_weights(a: Path, b: Path) -> None:
    wa = read_checkpoint(a / "checkpoint.pth.tar")["state_dict"]
    wb = read_checkpoint(b / "checkpoint.pth.tar")["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.cli([*argv(data, out), "--epochs", "3"]) == 0
    return out


def test_straight_run_uses_dropout_and_the_step_schedule(straight, data, tmp_path, monkeypatch):
    # The per-epoch LR of the step schedule (decay 0.5 every epoch), as train.py records it.
    assert [r["lr"] for r in records(straight)] == pytest.approx([0.05, 0.025, 0.0125], rel=1e-12)
    # The dropout draws matter: one extra draw from the global RNG before training ends the epoch elsewhere.
    one_epoch, shifted = tmp_path / "one", tmp_path / "shifted"
    assert train.cli([*argv(data, one_epoch), "--epochs", "1"]) == 0
    real = train.seed_everything
    monkeypatch.setattr(train, "seed_everything", lambda seed: (real(seed), torch.rand(1)))
    assert train.cli([*argv(data, shifted), "--epochs", "1"]) == 0
    a = read_checkpoint(one_epoch / "checkpoint.pth.tar")["state_dict"]
    b = read_checkpoint(shifted / "checkpoint.pth.tar")["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resume_at_epoch_boundaries_is_exact(straight, data, tmp_path, workers):
    """Straight run without workers; the split run with -j 0 or one persistent worker (data order and augmentation
    do not depend on the workers, so neither may the result)."""
    out = tmp_path / "split"
    assert train.cli([*argv(data, out), "--epochs", "1", "-j", workers]) == 0
    assert train.cli([*argv(data, out), "--epochs", "2", "--resume", "auto", "-j", workers]) == 0
    assert train.cli([*argv(data, out), "--epochs", "3", "--resume", "auto", "-j", workers]) == 0
    assert_same_weights(straight, out)
    assert records(out) == records(straight)


@pytest.mark.parametrize("after_step,workers", [(2, "0"), (5, "0"), (7, "0"), (7, "1")])
def test_resume_after_a_mid_epoch_signal_is_exact(straight, data, tmp_path, after_step, workers):
    """SIGUSR1 after training step ``after_step`` (global count; 5 steps per epoch), then --resume auto; the
    interrupted run with -j 0 or one persistent worker."""
    out = tmp_path / "preempted"
    DropoutCNN.signal_after = after_step
    assert train.cli([*argv(data, out), "--epochs", "3", "-j", workers]) == 128 + signal.SIGUSR1
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert (ckpt["epoch"], ckpt["step"]) == (after_step // 5, after_step % 5)  # 5: at the end of epoch 1
    DropoutCNN.signal_after = None
    assert train.cli([*argv(data, out), "--epochs", "3", "--resume", "auto", "-j", workers]) == 0
    assert_same_weights(straight, out)
    assert records(out) == records(straight)
