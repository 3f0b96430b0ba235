"""Wrapper-segment key matching never guesses (issue 24): a checkpoint key that could load into two model keys, and
two checkpoint keys that would load into one, are errors naming the file and the keys; nothing is loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partialconv.checkpoint_io import CheckpointError, load_checkpoint, match_keys


def holder(**children: nn.Module) -> nn.Module:
    m = nn.Module()
    for name, child in children.items():
        m.add_module(name, child)
    return m


class Colliding(nn.Module):
    """Keys ``module.features.0.*`` and ``features.module.0.*``: both are ``features.0.*`` without wrapper segments.
    ``order`` says which is declared (and so listed in the state_dict) first."""

    def __init__(self, order: str) -> None:
        super().__init__()
        a = ("module", holder(features=nn.Sequential(nn.Linear(2, 2))))
        b = ("features", holder(module=nn.Sequential(nn.Linear(2, 2))))
        for name, child in (a, b) if order == "module_first" else (b, a):
            self.add_module(name, child)


def plain() -> nn.Module:
    return holder(features=nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("order", ["module_first", "features_first"])
def test_a_key_that_fits_two_model_keys_is_an_error(order, tmp_path):
    torch.manual_seed(0)
    model = Colliding(order)
    assert set(model.state_dict()) == {
        "module.features.0.weight",
        "module.features.0.bias",
        "features.module.0.weight",
        "features.module.0.bias",
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": plain().state_dict()}, tmp_path / "plain.pth")
    for strict in (True, False):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(model, tmp_path / "plain.pth", strict=strict)
        msg = str(e.value)
        assert "\n" not in msg and str(tmp_path / "plain.pth") in msg
        assert "features.0." in msg and "module.features.0." in msg and "features.module.0." in msg, msg
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # a key the model has as it is is no guess: it loads where it says
    source = Colliding(order)
    torch.save(source.state_dict(), tmp_path / "own.pth")
    load_checkpoint(model, tmp_path / "own.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("order", ["module_first", "features_first"])
def test_two_keys_that_fit_one_model_key_are_an_error(order, tmp_path):
    torch.manual_seed(0)
    source = Colliding(order)  # its keys, saved: two candidates for each key of a plain model
    model = plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(source.state_dict(), tmp_path / "two.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(model, tmp_path / "two.pth", strict=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "two.pth") in msg
    assert "module.features.0." in msg and "features.module.0." in msg, msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the same with one of the two already in the model's form: the other one would overwrite it
    w = plain().state_dict()
    both = {**w, **{"module." + k: torch.zeros_like(v) for k, v in w.items()}}
    if order == "module_first":
        both = dict(reversed(list(both.items())))
    with pytest.raises(CheckpointError, match=r"keys .* and .* would both load into features\.0\."):
        match_keys(both, model.state_dict().keys(), "both.pth")
    with pytest.raises(CheckpointError, match="both.pth"):
        match_keys(both, None, "both.pth")  # without the model's keys (inference): the same rule
