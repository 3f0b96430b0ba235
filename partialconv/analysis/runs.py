"""Reading train.py run directories: metrics.jsonl, config.yaml and environment.yaml into a RunResult.

A run is any directory holding a ``metrics.jsonl`` written by train.py: one JSON object per completed epoch with at
least ``epoch``, ``epochs``, ``arch``, ``padding``, ``val_acc1`` and ``val_acc5``. ``scripts/padding_benchmark.py``
asks :func:`run_status` which runs are finished; the report reads them all with :func:`collect_runs`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..models import split_pd_name
from ..recipe_flags import RECIPE_DEFAULTS, RECIPE_FLAGS, implied_by_version
from ..run_dir_names import CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE, REPLACED_PREFIX

__all__ = [
    "RECIPE_KEYS",
    "ReportError",
    "RunResult",
    "canonical_arch",
    "collect_runs",
    "load_run",
    "read_metrics",
    "run_status",
]


# config.yaml keys that make two runs different experiments (train.py's resolved flags). Runs that differ in any of
# them are never averaged together. Performance flags (workers, amp, channels_last, compile) are left out: they change
# speed, not the recipe. Runs without a config.yaml (made outside train.py) only split on metrics.jsonl's ``epochs``.
# A key an older config.yaml lacks takes RECIPE_DEFAULTS' value; the four keys after the recipe flags default to
# None (not set), as in train.py.
RECIPE_KEYS = ("epochs", *RECIPE_FLAGS, "data_train", "data_val", "num_classes", "pretrained")
_REQUIRED = {"epoch": int, "epochs": int, "arch": str, "padding": str, "val_acc1": float, "val_acc5": float}


class ReportError(Exception):
    """A results root that cannot be reported on (missing, empty, nothing valid). The message is one line."""


@dataclass
class RunResult:
    """One train.py run as recorded in its metrics.jsonl (epochs de-duplicated, last record wins)."""

    path: Path
    arch: str
    padding: str
    seed: Optional[int]
    epochs_done: int
    epochs_planned: int
    curve: list[tuple[int, float]]  # (epoch, val_acc1), ascending epochs
    best_acc1: float
    best_acc5: float  # top-5 of the epoch with the best top-1 (the model_best checkpoint)
    best_epoch: int
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml ({} when it has none)
    environment: dict[str, Any] = field(default_factory=dict)  # its environment.yaml: versions, devices ({}: none)
    data_identity: str = ""  # metrics.jsonl's data_identity (shard index fingerprints), "" for image folders

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs_planned

    @property
    def final_acc1(self) -> float:
        """Top-1 of the last recorded epoch: unlike the best epoch, not chosen on the validation set itself."""
        return self.curve[-1][1]

    @property
    def num_classes(self) -> Optional[int]:
        n = self.config.get("num_classes")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    @property
    def recipe(self) -> tuple[tuple[str, Any], ...]:
        """What must match for two runs to be the same experiment (see RECIPE_KEYS)."""
        if not self.config:
            return (("epochs", self.epochs_planned),)
        # a key missing from an older run's config.yaml: what that version did, else train.py's default
        config = {**RECIPE_DEFAULTS, **self.config, **implied_by_version(self.config)}
        keys = tuple((k, self.epochs_planned if k == "epochs" else config.get(k)) for k in RECIPE_KEYS)
        # other data at the same path (shards rewritten from other images) is another experiment
        return keys + ((("data_identity", self.data_identity),) if self.data_identity else ())

    @property
    def continues(self) -> Optional[str]:
        """Why this run is a continuation of another (``--resume`` into a new directory), or None.

        train.py truncates metrics.jsonl to the epoch it starts from, so a run resumed from another directory's
        checkpoint records its first epoch as N > 1, and its config.yaml names a checkpoint outside its directory;
        its earlier epochs belong to the other run and must not be counted as a separate run."""
        if self.curve[0][0] > 1:
            return f"starts at epoch {self.curve[0][0]}: continues another run"
        resume = self.config.get("resume")
        if isinstance(resume, str) and resume != "auto" and Path(resume).is_absolute():
            if Path(resume).resolve().parent != self.path.resolve():
                return f"resumed from {resume}: continues another run"
        return None


def _check_record(obj: object) -> str:
    """Why a parsed metrics line is unusable, or '' when it is fine."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key, kind in _REQUIRED.items():
        if key not in obj:
            return f"missing key {key!r}"
        value = obj[key]
        ok = isinstance(value, str) if kind is str else isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and ok:
            ok = float(value).is_integer() and value >= 1
        if kind is float and ok:
            ok = math.isfinite(value)
        if not ok:
            return f"bad value for {key!r}: {value!r}"
    if obj["epoch"] > obj["epochs"]:
        return f"epoch {obj['epoch']} is beyond epochs {obj['epochs']}"
    return ""


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The usable records of a metrics.jsonl, one per epoch (a re-run epoch's last line wins), sorted by epoch;
    and one message per unusable line, naming the file and line number (the first few of a damaged file, then one
    message counting the rest: a file overwritten by binary garbage is one problem, not thousands)."""
    by_epoch: dict[int, dict] = {}
    problems: list[str] = []
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return [], [f"{path}: cannot be read ({e.strerror or e})"]
    unusable = 0
    for lineno, data in enumerate(raw.split(b"\n"), 1):
        if not data.strip():
            continue
        try:
            obj = json.loads(data.decode("utf-8"))
            why = _check_record(obj)
        except UnicodeDecodeError:
            why = "not UTF-8 text (damaged)"
        except json.JSONDecodeError as e:
            why = f"not valid JSON ({e.msg})"
        if why:
            unusable += 1
            if unusable <= _PROBLEMS_PER_FILE:
                problems.append(f"{path}:{lineno}: {why}")
            continue
        by_epoch[int(obj["epoch"])] = obj
    if unusable > _PROBLEMS_PER_FILE:
        problems.append(f"{path}: {unusable - _PROBLEMS_PER_FILE} more unusable line(s)")
    return [by_epoch[e] for e in sorted(by_epoch)], problems


_PROBLEMS_PER_FILE = 5


def canonical_arch(arch: str, padding: str) -> str:
    """Group the seed's pd names with their base architecture (``pdresnet50`` + partial -> ``resnet50``)."""
    base, partial = split_pd_name(arch)
    return base if partial and padding == "partial" else arch


def load_run(run_dir: Path) -> tuple[Optional[RunResult], list[str]]:
    """The run recorded in ``run_dir/metrics.jsonl`` (None if it has no usable line) and the problems found."""
    path = Path(run_dir) / METRICS_FILE
    records, problems = read_metrics(path)
    if not records:
        if not problems:
            problems.append(f"{path}: no completed epoch recorded yet")
        return None, problems
    first, last = records[0], records[-1]
    for r in records[1:]:
        if (r["arch"], r["padding"]) != (first["arch"], first["padding"]):
            problems.append(
                f"{path}: epoch {r['epoch']} says {r['arch']}/{r['padding']}, epoch {first['epoch']} says "
                f"{first['arch']}/{first['padding']}; the run is reported as {first['arch']}/{first['padding']}"
            )
            break
    best = max(records, key=lambda r: (r["val_acc1"], -r["epoch"]))  # ties: the earliest epoch, like model_best
    config: dict[str, Any] = {}
    config_path = Path(run_dir) / CONFIG_FILE
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8", errors="replace"))
        except yaml.YAMLError as e:
            loaded = None
            problems.append(f"{config_path}: not valid YAML ({str(e).splitlines()[0]}); recipe unknown")
        if isinstance(loaded, dict):
            config = loaded
        elif loaded is not None:
            problems.append(f"{config_path}: expected a mapping of option: value; recipe unknown")
    environment: dict[str, Any] = {}
    env_path = Path(run_dir) / ENVIRONMENT_FILE
    if env_path.is_file():
        try:
            loaded_env = yaml.safe_load(env_path.read_text(encoding="utf-8", errors="replace"))
            environment = loaded_env if isinstance(loaded_env, dict) else {}
        except yaml.YAMLError:
            problems.append(f"{env_path}: not valid YAML; versions and devices unknown")
    seed = first.get("seed")
    return (
        RunResult(
            path=Path(run_dir),
            arch=canonical_arch(first["arch"], first["padding"]),
            padding=first["padding"],
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            epochs_done=int(last["epoch"]),
            epochs_planned=int(last["epochs"]),
            curve=[(int(r["epoch"]), float(r["val_acc1"])) for r in records],
            best_acc1=float(best["val_acc1"]),
            best_acc5=float(best["val_acc5"]),
            best_epoch=int(best["epoch"]),
            config=config,
            environment=environment,
            data_identity=str(last.get("data_identity", "")),
        ),
        problems,
    )


def run_status(run_dir: Path) -> str:
    """'finished' (last recorded epoch == planned epochs), 'partial' (something is there: resume it) or 'new'."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        records, _ = read_metrics(run_dir / METRICS_FILE)
        if records and records[-1]["epoch"] >= records[-1]["epochs"]:
            return "finished"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "new"


def collect_runs(root: Path) -> tuple[list[RunResult], list[str]]:
    """Every run under ``root`` (any depth), sorted by path, and the problems met. Raises ReportError when the root
    is missing, holds no metrics.jsonl, or none of them has a usable line."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"results root {root} does not exist")
    if not root.is_dir():
        raise ReportError(f"results root {root} is not a directory")
    # a run replaced by train.py --overwrite is kept under <run dir>/replaced-<time>/: not a run of the matrix
    files = sorted(
        f for f in root.rglob(METRICS_FILE) if not any(d.startswith(REPLACED_PREFIX) for d in f.relative_to(root).parts)
    )
    if not files:
        raise ReportError(
            f"results root {root} contains no {METRICS_FILE} (expected train.py run directories such as "
            f"{root}/<arch>/<padding>/run<k>/{METRICS_FILE})"
        )
    runs: list[RunResult] = []
    problems: list[str] = []
    for f in files:
        run, found = load_run(f.parent)
        problems += found
        if run is not None:
            runs.append(run)
    if not runs:
        raise ReportError(f"results root {root}: none of its {len(files)} {METRICS_FILE} files has a usable line")
    return runs, problems
