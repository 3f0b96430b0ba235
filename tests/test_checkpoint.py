"""Checkpoint I/O: formats we read, errors we give, atomic writes."""

import collections

import pytest
import torch

from partialconv import CheckpointError, create_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def model():
    return create_model("pdresnet18", num_classes=7)


def _prefixed(state, prefix):
    return collections.OrderedDict((prefix + k, v) for k, v in state.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": _prefixed(s, "module."), "epoch": 3, "arch": "pdresnet18", "best_prec1": 70.0},
        lambda s: {"model": _prefixed(s, "_orig_mod."), "optimizer": {"state": {}, "param_groups": []}},
    ],
    ids=["plain", "ddp_training_checkpoint", "compiled"],
)
def test_loads_plain_and_wrapped_checkpoints(tmp_path, model, wrap):
    source = create_model("resnet18", num_classes=7)  # zero-padded weights load into the pd model
    path = tmp_path / "ckpt.pth.tar"
    torch.save(wrap(source.state_dict()), path)
    target = create_model("pdresnet18", num_classes=7)
    load_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_loads_into_ddp_style_wrapper(tmp_path, model):
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    wrapper = torch.nn.DataParallel(create_model("pdresnet18", num_classes=7))
    load_checkpoint(wrapper, path)
    assert torch.equal(wrapper.module.conv1.weight, model.conv1.weight)


def test_mismatch_message_lists_keys_and_shapes(tmp_path, model):
    state = dict(model.state_dict())
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("pdresnet18", num_classes=7), path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "fc.weight (1000, 512) vs model (7, 512)" in message
    assert "missing keys: fc.bias" in message and "unexpected keys: extra.weight" in message


def test_corrupt_and_missing_files_name_the_file(tmp_path, model):
    path = tmp_path / "truncated.pth"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot be read"):
        load_checkpoint(model, path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(model, tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickles_are_refused(tmp_path, model):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(model, path)


def test_save_is_atomic_when_writing_fails(tmp_path, model, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"state_dict": model.state_dict()}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"state_dict": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]
