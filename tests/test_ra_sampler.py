"""Repeated augmentation (issue 12: ``--ra-sampler``/``--ra-reps``, torchvision's RASampler semantics) in the seeded
sampler: each drawn image comes ``reps`` times, its copies on different ranks with different augmentation seeds,
the epoch keeps its steps, and resume stays exact (sampler level and a real train.py run stopped by SIGTERM to its
process group with a DataLoader worker); its values are checked on every input path."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from signalling import no_process_left, signal_at_line, to_group
from test_train import _torchrun, args, assert_same_run, metrics, weights

from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import compare_resumed_config, parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.data.sampler import SeededSampler, sample_seed
from partialconv.engine.data_setup import loaders_from_config
from partialconv.engine.distributed import DistInfo
from partialconv.errors import ConfigError
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
RA = ["--ra-sampler", "--ra-reps", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10 classes x 8 train images: 20 steps of batch 4 per epoch (test_train's set)."""
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=8, val_per_class=4, size=24)


def epoch_keys(size: int, world: int, local_batch: int, reps: int, epoch: int = 2, start_step: int = 0):
    """Each rank's ``(index, seed)`` keys of one epoch."""
    out = []
    for rank in range(world):
        s = SeededSampler(size, rank, world, shuffle=True, seed=9, local_batch=local_batch, repeats=reps)
        s.set_epoch(epoch, start_step)
        out.append(list(s))
    return out


# (world, local batch, size, reps): sizes where the epoch is whole global batches and a multiple of reps
@pytest.mark.parametrize("world,local_batch,size,reps", [(4, 3, 48, 4), (8, 2, 96, 4), (3, 2, 36, 3), (2, 3, 30, 3)])
def test_each_drawn_image_comes_reps_times_on_different_ranks_with_different_seeds(world, local_batch, size, reps):
    keys = epoch_keys(size, world, local_batch, reps)
    plain = SeededSampler(size, 0, world, shuffle=True, seed=9, local_batch=local_batch)
    for rank_keys in keys:  # the epoch keeps its length: the steps (and so the LR schedule) of a run without RA
        assert len(rank_keys) == plain.steps_per_epoch() * local_batch == size // world
    counts = Counter(i for rank_keys in keys for i, _ in rank_keys)
    assert set(counts.values()) == {reps} and len(counts) == size // reps  # 1/reps of the images, reps times each
    ranks, seeds = defaultdict(list), defaultdict(set)
    for rank, rank_keys in enumerate(keys):
        for index, seed in rank_keys:
            ranks[index].append(rank)
            seeds[index].add(seed)
    for index in counts:
        assert seeds[index] == {sample_seed(9, 2, index, r) for r in range(reps)}
        assert len(seeds[index]) == reps  # every copy its own augmentation draw
        if world >= reps:
            assert len(set(ranks[index])) == reps, (index, ranks[index])  # the copies on different ranks
    other = Counter(i for rank_keys in epoch_keys(size, world, local_batch, reps, epoch=3) for i, _ in rank_keys)
    assert set(other) != set(counts)  # another epoch, another subset


def test_plain_order_and_seeds_unchanged_and_global_batches_independent_of_world_size():
    # the seed of copy 0 is the pre-RA per-sample seed (value pinned from before repeats existed): old runs resume
    assert sample_seed(0, 0, 0) == sample_seed(0, 0, 0, 0) == 6367421831371649418
    assert sample_seed(7, 3, 123) == 2431331314105574254
    assert sample_seed(0, 0, 0, 1) != sample_seed(0, 0, 0)
    for world, local_batch in ((1, 12), (2, 6), (4, 3)):
        with_one = [list(SeededSampler(50, r, world, seed=4, local_batch=local_batch, repeats=1)) for r in range(world)]
        plain = [list(SeededSampler(50, r, world, seed=4, local_batch=local_batch)) for r in range(world)]
        assert with_one == plain
    # global batch k is the same set of (index, seed) keys for any world size (same global batch of 12)
    batches = {}
    for world, local_batch in ((1, 12), (2, 6), (4, 3), (6, 2)):
        keys = epoch_keys(50, world, local_batch, 3)
        batches[world] = [
            sorted(k for rank_keys in keys for k in rank_keys[step * local_batch : (step + 1) * local_batch])
            for step in range(4)
        ]
    assert batches[1] == batches[2] == batches[4] == batches[6]


@pytest.mark.parametrize("world,local_batch,size,reps", [(4, 2, 50, 4), (2, 3, 31, 3), (1, 4, 23, 2)])
def test_resume_at_every_step_yields_the_rest_of_the_epoch(world, local_batch, size, reps):
    full = epoch_keys(size, world, local_batch, reps)
    steps = size // (world * local_batch)
    for start in range(steps + 1):
        for rank, resumed in enumerate(epoch_keys(size, world, local_batch, reps, start_step=start)):
            assert resumed == full[rank][start * local_batch :], (rank, start)
            s = SeededSampler(size, rank, world, seed=9, local_batch=local_batch, repeats=reps)
            s.set_epoch(2, start)
            assert len(s) == len(resumed) == (steps - start) * local_batch


def test_eval_sampler_refuses_repeats():
    with pytest.raises(ValueError, match="repeats"):
        SeededSampler(10, shuffle=False, repeats=2)


CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.mark.parametrize("backend", ["pil", "pil_fast", "gpu", "turbo"])
def test_every_backend_augments_the_copies_differently(data, backend):
    """train.py's loaders with --ra-sampler --ra-reps 2 on one process: the copies of an image are neighbours in a
    batch, with the same label and different pixels; val stays one pass over every image."""
    flags = ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "-b", "8", "--device", "cpu"]
    flags += ["-j", "0", "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16"]
    cfg = parse_config([*flags, "--data-backend", backend, "--ra-sampler", "--ra-reps", "2"])
    loaders = loaders_from_config(cfg, CPU)
    assert loaders.backend == backend and loaders.train_sampler.repeats == 2 and len(loaders.train) == 10
    loaders.train_sampler.set_epoch(1)
    for images, targets, _ in loaders.train:
        images = images.float()
        assert torch.equal(targets[0::2], targets[1::2])
        for a, b in zip(images[0::2], images[1::2]):
            assert not torch.equal(a, b)
    assert sorted(i for i, _ in loaders.val.sampler) == list(range(40))


def test_train_py_sigterm_to_group_mid_epoch_with_ra_resumes_exactly(data, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "preempted"
    assert train.cli([*args(data, straight), *RA, "-j", "1", "--epochs", "2", "-p", "2", "--no-tensorboard"]) == 0
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["ra_sampler"] is True and saved["ra_reps"] == 3
    cmd = [sys.executable, "-u", str(ROOT / "train.py"), *args(data, out), *RA, "-j", "1", "--epochs", "2"]
    code, output, pgid = signal_at_line([*cmd, "-p", "1", "--no-tensorboard"], "Epoch: [1][3/20]", to_group(15))
    assert no_process_left(pgid), "DataLoader workers outlived the run"
    assert code == 143, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 3 <= ckpt["step"] < 20  # inside epoch 1
    resume = [*args(data, out), *RA, "-j", "1", "--epochs", "2", "-p", "2", "--no-tensorboard", "--resume", "auto"]
    assert train.cli(resume) == 0
    assert_same_run(straight, out)
    assert len(metrics(out)) == 2


def test_torchrun_two_ranks_with_ra_match_one_process(data, tmp_path):
    """--ra-reps 2 over 2 real processes (each copy of an image on the other rank) trains what one process does
    (simple_cnn: no BatchNorm, so the split over ranks is the same computation)."""
    one, two = tmp_path / "one", tmp_path / "two"
    ra = ["--ra-sampler", "--ra-reps", "2", "--epochs", "1", "--no-tensorboard"]
    assert train.cli([*args(data, one), *ra]) == 0
    code, output = _torchrun(2, [*args(data, two), *ra])
    assert code == 0 and "on 2 x cpu" in output, output[-3000:]
    w1, w2 = weights(one), weights(two)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    assert metrics(one)[0]["train_loss"] == pytest.approx(metrics(two)[0]["train_loss"], rel=1e-5)


def test_values_checked_from_flag_yaml_and_resumed_config_in_one_line(data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("ra_reps: 0\n", "key 'ra_reps': must be >= 1; got 0"),
        ("ra_sampler: 3\n", "expected true or false; got 3"),
    ):
        bad.write_text(text)
        code = train.cli(["--config", str(bad), *args(data, tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"train.py: error: --config {bad}: ") and message in err, err
        assert err.strip().count("\n") == 0, err
    assert train.cli([*args(data, tmp_path / "run"), "--ra-reps", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "train.py: error: --ra-reps must be >= 1; got -1", err
    cfg = parse_config(["-a", "simple_cnn", "--ra-sampler"])
    with pytest.raises(ConfigError, match="ckpt: config: key 'ra_reps': must be >= 1; got 0"):
        compare_resumed_config({"ra_reps": 0}, cfg, "ckpt")
    with pytest.raises(ConfigError, match="ra_sampler=False"):  # RA changes the data order: part of the experiment
        compare_resumed_config({"ra_sampler": False}, cfg, "ckpt")


def test_resnet50_v2_recipe_uses_ra_x4():
    cfg = parse_config(
        ["--config", str(ROOT / "configs" / "imagenet_resnet50_torchvision_v2.yaml"), "-a", "simple_cnn"]
    )
    assert (cfg.ra_sampler, cfg.ra_reps) == (True, 4)
