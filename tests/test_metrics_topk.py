"""Top-1/top-5 with more classes than k (issue 15, bug 2): targets placed at known ranks of the logits.

With 12 classes top-5 is never capped, so a target at rank 5 must count as a top-5 hit and one at rank 6 must not;
a top-k computed with the wrong k moves one of these. Checked in topk_correct, the epoch meter, evaluate() and a
training epoch (train_one_epoch's meter).
"""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partialconv.engine.metrics import EpochMeter, topk_correct
from partialconv.engine.trainer import EvalSettings, build_training_context, evaluate, train_one_epoch

CLASSES = 12
# 1-based rank of the target among the logits of each sample (1 = the largest logit)
RANKS = [1, 5, 6, 2, 12, 4, 6, 5, 3, 7, 1, 9]
TOP1 = sum(r <= 1 for r in RANKS)  # 2
TOP5 = sum(r <= 5 for r in RANKS)  # 7
TOP6 = sum(r <= 6 for r in RANKS)  # 9


def placed_logits(ranks: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose target class sits at the given rank; class order and logit values shuffled per sample."""
    g = torch.Generator().manual_seed(seed)
    logits, targets = [], []
    for rank in ranks:
        values = torch.sort(torch.randn(CLASSES, generator=g) * 3, descending=True).values
        order = torch.randperm(CLASSES, generator=g)  # order[j] is the class holding the j-th largest value
        row = torch.empty(CLASSES)
        row[order] = values
        logits.append(row)
        targets.append(int(order[rank - 1]))
    return torch.stack(logits), torch.tensor(targets)


def test_placed_logits_put_the_target_at_the_requested_rank():
    logits, targets = placed_logits(RANKS)
    got = [int((row > row[t]).sum()) + 1 for row, t in zip(logits, targets)]
    assert got == RANKS


def test_topk_correct_counts_rank_5_in_and_rank_6_out():
    logits, targets = placed_logits(RANKS)
    c1, c5, c6, c10 = topk_correct(logits, targets, (1, 5, 6, 10))
    assert (int(c1), int(c5), int(c6), int(c10)) == (TOP1, TOP5, TOP6, sum(r <= 10 for r in RANKS))
    assert [int(c) for c in topk_correct(logits, targets)] == [TOP1, TOP5]  # the default (1, 5)
    # one sample at a time: exactly the ranks 1..5 are top-5 hits
    for rank in range(1, CLASSES + 1):
        logit, target = placed_logits([rank], seed=rank)
        hits = [int(c) for c in topk_correct(logit, target)]
        assert hits == [int(rank == 1), int(rank <= 5)], rank


def test_epoch_meter_top1_top5_and_loss():
    logits, targets = placed_logits(RANKS)
    meter = EpochMeter(torch.device("cpu"))
    # two updates of different sizes: sums, not averages of averages
    meter.update(F.cross_entropy(logits[:5], targets[:5]), logits[:5], targets[:5])
    meter.update(F.cross_entropy(logits[5:], targets[5:]), logits[5:], targets[5:])
    n = len(RANKS)
    expected = {"acc1": 100.0 * TOP1 / n, "acc5": 100.0 * TOP5 / n}
    got = meter.reduce()
    assert got["acc1"] == pytest.approx(expected["acc1"]) and got["acc5"] == pytest.approx(expected["acc5"])
    assert got["count"] == n and got["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)
    local = meter.local_summary()
    assert local["acc1"] == pytest.approx(expected["acc1"]) and local["acc5"] == pytest.approx(expected["acc5"])


class Passthrough(nn.Module):
    """Returns its input (the prepared logits) plus a scalar parameter: training moves every logit equally, so
    the ranks, and therefore the hits, do not change."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


def batches(logits: torch.Tensor, targets: torch.Tensor, size: int) -> list:
    return [(logits[i : i + size], targets[i : i + size], 0) for i in range(0, len(targets), size)]


def test_evaluate_reports_top1_top5_of_placed_logits():
    logits, targets = placed_logits(RANKS)
    val = evaluate(Passthrough(), batches(logits, targets, 5), EvalSettings(nn.CrossEntropyLoss(), torch.device("cpu")))
    n = len(RANKS)
    assert val["acc1"] == pytest.approx(100.0 * TOP1 / n) and val["acc5"] == pytest.approx(100.0 * TOP5 / n)
    assert val["count"] == n and val["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)


def test_training_epoch_meter_reports_top1_top5():
    logits, targets = placed_logits(RANKS)
    cfg = argparse.Namespace(
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        lr_schedule="step",
        lr_step_size=30,
        lr_gamma=0.1,
        warmup_epochs=0,
        epochs=1,
        amp="none",
        label_smoothing=0.0,
        channels_last=False,
        train_crop_size=4,
    )
    model = Passthrough()
    loader = batches(logits, targets, 4)
    optim = build_training_context(cfg, model, model, torch.device("cpu"), steps_per_epoch=len(loader))
    meter = EpochMeter(torch.device("cpu"))
    result = train_one_epoch(optim, loader, 0, meter, print_freq=100, log=lambda s: None)
    assert result.steps_done == 3 and not result.preempted
    got = meter.reduce()
    n = len(RANKS)
    assert got["acc1"] == pytest.approx(100.0 * TOP1 / n) and got["acc5"] == pytest.approx(100.0 * TOP5 / n)
