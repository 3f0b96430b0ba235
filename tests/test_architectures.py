"""Any architecture in any padding (issue 12): torchvision classifiers by name, timm/<name>, the pd prefix on all of
them, convert_padding on what these families contain, --list-models, the input-size check, local --pretrained,
short CPU training of one model per family through train.py, and the report's PyTorch-official column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from partialconv import PartialConv1d, PartialConv2d, PartialConv3d, convert_padding, create_model, list_models
from partialconv.analysis import collect_runs, summarize, write_report
from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import compare_resumed_config, parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.errors import ConfigError
from partialconv.models import is_model, pytorch_official
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
timm = pytest.importorskip("timm")  # in the dev extra; the optional `timm` extra for users

# One model of each family the issue names, plus timm: (name, crop) with the smallest crop the model takes.
FAMILIES = [
    ("convnext_tiny", 32),
    ("efficientnet_b0", 32),
    ("regnet_y_400mf", 32),
    ("mobilenet_v3_small", 32),
    ("timm/test_efficientnet", 32),
]


def padded_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if type(m) is nn.Conv2d and any(p > 0 for p in m.padding)]


@pytest.mark.parametrize("name", [n for n, _ in FAMILIES])
def test_every_padding_converts_every_padded_conv_and_keeps_the_weights(name):
    torch.manual_seed(0)
    zero = create_model(name, num_classes=5)
    with torch.no_grad():  # away from the init (ConvNeXt's 1e-6 layer scale hides its padded convs from the output)
        for p in zero.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1 if p.dim() == 1 else 0))
    n_padded = len(padded_convs(zero))
    assert n_padded > 0
    grouped = [m for m in padded_convs(zero) if m.groups > 1]  # depthwise (ConvNeXt, EfficientNet, MobileNet), grouped
    assert grouped or name.startswith("timm/")
    x = torch.rand(2, 3, 128, 128)  # reflect padding needs every map larger than its pad (ConvNeXt: 4x4 at the end)
    zero.eval()
    for padding in ("partial", "reflect", "replicate"):
        model = create_model(name, padding=padding, num_classes=5).eval()
        model.load_state_dict(zero.state_dict())  # identical keys in every padding
        if padding == "partial":
            converted = [m for m in model.modules() if isinstance(m, PartialConv2d)]
            assert len(converted) == n_padded and not padded_convs(model)
            assert {m.groups for m in converted} == {m.groups for m in padded_convs(zero)}
        else:
            modes = [m.padding_mode for m in model.modules() if type(m) is nn.Conv2d and any(m.padding)]
            assert modes == [padding] * n_padded
        with torch.no_grad():
            out, ref = model(x), zero(x)
        assert out.shape == ref.shape == (2, 5) and not torch.allclose(out, ref)


def test_pd_prefix_on_torchvision_and_timm_names():
    assert is_model("pdconvnext_tiny", task="classification") and is_model("pdtimm/resnet18")
    assert "pdconvnext_tiny" in list_models("pdconvnext*") and "timm/resnet18" in list_models("timm/resnet1*")
    assert not is_model("timm/no_such_net") and not is_model("pdpconv_unet")
    model = create_model("pdmobilenet_v3_small", num_classes=3)
    assert any(isinstance(m, PartialConv2d) for m in model.modules())
    with pytest.raises(ValueError, match="partial padding by name"):
        create_model("pdconvnext_tiny", padding="zero")
    assert list_models("convnext_tiny", source="torchvision") == ["convnext_tiny"]
    assert list_models("resnet50", source="torchvision") == []  # ours take precedence
    assert list_models("*", task="inpainting", source="timm") == []


def test_timm_name_without_timm_installed_says_so(monkeypatch, tmp_path, capsys):
    from partialconv.models import _external

    monkeypatch.setattr(_external, "_timm", lambda: None)
    assert not is_model("timm/resnet18") and "timm/resnet18" not in list_models("timm/*")
    assert train.cli(["-a", "pdtimm/resnet18", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "train.py: error: -a/--arch: 'pdtimm/resnet18': timm is not installed (pip install -e '.[timm]' "
        "in this checkout, or pip install timm)"
    ]


def test_timm_conv_with_its_own_padding_forward_is_named_in_a_warning():
    # partial padding reaches Conv2dSame by a hook (tests/test_padding_subclasses.py); reflect cannot
    with pytest.warns(UserWarning, match=r"keep their zero padding .*: conv_stem \(Conv2dSame\)"):
        model = create_model("timm/tf_efficientnet_b0", padding="reflect", num_classes=3)
    assert any(m.padding_mode == "reflect" for m in model.modules() if type(m) is nn.Conv2d)  # the plain convs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("timm/tf_efficientnet_b0", num_classes=3)  # zero padding: nothing to report


def test_explicit_zero_padding_layers_are_named_too():
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.warns(UserWarning, match=r"1 module\(s\) keep their zero padding .*: 0 \(ZeroPad2d\)$"):
        convert_padding(model, "partial")
    assert type(model[1]) is nn.Conv2d and isinstance(model[2], PartialConv2d)


def test_inpainting_mode_partial_convs_are_not_reported_as_zero_padded():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_padding(create_model("pconv_unet", layer_size=3), "partial")  # masked partial convs: nothing to say


def test_a_model_without_padded_convs_says_the_padding_changes_nothing():
    with pytest.warns(UserWarning, match="the model has no padded convolution to convert"):
        create_model("pdswin_t", num_classes=3)


def test_conv1d_conv3d_and_same_padding_convert():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2), nn.Conv1d(3, 3, 4, padding="same"), nn.Conv1d(3, 1, 1))
    x = torch.rand(2, 2, 11)
    ref = model(x)
    convert_padding(model, "partial")
    assert [type(m) for m in model] == [PartialConv1d, PartialConv1d, nn.Conv1d]
    out = model(x)
    assert out.shape == ref.shape and not torch.allclose(out, ref)
    # partial padding of a 1D conv is the 2D one on a one-row image
    conv1 = model[0]
    conv2 = PartialConv2d(2, 3, (1, 5), padding=(0, 2))
    conv2.weight.data, conv2.bias.data = conv1.weight.data[:, :, None], conv1.bias.data
    torch.testing.assert_close(conv1(x), conv2(x[:, :, None])[:, :, 0])
    three = convert_padding(nn.Sequential(nn.Conv3d(1, 2, 3, padding=1, groups=1)), "partial")
    assert isinstance(three[0], PartialConv3d)
    reflect = convert_padding(nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, groups=2)), "reflect")
    assert reflect[0].padding_mode == "reflect" and reflect[0].groups == 2


def test_list_models_prints_names_and_exits_without_data():
    cmd = [sys.executable, str(ROOT / "train.py"), "--list-models", "*convnext_t*"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "convnext_tiny" in lines and "timm/convnext_tiny" in lines and "pdconvnext_tiny" not in lines
    assert "# torchvision: 1 (pd<name>: the same with partial padding)" in lines
    missing = subprocess.run([*cmd[:-1], "zzz*"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        "train.py: no classifier name matches 'zzz*'"
    ]


@pytest.mark.parametrize(
    "arch, crop, message",
    [
        ("vit_b_16", 64, "--train-crop-size 64 does not fit vit_b_16 with zero padding (Wrong image height!"),
        ("inception_v3", 48, "--train-crop-size 48 does not fit inception_v3 with zero padding"),
        ("convnext_tiny", 32, "--train-crop-size 32 does not fit convnext_tiny with reflect padding"),
        ("timm/vit_tiny_patch16_224", 64, "does not fit timm/vit_tiny_patch16_224 with zero padding"),
    ],
)
def test_input_size_check_covers_fixed_size_and_reflect_models(arch, crop, message, tmp_path, capsys):
    padding = ["--padding", "reflect"] if "reflect" in message else []
    argv = ["-a", arch, *padding, "--train-crop-size", str(crop), "--val-resize-size", str(crop)]
    argv += ["--val-crop-size", str(crop), "--device", "cpu", "--output-dir", str(tmp_path / "run")]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint.pth.tar").exists()


def test_arch_from_yaml_and_resumed_config_gets_the_same_checks(tmp_path):
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"arch": "pdtimm/resnet18"}))
    assert parse_config(["--config", str(tmp_path / "ok.yaml")]).arch == "pdtimm/resnet18"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"arch": "timm/resnet_nope"}))
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'arch': unknown model 'timm/resnet_nope'; did you mean"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])
    cfg = parse_config(["-a", "pdtimm/resnet18"])
    with pytest.raises(ConfigError, match=r"ckpt: config: key 'arch': unknown model 'timm/resnet_nope'"):
        compare_resumed_config({"arch": "timm/resnet_nope"}, cfg, "ckpt")
    saved = dict(vars(parse_config(["-a", "pdtimm/resnet18"])))  # a whole config of this version: nothing to note
    assert compare_resumed_config(saved, cfg, "ckpt") == []


def test_pretrained_local_file_loads_into_any_padding(tmp_path):
    torch.manual_seed(0)
    source = create_model("regnet_y_400mf", num_classes=4)
    # a torchvision-style state dict, saved from a DDP-wrapped model as torchvision's references do
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    model = create_model("pdregnet_y_400mf", pretrained=str(tmp_path / "w.pth"), num_classes=4)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    timm_src = create_model("timm/test_resnet", num_classes=4)
    torch.save(timm_src.state_dict(), tmp_path / "t.pth")
    timm_model = create_model("timm/test_resnet", padding="reflect", pretrained=str(tmp_path / "t.pth"), num_classes=4)
    assert all(torch.equal(timm_model.state_dict()[k], v) for k, v in timm_src.state_dict().items())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=40)


@pytest.mark.parametrize("name, crop", FAMILIES)
def test_short_cpu_training_of_each_family_in_partial_padding(name, crop, data, tmp_path):
    arch = "pd" + name
    out = tmp_path / "run"
    argv = ["-a", arch, "--data_train", str(data / "train"), "--data_val", str(data / "val"), "--device", "cpu"]
    argv += ["-b", "4", "--epochs", "1", "--lr", "0.01", "--train-crop-size", str(crop), "--val-resize-size"]
    argv += [str(crop), "--val-crop-size", str(crop), "--output-dir", str(out), "--no-tensorboard", "-j", "0"]
    assert train.cli(argv) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["arch"] == arch and lines[0]["padding"] == "partial"
    assert torch.isfinite(torch.tensor(lines[0]["train_loss"]))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["arch"] == arch
    init = create_model(arch, num_classes=config["num_classes"]).state_dict()
    trained = read_checkpoint(out / "checkpoint.pth.tar")["state_dict"]
    assert trained.keys() == init.keys()
    assert any(not torch.equal(trained[k], init[k]) for k in init if init[k].is_floating_point())


def test_pytorch_official_column_from_torchvision_metadata(tmp_path):
    assert pytorch_official("convnext_tiny") == (82.52, 96.146)
    assert pytorch_official("resnet50") == (76.13, 92.862)  # IMAGENET1K_V1, not V2's 80.858
    assert pytorch_official("vit_h_14") is None and pytorch_official("timm/resnet18") is None
    for arch in ("pdconvnext_tiny", "convnext_tiny", "timm/resnet18"):
        padding = "partial" if arch.startswith("pd") else "zero"
        run = tmp_path / arch.replace("/", "-") / padding / "run1"
        run.mkdir(parents=True)
        line = dict(epoch=1, epochs=1, arch=arch, padding=padding, val_acc1=50.0, val_acc5=90.0)
        (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
        (run / "config.yaml").write_text(yaml.safe_dump({"num_classes": 1000, "arch": arch, "padding": padding}))
    runs, _ = collect_runs(tmp_path)
    cells = {(c.arch, c.padding): c for c in summarize(runs)}
    assert cells[("convnext_tiny", "partial")].official_top1 == 82.52
    assert cells[("convnext_tiny", "zero")].official_top1 == 82.52
    assert cells[("timm/resnet18", "zero")].official_top1 is None
    files = write_report(tmp_path)  # tables and figures with a timm name (a "/" in it) among the archs
    rows = files.csv.read_text().splitlines()
    assert any(r.startswith("timm/resnet18,") for r in rows) and any(r.startswith("convnext_tiny,") for r in rows)
    assert all(f.stat().st_size > 0 for f in files.figures)


def test_padding_benchmark_takes_torchvision_and_timm_names(tmp_path, capsys):
    from partialconv.programs.padding_benchmark import parse_args, plan_matrix

    data = ["--data_train", str(tmp_path), "--data_val", str(tmp_path), "--root", str(tmp_path / "r")]
    args, passthrough = parse_args(["--archs", "convnext_tiny", "timm/resnet18", *data, "--", "--epochs", "1"])
    assert args.archs == ["convnext_tiny", "timm/resnet18"] and passthrough == ["--epochs", "1"]
    jobs = plan_matrix(args.archs, ["zero", "partial"], 1, tmp_path / "r")
    assert [j.run_dir.relative_to(tmp_path / "r").as_posix() for j in jobs][-1] == "timm/resnet18/partial/run1"
    with pytest.raises(SystemExit):
        parse_args(["--archs", "pdconvnext_tiny", *data])
    assert "use convnext_tiny (the padding comes from --paddings)" in capsys.readouterr().err


def test_pretrained_safetensors_file_as_timm_and_hugging_face_ship_them(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model("timm/test_resnet", num_classes=4)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model = create_model("pdtimm/test_resnet", pretrained=str(tmp_path / "model.safetensors"), num_classes=4)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "model.safetensors").read_bytes()[:200])
    argv = ["-a", "pdtimm/test_resnet", "--pretrained", str(broken), "--output-dir", str(tmp_path / "run")]
    argv += ["--device", "cpu", "--epochs", "1"]
    assert train.cli(argv) == 2  # an unusable file is the user's to fix, as a bad flag value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{broken}: cannot be read as safetensors" in err[0], err


def test_torchvision_model_with_stochastic_depth_resumes_exactly(data, tmp_path):
    """EfficientNet's stochastic depth draws from torch's RNG in every forward: a run stopped after epoch 1 and
    resumed must end with the same weights as the straight run (RNG state, BN buffers and optimiser restored)."""

    def argv(out, epochs, *extra):
        flags = ["-a", "pdefficientnet_b0", "--data_train", str(data / "train"), "--data_val", str(data / "val")]
        flags += ["--device", "cpu", "-b", "4", "--lr", "0.01", "--train-crop-size", "32", "--val-resize-size", "32"]
        flags += ["--val-crop-size", "32", "--no-tensorboard", "-j", "0", "--deterministic", "--seed", "3"]
        return [*flags, "--epochs", str(epochs), "--output-dir", str(out), *extra]

    assert train.cli(argv(tmp_path / "straight", 2)) == 0
    assert train.cli(argv(tmp_path / "split", 1)) == 0
    assert train.cli(argv(tmp_path / "split", 2, "--resume", "auto")) == 0
    a, b = (read_checkpoint(tmp_path / d / "checkpoint.pth.tar")["state_dict"] for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_broken_timm_install_leaves_the_other_models_working(tmp_path):
    fake = tmp_path / "timm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('built for another torch')\n")
    code = (
        "from partialconv.models import create_model, is_model, list_models\n"
        "create_model('pdresnet18', num_classes=2); create_model('convnext_tiny', num_classes=2)\n"
        "print(is_model('timm/resnet18'), len(list_models('timm/*')))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0"]
    assert "timm is installed but cannot be imported (RuntimeError: built for another torch)" in done.stderr
