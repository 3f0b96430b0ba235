"""The training recipe's flags and their defaults, as plain data.

train.py's parser (partialconv/config.py) takes each recipe flag's default from here, and the padding report
(partialconv/analysis) fills in what an older run's config.yaml lacks from the same table, without building the
parser. No argparse, torch or engine imports: both sides import this module, and it imports nothing of theirs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPE_DEFAULTS", "RECIPE_FLAGS", "implied_by_version"]

# The training recipe: the flags that change what is learned (batch, optimiser, schedule, crops, augmentation, EMA,
# repeated augmentation), by config.yaml key, with train.py's defaults (the seed's recipe; the modern-recipe flags
# off). The one list behind config.EXPERIMENT_KEYS (resume) and analysis.RECIPE_KEYS (which runs the padding report
# pools); its order is theirs.
RECIPE_DEFAULTS: dict[str, Any] = {
    "batch_size": 192,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_schedule": "step",
    "lr_step_size": 30,
    "lr_gamma": 0.1,
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "bn_momentum": None,  # None: the model's own
    "bn_eps": None,
    "train_crop_size": 224,
    "train_min_scale": 0.08,
    "val_resize_size": 256,
    "val_crop_size": 224,
    "opt": "sgd",
    "norm_weight_decay": None,  # None: --weight-decay
    "bias_weight_decay": None,
    "clip_grad_norm": None,  # None: no clipping
    "lr_warmup_method": "linear",
    "lr_warmup_decay": 0.01,
    "lr_update": "iteration",
    "lr_step_origin": "warmup",
    "lr_min": 0.0,
    "auto_augment": None,  # None: no policy
    "ra_magnitude": 9,
    "augmix_severity": 3,
    "interpolation": "bilinear",
    "random_erase": 0.0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "model_ema": False,
    "model_ema_steps": 32,
    "model_ema_decay": 0.99998,
    "ra_sampler": False,
    "ra_reps": 3,
}
RECIPE_FLAGS = tuple(RECIPE_DEFAULTS)


# What a config written before an option existed meant: the option's value that reproduces that version's
# behaviour. A resumed run keeps it (see compare_resumed_config), the padding report pools by it.
_BEFORE_OPTION = {
    "lr_update": "iteration",
    "lr_step_origin": "start",  # the step schedule counted its epochs from 0, warm-up included
    "lr_min": 0.0,
    "ra_magnitude": 9,
    "augmix_severity": 3,
    "interpolation": "bilinear",
}


def implied_by_version(saved: dict[str, Any]) -> dict[str, Any]:
    """The values a config saved by an older version (``saved``: a checkpoint's or a run's ``config.yaml``) implies
    for the options it lacks, or whose meaning changed since: before ``lr_update`` existed the linear warm-up ramped
    from 0 whatever ``lr_warmup_decay`` said (it was the constant warm-up's factor only)."""
    implied = {k: v for k, v in _BEFORE_OPTION.items() if k not in saved}
    if "lr_update" not in saved and saved.get("lr_warmup_method", "linear") == "linear":
        implied["lr_warmup_decay"] = 0.0
    return implied
