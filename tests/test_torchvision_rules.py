"""Issue 25: the last differences from torchvision's classification references, each compared with the reference's
own rule on the same inputs.

The reference rules are restated here from torchvision's references/classification (train.py, utils.py) as plain
rules over names, not taken from the code under test: weight decay by parameter name first (``bias`` with
``--bias-weight-decay``), then by owning module type (norm layers with ``--norm-weight-decay``); the LR schedule is
``SequentialLR([LinearLR|ConstantLR, StepLR|CosineAnnealingLR], milestones=[warmup])`` stepped once per epoch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from partialconv.engine.optim import build_optimizer, parameter_groups

# torchvision's default norm classes for set_weight_decay (torchvision.ops / references utils).
REFERENCE_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def reference_decay(model: nn.Module, qualified: str, wd: float, norm_wd, bias_wd) -> float:
    """The reference's weight decay of one parameter, from its qualified name: the custom key ``bias`` (matched
    against the parameter's own name) wins, then the owning module's type, then --weight-decay."""
    owner, _, leaf = qualified.rpartition(".")
    if bias_wd is not None and leaf == "bias":
        return bias_wd
    if norm_wd is not None and isinstance(model.get_submodule(owner), REFERENCE_NORMS):
        return norm_wd
    return wd


def small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)


MODELS = {
    "resnet50": torchvision.models.resnet50,
    "convnext_tiny": torchvision.models.convnext_tiny,
    "vit": small_vit,
}


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("norm_wd, bias_wd", [(0.0, 0.5), (0.25, 0.0), (None, 0.5), (0.0, None)])
def test_weight_decay_groups_follow_the_reference_per_tensor(arch, norm_wd, bias_wd):
    with torch.device("meta"):  # the groups depend on names and types only: no memory, no init time
        model = MODELS[arch]()
    wd = 1e-4
    groups = parameter_groups(model, wd, norm_wd, bias_wd)
    got = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(got) == len(names)  # every parameter in exactly one group
    expected = {n: reference_decay(model, n, wd, norm_wd, bias_wd) for n in names}
    wrong = [n for n, p in names.items() if got[id(p)] != expected[n]]
    assert not wrong, f"{len(wrong)} tensors in another group than torchvision's, e.g. {wrong[:3]}"
    # the reference's group order: other, norm, then the custom key (bias); empty groups left out
    order = [d for d in (wd, norm_wd, bias_wd) if d is not None and d in expected.values()]
    assert [g["weight_decay"] for g in groups] == order[: len(groups)]
    if arch != "vit" and norm_wd is not None and bias_wd is not None:
        # the issue's case: norm-layer biases (bn1.bias, ...) take the bias decay
        norm_biases = [n for n in names if n.endswith(".bias") and isinstance(
            model.get_submodule(n.rpartition(".")[0]), REFERENCE_NORMS)]  # fmt: skip
        assert norm_biases and all(got[id(names[n])] == bias_wd for n in norm_biases)


def test_optimizer_carries_the_groups():
    model = small_vit()
    opt = build_optimizer("adamw", model, lr=0.1, momentum=0.9, weight_decay=0.05, norm_weight_decay=0.0,
                          bias_weight_decay=0.01)  # fmt: skip
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.encoder.ln.bias)] == 0.01 and by_id[id(model.encoder.ln.weight)] == 0.0
    assert by_id[id(model.heads.head.weight)] == 0.05 and by_id[id(model.heads.head.bias)] == 0.01


# --- the LR schedule -------------------------------------------------------------------------------------------------


def reference_lrs(lr, epochs, steps, warmup, sched, method="linear", decay=0.01, step_size=30, gamma=0.1, lr_min=0.0):
    """The LR of every step of a run under torchvision's reference scheduler, built as its train.py builds it (main
    scheduler first, then the warm-up one, SequentialLR at the warm-up epoch) and stepped after each epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sch = torch.optim.lr_scheduler
    if sched == "steplr":
        main = sch.StepLR(opt, step_size=step_size, gamma=gamma)
    else:
        main = sch.CosineAnnealingLR(opt, T_max=epochs - warmup, eta_min=lr_min)
    if warmup > 0:
        if method == "linear":
            first = sch.LinearLR(opt, start_factor=decay, total_iters=warmup)
        else:
            first = sch.ConstantLR(opt, factor=decay, total_iters=warmup)
        main = sch.SequentialLR(opt, schedulers=[first, main], milestones=[warmup])
    out = []
    for _ in range(epochs):
        out += [opt.param_groups[0]["lr"]] * steps
        opt.step()
        main.step()
    return out


def our_lrs(argv: list[str], steps: int) -> list[float]:
    """The LR of every step of a run with train.py's flags ``argv``: the config parsed as train.py parses it, the
    optimiser and scheduler built as train.py builds them, one scheduler step per training step."""
    from partialconv.config import parse_config
    from partialconv.engine.trainer import build_training_context

    cfg = parse_config(["-a", "simple_cnn", "--lr-step-size", "30", *argv])
    model = nn.Linear(2, 2)
    optim = build_training_context(cfg, model, model, torch.device("cpu"), steps_per_epoch=steps)
    out = []
    for _ in range(cfg.epochs * steps):
        out.append(optim.optimizer.param_groups[0]["lr"])
        optim.optimizer.step()
        optim.scheduler.step()
    return out


REFERENCE_RUNS = [
    # (reference flags as (schedule, method, decay, warmup, step_size, gamma, lr_min), epochs)
    (("steplr", "linear", 0.01, 2, 3, 0.1, 0.0), 10),
    (("steplr", "linear", 0.2, 5, 30, 0.1, 0.0), 70),  # the issue's case: decays at 35 and 65
    (("steplr", "constant", 0.1, 3, 4, 0.5, 0.0), 12),
    (("steplr", "linear", 0.01, 0, 2, 0.5, 0.0), 7),
    (("cosineannealinglr", "linear", 0.01, 2, 30, 0.1, 0.0), 9),
    (("cosineannealinglr", "constant", 0.3, 1, 30, 0.1, 0.01), 6),
    (("cosineannealinglr", "linear", 0.033, 3, 30, 0.1, 0.002), 8),
    (("cosineannealinglr", "linear", 0.01, 0, 30, 0.1, 0.0), 5),
]


def reference_argv(sched, method, decay, warmup, step_size, gamma, lr_min, epochs):
    """torchvision's flag names, as its recipes spell them."""
    return [
        "--lr", "0.5", "--epochs", str(epochs), "--lr-scheduler", sched, "--lr-warmup-method", method,
        "--lr-warmup-decay", str(decay), "--lr-warmup-epochs", str(warmup), "--lr-step-size", str(step_size),
        "--lr-gamma", str(gamma), "--lr-min", str(lr_min),
    ]  # fmt: skip


@pytest.mark.parametrize("flags, epochs", REFERENCE_RUNS)
def test_per_epoch_updates_give_the_reference_lr_at_every_step(flags, epochs):
    steps = 3
    expected = reference_lrs(0.5, epochs, steps, flags[3], flags[0], *flags[1:3], *flags[4:])
    got = our_lrs([*reference_argv(*flags, epochs), "--lr-update", "epoch"], steps)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("flags, epochs", [r for r in REFERENCE_RUNS if r[0][0] == "steplr"])
def test_per_iteration_step_schedule_decays_at_the_reference_epochs(flags, epochs):
    """The default per-iteration updates: the warm-up is a smooth ramp, after it the step schedule is the
    reference's to the step (decays at warm-up + k x step size)."""
    steps, warmup = 3, flags[3]
    expected = reference_lrs(0.5, epochs, steps, warmup, flags[0], *flags[1:3], *flags[4:])
    got = our_lrs(reference_argv(*flags, epochs), steps)
    assert got[warmup * steps :] == pytest.approx(expected[warmup * steps :], rel=1e-9)


@pytest.mark.parametrize("flags, epochs", [r for r in REFERENCE_RUNS if r[0][0] != "steplr"])
def test_per_iteration_cosine_meets_the_reference_at_each_epoch_start(flags, epochs):
    steps, warmup = 4, flags[3]
    expected = reference_lrs(0.5, epochs, steps, warmup, flags[0], *flags[1:3], *flags[4:])
    got = our_lrs(reference_argv(*flags, epochs), steps)
    starts = range(warmup * steps, epochs * steps, steps)
    assert [got[i] for i in starts] == pytest.approx([expected[i] for i in starts], rel=1e-9)
    inner = [got[i] for i in range(warmup * steps, epochs * steps)]
    assert inner == sorted(inner, reverse=True) and inner[-1] > 0.5 * flags[6]  # smooth, ends above lr_min


def test_the_issues_step_example_both_origins():
    """--warmup-epochs 5 --lr-schedule step --lr-step-size 30 over 70 epochs: the reference decays at 35 and 65;
    --lr-step-origin start (runs before it) at 30 and 60."""
    base = ["--lr", "1", "--epochs", "70", "--lr-schedule", "step", "--warmup-epochs", "5"]

    def decays(lrs):
        return [e for e in range(6, 70) if lrs[e] < lrs[e - 1]]

    assert decays(our_lrs(base, 1)) == [35, 65]
    assert decays(our_lrs([*base, "--lr-update", "epoch"], 1)) == [35, 65]
    assert decays(our_lrs([*base, "--lr-step-origin", "start"], 1)) == [30, 60]


def test_per_iteration_linear_warmup_starts_at_the_start_factor():
    got = our_lrs(["--lr", "1", "--epochs", "3", "--lr-scheduler", "steplr", "--lr-warmup-epochs", "1",
                   "--lr-warmup-decay", "0.2"], 4)  # fmt: skip
    assert got[:5] == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])  # 0.2 + 0.8 x (it + 1) / 4


# --- resuming a run of the version before these options ----------------------------------------------------------

OLD_CONFIGS = Path(__file__).parent / "data" / "pre_issue25"
DATA_ARGS = ["--data_train", "/data/train", "--data_val", "/data/val", "--device", "cpu"]


def old_lr_rule(schedule, epochs, warmup, step_size, gamma, steps):
    """The LR factor of every iteration under the rules before issue 25 (its docs): linear warm-up (it + 1) / warmup
    iterations from 0, step decays every step_size epochs counted from epoch 0, cosine from the end of warm-up."""
    w, total, out = warmup * steps, epochs * steps, []
    for it in range(total):
        if it < w:
            out.append((it + 1) / w)
        elif schedule == "step":
            out.append(gamma ** ((it // steps) // step_size))
        else:
            out.append(0.5 * (1 + math.cos(math.pi * (it - w) / (total - w))))
    return out


def resumed(name: str, *argv: str):
    """(saved config, this version's config for the same command, the resume check's log lines) for an old run."""
    from partialconv.config import compare_resumed_config, parse_config

    saved = yaml.safe_load((OLD_CONFIGS / name).read_text())
    command = (OLD_CONFIGS / name).read_text().splitlines()[1].lstrip("# ").split()
    cfg = parse_config([*command, *argv])
    return saved, cfg, compare_resumed_config(saved, cfg, "old/checkpoint.pth.tar")


@pytest.mark.parametrize("name", sorted(p.name for p in OLD_CONFIGS.glob("*.yaml") if p.name != "both_decays.yaml"))
def test_runs_of_the_previous_version_resume_with_their_lr_curve(name):
    """Each recipe YAML's run (and a step schedule with warm-up) as the previous version saved it: the same command
    resumes it, the LR curve is the old one at every iteration, and the resume check names what it kept."""
    from partialconv.engine.trainer import lr_factor

    saved, cfg, lines = resumed(name)
    steps = 3
    epochs = min(cfg.epochs, 80)  # the cosine curve is laid out over cfg.epochs: compare a shorter run of both
    cfg.epochs = epochs
    expected = old_lr_rule(cfg.lr_schedule, epochs, cfg.warmup_epochs, cfg.lr_step_size, cfg.lr_gamma, steps)
    f = lr_factor(cfg, steps)
    assert [f(i) for i in range(epochs * steps)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    kept = " ".join(lines)
    assert "lr_step_origin start kept" in kept
    assert ("lr_warmup_decay 0.0 kept" in kept) == (name != "demo.yaml")  # demo.yaml asks for 0.0 itself
    assert "lr_update" not in kept  # its old behaviour is this version's default: nothing to keep


def test_the_old_step_run_would_decay_elsewhere_as_a_new_run():
    """Without the check the same command would give the old run the reference's decay epochs: what it prevents."""
    from partialconv.config import parse_config
    from partialconv.engine.trainer import lr_factor

    command = (OLD_CONFIGS / "step_warmup.yaml").read_text().splitlines()[1].lstrip("# ").split()
    f = lr_factor(parse_config(command), 1)
    assert [e for e in range(6, 70) if f(e) < f(e - 1)] == [35, 65]
    _, cfg, _ = resumed("step_warmup.yaml")
    g = lr_factor(cfg, 1)
    assert [e for e in range(6, 70) if g(e) < g(e - 1)] == [30, 60]


def test_an_explicit_new_behaviour_on_an_old_run_is_refused_by_name():
    from partialconv.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lr_update=iteration; this run has lr_update=epoch"):
        resumed("imagenet_resnet50_torchvision_v2.yaml", "--lr-update", "epoch")
    with pytest.raises(ConfigError, match=r"lr_warmup_decay=0.0; this run has lr_warmup_decay=0.2"):
        resumed("imagenet_convnext_tiny.yaml", "--lr-warmup-decay", "0.2")


def test_an_old_run_with_both_decay_flags_is_refused_for_its_groups():
    from partialconv.errors import ConfigError

    with pytest.raises(ConfigError, match="norm layers' biases --norm-weight-decay.*optimizer state does not fit"):
        resumed("both_decays.yaml")


def test_a_new_run_resumes_without_notes():
    from partialconv.config import compare_resumed_config, config_to_yaml, parse_config

    cfg = parse_config(["--config", "configs/imagenet_resnet50.yaml", "--warmup-epochs", "5", *DATA_ARGS])
    saved = yaml.safe_load(config_to_yaml(cfg))
    assert compare_resumed_config(saved, parse_config(["--config", "configs/imagenet_resnet50.yaml",
                                                       "--warmup-epochs", "5", *DATA_ARGS]), "ckpt") == []  # fmt: skip


# --- the reference's data flags ---------------------------------------------------------------------------------------


def reference_presets(crop, resize, val_crop, interpolation, policy, ra_magnitude, augmix_severity):
    """torchvision's reference presets (ClassificationPresetTrain/Eval, v2, PIL backend), restated."""
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode(interpolation)
    policies = {
        "ra": lambda: v2.RandAugment(interpolation=mode, magnitude=ra_magnitude),
        "ta_wide": lambda: v2.TrivialAugmentWide(interpolation=mode),
        "augmix": lambda: v2.AugMix(interpolation=mode, severity=augmix_severity),
        "imagenet": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode),
    }
    tail = [v2.PILToTensor(), v2.ToDtype(torch.float, scale=True),
            v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))]  # fmt: skip
    train = v2.Compose([v2.RandomResizedCrop(crop, interpolation=mode, antialias=True),
                        v2.RandomHorizontalFlip(0.5), policies[policy](), *tail])  # fmt: skip
    val = v2.Compose([v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(val_crop), *tail])
    return train, val


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    from partialconv.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=2, val_per_class=1, size=40)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--auto-augment", "ra", "--ra-magnitude", "20", "--interpolation", "bicubic"], ("bicubic", "ra", 20, 3)),
        (["--auto-augment", "augmix", "--augmix-severity", "8", "--interpolation", "nearest"],
         ("nearest", "augmix", 9, 8)),
        (["--auto-augment", "ta_wide", "--interpolation", "nearest-exact"], ("nearest-exact", "ta_wide", 9, 3)),
    ],
)  # fmt: skip
def test_data_flags_give_the_reference_presets(folders, argv, expect):
    """The flags through train.py's config and the pil backend's datasets: every sample equals the reference
    preset's under the same seed, train and val; and the flags change the images (they are not ignored)."""
    from partialconv.config import parse_config
    from partialconv.data.datasets import open_image_folders
    from partialconv.engine.data_setup import data_params

    def splits(extra):
        base = ["--data_train", str(folders / "train"), "--data_val", str(folders / "val"), "--device", "cpu"]
        cfg = parse_config([*base, "--train-crop-size", "24", "--val-resize-size", "28", "--val-crop-size", "24",
                            *extra])  # fmt: skip
        return open_image_folders(data_params(cfg))

    ours = splits(argv)
    train_ref, val_ref = reference_presets(24, 28, 24, *expect)
    plain = splits([argv[0], argv[1]])  # the same policy with the reference's defaults otherwise
    differs = 0
    for split, ref in ((ours.train, train_ref), (ours.val, val_ref)):
        for path, _ in split.samples:
            image = split.loader(path)
            for seed in range(4):
                torch.manual_seed(seed)
                got = split.transform(image)
                torch.manual_seed(seed)
                assert torch.equal(got, ref(image)), (path, seed)
                if split is ours.train:
                    torch.manual_seed(seed)
                    differs += not torch.equal(got, plain.train.transform(image))
    assert differs > 0


def test_reference_flag_names_from_yaml_and_resumed_config(tmp_path):
    from partialconv.config import compare_resumed_config, config_to_yaml, parse_config
    from partialconv.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr_scheduler: CosineAnnealingLR\nlr_warmup_epochs: 2\nlr_min: 0.001\nra_magnitude: 12\n"
                      "augmix_severity: 5\ninterpolation: bicubic\nlr-update: epoch\n")  # fmt: skip
    cfg = parse_config(["--config", str(recipe), *DATA_ARGS])
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.lr_min, cfg.ra_magnitude) == ("cosine", 2.0, 0.001, 12)
    assert (cfg.augmix_severity, cfg.interpolation, cfg.lr_update) == (5, "bicubic", "epoch")
    for bad, message in [
        ("ra_magnitude: 31\n", "key 'ra_magnitude': must be in [0, 30]"),
        ("augmix_severity: 0\n", "key 'augmix_severity': must be in [1, 10]"),
        ("lr_min: -0.1\n", "key 'lr_min': must be >= 0"),
        ("interpolation: cubic\n", "key 'interpolation': invalid choice"),
        ("lr_scheduler: exponentiallr\n", "key 'lr_scheduler': invalid choice"),
        ("lr_warmup_epochs: -1\n", "key 'lr_warmup_epochs': must be >= 0"),
        ("warmup_epochs: 1\nlr_warmup_epochs: 2\n", "keys 'warmup_epochs' and 'lr_warmup_epochs' are the same"),
        ("lr_update: epoch\nlr_warmup_epochs: 0.5\n", "--warmup-epochs 0.5: --lr-update epoch"),
    ]:
        recipe.write_text(bad)
        with pytest.raises(ConfigError) as e:
            parse_config(["--config", str(recipe), *DATA_ARGS])
        assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape("key 'ra_magnitude': must be in [0, 30]")):
        compare_resumed_config({"ra_magnitude": 40}, cfg, "ckpt")
    saved = yaml.safe_load(config_to_yaml(cfg))  # a run of that recipe, resumed with the defaults instead
    with pytest.raises(ConfigError) as e:
        compare_resumed_config(saved, parse_config(DATA_ARGS), "ckpt")
    for key in ("lr_schedule=cosine", "warmup_epochs=2.0", "lr_min=0.001", "ra_magnitude=12", "augmix_severity=5",
                "interpolation=bicubic", "lr_update=epoch"):  # fmt: skip
        assert key in str(e.value)


# --- MixUp/CutMix pairs under repeated augmentation (documented in docs/training.md) --------------------------------


@pytest.mark.parametrize("world, same", [(1, 0.75), (2, 0.5), (4, 0.0), (8, 0.0)])
def test_mixup_pairs_neighbours_so_ra_copies_pair_with_themselves(world, same):
    """On our sampler with 4 copies and our MixUp: the share of pairs that mix an image with its own copy."""
    from partialconv.data.sampler import SeededSampler
    from partialconv.engine.trainer import batch_mix

    local = 16
    mix = batch_mix(0.2, 0.0, num_classes=local)
    positions = torch.arange(local)
    _, soft = mix(torch.zeros(local, 1, 2, 2), positions)  # targets = batch positions: who is mixed with whom
    partner = [int(next(c for c in row.nonzero().flatten() if c != i)) for i, row in enumerate(soft)]
    assert partner == [(i - 1) % local for i in range(local)]  # the batch rolled by one
    pairs = hits = 0
    for rank in range(world):
        sampler = SeededSampler(4096, rank, world, seed=3, local_batch=local, repeats=4)
        order = [index for index, _ in sampler._keys()]
        for b in range(0, len(order) - local + 1, local):
            batch = order[b : b + local]
            hits += sum(batch[i] == batch[partner[i]] for i in range(local))
            pairs += local
    assert hits / pairs == pytest.approx(same, abs=0.01)


# torchvision's references/classification/train.py flags (get_args_parser), and a value for those this program
# accepts under the same name.
REFERENCE_FLAGS = {
    "--data-path": None, "--model": None, "--device": "cpu", "--batch-size": "8", "--epochs": "3", "--workers": "0",
    "--opt": "adamw", "--lr": "0.1", "--momentum": "0.9", "--wd": "1e-4", "--weight-decay": "1e-4",
    "--norm-weight-decay": "0", "--bias-weight-decay": "0", "--transformer-embedding-decay": None,
    "--label-smoothing": "0.1", "--mixup-alpha": "0.2", "--cutmix-alpha": "1", "--lr-scheduler": "cosineannealinglr",
    "--lr-warmup-epochs": "1", "--lr-warmup-method": "linear", "--lr-warmup-decay": "0.01", "--lr-step-size": "2",
    "--lr-gamma": "0.1", "--lr-min": "0", "--print-freq": "5", "--output-dir": "out", "--resume": "auto",
    "--start-epoch": "1", "--cache-dataset": None, "--sync-bn": "", "--test-only": None, "--auto-augment": "ra",
    "--ra-magnitude": "9", "--augmix-severity": "3", "--random-erase": "0.1", "--amp": None, "--world-size": None,
    "--dist-url": None, "--model-ema": "", "--model-ema-steps": "32", "--model-ema-decay": "0.99998",
    "--use-deterministic-algorithms": None, "--interpolation": "bilinear", "--val-resize-size": "232",
    "--val-crop-size": "224", "--train-crop-size": "176", "--clip-grad-norm": "1", "--ra-sampler": "",
    "--ra-reps": "4", "--weights": None, "--backend": None, "--use-v2": None,
}  # fmt: skip


def test_every_reference_flag_is_in_the_docs_table_and_the_same_names_parse():
    from partialconv.config import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    table = text.split("### torchvision's reference flags", 1)[1].split("\n### ", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line)[1] for line in table.splitlines() if line.startswith("| `")]
    missing = [f for f in REFERENCE_FLAGS if not any(re.search(rf"(?<![\w-]){f}(?![\w-])", row) for row in rows)]
    assert not missing, f"reference flags missing from docs/training.md's table: {missing}"
    parser = build_parser()
    argv = [part for flag, value in REFERENCE_FLAGS.items() if value is not None for part in (flag, value) if part]
    cfg = parser.parse_args(argv)  # all at once: each name is accepted with the reference's kind of value
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.lr_warmup_decay, cfg.interpolation) == (
        "cosine",
        1,
        0.01,
        "bilinear",
    )


def test_train_py_resumes_a_previous_version_run_on_its_own_step_schedule(folders, tmp_path):
    """A real run whose checkpoint config is the previous version's (the options it did not have removed), resumed
    by train.py with the same command: its step decays stay where they were (from epoch 0), the log names the kept
    option, the run's config.yaml records it. The same command as a new run decays after the warm-up."""
    import json

    from partialconv.checkpoint_io import read_checkpoint
    from partialconv.programs import train

    def run(out, *extra):
        argv = ["-a", "simple_cnn", "--device", "cpu", "-b", "8", "-j", "0", "--lr", "0.4", "--seed", "1",
                "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--no-tensorboard",
                "--lr-schedule", "step", "--lr-step-size", "1", "--lr-gamma", "0.5", "--warmup-epochs", "1",
                "--data_train", str(folders / "train"), "--data_val", str(folders / "val"),
                "--output-dir", str(out)]  # fmt: skip
        assert train.cli([*argv, *extra]) == 0
        return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    old = tmp_path / "old"
    run(old, "--epochs", "1")
    ckpt = read_checkpoint(old / "checkpoint.pth.tar")
    for key in ("lr_update", "lr_step_origin", "lr_min", "ra_magnitude", "augmix_severity", "interpolation"):
        del ckpt["config"][key]  # what the previous version saved
    ckpt["config"]["lr_warmup_decay"] = 0.01  # its default, which its linear warm-up did not use
    torch.save(ckpt, old / "checkpoint.pth.tar")
    lrs = run(old, "--epochs", "3", "--resume", "auto")
    assert lrs[1:] == pytest.approx([0.2, 0.1])  # x0.5 at epochs 1 and 2, counted from epoch 0
    assert "lr_step_origin start kept" in (old / "log.txt").read_text()
    saved = yaml.safe_load((old / "config.yaml").read_text())
    assert (saved["lr_step_origin"], saved["lr_warmup_decay"], saved["lr_update"]) == ("start", 0.0, "iteration")
    assert run(tmp_path / "new", "--epochs", "3")[1:] == pytest.approx([0.4, 0.2])  # counted from the warm-up's end


@pytest.mark.parametrize("backend", ["pil_fast", "gpu"])
def test_backends_that_resize_bilinearly_refuse_another_interpolation(folders, backend):
    from partialconv.config import parse_config
    from partialconv.data import DataError, get_backend
    from partialconv.engine.data_setup import data_error_message, data_params

    cfg = parse_config(["--data_train", str(folders / "train"), "--data_val", str(folders / "val"), "--device",
                        "cpu", "--data-backend", backend, "--interpolation", "bicubic"])  # fmt: skip
    with pytest.raises(DataError) as e:
        get_backend(backend).open_splits(data_params(cfg))
    assert (
        data_error_message(e.value) == f"--interpolation bicubic: --data-backend {backend} resizes bilinearly (use pil)"
    )
