"""train.py's parts in isolation: config precedence, the seeded sampler, RNG checkpointing, metrics, demo data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from partialconv.checkpoint_io import read_checkpoint, save_checkpoint
from partialconv.config import parse_config, run_dir_of
from partialconv.data import DataError
from partialconv.data.demo import DEMO_CLASSES, make_demo_dataset
from partialconv.data.sampler import SeededSampler
from partialconv.engine.data_setup import loaders_from_config
from partialconv.engine.distributed import DistInfo
from partialconv.engine.metrics import EpochMeter, topk_correct
from partialconv.engine.run_state import rng_state, set_rng_state
from partialconv.engine.runlog import RunLogger
from partialconv.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "partialconv" / "programs" / "demo.yaml"


def test_defaults_are_the_seed_recipe_and_run_dir_is_the_seed_layout():
    cfg = parse_config(["-a", "pdresnet50", "--data_train", "t", "--data_val", "v", "--prefix", "run1"], DEMO)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.batch_size) == (0.1, 0.9, 1e-4, 100, 192)
    assert (cfg.lr_schedule, cfg.lr_step_size, cfg.lr_gamma, cfg.padding) == ("step", 30, 0.1, "partial")
    assert run_dir_of(cfg) == Path("checkpoints/checkpoint_pdresnet50_run1")
    cfg = parse_config(["-a", "resnet18", "--data_train", "t", "--data_val", "v", "--ckptdirprefix", "exp/"], DEMO)
    assert cfg.padding == "zero" and run_dir_of(cfg) == Path("exp/checkpoint_resnet18_run")
    cfg = parse_config(["-a", "resnet18", "--padding", "partial", "--output-dir", "o", "--amp-opt-level", "O1"], DEMO)
    assert cfg.padding == "partial" and run_dir_of(cfg) == Path("o") and cfg.amp == "fp16"


def test_no_data_flags_use_the_demo_recipe_and_yaml_is_overridden_by_cli(tmp_path):
    demo = parse_config([], DEMO)
    assert demo.arch == yaml.safe_load(DEMO.read_text())["arch"] and demo.epochs < 100 and demo.padding == "partial"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arch: vgg16_bn\nbatch-size: 64\nlr: 0.02\n")
    cfg = parse_config(["--config", str(recipe), "--lr", "0.5", "--data_train", "t", "--data_val", "v"], DEMO)
    assert (cfg.arch, cfg.batch_size, cfg.lr, cfg.epochs) == ("vgg16_bn", 64, 0.5, 100)
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(["--config", str(tmp_path / "missing.yaml")], DEMO)


def _batches(world: int, epoch: int, size: int = 50, global_batch: int = 8) -> list[set[int]]:
    per_rank = []
    for rank in range(world):
        s = SeededSampler(size, rank, world, shuffle=True, seed=7, local_batch=global_batch // world)
        s.set_epoch(epoch)
        idx = [i for i, _ in s]
        per_rank.append([idx[k : k + global_batch // world] for k in range(0, len(idx), global_batch // world)])
    return [set().union(*(r[k] for r in per_rank)) for k in range(len(per_rank[0]))]


def test_train_sampler_global_batches_do_not_depend_on_world_size():
    one, four = _batches(1, epoch=2), _batches(4, epoch=2)
    assert one == four and len(one) == 50 // 8
    assert _batches(1, epoch=3) != one  # a new order each epoch
    s = SeededSampler(50, 0, 1, shuffle=True, seed=7, local_batch=8)
    s.set_epoch(2, start_step=3)  # mid-epoch resume: the same order, the first 3 batches skipped
    assert [i for i, _ in s] == [i for b in _ordered(50, 7, 2) for i in b][24:48]


def _ordered(size: int, seed: int, epoch: int) -> list[list[int]]:
    s = SeededSampler(size, 0, 1, shuffle=True, seed=seed, local_batch=8)
    s.set_epoch(epoch)
    idx = [i for i, _ in s]
    return [idx[k : k + 8] for k in range(0, len(idx), 8)]


def test_eval_sampler_counts_every_image_exactly_once():
    for world in (1, 2, 3, 8):
        seen = [i for r in range(world) for i, _ in SeededSampler(13, r, world, shuffle=False)]
        assert sorted(seen) == list(range(13))


def test_sample_seeds_depend_on_seed_epoch_and_index_only():
    a = dict(SeededSampler(20, 0, 1, seed=1, local_batch=4))
    b = dict(SeededSampler(20, 1, 2, seed=1, local_batch=2))
    assert all(a[i] == s for i, s in b.items())
    c = SeededSampler(20, 0, 1, seed=1, local_batch=4)
    c.set_epoch(1)
    assert all(a[i] != s for i, s in c)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pth")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(read_checkpoint(tmp_path / "c.pth")["rng"])  # read_checkpoint loads with weights_only=True
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_topk_and_meter_round_trip():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    targets = torch.tensor([2, 2, 0])
    assert [int(c) for c in topk_correct(logits, targets, (1, 2, 5))] == [1, 1, 3]
    m = EpochMeter(torch.device("cpu"))
    m.update(torch.tensor(0.5), logits, targets)
    m2 = EpochMeter(torch.device("cpu"))
    m2.load_state_dict(m.state_dict())
    assert m2.reduce() == m.reduce() == {"loss": 0.5, "acc1": 100 / 3, "acc5": 100.0, "count": 3.0, "bad": 0.0}


def test_metrics_lines_of_rerun_epochs_are_replaced(tmp_path):
    log = RunLogger(tmp_path, enabled=True, tensorboard=False)
    for e in (1, 2, 3):
        log.epoch({"epoch": e, "val_acc1": float(e)})
    log.truncate_metrics(1)
    log.epoch({"epoch": 2, "val_acc1": 20.0})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "val_acc1": 1.0}, {"epoch": 2, "val_acc1": 20.0}]


def test_demo_dataset_is_imagefolder_and_reproducible(tmp_path):
    a = make_demo_dataset(tmp_path / "a", train_per_class=2, val_per_class=1, size=16, seed=5)
    b = make_demo_dataset(tmp_path / "b", train_per_class=2, val_per_class=1, size=16, seed=5)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(DEMO_CLASSES)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 * len(DEMO_CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


@pytest.mark.parametrize("backend", ["pil", "gpu"])
def test_both_data_backends_refuse_a_train_set_smaller_than_one_batch(tmp_path, backend):
    root = make_demo_dataset(tmp_path, train_per_class=1, val_per_class=1, size=16, seed=0)
    argv = ["--data_train", str(root / "train"), "--data_val", str(root / "val"), "-b", "64", "-j", "0"]
    cfg = parse_config([*argv, "--data-backend", backend], DEMO)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    with pytest.raises(DataError, match=f"--data_train {root / 'train'}: {len(DEMO_CLASSES)} images, fewer than one"):
        loaders_from_config(cfg, dist)
