"""Checkpoints and flags of NVIDIA/partialconv's ``main.py``: its checkpoints are built here the way it builds them
(VGGs with only ``model.features`` in DataParallel, other nets wrapped whole; saved as ``{'epoch': epoch + 1, 'arch',
'state_dict', 'best_prec1', 'optimizer'}`` after SGD steps) and must load, continue with ``--resume``, or fail in one
line; its launch flags get one-line answers."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from partialconv.checkpoint_io import CheckpointError, load_checkpoint, match_keys, read_checkpoint
from partialconv.config import build_parser, parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.engine.run_state import restore_run_state
from partialconv.engine.trainer import build_training_context
from partialconv.errors import ConfigError
from partialconv.models import create_model
from partialconv.programs import train

# 10 classes x 4 train images, batch 4: 10 steps per epoch.
BASE = [
    "-a", "simple_cnn_bn", "--device", "cpu", "-j", "0", "-b", "4", "--lr", "0.05", "--seed", "3",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--num-classes", "10",
    "--lr-step-size", "1", "--lr-gamma", "0.5", "--no-tensorboard",
]  # fmt: skip


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


def nvidia_train(arch: str, steps: int = 2, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model trained a few steps the way NVIDIA's main.py sets it up (on CPU: DataParallel without GPUs simply
    calls the module): ``'vgg' in arch`` wraps ``model.features``, anything else the whole model; SGD over the
    parameters that require grad. ``simple_cnn*`` stands in for a VGG (its ``features`` wrapped the same way) to keep
    the end-to-end runs tiny; the VGG layout itself is tested with a real pd-VGG."""
    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    if "vgg" in arch or arch.startswith("simple_cnn"):
        model.features = nn.DataParallel(model.features)
    else:
        model = nn.DataParallel(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 0.1, momentum=0.9, weight_decay=1e-4)
    size = 32 if "vgg" in arch else 16
    for _ in range(steps):
        x = torch.randn(2, 3, size, size)
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def save_like_main_py(path: Path, model: nn.Module, opt, arch: str, epoch, best_prec1) -> Path:
    torch.save(
        {
            "epoch": epoch,
            "arch": arch,
            "state_dict": model.state_dict(),
            "best_prec1": best_prec1,
            "optimizer": opt.state_dict(),
        },
        path,
    )
    return path


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace("module.", ""): v for k, v in model.state_dict().items()}


# --- load_checkpoint ---------------------------------------------------------------------------------------------


def test_nvidia_vgg_checkpoint_with_numpy_metadata_loads(tmp_path):
    """pd-VGG as NVIDIA's main.py saves it: ``features.module.N`` keys, numpy epoch and best accuracy."""
    model, opt = nvidia_train("pdvgg11_bn", steps=1, num_classes=10)
    assert any(k.startswith("features.module.0.") for k in model.state_dict())
    path = save_like_main_py(tmp_path / "vgg.pth.tar", model, opt, "pdvgg11_bn", np.int64(3), np.float64(41.25))
    raw = read_checkpoint(path)
    assert raw["epoch"] == 3 and raw["best_prec1"] == 41.25
    fresh = create_model("pdvgg11_bn", num_classes=10)
    load_checkpoint(fresh, path)
    expected = plain_state(model)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_wrapper_segments_in_any_order_and_repetition(tmp_path):
    ref = create_model("pdresnet18", num_classes=7)
    for prefix in ("module.", "_orig_mod.module.", "module._orig_mod.", "module.module."):
        torch.save({"state_dict": {prefix + k: v for k, v in ref.state_dict().items()}}, tmp_path / "c.pth")
        model = create_model("pdresnet18", num_classes=7)
        load_checkpoint(model, tmp_path / "c.pth")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


class HasModule(nn.Module):
    """A model whose real submodule is named ``module`` (the name is not reserved to wrappers)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(3, 2)
        self.head = nn.Sequential(nn.Linear(2, 2))


def test_real_submodule_named_module_is_not_stripped(tmp_path):
    ref = HasModule()
    own = ref.state_dict().keys()
    assert set(match_keys(ref.state_dict(), own)) == set(own)  # kept as they are
    wrapped = {"module." + k: v for k, v in ref.state_dict().items()}  # DataParallel(HasModule)
    assert set(match_keys(wrapped, own)) == set(own)
    torch.save(wrapped, tmp_path / "w.pth")
    model = HasModule()
    load_checkpoint(model, tmp_path / "w.pth")
    assert torch.equal(model.module.weight, ref.module.weight)
    # The same model wrapped inside: its keys are loaded into, from a plain checkpoint.
    torch.save(ref.state_dict(), tmp_path / "p.pth")
    outer = HasModule()
    outer.head = nn.DataParallel(outer.head)
    load_checkpoint(outer, tmp_path / "p.pth")
    assert torch.equal(outer.head.module[0].weight, ref.head[0].weight)


def test_unloadable_global_is_one_clean_line(tmp_path):
    path = tmp_path / "args.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)  # many programs save their args
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert str(path) in msg and "argparse.Namespace" in msg


def test_numpy_array_metadata_loads(tmp_path):
    path = tmp_path / "np.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "history": np.arange(4.0), "flag": np.bool_(True)}, path)
    ckpt = read_checkpoint(path)
    assert np.array_equal(ckpt["history"], np.arange(4.0)) and bool(ckpt["flag"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_numpy1_pickled_scalar_loads(tmp_path):
    """numpy < 2 pickles its scalars as ``numpy.core.multiarray.scalar`` (numpy 2: ``numpy._core``)."""
    multiarray = getattr(np, "_core", np.core).multiarray
    if not hasattr(np, "_core") or multiarray.scalar.__module__ != "numpy._core.multiarray":
        pytest.skip("numpy < 2 here: its own name is the old one")
    multiarray.scalar.__module__ = "numpy.core.multiarray"
    try:
        torch.save({"best_acc1": np.float64(12.5)}, tmp_path / "old.pth")
    finally:
        multiarray.scalar.__module__ = "numpy._core.multiarray"
    assert b"numpy.core.multiarray" in (tmp_path / "old.pth").read_bytes()
    assert read_checkpoint(tmp_path / "old.pth")["best_acc1"] == 12.5


def test_state_without_num_batches_tracked_loads(tmp_path):
    ref = create_model("resnet18", num_classes=5)
    old = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}  # PyTorch < 0.4.1
    torch.save(old, tmp_path / "old.pth")
    model = create_model("resnet18", num_classes=5)
    load_checkpoint(model, tmp_path / "old.pth")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


def test_real_mismatch_keeps_the_message(tmp_path):
    torch.save(
        {"module." + k: v for k, v in create_model("resnet18", num_classes=5).state_dict().items()}, tmp_path / "r.pth"
    )
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc.weight \(5, 512\) vs model \(10, 512\)"):
        load_checkpoint(create_model("resnet18", num_classes=10), tmp_path / "r.pth")
    with pytest.raises(CheckpointError, match="does not fit ResNet: missing keys: layer1.2.conv1.weight"):
        load_checkpoint(create_model("resnet34", num_classes=5), tmp_path / "r.pth")


# --- --resume ------------------------------------------------------------------------------------------------------


def test_restore_nvidia_checkpoint_restores_momentum_epoch_lr_and_best(data, tmp_path):
    model_nv, opt_nv = nvidia_train("simple_cnn_bn", num_classes=10)
    path = save_like_main_py(tmp_path / "nv.pth.tar", model_nv, opt_nv, "simple_cnn_bn", 2, torch.tensor(37.5))
    cfg = parse_config(args(data, tmp_path / "run", "--epochs", "4"))
    model = create_model("simple_cnn_bn", num_classes=10)
    optim = build_training_context(cfg, model, model, torch.device("cpu"), steps_per_epoch=10)
    warnings: list[str] = []
    epoch, step, best, sums = restore_run_state(
        read_checkpoint(path), model, optim, 0, 1, warnings.append, path, steps_per_epoch=10
    )
    assert (epoch, step, best, sums) == (2, 0, 37.5, None)
    for p_ours, p_nv in zip(model.parameters(), model_nv.parameters()):
        assert torch.equal(p_ours, p_nv)
        assert torch.equal(optim.optimizer.state[p_ours]["momentum_buffer"], opt_nv.state[p_nv]["momentum_buffer"])
    assert optim.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)  # epoch 2 of step size 1, gamma 0.5
    optim.optimizer.step()  # no gradients: parameters unchanged; the schedule goes on from there
    optim.scheduler.step()
    assert optim.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)
    assert len(warnings) == 1 and "RNG" in warnings[0] and "mid-epoch" in warnings[0]


def test_resume_continues_a_run_of_nvidia_main_py(data, tmp_path, capsys):
    model_nv, opt_nv = nvidia_train("simple_cnn_bn", num_classes=10)
    path = save_like_main_py(tmp_path / "checkpoint.pth.tar", model_nv, opt_nv, "simple_cnn_bn", 1, torch.tensor(99.0))
    out = tmp_path / "run"
    assert train.cli(args(data, out, "--epochs", "2", "--resume", str(path))) == 0
    err = capsys.readouterr().err
    assert "NVIDIA main.py layout" in err and "not restored: RNG streams" in err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [2]
    assert lines[0]["best_acc1"] == 99.0  # the restored best top-1, not beaten by a tiny run
    assert lines[0]["lr"] == pytest.approx(0.05 * 0.5)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("weights_only", "holds model weights only .* use --pretrained "),
        ("other_classes", "does not fit SimpleCNN: shape mismatch: fc.weight"),
        ("other_arch", "does not fit SimpleCNN: .*missing keys"),
        ("no_weights", "expected a state_dict"),
        ("other_padding", "written for -a pdsimple_cnn_bn, this run is -a simple_cnn_bn; resume with -a pdsimple"),
    ],
)
def test_resume_with_unfit_checkpoint_is_one_line(data, tmp_path, capsys, case, expected):
    path = tmp_path / "c.pth.tar"
    if case == "weights_only":
        torch.save(create_model("simple_cnn_bn", num_classes=10).state_dict(), path)
    elif case == "no_weights":
        torch.save({"epoch": 3, "best_prec1": 1.0}, path)
    elif case == "other_padding":  # the same weights: only the name says partial padding
        model, opt = nvidia_train("pdsimple_cnn_bn", steps=1, num_classes=10)
        save_like_main_py(path, model, opt, "pdsimple_cnn_bn", 1, 1.0)
    else:
        arch, classes = ("simple_cnn_bn", 5) if case == "other_classes" else ("resnet18", 10)
        model, opt = nvidia_train(arch, steps=1, num_classes=classes)
        save_like_main_py(path, model, opt, arch, 1, 1.0)
    assert train.cli(args(data, tmp_path / "run", "--epochs", "1", "--resume", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: ") and str(path) in err
    assert re.search(expected, err), err


# --- the seed's flags ----------------------------------------------------------------------------------------------


def seed_args(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(tmp_path), *extra]


def test_gpu_flag_selects_one_device(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a two-GPU node, as the seed's users have
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_config(seed_args(data, tmp_path, "--gpu", "1")).device == "cuda:1"
    with pytest.raises(ConfigError, match="--gpu 1 means --device cuda:1; it conflicts with --device cpu"):
        parse_config(seed_args(data, tmp_path, "--gpu", "1", "--device", "cpu"))


def test_distributed_seed_flags_print_the_torchrun_command(data, tmp_path, capsys):
    argv = seed_args(data, tmp_path, "-a", "pdresnet50", "--world-size", "2", "--rank", "1")
    argv += ["--dist-url", "tcp://10.1.2.3:23456", "--dist-backend", "nccl", "--multiprocessing-distributed"]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "torchrun --nnodes 2 --node-rank 1 --nproc-per-node <GPUs per node> --master-addr 10.1.2.3 "
        f"--master-port 23456 train.py --data_train {data / 'train'}"
    ) in err
    assert err.endswith("-a pdresnet50") and err.count("--world-size") == 1  # named, not passed on
    assert train.cli(seed_args(data, tmp_path, "--world-size=4", "--rank=3")) == 2
    assert "torchrun --nnodes 4 --node-rank 3 --nproc-per-node 1 train.py" in capsys.readouterr().err


def test_pretrained_without_path_says_where_weights_come_from(data, tmp_path, capsys):
    assert train.cli(seed_args(data, tmp_path, "-a", "resnet50", "--pretrained")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--pretrained needs a PATH: weights load from a local file" in err and "https://download.pytorch.org" in err


def test_seed_flags_are_in_help():
    text = build_parser().format_help()
    for flag in ("--gpu", "--world-size", "--rank", "--dist-url", "--dist-backend", "--multiprocessing-distributed"):
        assert flag in text
