"""The distributed train sampler resumed mid-epoch against the one-process order (issue 15, bug 1).

Ranks are simulated in one process: rank r of W, resumed at step s, must yield exactly the samples the one-process
run (same global batch) trains on from global batch s onwards, rank r taking positions r, r+W, ... of that tail.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from partialconv.data.sampler import SeededSampler, sample_seed


def one_process_order(size: int, seed: int, epoch: int, global_batch: int) -> list[int]:
    s = SeededSampler(size, 0, 1, shuffle=True, seed=seed, local_batch=global_batch)
    s.set_epoch(epoch)
    return [i for i, _ in s]


@pytest.mark.parametrize("world,local_batch,size", [(2, 3, 50), (3, 2, 47), (4, 1, 23), (2, 4, 16)])
def test_every_resume_step_of_every_rank_matches_the_one_process_tail(world, local_batch, size):
    seed, epoch = 11, 3
    global_batch = world * local_batch
    order = one_process_order(size, seed, epoch, global_batch)
    steps = size // global_batch
    assert len(order) == steps * global_batch
    for start_step in range(steps + 1):
        tail = order[start_step * global_batch :]
        per_rank = []
        for rank in range(world):
            s = SeededSampler(size, rank, world, shuffle=True, seed=seed, local_batch=local_batch)
            s.set_epoch(epoch, start_step=start_step)
            got = list(s)
            assert [i for i, _ in got] == tail[rank::world], (rank, start_step)
            assert [seed_ for _, seed_ in got] == [sample_seed(seed, epoch, i) for i in tail[rank::world]]
            assert len(s) == len(got) == (steps - start_step) * local_batch
            per_rank.append([i for i, _ in got])
        # the remaining global batches, put together from the ranks, are the one-process batches
        for k in range(steps - start_step):
            merged = sorted(i for r in per_rank for i in r[k * local_batch : (k + 1) * local_batch])
            assert merged == sorted(tail[k * global_batch : (k + 1) * global_batch])


class Keys:
    """A dataset that returns the sampler's key ``(index, sample_seed)`` itself."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def test_resumed_dataloader_batches_are_the_uninterrupted_batches():
    """Through a DataLoader, as train.py uses it: the batches after a resume at step 2 are batches 2.. of an
    uninterrupted epoch, on every rank."""
    world, local_batch, size, epoch = 2, 3, 31, 1
    for rank in range(world):
        full = SeededSampler(size, rank, world, seed=5, local_batch=local_batch)
        full.set_epoch(epoch)
        resumed = SeededSampler(size, rank, world, seed=5, local_batch=local_batch)
        resumed.set_epoch(epoch, start_step=2)
        as_batches = [[int(i) for i in b[0]] for b in DataLoader(Keys(), local_batch, sampler=full)]
        loader = DataLoader(Keys(), local_batch, sampler=resumed)
        got = [[int(i) for i in b[0]] for b in loader]
        assert len(as_batches) == size // (world * local_batch) == 5
        assert got == as_batches[2:] and len(loader) == 3


@pytest.mark.parametrize("world,batch,size", [(2, 2, 7), (3, 1, 5), (2, 3, 4)])
def test_inpainting_sampler_resumed_ranks_continue_the_one_process_stream(world, batch, size):
    """train_inpainting.py's endless sampler: rank r of W resumed at step s yields, step by step, its slice of the
    global batches s, s+1, ... of a one-process run with the same global batch (crossing epoch boundaries)."""
    from partialconv.data.inpainting import InpaintingSampler

    steps = 9  # several passes over the tiny set
    global_batch = world * batch
    one = list(itertools.islice(InpaintingSampler(size, global_batch, 0, 1, seed=4), steps * global_batch))
    for start in (0, 1, 3, 5):
        for rank in range(world):
            s = InpaintingSampler(size, batch, rank, world, seed=4, start_step=start)
            got = list(itertools.islice(s, (steps - start) * batch))
            expected = [
                key
                for k in range(start, steps)
                for key in one[k * global_batch + rank * batch : k * global_batch + (rank + 1) * batch]
            ]
            assert got == expected, (rank, start)


def test_torchrun_resumes_a_one_process_mid_epoch_checkpoint_exactly(tmp_path, monkeypatch):
    """End to end through a real torchrun (2 processes, gloo): a one-process run stopped by SIGUSR1 after step 2 of
    5, resumed with two processes, ends like the uninterrupted one-process run (simple_cnn: no BatchNorm, no
    dropout, so the split over processes is the same computation)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from partialconv.checkpoint_io import read_checkpoint
    from partialconv.data.demo import make_demo_dataset
    from partialconv.programs import train

    root = Path(__file__).resolve().parents[1]
    data = make_demo_dataset(tmp_path / "d", train_per_class=4, val_per_class=2, size=20)
    flags = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "5", "-p", "1"]
    flags += ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16", "--no-tensorboard"]
    flags += ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "--epochs", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.cli([*flags, "--output-dir", str(straight)]) == 0

    real_create = train.create_model
    forwards = []

    def create_and_signal(*args, **kwargs):
        model = real_create(*args, **kwargs)

        def hook(module, inputs):
            if module.training and inputs[0].device.type != "meta":
                forwards.append(1)
                if len(forwards) == 2:
                    os.kill(os.getpid(), signal.SIGUSR1)  # handled by the run: stop after this step

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(train, "create_model", create_and_signal)
    assert train.cli([*flags, "--output-dir", str(resumed)]) == 128 + signal.SIGUSR1
    assert read_checkpoint(resumed / "checkpoint.pth.tar")["step"] == 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*cmd, *flags, "--output-dir", str(resumed), "--resume", "auto"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "on 2 x cpu" in res.stdout and "Epoch: [1][5/5]" in res.stdout  # steps 3..5 run, by both ranks
    a = read_checkpoint(straight / "checkpoint.pth.tar")["state_dict"]
    b = read_checkpoint(resumed / "checkpoint.pth.tar")["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    ma, mb = (json.loads((d / "metrics.jsonl").read_text()) for d in (straight, resumed))
    assert mb["train_loss"] == pytest.approx(ma["train_loss"], rel=1e-5)
    assert (mb["train_acc1"], mb["val_acc1"], mb["val_acc5"]) == (ma["train_acc1"], ma["val_acc1"], ma["val_acc5"])


def test_seeded_draws_are_manual_seeds_draws_and_leave_the_callers_stream():
    from partialconv.data.sampler import seeded_draws

    torch.manual_seed(7)
    expected_next = torch.rand(2)
    torch.manual_seed(7)
    with seeded_draws(123):
        inside = torch.rand(3), torch.randint(0, 100, (4,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        reference = torch.rand(3), torch.randint(0, 100, (4,))
    assert all(torch.equal(a, b) for a, b in zip(inside, reference))
    assert torch.equal(torch.rand(2), expected_next)  # the caller's stream continues as if nothing happened
    with seeded_draws(None):
        assert not torch.equal(torch.rand(2), expected_next)  # unseeded: the caller's own stream
