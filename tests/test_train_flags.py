"""train.py flags the README promises, checked by their effect: --pretrained, --start-epoch, --train-min-scale,
--num-classes, --compile and the flag aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from partialconv.checkpoint_io import read_checkpoint, save_checkpoint
from partialconv.config import parse_config
from partialconv.data import ClassificationFolder, eval_transform
from partialconv.data.demo import make_demo_dataset
from partialconv.engine.data_setup import loaders_from_config
from partialconv.engine.distributed import DistInfo
from partialconv.errors import ConfigError
from partialconv.models import create_model
from partialconv.programs import train

BASE = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "3", "-p", "100"]
BASE += ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16", "--no-tensorboard"]
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes x 4 train images of 20 px, batch 8: 5 steps per epoch
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "d", train_per_class=4, val_per_class=2, size=20)


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    return [*BASE, *dirs, "--output-dir", str(out), *extra]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoint.pth.tar")["state_dict"]


def test_pretrained_weights_are_the_starting_point_and_can_be_evaluated(data, tmp_path, capsys):
    torch.manual_seed(99)
    pretrained = create_model("simple_cnn", num_classes=10).state_dict()
    save_checkpoint({"state_dict": pretrained}, tmp_path / "pre.pth.tar")
    # lr 0, no weight decay: the weights after training are exactly the starting ones
    frozen = tmp_path / "frozen"
    flags = ["--epochs", "1", "--lr", "0", "--wd", "0", "--pretrained", str(tmp_path / "pre.pth.tar")]
    assert train.cli(argv(data, frozen, *flags)) == 0
    got = weights(frozen)
    assert all(torch.equal(got[k], pretrained[k]) for k in pretrained)
    fresh = tmp_path / "fresh"
    assert train.cli(argv(data, fresh, "--epochs", "1", "--lr", "0", "--wd", "0")) == 0
    assert not torch.equal(weights(fresh)["fc.weight"], pretrained["fc.weight"])  # the seed's init, not the file
    # -e --pretrained: the val top-1/top-5 of those weights, as the lr-0 run measured them
    capsys.readouterr()
    assert train.cli(argv(data, tmp_path / "unused", "-e", "--pretrained", str(tmp_path / "pre.pth.tar"))) == 0
    (rec,) = records(frozen)
    out = capsys.readouterr().out
    assert f"top-1 {rec['val_acc1']:.3f} top-5 {rec['val_acc5']:.3f}" in out and "on 20 images" in out


def test_start_epoch_trains_from_that_epoch_with_its_learning_rate(data, tmp_path):
    sched = ["--lr-schedule", "step", "--lr-step-size", "1", "--lr-gamma", "0.5"]
    # a fresh run forced to start at (0-based) epoch 2 of 3: one epoch, the third, at the third epoch's LR
    out = tmp_path / "forced"
    assert train.cli(argv(data, out, "--epochs", "3", "--start-epoch", "2", *sched)) == 0
    assert [(r["epoch"], r["lr"]) for r in records(out)] == [(3, pytest.approx(0.0125))]
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 3 and ckpt["scheduler"]["last_epoch"] == 15  # 3 epochs x 5 steps
    # after --resume: epoch 2 (0-based 1) run again; its metrics line is replaced, not appended
    again = tmp_path / "again"
    assert train.cli(argv(data, again, "--epochs", "2", *sched)) == 0
    first = records(again)
    assert train.cli(argv(data, again, "--epochs", "3", "--resume", "auto", "--start-epoch", "1", *sched)) == 0
    lines = records(again)
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[0] == first[0]
    assert [r["lr"] for r in lines] == pytest.approx([0.05, 0.025, 0.0125])


@pytest.mark.parametrize("source", ["flag", "yaml"])
def test_train_min_scale_one_crops_the_whole_image(data, tmp_path, source):
    """--train-min-scale 1 on square images: every random-resized crop is the whole image (resized, maybe
    flipped), i.e. the eval transform's output at the same size; the default scale gives other crops."""
    flags = ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "-b", "8", "-j", "0"]
    flags += ["--train-crop-size", "16", "--data-backend", "pil"]  # float samples, compared with eval_transform's
    if source == "flag":
        cfg = parse_config([*flags, "--train-min-scale", "1.0"])
    else:
        (tmp_path / "c.yaml").write_text("train-min-scale: 1.0\n")
        cfg = parse_config([*flags, "--config", str(tmp_path / "c.yaml")])
    assert cfg.train_min_scale == 1.0
    whole = ClassificationFolder(str(data / "train"), eval_transform(16, 16))
    default = loaders_from_config(parse_config(flags), CPU).train.dataset
    train_set = loaders_from_config(cfg, CPU).train.dataset
    differs = 0
    for index in (0, 7, 21):
        expected, _ = whole[index]
        for seed in range(6):
            x, _ = train_set[(index, seed)]
            assert torch.allclose(x, expected, atol=1e-5) or torch.allclose(x, expected.flip(-1), atol=1e-5)
            y, _ = default[(index, seed)]
            differs += not (torch.allclose(y, expected, atol=1e-5) or torch.allclose(y, expected.flip(-1), atol=1e-5))
    assert differs >= 12


def test_train_min_scale_out_of_range_is_one_error_line(data, tmp_path, capsys):
    assert train.cli(argv(data, tmp_path / "r", "--train-min-scale", "0")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train.py: error: --train-min-scale must be in (0, 1]; got 0.0"]


def test_num_classes_sets_the_classifier_width(data, tmp_path, capsys):
    out = tmp_path / "wide"
    assert train.cli(argv(data, out, "--epochs", "1", "--num-classes", "13")) == 0
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 13 and ckpt["config"]["num_classes"] == 13
    default = tmp_path / "default"
    assert train.cli(argv(data, default, "--epochs", "1")) == 0
    assert weights(default)["fc.weight"].shape[0] == 10  # from the data
    # fewer outputs than the data's classes: one error line before any training
    capsys.readouterr()
    assert train.cli(argv(data, tmp_path / "narrow", "--epochs", "1", "--num-classes", "5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: --num-classes 5:") and "10 classes" in err[0], err
    assert not (tmp_path / "narrow").exists()


def test_compile_trains_like_eager(data, tmp_path):
    """--compile (inductor on CPU) on the training step: the same epoch as eager, up to float rounding."""
    torch._dynamo.reset()
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train.cli(argv(data, eager, "--epochs", "1", "--deterministic")) == 0
    assert train.cli(argv(data, compiled, "--epochs", "1", "--deterministic", "--compile")) == 0
    a, b = records(eager)[0], records(compiled)[0]
    for key in ("train_loss", "val_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert (b["val_acc1"], b["val_acc5"]) == (a["val_acc1"], a["val_acc5"])
    wa, wb = weights(eager), weights(compiled)
    assert wa.keys() == wb.keys()  # the plain module is saved, not the compiled wrapper (no _orig_mod. prefix)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_flag_aliases_give_the_same_config():
    long = ["--arch", "resnet18", "--data-train", "t", "--data-val", "v", "--workers", "2", "--batch-size", "64"]
    long += ["--learning-rate", "0.3", "--weight-decay", "0.001", "--print-freq", "7", "--evaluate"]
    long += ["--resume", "x.pth", "--amp-opt-level", "O1"]
    short = ["-a", "resnet18", "--data_train", "t", "--data_val", "v", "-j", "2", "-b", "64", "--lr", "0.3"]
    short += ["--wd", "0.001", "-p", "7", "-e", "--resume", "x.pth", "--amp", "fp16"]
    a, b = vars(parse_config(long)), vars(parse_config(short))
    a.pop("amp_opt_level"), b.pop("amp_opt_level")
    assert a == b
    assert (b["workers"], b["batch_size"], b["lr"], b["weight_decay"], b["print_freq"]) == (2, 64, 0.3, 0.001, 7)
    assert (b["data_train"], b["data_val"], b["evaluate"], b["amp"]) == ("t", "v", True, "fp16")
    # the apex-style alias: O0 is no AMP
    assert parse_config(["--amp-opt-level", "O0", "--data_train", "t", "--data_val", "v"]).amp == "none"


# The habits of pytorch/examples (train.py DIR), torchvision's references (--data-path DIR, --test-only) and timm
# (--model): docs/training.md's table of equivalents, row by row.
ANCHOR_ALIASES = [
    (["/d"], ["--data_train", "/d/train", "--data_val", "/d/val"]),
    (["--data-path", "/d"], ["--data_train", "/d/train", "--data_val", "/d/val"]),
    (["--test-only", "--resume", "x"], ["-e", "--resume", "x"]),
    (["--model", "resnet50"], ["-a", "resnet50"]),
]


@pytest.mark.parametrize(("alias", "ours"), ANCHOR_ALIASES)
def test_anchor_projects_flags_are_aliases_of_ours(alias, ours):
    data = [] if "/d" in alias else ["/d"]
    assert vars(parse_config([*data, *alias])) == vars(parse_config([*data, *ours]))


def test_no_flag_prefix_means_another_flag(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--lr-sched", "cosine"])  # argparse's prefix matching took it for --lr-schedule
    assert e.value.code == 2 and "unrecognized arguments: --lr-sched" in capsys.readouterr().err
    assert parse_config(["--model", "resnet18", "--model-ema"]).arch == "resnet18"  # --model: no ambiguity


def test_data_path_conflicts_and_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match=r"--data-path /d means --data_val /d/val; it conflicts with --data_val /e"):
        parse_config(["--data-path", "/d", "--data_val", "/e"])
    with pytest.raises(ConfigError, match="two data roots"):
        parse_config(["/d", "--data-path", "/e"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data_path: /d\n")
    cfg = parse_config(["--config", str(recipe)])
    assert (cfg.data_train, cfg.data_val, cfg.data_path) == ("/d/train", "/d/val", None)


def test_run_started_with_dir_resumes_with_data_path_or_data_flags(data, tmp_path, capsys):
    """The positional DIR is stored as --data_train/--data_val: a resume spelling the data either way is the same
    run (no refusal, no changed-settings line)."""
    out = tmp_path / "dir_run"
    rest = [*BASE, "--output-dir", str(out)]
    assert train.cli([str(data), *rest, "--model", "simple_cnn", "--epochs", "1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data_train"] == str(data / "train")
    capsys.readouterr()
    assert train.cli(["--data-path", str(data), *rest, "--epochs", "2", "--resume", "auto"]) == 0
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    assert train.cli([*dirs, *rest, "--epochs", "3", "--resume", "auto"]) == 0
    log = capsys.readouterr().out
    assert "changed settings: epochs 1 -> 2" in log and "changed settings: epochs 2 -> 3" in log
    assert "data" not in log.split("changed settings:")[1].splitlines()[0]
    assert [r["epoch"] for r in records(out)] == [1, 2, 3]


def test_tensorboard_scalars_are_the_metrics_lines(data, tmp_path):
    """The event files under tb/ hold, per epoch, the same numbers as metrics.jsonl (float32 in the events)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_run"
    flags = [f for f in argv(data, out, "--epochs", "2") if f != "--no-tensorboard"]
    assert train.cli(flags) == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    lines = records(out)
    for key in ("train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1", "val_acc5", "lr"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2], key
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in lines], rel=1e-6), key


def test_save_every_snapshots_hold_that_epochs_weights(data, tmp_path):
    """--save-every 1: checkpoint_epoch1 is the state after epoch 1 (the final state of a 1-epoch run with the same
    seed), checkpoint_epoch2 the final state."""
    out, one = tmp_path / "snap", tmp_path / "one"
    assert train.cli(argv(data, out, "--epochs", "2", "--save-every", "1", "--deterministic")) == 0
    assert train.cli(argv(data, one, "--epochs", "1", "--deterministic")) == 0
    snap1 = read_checkpoint(out / "checkpoint_epoch1.pth.tar")
    snap2 = read_checkpoint(out / "checkpoint_epoch2.pth.tar")
    assert (snap1["epoch"], snap2["epoch"]) == (1, 2)
    for k, v in weights(one).items():
        assert torch.equal(snap1["state_dict"][k], v), k
    for k, v in weights(out).items():
        assert torch.equal(snap2["state_dict"][k], v), k
    assert not torch.equal(snap1["state_dict"]["fc.weight"], snap2["state_dict"]["fc.weight"])


def test_bn_momentum_and_eps_reach_every_batchnorm(data, tmp_path, capsys):
    """--bn-momentum/--bn-eps set every BatchNorm of the built model (torchvision's and timm's BatchNormAct2d
    included); in train.py they change the running statistics, not the trained weights; a resumed run must keep
    them; a model without BatchNorm says the flags are ignored."""
    from partialconv.engine.setup import override_batchnorm

    for arch in ("mobilenet_v3_small", "timm/test_efficientnet"):
        if arch.startswith("timm/"):
            pytest.importorskip("timm")
        model = create_model(arch, num_classes=10)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if arch == "mobilenet_v3_small":
            assert {m.momentum for m in norms} == {0.01}  # torchvision's, for long ImageNet runs
        assert override_batchnorm(model, 0.2, 1e-4) == len(norms) > 0
        assert {(m.momentum, m.eps) for m in norms} == {(0.2, 1e-4)}
    runs = {}
    for name, extra in (("default", []), ("m1", ["--bn-momentum", "1.0"])):
        out = tmp_path / name
        assert train.cli(argv(data, out, "-a", "simple_cnn_bn", "--epochs", "1", *extra)) == 0
        runs[name] = read_checkpoint(out / "checkpoint.pth.tar")["state_dict"]
    default, m1 = runs["default"], runs["m1"]
    stats = [k for k in default if k.endswith("running_mean")]
    assert stats and all(not torch.equal(default[k], m1[k]) for k in stats)
    weights = [k for k in default if k.endswith("weight")]
    assert all(torch.equal(default[k], m1[k]) for k in weights)  # train-mode BatchNorm uses the batch statistics
    capsys.readouterr()
    resumed = argv(data, tmp_path / "m1", "-a", "simple_cnn_bn", "--epochs", "2", "--resume", "auto")
    assert train.cli(resumed) == 2
    assert "bn_momentum=1.0; this run has bn_momentum=None" in capsys.readouterr().err
    assert train.cli(argv(data, tmp_path / "nobn", "--epochs", "1", "--bn-eps", "1e-3")) == 0
    assert "warning: --bn-eps: simple_cnn has no BatchNorm layer; ignored" in capsys.readouterr().err


def test_a_batch_that_leaves_out_much_of_an_epoch_is_said_once_at_start(data, tmp_path, capsys):
    """40 train images, -b 32: one step per epoch, 8 images (20%) never in it; said once, with a better -b."""
    out = tmp_path / "big_batch"
    assert train.cli(argv(data, out, "--epochs", "2", "-b", "32")) == 0
    err = capsys.readouterr().err
    expected = (
        "-b/--batch-size 32: an epoch is 1 step(s) of 32 of the 40 train images; the other 8 (20%) are left out of "
        "every epoch (others each epoch). -b 20 would take 2 steps and leave out 0"
    )
    assert err.count(expected) == 1, err
    assert (out / "log.txt").read_text().count(expected) == 1
    assert train.cli(argv(data, tmp_path / "even", "--epochs", "1")) == 0  # -b 8: 5 steps, nothing left out
    assert "left out" not in capsys.readouterr().err


def test_the_demo_recipe_leaves_out_little_of_an_epoch():
    from partialconv.data.demo import make_demo_dataset
    from partialconv.engine.data_setup import drop_last_warning

    recipe = yaml.safe_load((Path(train.DEMO_CONFIG)).read_text())
    defaults = make_demo_dataset.__defaults__  # train_per_class, val_per_class, size, seed
    images = 10 * defaults[0]
    assert drop_last_warning(images, recipe["batch_size"], images // recipe["batch_size"]) is None
    assert drop_last_warning(360, 192, 1) is not None and drop_last_warning(360, 120, 3) is None


def test_help_states_each_default_once(capsys):
    """argparse appended "(default: None)" to flags whose text already says their default ("the model's own")."""
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the model's own) (default" not in text and "(default: None)" not in text
    assert "--bn-eps BN_EPS epsilon of every BatchNorm (default: the model's own) " in text
    assert "-b BATCH_SIZE, --batch-size BATCH_SIZE global batch size, split over processes (default: 192)" in text


def test_no_keep_prev_keeps_one_checkpoint_less(data, tmp_path):
    """--no-keep-prev: no checkpoint.prev.pth.tar (also one left by an earlier session is removed on resume); the
    last checkpoint and model_best stay and resume as usual."""
    kept, lean = tmp_path / "kept", tmp_path / "lean"
    assert train.cli(argv(data, kept, "--epochs", "2")) == 0
    assert (kept / "checkpoint.prev.pth.tar").is_file()
    assert train.cli(argv(data, lean, "--epochs", "2", "--no-keep-prev")) == 0
    assert not (lean / "checkpoint.prev.pth.tar").exists()
    assert {"checkpoint.pth.tar", "model_best.pth.tar"} <= {p.name for p in lean.iterdir()}
    assert train.cli(argv(data, kept, "--epochs", "3", "--resume", "auto", "--no-keep-prev")) == 0
    assert not (kept / "checkpoint.prev.pth.tar").exists() and [r["epoch"] for r in records(kept)] == [1, 2, 3]
