"""Training-step rules a plausible bug breaks silently (issue 24): gradient clipping under an active GradScaler clips
the unscaled gradients; MixUp/CutMix draws follow (seed, epoch, step, rank) and the soft targets are the mix the
images got; the EMA restarts from the weights during the LR warm-up epochs and only then."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partialconv.engine.trainer import build_training_context, mix_batch, train_step, update_ema

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def cfg(**kw) -> argparse.Namespace:
    base = dict(
        lr_schedule="step", epochs=4, warmup_epochs=0.0, lr_step_size=30, lr_gamma=0.1, lr=0.1, momentum=0.0,
        weight_decay=0.0, amp="none", label_smoothing=0.0, channels_last=False, train_crop_size=8, num_classes=3,
    )  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def total_norm(grads) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))


def test_clipping_under_an_active_grad_scaler_clips_the_unscaled_gradients():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    # the true gradient of the same fp16-autocast forward, without a scaler and without clipping
    ref_model = small_model()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(ref_model(x), y)
    loss.backward()
    ref_grads = [p.grad.clone() for p in ref_model.parameters()]
    clip = 0.01
    assert total_norm(ref_grads) > 50 * clip  # clipping has work to do

    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    optim = build_training_context(cfg(amp="fp16", clip_grad_norm=clip, lr=0.5), model, model, CPU, 4)
    assert optim.scaler.is_enabled() and optim.scaler.get_scale() >= 2.0**10  # an active, scaling GradScaler
    train_step(optim, x, y)
    assert optim.scaler.get_scale() >= 2.0**10  # no inf/NaN: the step was taken, not skipped
    grads = [p.grad for p in model.parameters()]
    # the gradients the optimiser used: unscaled, then clipped to the norm asked for
    assert total_norm(grads).item() == pytest.approx(clip, rel=1e-3)
    factor = clip / total_norm(ref_grads)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref * factor, rtol=2e-2, atol=1e-6)
    for p, b, g in zip(model.parameters(), before, grads):  # plain SGD: the update is lr x the clipped gradient
        torch.testing.assert_close(b - p.detach(), 0.5 * g, rtol=1e-4, atol=1e-7)


def mixing():
    model = small_model()
    optim = build_training_context(cfg(mixup_alpha=0.2, cutmix_alpha=1.0, seed=1), model, model, CPU, 4)
    torch.manual_seed(3)
    return optim, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])


def check_soft_targets_are_the_images_mix(images, targets, mixed, soft) -> str:
    """torchvision's MixUp/CutMix pair each image with the previous one in the batch (roll by 1): the soft target is
    lam x own label + (1 - lam) x the partner's, and the image is that mix (MixUp) or the partner's pixels on a box
    of area share 1 - lam (CutMix)."""
    own, partner = F.one_hot(targets, 3).float(), F.one_hot(targets.roll(1, 0), 3).float()
    lam = soft[1, targets[1]].item()  # sample 1 (label 1) is paired with sample 0 (label 0)
    torch.testing.assert_close(soft, lam * own + (1 - lam) * partner)
    other = images.roll(1, 0)
    if torch.allclose(mixed, lam * images + (1 - lam) * other, atol=1e-5, rtol=0):
        return "mixup"
    from_partner = (mixed == other) & (mixed != images)
    assert ((mixed == images) | (mixed == other)).all()  # CutMix: every pixel is one image's or the other's
    share = from_partner[1].all(0).float().mean().item()  # of sample 1, all channels from the partner
    assert share == pytest.approx(1 - lam, abs=1e-6)
    return "cutmix"


def test_mix_draws_follow_seed_epoch_step_and_rank_and_the_soft_targets_are_the_mix():
    optim, images, targets = mixing()
    keys = [(epoch, step, rank) for epoch in range(3) for step in range(3) for rank in range(2)]
    draws = {key: mix_batch(optim, images, targets, *key) for key in keys}
    kinds = {check_soft_targets_are_the_images_mix(images, targets, *draw) for draw in draws.values()}
    assert kinds == {"mixup", "cutmix"}  # both, chosen per draw
    # the same (seed, epoch, step, rank) draws the same, in any order, from another TrainingContext with that seed
    again, _, _ = mixing()
    torch.manual_seed(12345)  # the caller's RNG plays no part
    for key in reversed(keys):
        mixed, soft = mix_batch(again, images, targets, *key)
        assert torch.equal(mixed, draws[key][0]) and torch.equal(soft, draws[key][1]), key
    # another epoch (same step and rank), another step or another rank: another draw
    for a in keys:
        for b in keys:
            if a < b:
                assert not torch.equal(draws[a][0], draws[b][0]), (a, b)
    other_seed, _, _ = mixing()
    other_seed.seed = 2
    assert not torch.equal(mix_batch(other_seed, images, targets, 1, 1, 0)[0], draws[(1, 1, 0)][0])


def test_ema_restarts_from_the_weights_in_each_warmup_epoch_and_averages_after():
    model = small_model()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    c = cfg(model_ema=True, model_ema_steps=1, model_ema_decay=0.99, batch_size=4, lr=0.5, warmup_epochs=2)
    optim = build_training_context(c, model, model, CPU, 2)
    decay = 1.0 - min(1.0, 0.01 * 4 * 1 / 4)  # torchvision's adjustment: (1 - decay) x batch x steps / epochs
    ema, w = optim.ema.module[3].weight, model[3].weight
    for epoch in range(3):
        for step in range(3):
            prev = ema.detach().clone()
            train_step(optim, x, y)
            update_ema(optim, epoch, step)
            if epoch < 2 or step == 0:
                # warm-up epochs 0 and 1: every update copies the weights; the first one after them too (nothing
                # has been averaged yet)
                assert torch.equal(ema, w), (epoch, step)
            else:
                assert not torch.equal(ema, w), (epoch, step)
                torch.testing.assert_close(ema, decay * prev + (1 - decay) * w.detach())


PROCESS_KEYS = [(0, 0, 0), (1, 2, 0), (2, 1, 1)]


def mix_digests(optim, images, targets) -> list[str]:
    """sha256 of each key's mixed images and soft targets (also run in other interpreters below)."""
    out = []
    for key in PROCESS_KEYS:
        mixed, soft = mix_batch(optim, images, targets, *key)
        out.append(hashlib.sha256(mixed.numpy().tobytes() + soft.numpy().tobytes()).hexdigest())
    return out


def test_mix_draws_are_the_same_in_processes_with_other_hash_seeds():
    """A resumed run is another process: the draws of a (seed, epoch, step, rank) must not depend on anything of the
    process (Python's per-process str hash seed, tensor addresses). Two interpreters with other PYTHONHASHSEEDs
    draw what this one draws."""
    here = mix_digests(*mixing())
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_train_step_rules as t; "
    code += "print(*t.mix_digests(*t.mixing()))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(Path(__file__).parent)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.split() == here
