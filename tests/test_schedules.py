"""The learning-rate schedule against hand-computed factors at every epoch boundary (issue 15, bug 4).

Expected values are written out by hand from the documented recipe, never computed by the code under test:
warm-up multiplies by (it + 1) / warmup_iters; step divides by 1/gamma every ``lr_step_size`` *epochs* (counted from
epoch 0); cosine goes from 1 after warm-up to exactly 0 at the end of the last epoch. These are the per-iteration
rules of runs before issue 25 (``--lr-warmup-decay 0 --lr-step-origin start``), which resumed runs keep; the
reference's rules (start factor, steps counted from the end of warm-up, per-epoch updates):
tests/test_torchvision_rules.py.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

from partialconv.engine.trainer import build_training_context, lr_factor

R2 = math.sqrt(2.0)


def cfg(schedule: str, epochs: int, warmup: float = 0.0, step_size: int = 30, gamma: float = 0.1):
    return argparse.Namespace(
        lr_schedule=schedule,
        epochs=epochs,
        warmup_epochs=warmup,
        lr_step_size=step_size,
        lr_gamma=gamma,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        amp="none",
        label_smoothing=0.0,
        channels_last=False,
        train_crop_size=8,
        lr_warmup_decay=0.0,
        lr_step_origin="start",
    )


def boundaries(f, steps_per_epoch: int, epochs: int) -> list[float]:
    """The factor at the first and at the last iteration of every epoch, then at the end of training."""
    out = []
    for e in range(epochs):
        out += [f(e * steps_per_epoch), f(e * steps_per_epoch + steps_per_epoch - 1)]
    return out + [f(epochs * steps_per_epoch)]


def test_step_schedule_decays_every_step_size_epochs_not_iterations():
    # 5 steps per epoch, decay by 0.5 every 2 epochs, 7 epochs
    f = lr_factor(cfg("step", 7, step_size=2, gamma=0.5), steps_per_epoch=5)
    expected = [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125]
    assert boundaries(f, 5, 7) == pytest.approx(expected, abs=1e-12)
    # one decay per epoch, seed recipe gamma 0.1
    f = lr_factor(cfg("step", 4, step_size=1, gamma=0.1), steps_per_epoch=3)
    assert [f(i) for i in range(12)] == pytest.approx([1] * 3 + [0.1] * 3 + [0.01] * 3 + [0.001] * 3, rel=1e-12)


def test_step_schedule_with_warmup():
    # 4 steps per epoch, 1 warm-up epoch; the decay epochs count from epoch 0 (warm-up included)
    f = lr_factor(cfg("step", 5, warmup=1, step_size=2, gamma=0.1), steps_per_epoch=4)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=1e-12)
    expected = [0.25, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert boundaries(f, 4, 5) == pytest.approx(expected, rel=1e-12)


def test_cosine_without_warmup_reaches_zero_at_the_last_step():
    # 4 epochs of 3 steps: factor = (1 + cos(pi * it / 12)) / 2
    f = lr_factor(cfg("cosine", 4), steps_per_epoch=3)
    at_epoch_starts = [f(0), f(3), f(6), f(9), f(12)]
    assert at_epoch_starts == pytest.approx([1.0, (2 + R2) / 4, 0.5, (2 - R2) / 4, 0.0], abs=1e-12)
    assert abs(f(12)) < 1e-15  # the LR after the last step is 0
    assert f(11) == pytest.approx((1 + math.cos(math.pi * 11 / 12)) / 2, abs=1e-12)  # the last step's LR
    assert 0 < f(11) < 0.02
    assert [f(i) for i in range(13)] == sorted((f(i) for i in range(13)), reverse=True)  # monotone
    assert f(20) == pytest.approx(0.0, abs=1e-15)  # clamped beyond the end


def test_cosine_with_warmup():
    # 4 epochs of 3 steps, 1 warm-up epoch: linear 1/3, 2/3, 1; then cosine over the remaining 9 iterations
    f = lr_factor(cfg("cosine", 4, warmup=1), steps_per_epoch=3)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-12)
    # epoch starts 1, 2, 3, end: progress 0, 1/3, 2/3, 1
    assert [f(3), f(6), f(9), f(12)] == pytest.approx([1.0, 0.75, 0.25, 0.0], abs=1e-12)
    assert f(4) == pytest.approx((1 + math.cos(math.pi / 9)) / 2, abs=1e-12)


def test_fractional_warmup_epochs():
    # half an epoch of warm-up at 4 steps per epoch: 2 iterations
    f = lr_factor(cfg("cosine", 2, warmup=0.5), steps_per_epoch=4)
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0], abs=1e-12)
    assert [f(2), f(5), f(8)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)  # progress 0, 3/6, 6/6


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_scheduler_of_the_training_context_applies_the_factor_per_iteration(schedule):
    """build_training_context's optimizer/scheduler pair: the LR used by step i is lr * factor(i), stepped once per
    step."""
    c = cfg(schedule, 3, warmup=1, step_size=1, gamma=0.5)
    c.lr = 0.4
    model = nn.Linear(2, 2)
    optim = build_training_context(c, model, model, torch.device("cpu"), steps_per_epoch=4)
    seen = []
    for _ in range(12):
        seen.append(optim.optimizer.param_groups[0]["lr"])
        optim.optimizer.step()
        optim.scheduler.step()
    final = optim.optimizer.param_groups[0]["lr"]
    if schedule == "step":
        expected = [0.1, 0.2, 0.3, 0.4] + [0.2] * 4 + [0.1] * 4
        assert final == pytest.approx(0.05)
    else:
        # cosine over iterations 4..12: progress (it - 4) / 8
        expected = [0.1, 0.2, 0.3, 0.4] + [0.2 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
        assert final == pytest.approx(0.0, abs=1e-15)
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
