"""The registry tags each model with its task, and train.py (and the programs that run it) take classifiers only:
``-a pconv_unet`` is one config error line (exit 2) from the flag, a YAML file and a resumed checkpoint's config.
``split_pd_name`` is the one reading of the seed's ``pd`` prefix."""

from __future__ import annotations

import pytest
import test_config_validation as shared
import torch
from torch import nn

from benchmarks import train_throughput
from partialconv.analysis.runs import canonical_arch
from partialconv.checkpoint_io import read_checkpoint
from partialconv.models import _registry, create_model, is_model, list_models, register_model, split_pd_name
from partialconv.programs import padding_benchmark, train

BASE, args, one_error_line = shared.BASE, shared.args, shared.one_error_line
data = shared.data  # the same small demo set fixture

NOT_A_CLASSIFIER = "'pconv_unet' is a model for inpainting, not classification"
# ------------------------------------------------------------------------------------------------------ registry


def test_models_are_listed_by_task():
    classifiers = list_models(task="classification")
    assert list_models(task="inpainting") == ["pconv_unet"]
    assert "pconv_unet" not in classifiers and {"resnet50", "pdresnet50", "simple_cnn"} <= set(classifiers)
    assert sorted(classifiers + ["pconv_unet"]) == list_models()
    assert list_models("pdvgg16*", task="classification") == ["pdvgg16", "pdvgg16_bn"]
    assert is_model("pconv_unet") and is_model("pconv_unet", task="inpainting")
    assert not is_model("pconv_unet", task="classification") and is_model("resnet18", task="classification")


def test_create_model_for_a_task_refuses_another_tasks_model():
    with pytest.raises(ValueError, match=NOT_A_CLASSIFIER):
        create_model("pconv_unet", task="classification", layer_size=3)
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'; did you mean .*resnet50"):
        create_model("resnet5", task="classification")
    assert create_model("pconv_unet", layer_size=3).training  # without task=: any registered model
    assert isinstance(create_model("simple_cnn", task="classification", num_classes=3), nn.Module)


def test_register_model_takes_a_known_task_and_tags_the_pd_variant(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    def tiny_seg(padding="zero"):
        return nn.Conv2d(3, 2, 3, padding=1)

    with pytest.raises(ValueError, match="task must be one of classification, inpainting; got 'segmentation'"):
        register_model(tiny_seg, task="segmentation")
    register_model(tiny_seg, task="inpainting")
    assert list_models("*tiny_seg", task="inpainting") == ["pdtiny_seg", "tiny_seg"]
    assert list_models("*tiny_seg", task="classification") == []


def test_split_pd_name_is_the_one_reading_of_the_prefix(monkeypatch):
    assert split_pd_name("pdresnet50") == ("resnet50", True)
    assert split_pd_name("resnet50") == ("resnet50", False)
    assert split_pd_name("pd") == ("pd", False)
    assert canonical_arch("pdresnet50", "partial") == "resnet50"
    assert canonical_arch("pdresnet50", "zero") == "pdresnet50"
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    def pdnet(padding="zero"):
        return nn.Conv2d(3, 2, 3, padding=1)

    # a plain model named pd<...> would read as the partial-padding variant of <...>
    with pytest.raises(ValueError, match="names starting with 'pd' are the partial-padding variants"):
        register_model(pdnet)


# ------------------------------------------------------------------------------------------------------ train.py


def test_flag_arch_that_is_not_a_classifier_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.cli(["-a", "pconv_unet", *args(data, out)]) == 2
    assert f"train.py: error: -a/--arch: {NOT_A_CLASSIFIER}" in one_error_line(capsys)
    assert not out.exists()


def test_yaml_arch_that_is_not_a_classifier_is_one_line(data, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("arch: pconv_unet\n")
    out = tmp_path / "run"
    assert train.cli(["--config", str(config), *args(data, out)]) == 2
    assert f"--config {config}: key 'arch': {NOT_A_CLASSIFIER}" in one_error_line(capsys)
    assert not out.exists()


def test_resumed_config_arch_that_is_not_a_classifier_is_one_line(data, tmp_path, capsys):
    """A checkpoint whose saved config names a non-classifier gets the same check as the flag and the YAML file,
    before anything is written."""
    out = tmp_path / "run"
    assert train.cli(["-a", "simple_cnn", *args(data, out)]) == 0
    ckpt_path = out / "checkpoint.pth.tar"
    ckpt = read_checkpoint(ckpt_path)
    ckpt["config"]["arch"] = "pconv_unet"
    edited = tmp_path / "edited.pth.tar"
    torch.save(ckpt, edited)
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    resumed = tmp_path / "resumed"
    argv = ["-a", "simple_cnn", *args(data, resumed), "--epochs", "2", "--resume", str(edited)]
    assert train.cli(argv) == 2
    assert f"error: {edited}: config: key 'arch': {NOT_A_CLASSIFIER}" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (resumed / "checkpoint.pth.tar").exists()


# ------------------------------------------------------------------------------------- programs that run train.py


def test_padding_benchmark_and_throughput_take_classifiers_only(capsys):
    for parse in (padding_benchmark.parse_args, train_throughput.parse_args):
        with pytest.raises(SystemExit) as exit_info:
            parse(["--archs", "pconv_unet"])
        assert exit_info.value.code == 2
        assert f"--archs: {NOT_A_CLASSIFIER}" in capsys.readouterr().err
