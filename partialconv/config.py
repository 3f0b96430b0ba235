"""train.py's command line: argparse flags, YAML recipes (the file sets defaults, the CLI overrides), resolution,
and the checks of every value: as a flag, as a YAML key, and as a resumed checkpoint's config against this run's.

Every option lives in one parser; a YAML file may set any of its destinations (``batch_size``, ``lr_schedule``...),
and a key the parser does not know is an error naming the file and the key.

Over the ~450 lines of a module because most of it is the parser's flag table (about half the file: each flag's
name, type, default and help), which is one table on purpose: --help, the YAML keys, the value checks and the resume
comparison all read it. The data flags' wiring (engine/data_setup.py) and NVIDIA main.py's flags (seed_compat.py)
live elsewhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from .data import backend_names, get_backend
from .data.backends import is_url
from .data.presets import AUTO_AUGMENT, INTERPOLATIONS
from .engine.cli import DefaultsHelpFormatter, command_name
from .engine.distributed import DEFAULT_TIMEOUT_MINUTES
from .engine.optim import LR_SCHEDULES, LR_UPDATES, OPTIMIZERS, STEP_ORIGINS, WARMUP_METHODS
from .errors import ConfigError
from .layers import PADDINGS
from .models import is_model, list_models, split_pd_name
from .models._registry import unknown_model_message
from .recipe_flags import RECIPE_DEFAULTS, RECIPE_FLAGS, implied_by_version
from .seed_compat import APEX_LEVELS, add_seed_flags, check_seed_flags

__all__ = [
    "build_parser",
    "parse_config",
    "run_dir_of",
    "config_to_yaml",
    "check_values",
    "check_same_data",
    "compare_resumed_config",
    "eval_sizes_from_run",
    "flags_given",
]


def _is_device(value: str) -> bool:
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None


# Value ranges, by destination: checked for a flag, a --config YAML value and a resumed checkpoint's config alike
# (argparse's ``type`` only checks the form). None always passes: it means "not set" for the flags whose default
# is None (--num-classes: from the data; --start-epoch: from the checkpoint).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "print_freq": (lambda v: v >= 1, ">= 1"),
    "lr_step_size": (lambda v: v >= 1, ">= 1"),
    "train_crop_size": (lambda v: v >= 1, ">= 1"),
    "val_resize_size": (lambda v: v >= 1, ">= 1"),
    "val_crop_size": (lambda v: v >= 1, ">= 1"),
    "num_classes": (lambda v: v >= 2, ">= 2 (or unset: from the data)"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "save_every": (lambda v: v >= 0, ">= 0 (0: no snapshots)"),
    "checkpoint_every_steps": (lambda v: v >= 0, ">= 0 (0: off)"),
    "checkpoint_every_minutes": (lambda v: v >= 0, ">= 0 (0: off)"),
    "start_epoch": (lambda v: v >= 0, ">= 0"),
    "train_min_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "lr_gamma": (lambda v: v > 0, "> 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "bn_momentum": (lambda v: 0 < v <= 1, "in (0, 1] (or unset: the model's own)"),
    "bn_eps": (lambda v: v > 0, "> 0 (or unset: the model's own)"),
    "device": (_is_device, "auto, cpu, cuda or cuda:N"),
    # modern recipe (torchvision classification-reference flags)
    "norm_weight_decay": (lambda v: v >= 0, ">= 0 (or unset: --weight-decay)"),
    "bias_weight_decay": (lambda v: v >= 0, ">= 0 (or unset: --weight-decay)"),
    "clip_grad_norm": (lambda v: v > 0, "> 0 (or unset: no clipping)"),
    "lr_warmup_decay": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lr_min": (lambda v: v >= 0, ">= 0"),
    "random_erase": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data_cache_limit": (lambda v: v > 0, "> 0 (GB; or unset: no limit)"),
    "mixup_alpha": (lambda v: v >= 0, ">= 0 (0: off)"),
    "cutmix_alpha": (lambda v: v >= 0, ">= 0 (0: off)"),
    "model_ema_steps": (lambda v: v >= 1, ">= 1"),
    "model_ema_decay": (lambda v: 0 < v < 1, "in (0, 1)"),
    "ra_reps": (lambda v: v >= 1, ">= 1"),
    "ra_magnitude": (lambda v: 0 <= v <= 30, "in [0, 30] (RandAugment's 31 magnitude bins)"),
    "augmix_severity": (lambda v: 1 <= v <= 10, "in [1, 10]"),
    "dist_timeout": (lambda v: 0 < v <= 10080, "in (0, 10080] (minutes: at most a week)"),
}

# Destinations that only make sense for one invocation: not accepted from a YAML file, not saved in config.yaml.
CLI_ONLY = ("help", "config", "overwrite", "restart_epoch")

# What a resumed run must share with the checkpoint's run: the model, the data and the recipe (a changed batch
# size or schedule would train the rest of the run at another learning rate, or skip images mid-epoch). ``epochs``
# is in it only for the cosine schedule, whose curve depends on the total; the step schedule's does not.
EXPERIMENT_KEYS = (
    "arch",
    "padding",
    "num_classes",
    "data_train",
    "data_val",
    "data_backend",
    *RECIPE_FLAGS,
    "seed",
    "amp",
)
# Differences not worth a log line on resume (they differ by construction or are resolved into another key).
_RESUME_QUIET = ("config", "resume", "overwrite", "amp_opt_level", "start_epoch", "evaluate", "dist_timeout")


# torchvision's --lr-scheduler names (its train.py lower-cases them) for ours.
_REFERENCE_SCHEDULES = {"steplr": "step", "cosineannealinglr": "cosine"}


def _schedule_name(value: str) -> str:
    """``--lr-schedule``/``--lr-scheduler`` value: ours, or torchvision's name of the same schedule (any case)."""
    return _REFERENCE_SCHEDULES.get(value.lower(), value)


class _ListModels(argparse.Action):
    """``--list-models [PATTERN]``: print the matching classifier names by source to stdout, then exit (like
    ``--help``). A name whose ``pd`` variant also matches is printed once (the header says so)."""

    def __call__(self, parser, namespace, pattern, option_string=None) -> None:
        found = False
        for source in ("partialconv", "torchvision", "timm"):
            names = list_models(pattern, task="classification", source=source)
            plain = set(names)
            shown = [n for n in names if split_pd_name(n)[0] not in plain or not split_pd_name(n)[1]]
            if shown:
                found = True
                print(f"# {source}: {len(shown)} (pd<name>: the same with partial padding)", *shown, sep="\n")
        if not found:
            parser.exit(1, f"train.py: no classifier name matches {pattern!r}\n")
        parser.exit(0)


_DATA_PATH_HELP = "ImageFolder root with train/ and val/: the same as --data_train DIR/train --data_val DIR/val"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("train.py"),
        description="Train or evaluate an image classifier (ImageNet layout) with zero/partial/reflect/replicate "
        "padding. With no --data_train/--data_val it trains on a small embedded demo dataset.",
        formatter_class=DefaultsHelpFormatter,
        allow_abbrev=False,  # a prefix of a flag is an error, never silently another flag (--model vs --model-ema)
    )
    # pytorch/examples' `train.py DIR`: DIR/train and DIR/val (SUPPRESS: absent, it sets nothing; _resolve folds it)
    p.add_argument("data_dir", nargs="?", default=argparse.SUPPRESS, metavar="DIR", help=_DATA_PATH_HELP)
    g = p.add_argument_group("model")
    g.add_argument(
        "-a",
        "--arch",
        "--model",
        default="resnet18",
        help="classifier name: ours (resnet50, vgg16_bn), any torchvision classifier (convnext_tiny, "
        "efficientnet_b0), timm/<name> with timm installed; a pd prefix means partial padding (pdconvnext_tiny)",
    )
    g.add_argument(
        "--list-models",
        nargs="?",
        const="*",
        metavar="PATTERN",
        action=_ListModels,
        help="print the classifier names matching a shell PATTERN (e.g. 'convnext*', 'timm/*resnet*') and exit",
    )
    g.add_argument("--padding", choices=PADDINGS, default=None, help="padding; default: partial for pd* names")
    g.add_argument("--num-classes", type=int, default=None, help="classifier width; default: from the data")
    g.add_argument(
        "--pretrained",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="initial weights from a local checkpoint (no downloads: see docs/checkpoints.md for getting one)",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--data_train",
        "--data-train",
        dest="data_train",
        default=None,
        help="train split: an ImageFolder dir, or a shard dir/URL (index.json from python -m scripts.write_shards; "
        "http(s)://, s3://, gs://, any fsspec URL)",
    )
    g.add_argument("--data_val", "--data-val", dest="data_val", default=None, help="val split, as --data_train")
    g.add_argument(
        "--data-cache",
        default=None,
        metavar="DIR",
        help="node-local cache of shards read from URLs (fetched whole, once per node); default: "
        "<tmpdir>/partialconv-shards-<uid>",
    )
    g.add_argument(
        "--data-cache-limit",
        type=float,
        default=None,
        metavar="GB",
        help="size limit of --data-cache: least recently used shards are evicted; default: none",
    )
    g.add_argument("--data-path", default=None, metavar="DIR", help=_DATA_PATH_HELP + " (torchvision references)")
    g.add_argument(
        "-j",
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes per process (rank); default: the CPUs available to each local rank "
        "(sched_getaffinity / LOCAL_WORLD_SIZE) less one for the rank itself; more than those CPUs is capped",
    )
    g.add_argument(
        "--data-backend",
        choices=["auto", *backend_names()],
        default="auto",
        help="auto: the backend that recognises the train path (shards for a URL or a directory holding "
        "index.json), else turbo when its decoder loads, else pil (with one warning); "
        + "; ".join(f"{name}: {get_backend(name).help}" for name in backend_names()),
    )
    g.add_argument("--train-crop-size", type=int, help="RandomResizedCrop output size")
    g.add_argument("--train-min-scale", type=float, help="RandomResizedCrop's smallest crop area (fraction)")
    g.add_argument("--val-resize-size", type=int, help="eval resize of the shorter side")
    g.add_argument("--val-crop-size", type=int, help="eval center crop")
    g.add_argument(
        "--on-bad-image",
        choices=("skip", "error"),
        default="skip",
        help="corrupt/truncated image: skip it with a warning (counted per epoch) or stop",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="total epochs (a resumed run continues up to it)")
    g.add_argument("--start-epoch", type=int, default=None, help="override the epoch to start from (0-based)")
    g.add_argument("-b", "--batch-size", type=int, help="global batch size, split over processes")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="peak learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, help="weight decay")
    g.add_argument(
        "--lr-schedule",
        "--lr-scheduler",
        type=_schedule_name,
        choices=LR_SCHEDULES,
        help="learning-rate schedule (torchvision's names steplr and cosineannealinglr are accepted)",
    )
    g.add_argument(
        "--lr-step-size",
        type=int,
        help="step schedule: epochs between decays, counted as --lr-step-origin says",
    )
    g.add_argument("--lr-gamma", type=float, help="step schedule: decay factor")
    g.add_argument(
        "--warmup-epochs",
        "--lr-warmup-epochs",
        type=float,
        help="warm-up epochs (--lr-warmup-method, --lr-warmup-decay); fractions allowed with --lr-update iteration",
    )
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    g.add_argument(
        "--bn-momentum",
        type=float,
        help="momentum of every BatchNorm's running statistics (default: the model's own; e.g. 0.1 for "
        "MobileNetV3/EfficientNet on short runs, whose 0.01 leaves the statistics unfit for eval for many epochs)",
    )
    g.add_argument("--bn-eps", type=float, help="epsilon of every BatchNorm (default: the model's own)")

    _add_recipe_flags(p)
    _add_ra_flags(p)

    g = p.add_argument_group("performance")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    g.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help="autocast dtype (fp16 + scaler)")
    g.add_argument("--amp-opt-level", choices=tuple(APEX_LEVELS), default=None, help="apex-style alias of --amp")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (CUDA)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms, no cudnn benchmark")

    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML recipe; CLI flags override it")
    g.add_argument("--seed", type=int, default=0, help="seed of init, data order and augmentation")
    g.add_argument("--prefix", default="run", help="run name: <ckptdirprefix>checkpoint_<arch>_<prefix>/")
    g.add_argument("--ckptdirprefix", default="checkpoints/", help="prefix of the run directory (seed layout)")
    g.add_argument("--output-dir", default=None, help="run directory; overrides the ckptdirprefix/prefix layout")
    g.add_argument("--resume", default=None, metavar="PATH|auto", help="checkpoint to resume, or auto (run dir)")
    g.add_argument(
        "--restart-epoch",
        action="store_true",
        help="with --resume: start the interrupted epoch over (needed when the data changed since a mid-epoch "
        "checkpoint; the weights keep the steps already done)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run directory that holds a run: its files are moved into <run dir>/replaced-<time>/ "
        "(without this flag such a start is refused)",
    )
    g.add_argument(
        "-e", "--evaluate", "--test-only", action="store_true", help="only evaluate (--resume or --pretrained weights)"
    )
    g.add_argument("-p", "--print-freq", type=int, default=10, help="steps between progress lines")
    g.add_argument("--save-every", type=int, default=0, help="also keep checkpoint_epoch<N>.pth.tar every N epochs")
    g.add_argument(
        "--keep-prev",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the checkpoint before the last as checkpoint.prev.pth.tar (the fallback if the last cannot be "
        "read); --no-keep-prev saves one checkpoint's disk space",
    )
    g.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=30.0,
        metavar="M",
        help="also checkpoint inside an epoch every M minutes of wall clock (rank 0's clock; all ranks save after the "
        "same step); a crash loses at most M minutes (0: off)",
    )
    g.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=0,
        metavar="K",
        help="also checkpoint inside an epoch every K training steps of the run (deterministic; 0: off)",
    )
    g.add_argument(
        "--tensorboard", action=argparse.BooleanOptionalAction, default=True, help="TensorBoard event files in tb/"
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_MINUTES,
        metavar="MINUTES",
        help="under torchrun: how long a collective waits for the other ranks; a rank that hung or died turns "
        "into one error line naming the waiting rank and a non-zero exit (torchrun then stops or restarts the group)",
    )

    add_seed_flags(p)
    # The recipe flags' defaults: one table, read by the padding report too. Set on each flag (not through
    # set_defaults, which the parser applies apart from its flags: flags_given could no longer tell a flag given).
    for action in p._actions:
        if action.dest in RECIPE_DEFAULTS:
            action.default = RECIPE_DEFAULTS[action.dest]
    return p


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """Modern-recipe flags, named as in torchvision's classification references so their recipes paste in; all
    off by default (the seed's recipe)."""
    g = p.add_argument_group("modern recipe (torchvision reference flags; docs/training.md)")
    g.add_argument(
        "--auto-augment",
        choices=AUTO_AUGMENT,
        help="train augmentation policy (torchvision.transforms.v2: TrivialAugmentWide, RandAugment, AugMix, "
        "AutoAugment imagenet); pil backend",
    )
    g.add_argument("--ra-magnitude", type=int, metavar="M", help="--auto-augment ra: RandAugment's magnitude")
    g.add_argument("--augmix-severity", type=int, metavar="S", help="--auto-augment augmix: AugMix's severity")
    g.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        help="resampling of the train crop, the policy and the eval resize (torchvision's InterpolationMode); pil "
        "backend (the others resize bilinearly)",
    )
    g.add_argument("--random-erase", type=float, metavar="P", help="RandomErasing probability; pil backend")
    g.add_argument("--mixup-alpha", type=float, metavar="A", help="MixUp alpha per batch (0: off)")
    g.add_argument(
        "--cutmix-alpha",
        type=float,
        metavar="A",
        help="CutMix alpha per batch (0: off); with --mixup-alpha too, one of the two per batch at random",
    )
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights; evaluated every epoch")
    g.add_argument("--model-ema-steps", type=int, help="optimiser steps between EMA updates")
    g.add_argument("--model-ema-decay", type=float, help="EMA decay (adjusted for the steps, as torchvision)")
    g.add_argument(
        "--best-from-ema", action="store_true", help="model_best follows the EMA's top-1 instead of the model's"
    )
    g.add_argument("--opt", choices=OPTIMIZERS, help="optimiser (rmsprop: torchvision's settings)")
    g.add_argument(
        "--norm-weight-decay",
        type=float,
        metavar="WD",
        help="weight decay of normalisation layers' parameters (their biases take --bias-weight-decay when it is "
        "set, as in torchvision); default: --weight-decay",
    )
    g.add_argument(
        "--bias-weight-decay",
        type=float,
        metavar="WD",
        help="weight decay of every parameter named bias, norm layers' included; default: --weight-decay",
    )
    g.add_argument("--clip-grad-norm", type=float, metavar="N", help="clip the total gradient norm to N")
    g.add_argument(
        "--lr-warmup-method",
        choices=WARMUP_METHODS,
        help="--warmup-epochs shape: linear from --lr-warmup-decay x lr up to lr, or constant at that LR",
    )
    g.add_argument(
        "--lr-warmup-decay",
        type=float,
        metavar="F",
        help="warm-up: the linear ramp's start factor / the constant factor (torchvision's; 0: a ramp from 0)",
    )
    g.add_argument(
        "--lr-update",
        choices=LR_UPDATES,
        help="how often the LR changes: every iteration (smooth ramp and cosine), or once per epoch as torchvision's "
        "reference scheduler does (its exact curve; whole --warmup-epochs)",
    )
    g.add_argument(
        "--lr-step-origin",
        choices=STEP_ORIGINS,
        help="step schedule: count --lr-step-size from the end of warm-up (torchvision's SequentialLR: with 5 warm-up "
        "epochs and step size 30, decays at epochs 35 and 65) or from epoch 0 (decays at 30 and 60: runs before this "
        "flag)",
    )
    g.add_argument("--lr-min", type=float, help="cosine schedule: the LR it ends at (CosineAnnealingLR's eta_min)")


def _add_ra_flags(p: argparse.ArgumentParser) -> None:
    """Repeated augmentation, with torchvision's reference flag names and default repeat count."""
    g = p.add_argument_group("repeated augmentation (torchvision reference flags; docs/training.md)")
    g.add_argument(
        "--ra-sampler",
        action="store_true",
        help="repeated augmentation (train only): each image of the shuffled order comes --ra-reps times in a row, "
        "the copies on different ranks (when there are at least that many) with different augmentation; an epoch "
        "keeps its number of steps, so it sees about 1/--ra-reps of the images",
    )
    g.add_argument("--ra-reps", type=int, metavar="N", help="--ra-sampler: copies of each image")


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    return check_values(data, parser, f"--config {path}")


def check_values(
    data: dict[Any, Any], parser: Optional[argparse.ArgumentParser] = None, where: str = "config"
) -> dict[str, Any]:
    """``data`` (YAML keys or a checkpoint's config) as the values the flags would give: each value goes through
    its flag's own argparse ``type``, ``choices``, ``nargs`` and on/off semantics, then :data:`RANGES`. Raises
    :class:`ConfigError` ``"{where}: key 'lr_schedule': invalid choice: ..."`` on the first bad key."""
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions}
    # a flag's other long names are keys too (lr_warmup_epochs: torchvision's name of warmup_epochs)
    aliases = {o.lstrip("-").replace("-", "_"): a.dest for a in parser._actions for o in a.option_strings}
    out = {}
    given: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        dest = dest if dest in actions else aliases.get(dest, dest)
        if dest in CLI_ONLY and dest in actions:
            raise ConfigError(f"{where}: key {key!r}: a command-line flag only (--{dest.replace('_', '-')})")
        if dest not in actions:
            raise ConfigError(f"{where}: unknown key {key!r}")
        if dest in given:
            raise ConfigError(f"{where}: keys {given[dest]!r} and {key!r} are the same option ({dest})")
        given[dest] = key
        try:
            out[dest] = _flag_value(parser, actions[dest], value)
            _check_value(dest, out[dest])
        except (argparse.ArgumentError, ValueError) as e:
            raise ConfigError(f"{where}: key {key!r}: {getattr(e, 'message', e)}") from e
    return out


def _flag_value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any) -> Any:
    """What ``action`` stores when its flag is given ``value`` on the command line (YAML scalars are turned into
    the text one would type, so ``epochs: 2.5`` fails int() as ``--epochs 2.5`` does instead of truncating)."""
    if action.nargs == 0:  # store_true/false/const, --x/--no-x: the value is the on/off state itself
        if isinstance(action.const, bool) or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false; got {value!r}")
            return value
        if value not in (action.const, action.default):
            raise ValueError(f"expected {action.const!r} or {action.default!r}; got {value!r}")
        return value
    if value is None:
        if action.default is None:  # the flag's own "not set"
            return None
        raise ValueError(f"expected a value (default {action.default!r}); got null")
    many = action.nargs not in (None, argparse.OPTIONAL)
    items = value if many and isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, (bool, list, dict)) or item is None:
            raise ValueError(f"expected {'a list of ' if many else ''}{_kind(action)}; got {item!r}")
    strings = [repr(v) if isinstance(v, float) else str(v) for v in items]
    return parser._get_values(action, strings)  # argparse's own type/choices/nargs handling (ArgumentError)


def _kind(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


def _check_value(dest: str, value: Any) -> None:
    """The checks beyond argparse's own, for a flag, a YAML value and a resumed config alike: :data:`RANGES`, and
    ``arch`` naming a registered classifier (train.py trains classifiers; ``pconv_unet`` is an inpainting model)."""
    if dest == "arch" and not is_model(value, task="classification"):
        raise ValueError(unknown_model_message(value, task="classification"))
    if dest in RANGES and value is not None and not RANGES[dest][0](value):
        raise ValueError(f"must be {RANGES[dest][1]}; got {value}")


def parse_config(argv: Optional[Sequence[str]] = None, demo_config: Optional[Path] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv) with the YAML file of ``--config`` as defaults, then resolve.

    Without ``--config`` and without data flags, ``demo_config`` (train.py passes its ``demo.yaml``) supplies
    the defaults: a bare ``python train.py`` is the demo recipe, not the ImageNet one on toy data.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    no_data = all(getattr(first, k, None) is None for k in ("data_train", "data_val", "data_path", "data_dir"))
    if first.config is None and no_data and demo_config is not None:
        first.config = str(demo_config)
    if first.config:
        parser.set_defaults(**_load_yaml(first.config, parser), config=first.config)
    cfg = parser.parse_args(argv)
    check_seed_flags(cfg, argv)
    return _resolve(cfg)


def _resolve(cfg: argparse.Namespace) -> argparse.Namespace:
    try:
        _check_value("arch", cfg.arch)
    except ValueError as e:
        raise ConfigError(f"-a/--arch: {e}") from None
    if cfg.amp_opt_level is not None:
        cfg.amp = APEX_LEVELS[cfg.amp_opt_level]
    _, partial_by_name = split_pd_name(cfg.arch)
    if cfg.padding is None:
        cfg.padding = "partial" if partial_by_name else "zero"
    elif partial_by_name and cfg.padding != "partial":
        raise ConfigError(f"--padding {cfg.padding}: -a {cfg.arch} is partial padding by name; use the plain name")
    flags = {a.dest: "/".join(a.option_strings) for a in build_parser()._actions}
    for dest in RANGES:
        try:
            _check_value(dest, getattr(cfg, dest))
        except ValueError as e:
            raise ConfigError(f"{flags[dest]} {e}") from None
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: CUDA is not available here (use --device cpu or auto)")
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {cfg.device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if cfg.lr_update == "epoch" and cfg.warmup_epochs != int(cfg.warmup_epochs):
        raise ConfigError(
            f"--warmup-epochs {cfg.warmup_epochs}: --lr-update epoch changes the LR once per epoch; give whole "
            "epochs, or use --lr-update iteration"
        )
    if cfg.overwrite and cfg.resume:
        raise ConfigError("--overwrite starts the run over; it does not go with --resume")
    _fold_data_path(cfg)
    if (cfg.data_train is None) != (cfg.data_val is None):
        raise ConfigError("--data_train and --data_val go together (give both, or neither for the demo dataset)")
    if cfg.evaluate and not (cfg.resume or cfg.pretrained):
        raise ConfigError("-e/--evaluate needs weights: --resume PATH or --pretrained PATH")
    return cfg


def flags_given(argv: Sequence[str], demo_config: Optional[Path] = None) -> set[str]:
    """The destinations ``argv`` sets: by a flag, or by a key of its ``--config`` file (``demo_config``, the recipe a
    bare ``python train.py`` gets, is not the user's)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(list(argv))
    given = set(vars(ns)) - {"config"}
    config = getattr(ns, "config", None)
    if config and (demo_config is None or Path(config).resolve() != Path(demo_config).resolve()):
        given |= set(_load_yaml(config, build_parser()))
    return given


EVAL_SIZE_FLAGS = {"val_resize_size": "--val-resize-size", "val_crop_size": "--val-crop-size"}


def eval_sizes_from_run(
    cfg: argparse.Namespace, saved: Optional[dict[str, Any]], source: str, given: set[str], how: str
) -> str:
    """``-e``: evaluate at the eval sizes of the run that wrote the checkpoint (``saved``, its training config).

    A size the command does not set is taken from ``saved``. One it sets to another value is refused with
    ``how="--resume"`` (a ConfigError naming both) and kept with ``how="--pretrained"`` (the way to evaluate a
    run's weights at other sizes on purpose). Returns the words for the log: the sizes used and where they come
    from."""
    saved = saved if isinstance(saved, dict) else {}
    run = {k: saved[k] for k in EVAL_SIZE_FLAGS if isinstance(saved.get(k), int)}
    changed = {k: getattr(cfg, k) for k in run if k in given and getattr(cfg, k) != run[k]}
    if changed and how == "--resume":
        was = " ".join(f"{EVAL_SIZE_FLAGS[k]} {v}" for k, v in run.items())
        now = " ".join(f"{EVAL_SIZE_FLAGS[k]} {v}" for k, v in changed.items())
        raise ConfigError(
            f"-e --resume {source}: its run evaluates at {was}; this command sets {now}: drop the flag to use the "
            f"run's sizes, or evaluate at other sizes on purpose with --pretrained {source}"
        )
    for k, v in run.items():
        if k not in changed:
            setattr(cfg, k, v)
    sizes = f"resize {cfg.val_resize_size}, crop {cfg.val_crop_size}"
    if not run:
        return f"{sizes} (the flags: {source} stores no run config)"
    if changed:
        used = " ".join(f"{EVAL_SIZE_FLAGS[k]} {v}" for k, v in run.items())
        return f"{sizes} (the flags; the checkpoint's run used {used})"
    return f"{sizes} (the checkpoint's run)"


def _fold_data_path(cfg: argparse.Namespace) -> None:
    """The positional DIR (pytorch/examples) and ``--data-path DIR`` (torchvision references) become
    ``--data_train DIR/train --data_val DIR/val``; the config keeps only those two (one spelling of the data in
    config.yaml and in the resume check)."""
    positional = vars(cfg).pop("data_dir", None)
    if positional is not None and cfg.data_path is not None and Path(positional) != Path(cfg.data_path):
        raise ConfigError(f"DIR {positional} and --data-path {cfg.data_path}: two data roots; give one")
    root, cfg.data_path = positional or cfg.data_path, None
    if root is None:
        return
    name = "DIR" if positional is not None else "--data-path"
    for dest, flag, sub in (("data_train", "--data_train", "train"), ("data_val", "--data_val", "val")):
        given = getattr(cfg, dest)
        if given is not None and Path(given) != Path(root) / sub:
            raise ConfigError(f"{name} {root} means {flag} {Path(root) / sub}; it conflicts with {flag} {given}")
        setattr(cfg, dest, str(Path(root) / sub))


def run_dir_of(cfg: argparse.Namespace) -> Path:
    """``--output-dir`` if given, else the seed's ``<ckptdirprefix>checkpoint_<arch>_<prefix>/``."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    arch = cfg.arch.replace("/", "-")  # timm/<name>: one directory, not a shared checkpoint_timm/ parent
    return Path(f"{cfg.ckptdirprefix}checkpoint_{arch}_{cfg.prefix}")


def config_to_yaml(cfg: argparse.Namespace) -> str:
    """The resolved config as YAML that ``--config`` accepts back (same keys, plain values)."""
    return yaml.safe_dump({k: v for k, v in sorted(vars(cfg).items()) if k not in CLI_ONLY}, sort_keys=False)


def compare_resumed_config(saved: dict[str, Any], cfg: argparse.Namespace, source: str) -> list[str]:
    """Check a resumed run's resolved ``cfg`` against the config its checkpoint (``source``, for messages) was
    trained with. Raises :class:`ConfigError` listing every :data:`EXPERIMENT_KEYS` difference (and an ``epochs``
    change under the cosine schedule); returns the other differences as ``"key old -> new"`` for the log.

    The saved config goes through :func:`check_values` first; keys this version does not know are ignored. Options
    the checkpoint's version did not have (:func:`implied_by_version`) take the value that version behaved as, in
    ``cfg`` too, when this run left them at their defaults: an existing run resumes unchanged, and the returned
    lines name each such option. Set on this command line to something else, they are refused like any change."""
    parser = build_parser()
    known = {a.dest for a in parser._actions} - set(CLI_ONLY)
    old = check_values({k: v for k, v in saved.items() if k in known}, parser, where=f"{source}: config")
    new = vars(cfg)
    kept = []
    for key, value in implied_by_version(saved).items():
        old[key] = value
        if new.get(key) != value and new.get(key) == parser.get_default(key):
            kept.append(f"{key} {value} kept (the checkpoint's version had that behaviour; new runs: {new[key]})")
            new[key] = value
    if (
        "lr_update" not in saved
        and old.get("norm_weight_decay") is not None
        and old.get("bias_weight_decay") is not None
    ):
        raise ConfigError(
            f"--resume {source}: the checkpoint's version gave norm layers' biases --norm-weight-decay; this one gives "
            "them --bias-weight-decay, as torchvision does, so its optimizer state does not fit the new parameter "
            "groups. Finish that run with the version that started it, or start a new run"
        )
    refused = [k for k in EXPERIMENT_KEYS if k in old and not _same(k, old[k], new.get(k))]
    if "data_backend" in refused and "auto" in (old["data_backend"], new.get("data_backend")):
        # Runs before the turbo backend saved the pil default; auto decodes the same images with the same crop draws
        # (within 1 level on JPEGs), so the run goes on; the change is logged below (pass the old backend for
        # bit-exact batches).
        refused.remove("data_backend")
    if old.get("lr_schedule") == "cosine" and "epochs" in old and old["epochs"] != cfg.epochs:
        refused.append("epochs")  # the cosine curve is laid out over the total: the rest would follow another one
    if refused:
        was = ", ".join(f"{k}={old[k]}" for k in refused)
        now = ", ".join(f"{k}={new.get(k)}" for k in refused)
        raise ConfigError(
            f"--resume {source}: the checkpoint was trained with {was}; this run has {now}. These change the "
            "experiment: resume with the checkpoint's values, or start a new run (another --prefix or --output-dir, "
            "or --overwrite)"
        )
    return kept + [
        f"{k} {old[k]} -> {new[k]}"
        for k in sorted(old)
        if k in new and k not in _RESUME_QUIET and not _same(k, old[k], new[k])
    ]


# The key under which a run's checkpoint config (not config.yaml: it is no flag) and metrics.jsonl lines record what
# its data is beyond the paths (Loaders.identity: the shard indexes' fingerprints; "" for image folders).
DATA_IDENTITY_KEY = "data_identity"


def check_same_data(saved: Optional[str], current: str, source: str) -> None:
    """Refuse to resume a run whose data, at the same paths, is another dataset than the checkpoint's (a shard
    directory or URL rewritten from other images): the order and position of the run would no longer be its own."""
    if saved and current and saved != current:
        raise ConfigError(
            f"--resume {source}: the checkpoint was trained on other data at these paths ({saved}); "
            f"--data_train/--data_val now hold {current}. Resume on the checkpoint's data, or start a new run "
            "(another --prefix or --output-dir, or --overwrite)"
        )


def _same(key: str, old: Any, new: Any) -> bool:
    if key in ("data_train", "data_val") and old is not None and new is not None:
        if is_url(old) or is_url(new):
            return str(old).rstrip("/") == str(new).rstrip("/")
        return Path(old).resolve() == Path(new).resolve()  # data/train and /abs/data/train are the same data
    return old == new
