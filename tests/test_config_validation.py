"""Wrong configuration never runs: every YAML value is checked as its flag would be (type, choices, nargs, on/off,
range), flags out of range and unusable devices are one line, and an error raised in a DataLoader worker is the
same one line as in the main process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from partialconv.config import parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.models import create_model
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-j", "0", "-b", "4", "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16"]
BASE += ["--epochs", "1", "--no-tensorboard", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


def args(data: Path, out: Path) -> list[str]:
    return [*BASE, "--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(out)]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("lr_schedule: linear", "key 'lr_schedule': invalid choice: 'linear'"),
        ('tensorboard: "no"', "key 'tensorboard': expected true or false; got 'no'"),
        ("epochs: 2.5", "key 'epochs': invalid int value: '2.5'"),
        ("batch_size: null", "key 'batch_size': expected a value (default 192); got null"),
        ("amp: fp32", "key 'amp': invalid choice: 'fp32'"),
        ("padding: foo", "key 'padding': invalid choice: 'foo'"),
        ("on_bad_image: maybe", "key 'on_bad_image': invalid choice: 'maybe'"),
        ("print-freq: 0", "key 'print-freq': must be >= 1; got 0"),
        ("lr_step_size: 0", "key 'lr_step_size': must be >= 1; got 0"),
        ("num_classes: 1", "key 'num_classes': must be >= 2"),
        ("device: tpu", "key 'device': must be auto, cpu, cuda or cuda:N; got tpu"),
        ("lr: [0.1]", "key 'lr': expected a number; got [0.1]"),
        ("workers: true", "key 'workers': expected an integer; got True"),
        ("channels_last: 1", "key 'channels_last': expected true or false; got 1"),
        ("overwrite: true", "key 'overwrite': a command-line flag only (--overwrite)"),
        ("bn_momentum: 0", "key 'bn_momentum': must be in (0, 1] (or unset: the model's own); got 0"),
        ("bn-eps: -1e-5", "key 'bn-eps': must be > 0 (or unset: the model's own); got -1e-05"),
        ("dist_timeout: 0", "key 'dist_timeout': must be in (0, 10080] (minutes: at most a week); got 0"),
    ],
)
def test_bad_yaml_value_is_one_line_naming_file_and_key(data, tmp_path, capsys, yaml_text, message):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml_text + "\n")
    out = tmp_path / "run"
    assert train.cli(["--config", str(config), "-a", "simple_cnn", *args(data, out)]) == 2
    line = one_error_line(capsys)
    assert f"--config {config}: {message}" in line, line
    assert not out.exists()


def test_yaml_arch_that_is_not_a_name_is_one_line(data, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("arch: 5\n")
    assert train.cli(["--config", str(config), *args(data, tmp_path / "run")]) == 2
    assert "unknown model '5'" in one_error_line(capsys)


def test_yaml_values_give_what_the_flags_give(tmp_path):
    """Each YAML value is read through its flag's own argparse action: the same Namespace either way."""
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "lr: 1e-3\nweight-decay: 0.0005\nepochs: 7\ntensorboard: false\nchannels_last: true\nnum_classes: null\n"
        "amp_opt_level: O1\nlr_schedule: cosine\nprefix: 2024-01-01\nwarmup_epochs: 1\nseed: 12\n"
    )
    from_yaml = parse_config(["--config", str(config)])
    flags = ["--lr", "1e-3", "--wd", "0.0005", "--epochs", "7", "--no-tensorboard", "--channels-last"]
    flags += ["--amp-opt-level", "O1", "--lr-schedule", "cosine", "--prefix", "2024-01-01", "--warmup-epochs", "1"]
    (tmp_path / "empty.yaml").write_text("{}\n")
    from_flags = parse_config([*flags, "--seed", "12", "--config", str(tmp_path / "empty.yaml")])
    assert vars(from_yaml) | {"config": None} == vars(from_flags) | {"config": None}
    assert from_yaml.lr == 0.001 and isinstance(from_yaml.warmup_epochs, float) and from_yaml.amp == "fp16"


def test_checkpoint_config_gets_the_same_checks():
    from partialconv.config import check_values

    with pytest.raises(ValueError, match=r"^ckpt.pth: config: key 'batch_size': invalid int value: 'eight'$"):
        check_values({"batch_size": "eight"}, where="ckpt.pth: config")
    assert check_values({"batch_size": 8, "start_epoch": None}) == {"batch_size": 8, "start_epoch": None}
    with pytest.raises(ValueError, match=r"^ckpt.pth: config: key 'bn_momentum': must be in \(0, 1\]"):
        check_values({"bn_momentum": 2.0}, where="ckpt.pth: config")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-p", "0"], "-p/--print-freq must be >= 1; got 0"),
        (["--lr-step-size", "0"], "--lr-step-size must be >= 1; got 0"),
        (["--val-resize-size", "0"], "--val-resize-size must be >= 1; got 0"),
        (["--num-classes", "1"], "--num-classes must be >= 2"),
        (["--num-classes", "0"], "--num-classes must be >= 2"),
        (["--num-classes", "5"], "--num-classes 5: the data has 10 classes"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N; got tpu"),
        (["--device", "cuda"], "--device cuda: CUDA is not available here"),
        (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1]; got 1.5"),
        (["--bn-momentum", "1.5"], "--bn-momentum must be in (0, 1] (or unset: the model's own); got 1.5"),
        (["--bn-eps", "0"], "--bn-eps must be > 0 (or unset: the model's own); got 0"),
        (["--dist-timeout", "-1"], "--dist-timeout must be in (0, 10080] (minutes: at most a week); got -1.0"),
        (["--dist-timeout", "nan"], "--dist-timeout must be in (0, 10080] (minutes: at most a week); got nan"),
    ],
)
def test_bad_flag_value_is_one_line(data, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "without CUDA", also on a GPU machine
    out = tmp_path / "run"
    assert train.cli(["-a", "simple_cnn", *args(data, out), *flags]) == 2
    line = one_error_line(capsys)
    assert line == f"train.py: error: {message}" or message in line, line
    assert not out.exists()


@pytest.fixture()
def bad_data(data, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "bad"
    shutil.copytree(data, root)
    truncated = root / "train" / "grid" / "truncated.png"
    truncated.write_bytes((root / "train" / "grid" / "0000.png").read_bytes()[:200])
    return root, truncated


@pytest.mark.parametrize("workers", ["1", "2"])
def test_error_in_a_dataloader_worker_is_one_line_naming_the_file(bad_data, tmp_path, capsys, monkeypatch, workers):
    root, truncated = bad_data
    argv = [*args(root, tmp_path / "run"), "-a", "simple_cnn", "--on-bad-image", "error", "-j", workers]
    assert train.cli(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"train.py: error: bad image {truncated}: ") and "--on-bad-image skip" in line, line
    # Only the expected errors are shortened: a bug in a worker still propagates with torch's whole message.
    from partialconv.data import ClassificationFolder

    def broken(self, key):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ClassificationFolder, "__getitem__", broken)
    with pytest.raises(ZeroDivisionError, match="Caught ZeroDivisionError in DataLoader worker process"):
        train.cli([*args(root, tmp_path / "run2"), "-a", "simple_cnn", "-j", workers])


def eval_inpainting():
    from partialconv.programs import eval_inpainting as program

    return program


def test_eval_inpainting_worker_error_is_one_line(tmp_path, capsys):
    evaluate = eval_inpainting()
    weights = tmp_path / "unet.pth"
    torch.save(create_model("pconv_unet", layer_size=3).state_dict(), weights)
    photos = tmp_path / "photos"
    make_demo_dataset(tmp_path / "d", train_per_class=1, val_per_class=1, size=32)
    shutil.copytree(tmp_path / "d" / "val" / "grid", photos)
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    argv = ["--checkpoint", str(weights), "--layer-size", "3", "--data", str(photos), "--image-size", "32"]
    argv += ["-j", "1", "--device", "cpu", "--output", str(tmp_path / "eval.md")]
    assert evaluate.cli(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "evaluating:" not in x]  # no tqdm
    assert len(err) == 1 and err[0].startswith(f"eval_inpainting.py: error: image {broken}: cannot be read"), err


@pytest.mark.parametrize("device, message", [("tpu", "--device tpu: not a device"), ("cuda", "--device cuda: CUDA")])
def test_eval_inpainting_bad_device_is_one_line(tmp_path, capsys, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    evaluate = eval_inpainting()
    argv = ["--checkpoint", str(tmp_path / "x.pth"), "--data", str(tmp_path), "--device", device]
    assert evaluate.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"eval_inpainting.py: error: {message}"), err
