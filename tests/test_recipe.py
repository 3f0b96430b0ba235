"""Modern-recipe flags (issue 12): optimiser choice and parameter groups, gradient clipping, constant warm-up,
auto-augment policies and random erasing, their validation on every input path, and exact resume of a run with
them all on, stopped by SIGTERM to its process group mid-epoch with a DataLoader worker."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from signalling import no_process_left, signal_at_line, to_group
from torch import nn

from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import compare_resumed_config, parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.data.presets import AUTO_AUGMENT, train_transform
from partialconv.engine.trainer import build_training_context, lr_factor, mix_batch, train_step
from partialconv.errors import ConfigError
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"images_per_sec", "epoch_seconds", "time"}
RECIPE = [
    "-a", "simple_cnn_bn", "--device", "cpu", "-b", "4", "--lr", "0.01", "--seed", "5",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--deterministic",
    "--auto-augment", "ta_wide", "--random-erase", "0.5", "--opt", "adamw", "--wd", "0.05",
    "--norm-weight-decay", "0", "--bias-weight-decay", "0", "--clip-grad-norm", "1.0", "--warmup-epochs", "1",
    "--lr-warmup-method", "constant", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1",
    "--model-ema", "--model-ema-steps", "2", "--model-ema-decay", "0.9", "--lr-schedule", "cosine", "--no-tensorboard",
    "--ra-sampler", "--ra-reps", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=8, val_per_class=4, size=24)


def args(data: Path, out: Path) -> list[str]:
    return [*RECIPE, "--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(out)]


def metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_everything_on_sigterm_to_group_mid_epoch_resumes_exactly(data, tmp_path):
    straight = tmp_path / "straight"
    assert train.cli([*args(data, straight), "-j", "1", "--epochs", "2", "-p", "2"]) == 0
    out = tmp_path / "preempted"
    cmd = [sys.executable, "-u", str(ROOT / "train.py"), *args(data, out), "-j", "1", "--epochs", "2", "-p", "1"]
    # in epoch 2: after the warm-up epoch (where the EMA restarts from the weights), so its state must be restored
    code, output, pgid = signal_at_line(cmd, "Epoch: [2][2/20]", to_group(signal.SIGTERM))
    assert no_process_left(pgid)
    assert code == 143, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 1 and 2 <= ckpt["step"] < 20 and len(metrics(out)) == 1
    assert train.cli([*args(data, out), "-j", "1", "--epochs", "2", "--resume", "auto", "-p", "2"]) == 0
    for key in ("state_dict", "model_ema"):
        wa, wb = (read_checkpoint(d / "checkpoint.pth.tar")[key] for d in (straight, out))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), key
    assert {"ema_val_acc1", "ema_val_acc5"} <= metrics(straight)[0].keys()
    assert "ema acc@1" in (straight / "log.txt").read_text()
    strip = [[{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics(d)] for d in (straight, out)]
    assert strip[0] == strip[1] and len(strip[0]) == 2


def cfg(**kw) -> argparse.Namespace:
    base = dict(
        lr_schedule="step", epochs=2, warmup_epochs=0.0, lr_step_size=30, lr_gamma=0.1, lr=0.1, momentum=0.9,
        weight_decay=1e-4, amp="none", label_smoothing=0.0, channels_last=False, train_crop_size=8,
    )  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def test_norm_and_bias_weight_decay_make_groups():
    model = small_model()
    model(torch.zeros(1, 3, 8, 8))
    optim = build_training_context(
        cfg(norm_weight_decay=0.0, bias_weight_decay=0.5, opt="adamw"), model, model, torch.device("cpu"), 4
    )
    assert isinstance(optim.optimizer, torch.optim.AdamW)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optim.optimizer.param_groups}
    bn, conv, lin = model[1], model[0], model[3]
    assert groups[0.0] == {id(bn.weight)}
    assert groups[0.5] == {id(conv.bias), id(bn.bias), id(lin.bias)}  # the bias key first, as torchvision
    assert groups[1e-4] == {id(conv.weight), id(lin.weight)}
    plain = build_training_context(cfg(), model, model, torch.device("cpu"), 4).optimizer
    assert isinstance(plain, torch.optim.SGD) and len(plain.param_groups) == 1  # flags absent: as before


def test_clip_grad_norm_caps_the_gradient():
    model = small_model()
    x, y = torch.randn(4, 3, 8, 8) * 100, torch.tensor([0, 1, 2, 0])
    model(x)
    optim = build_training_context(cfg(clip_grad_norm=0.01, lr=0.0), model, model, torch.device("cpu"), 4)
    train_step(optim, x, y)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 0.01 * (1 + 1e-4)
    unclipped = build_training_context(cfg(lr=0.0), model, model, torch.device("cpu"), 4)
    train_step(unclipped, x, y)
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])) > 0.1


def test_constant_warmup_then_schedule():
    f = lr_factor(cfg(warmup_epochs=1, lr_warmup_method="constant", lr_warmup_decay=0.01), 4)
    assert [f(i) for i in range(5)] == [0.01, 0.01, 0.01, 0.01, 1.0]
    linear = lr_factor(cfg(warmup_epochs=1, lr_warmup_decay=0.0), 4)
    assert [linear(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    from_start_factor = lr_factor(cfg(warmup_epochs=1, lr_warmup_decay=0.2), 4)
    assert [from_start_factor(i) for i in range(5)] == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("policy", AUTO_AUGMENT)
def test_each_policy_changes_the_image_and_is_seeded(policy):
    image = Image.new("RGB", (24, 24))
    image.putdata([((7 * i) % 256, (13 * i) % 256, (i * i) % 256) for i in range(24 * 24)])

    def run(t, seed):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return t(image)

    plain, augmented = train_transform(16), train_transform(16, auto_augment=policy)
    outs = [run(augmented, s) for s in range(6)]
    assert any(not torch.equal(run(plain, s), o) for s, o in enumerate(outs))
    assert torch.equal(run(augmented, 3), outs[3])  # same seed, same draw: resume replays it


def test_random_erase_erases():
    image = Image.new("RGB", (24, 24), (200, 100, 50))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        erased = train_transform(16, random_erase=1.0)(image)
        torch.manual_seed(0)
        plain = train_transform(16)(image)
    assert not torch.equal(erased, plain)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--opt", "lamb"], "invalid choice"),
        (["--clip-grad-norm", "0"], "--clip-grad-norm must be > 0"),
        (["--norm-weight-decay", "-1"], "--norm-weight-decay must be >= 0"),
        (["--random-erase", "1.5"], "--random-erase must be in [0, 1]"),
        (["--lr-warmup-decay", "1.5"], "--lr-warmup-decay must be in [0, 1]"),
        (["--lr-min", "-1"], "--lr-min must be >= 0"),
        (["--ra-magnitude", "31"], "--ra-magnitude must be in [0, 30]"),
        (["--augmix-severity", "0"], "--augmix-severity must be in [1, 10]"),
        (["--lr-scheduler", "exponentiallr"], "invalid choice"),
        (["--interpolation", "cubic"], "invalid choice"),
    ],
)
def test_values_checked_from_flags(argv, message, capsys):
    try:
        parse_config(argv)
    except ConfigError as e:
        assert message in str(e)
    except SystemExit:
        assert message in capsys.readouterr().err
    else:
        pytest.fail("accepted")


def test_values_checked_from_yaml_and_resumed_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip_grad_norm: -2\n")
    with pytest.raises(ConfigError, match="key 'clip_grad_norm': must be > 0"):
        parse_config(["--config", str(bad)])
    bad.write_text("auto_augment: cutout\n")
    with pytest.raises(ConfigError, match="key 'auto_augment': invalid choice"):
        parse_config(["--config", str(bad)])
    cfg_ = parse_config(["-a", "simple_cnn", "--opt", "adamw"])
    with pytest.raises(ConfigError, match=r"ckpt: config: key 'random_erase': must be in \[0, 1\]"):
        compare_resumed_config({"random_erase": 2.0}, cfg_, "ckpt")
    with pytest.raises(ConfigError, match="opt=sgd"):
        compare_resumed_config({"opt": "sgd"}, cfg_, "ckpt")


def test_gpu_backend_refuses_auto_augment_in_one_line(data, tmp_path, capsys):
    code = train.cli([*args(data, tmp_path / "gpu"), "-j", "0", "--epochs", "1", "--data-backend", "gpu"])
    err = capsys.readouterr().err
    assert code != 0 and "--auto-augment ta_wide" in err and "gpu" in err, err
    assert err.strip().count("\n") == 0 and err.startswith("train.py: error: "), err


def test_mixup_cutmix_targets_are_soft_and_seeded_per_step():
    model = small_model()
    optim = build_training_context(
        cfg(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=3, seed=1), model, model, torch.device("cpu"), 4
    )
    images, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    draws = [mix_batch(optim, images, targets, 0, step) for step in range(4)]
    for _, soft in draws:
        assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
        assert ((soft > 0) & (soft < 1)).any()  # soft: shares of two labels
    assert not all(torch.equal(draws[0][0], d[0]) for d in draws[1:])  # another step, another draw
    again = mix_batch(optim, images, targets, 0, 2)
    assert torch.equal(again[0], draws[2][0]) and torch.equal(again[1], draws[2][1])  # replayed on resume
    assert build_training_context(cfg(num_classes=3), model, model, torch.device("cpu"), 4).mix is None
    # every rank draws its own, and rank 0 its pre-rank draws (older runs resume exactly)
    assert torch.equal(mix_batch(optim, images, targets, 0, 2, rank=0)[1], draws[2][1])
    other = [mix_batch(optim, images, targets, 0, step, rank=1) for step in range(4)]
    assert not all(torch.equal(o[1], d[1]) for o, d in zip(other, draws))


def test_train_one_epoch_mixes_with_the_ranks_own_draws(monkeypatch):
    import partialconv.engine.trainer as trainer
    from partialconv.engine.metrics import EpochMeter

    model = small_model()
    optim = build_training_context(cfg(mixup_alpha=0.2, num_classes=3, seed=1), model, model, torch.device("cpu"), 2)
    ranks = []
    real = trainer.mix_batch
    monkeypatch.setattr(trainer, "mix_batch", lambda *a: ranks.append(a[-1]) or real(*a))
    # rank 1 of 2 (no collective is reached: the loader drops no images, so the good-image count is not summed)
    monkeypatch.setattr(trainer.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(trainer.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(trainer.dist, "get_rank", lambda: 1)
    loader = [(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), torch.tensor([0, 2]), 0)] * 2
    trainer.train_one_epoch(optim, loader, 0, EpochMeter(torch.device("cpu")), drops_bad_images=False, log=str)
    assert ranks == [1, 1]


def test_ema_differs_from_the_model_and_follows_the_decay():
    model = small_model()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    model(x)
    c = cfg(model_ema=True, model_ema_steps=1, model_ema_decay=0.99, batch_size=4, epochs=2, lr=0.5)
    optim = build_training_context(c, model, model, torch.device("cpu"), 4)
    decay = 1.0 - min(1.0, 0.01 * 4 * 1 / 2)  # torchvision's adjustment: (1 - decay) x batch x steps / epochs
    from partialconv.engine.trainer import update_ema

    train_step(optim, x, y)
    update_ema(optim, epoch=0, step=0)  # first update: a copy
    ema = {k: v.clone() for k, v in optim.ema.module.state_dict().items()}
    train_step(optim, x, y)
    update_ema(optim, epoch=0, step=1)
    w = model[0].weight.detach()
    assert not torch.equal(optim.ema.module[0].weight, w)
    assert torch.allclose(optim.ema.module[0].weight, decay * ema["0.weight"] + (1 - decay) * w)
    assert torch.allclose(
        optim.ema.module[1].running_mean, decay * ema["1.running_mean"] + (1 - decay) * model[1].running_mean
    )


@pytest.mark.parametrize(
    "name, expect",
    [
        ("imagenet_resnet50_torchvision_v2", dict(arch="resnet50", opt="sgd", lr=0.5, norm_weight_decay=0.0)),
        ("imagenet_convnext_tiny", dict(arch="convnext_tiny", opt="adamw", lr=0.001, weight_decay=0.05)),
    ],
)
def test_recipe_yaml_loads(name, expect):
    c = parse_config(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    assert {k: getattr(c, k) for k in expect} == expect
    assert c.model_ema and c.lr_schedule == "cosine" and c.lr_warmup_method == "linear"
    assert (c.mixup_alpha, c.cutmix_alpha, c.random_erase, c.train_crop_size) == (0.2, 1.0, 0.1, 176)
