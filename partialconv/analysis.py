"""Reading train.py run directories and summarising multi-run padding comparisons.

Used by ``scripts/padding_report.py`` (tables and figures) and ``scripts/padding_benchmark.py`` (which runs are
finished). A run is any directory holding a ``metrics.jsonl`` written by train.py: one JSON object per completed
epoch with at least ``epoch``, ``epochs``, ``arch``, ``padding``, ``val_acc1`` and ``val_acc5``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .config import implied_by_version
from .engine.setup import ENVIRONMENT_FILE
from .fileio import write_bytes_atomic
from .layers import PADDINGS
from .models import pytorch_official, split_pd_name
from .recipe_flags import RECIPE_DEFAULTS, RECIPE_FLAGS

__all__ = [
    "PADDING_ORDER",
    "PUBLISHED_TABLE",
    "pytorch_official",
    "RECIPE_KEYS",
    "CellSummary",
    "PairedResult",
    "PublishedCell",
    "ReportError",
    "ReportFiles",
    "RunResult",
    "collect_runs",
    "load_run",
    "paired_ttest",
    "published_table",
    "read_metrics",
    "run_status",
    "summarize",
    "welch_pvalue",
    "write_report",
]

PADDING_ORDER = PADDINGS  # the order of columns and bars: zero (the baseline) first

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"

# NVIDIA's published 5-run table (the seed README's padding comparison), shipped with the package; its header
# comment names the source image and notes the one inconsistency in it (the zero/partial stdev column).
PUBLISHED_TABLE = Path(__file__).resolve().parent / "analysis_data" / "nvidia_padding_table.csv"

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


@dataclass
class PairedResult:
    """Paired comparison of per-seed values: mean difference a - b, its 95% CI and the paired t-test p-value."""

    n: int
    mean_diff: Optional[float]
    pvalue: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    diffs: list[tuple[int, float]]  # (seed, a - b)


@dataclass
class PublishedCell:
    """One row of NVIDIA's published table: best top-1 of each of 5 runs, their average, diff to zero, stdev."""

    arch: str
    padding: str
    runs: list[float]
    average: float
    diff: Optional[float]
    stdev: float
    pt_official: Optional[float]


@dataclass
class CellSummary:
    """All runs of one (arch, padding). Statistics use finished runs only."""

    arch: str
    padding: str
    finished: list[RunResult] = field(default_factory=list)
    incomplete: list[RunResult] = field(default_factory=list)
    recipe: str = ""  # "" when all runs of the arch share one recipe, else the keys that set this group apart
    excluded: list[tuple[RunResult, str]] = field(default_factory=list)  # finished but not counted, and why
    diff_to_zero: Optional[float] = None
    pvalue_vs_zero: Optional[float] = None  # Welch's unpaired t-test
    paired: Optional[PairedResult] = None  # paired t-test over seeds present in both cells
    published: Optional[PublishedCell] = None

    @property
    def acc1(self) -> list[float]:
        return [r.best_acc1 for r in self.finished]

    @property
    def acc5(self) -> list[float]:
        return [r.best_acc5 for r in self.finished]

    @property
    def n(self) -> int:
        return len(self.finished)

    @property
    def mean1(self) -> Optional[float]:
        return _mean(self.acc1)

    @property
    def std1(self) -> Optional[float]:
        return _stdev(self.acc1)

    @property
    def mean5(self) -> Optional[float]:
        return _mean(self.acc5)

    @property
    def std5(self) -> Optional[float]:
        return _stdev(self.acc5)

    @property
    def final1(self) -> list[float]:
        return [r.final_acc1 for r in self.finished]

    @property
    def mean_final1(self) -> Optional[float]:
        return _mean(self.final1)

    @property
    def imagenet1k(self) -> bool:
        """Whether published ImageNet-1k numbers apply: no run says it has other than 1000 classes (runs without
        a config.yaml cannot say, and are taken at their word)."""
        runs = self.finished + self.incomplete + [r for r, _ in self.excluded]
        return all(r.num_classes in (None, 1000) for r in runs)

    @property
    def official_top1(self) -> Optional[float]:
        if not self.imagenet1k:
            return None
        official = pytorch_official(self.arch)
        return official[0] if official else None


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    figures: list[Path]
    problems: list[str]
    warnings: list[str] = field(default_factory=list)  # runs kept apart (recipes) or not counted (and why)


# --------------------------------------------------------------------------------------------------- statistics


def _mean(values: Sequence[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _stdev(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n - 1), like the seed table's stdev; undefined for fewer than two runs."""
    return statistics.stdev(values) if len(values) >= 2 else None


def welch_pvalue(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided Welch t-test p-value of ``a`` against ``b``; None when it is undefined (fewer than two values in
    either sample, or both samples without any spread)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def paired_ttest(a: dict[int, float], b: dict[int, float]) -> PairedResult:
    """Paired comparison of ``a`` against ``b`` over the seeds present in both: scipy's ``ttest_rel`` p-value
    (two-sided) and the 95% confidence interval of the mean per-seed difference a - b from Student's t
    distribution. p and CI are None with fewer than two pairs; p is None when every difference is the same."""
    seeds = sorted(set(a) & set(b))
    diffs = [(s, a[s] - b[s]) for s in seeds]
    values = [d for _, d in diffs]
    if not values:
        return PairedResult(0, None, None, None, None, [])
    mean = statistics.fmean(values)
    if len(values) < 2:
        return PairedResult(1, mean, None, None, None, diffs)
    from scipy import stats

    sem = statistics.stdev(values) / math.sqrt(len(values))
    low, high = (mean, mean) if sem == 0 else stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    p = None
    if sem > 0:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return PairedResult(len(values), mean, p, float(low), float(high), diffs)


def published_table(path: Path = PUBLISHED_TABLE) -> dict[tuple[str, str], PublishedCell]:
    """NVIDIA's published table, keyed by (arch, padding); '#' lines are its source note."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))

    def num(text: str) -> Optional[float]:
        return float(text) if text.strip() else None

    return {
        (r["arch"], r["padding"]): PublishedCell(
            arch=r["arch"],
            padding=r["padding"],
            runs=[float(r[f"run{i}"]) for i in range(1, 6)],
            average=float(r["average"]),
            diff=num(r["diff"]),
            stdev=float(r["stdev"]),
            pt_official=num(r["pt_official"]),
        )
        for r in rows
    }


# ------------------------------------------------------------------------------------------------ reading runs


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
        f for f in root.rglob(METRICS_FILE) if not any(d.startswith("replaced-") for d in f.relative_to(root).parts)
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


def _padding_key(padding: str) -> tuple[int, str]:
    return (PADDING_ORDER.index(padding), "") if padding in PADDING_ORDER else (len(PADDING_ORDER), padding)


def _recipe_labels(runs: Sequence[RunResult]) -> dict[tuple, str]:
    """A short label per distinct recipe of ``runs``: the keys in which the recipes differ (``epochs=2, lr=0.1``);
    {recipe: ""} when they all share one."""

    def order(recipe: tuple) -> tuple:  # numbers by value (epochs 2 before 10), then text, then unknown
        return tuple(
            (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
            for _, v in recipe
        )

    recipes = sorted(dict.fromkeys(r.recipe for r in runs), key=order)
    if len(recipes) == 1:
        return {recipes[0]: ""}
    keys = list(dict.fromkeys(k for recipe in recipes for k, _ in recipe))
    values = [dict(recipe) for recipe in recipes]
    differ = [k for k in keys if len({repr(v.get(k, "?")) for v in values}) > 1]
    return {
        recipe: ", ".join(f"{k}={v.get(k, '?')}" for k in differ) or "config.yaml missing"
        for recipe, v in zip(recipes, values)
    }


def summarize(runs: Sequence[RunResult], warnings_out: Optional[list[str]] = None) -> list[CellSummary]:
    """One summary per (arch, recipe, padding), archs in first-seen order and paddings in the seed's order, with
    the difference to the same arch's (and recipe's) zero padding: Welch's p-value over the finished runs and a
    paired t-test over seeds present in both. Runs of one arch with different recipes (RECIPE_KEYS) are separate
    groups, never pooled; a finished run that continues another, or repeats a seed already in its cell, is excluded
    from every statistic. Each such decision is appended to ``warnings_out`` as one line naming the runs."""
    notes = warnings_out if warnings_out is not None else []
    runs = sorted(runs, key=lambda r: str(r.path))
    archs = list(dict.fromkeys(r.arch for r in runs))
    labels: dict[tuple[str, tuple], str] = {}
    for arch in archs:
        mine = [r for r in runs if r.arch == arch]
        arch_labels = _recipe_labels(mine)
        labels.update({(arch, recipe): label for recipe, label in arch_labels.items()})
        if len(arch_labels) > 1:
            groups = "; ".join(
                f"[{label}]: " + ", ".join(str(r.path) for r in mine if r.recipe == recipe)
                for recipe, label in arch_labels.items()
            )
            notes.append(f"{arch}: runs with different recipes are reported as separate groups, not pooled: {groups}")
    cells: dict[tuple[str, str, str], CellSummary] = {}
    for run in runs:
        label = labels[(run.arch, run.recipe)]
        cell = cells.setdefault((run.arch, label, run.padding), CellSummary(run.arch, run.padding, recipe=label))
        if not run.finished:
            cell.incomplete.append(run)
            continue
        why = run.continues
        if why is None and run.seed is not None:
            first = next((r for r in cell.finished if r.seed == run.seed), None)
            if first is not None:
                why = f"duplicate seed {run.seed} (already counted: {first.path})"
        if why is not None:
            cell.excluded.append((run, why))
            notes.append(f"{run.path}: not counted in {run.arch}/{run.padding}: {why}")
        else:
            cell.finished.append(run)
    label_order = {(arch, label): i for i, ((arch, _), label) in enumerate(labels.items())}
    ordered = sorted(
        cells.values(),
        key=lambda c: (archs.index(c.arch), label_order[(c.arch, c.recipe)], _padding_key(c.padding)),
    )
    published = published_table()
    for cell in ordered:
        if cell.imagenet1k:
            cell.published = published.get((cell.arch, cell.padding))
        zero = cells.get((cell.arch, cell.recipe, "zero"))
        if cell.padding == "zero" or zero is None or zero.mean1 is None or cell.mean1 is None:
            continue
        cell.diff_to_zero = cell.mean1 - zero.mean1
        cell.pvalue_vs_zero = welch_pvalue(cell.acc1, zero.acc1)
        by_seed = {r.seed: r.best_acc1 for r in cell.finished if r.seed is not None}
        zero_by_seed = {r.seed: r.best_acc1 for r in zero.finished if r.seed is not None}
        cell.paired = paired_ttest(by_seed, zero_by_seed)
    return ordered


# ---------------------------------------------------------------------------------------------------- writing


def _fmt(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"  # 5.5e-04 and 6.4e-05 are different evidence: keep both


def _incomplete_text(cell: CellSummary, empty: str = "—") -> str:
    return ", ".join(f"{r.path.name} ({r.epochs_done}/{r.epochs_planned} ep)" for r in cell.incomplete) or empty


def _excluded_text(cell: CellSummary, empty: str = "—") -> str:
    return ", ".join(f"{r.path.name} ({why})" for r, why in cell.excluded) or empty


def _csv_text(cells: Sequence[CellSummary]) -> str:
    width = max(cell.n for cell in cells)
    header = ["arch", "recipe", "padding", "n_runs", "mean_top1", "mean_final_top1", "diff_to_zero", "stdev_top1"]
    header += ["p_welch_vs_zero", "n_pairs", "p_paired_vs_zero", "diff_ci95_low", "diff_ci95_high"]
    header += ["mean_top5", "stdev_top5", "pytorch_official_top1", "published_top1", "published_diff"]
    header += ["n_incomplete", "incomplete", "n_excluded", "excluded"]
    header += [f"run{i}_top1" for i in range(1, width + 1)] + [f"run{i}_top5" for i in range(1, width + 1)]
    header += [f"run{i}_final_top1" for i in range(1, width + 1)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)

    def num(v: Optional[float]) -> str:
        return "" if v is None else f"{v:.6g}"

    for c in cells:
        pad = [""] * (width - c.n)
        paired = c.paired or PairedResult(0, None, None, None, None, [])
        pub = c.published
        row = [c.arch, c.recipe, c.padding, c.n, num(c.mean1), num(c.mean_final1), num(c.diff_to_zero), num(c.std1)]
        row += [num(c.pvalue_vs_zero), "" if c.paired is None else paired.n, num(paired.pvalue)]
        row += [num(paired.ci_low), num(paired.ci_high), num(c.mean5), num(c.std5), num(c.official_top1)]
        row += [num(pub and pub.average), num(pub and pub.diff)]
        row += [len(c.incomplete), _incomplete_text(c, empty=""), len(c.excluded), _excluded_text(c, empty="")]
        row += [num(v) for v in c.acc1] + pad + [num(v) for v in c.acc5] + pad + [num(v) for v in c.final1] + pad
        writer.writerow(row)
    return out.getvalue()


def _values(runs: Sequence[RunResult], get) -> str:
    """The distinct values ``get(run)`` takes over ``runs``, with how many runs have each when they differ."""
    counts: dict[str, int] = {}
    for r in runs:
        value = get(r)
        text = "not recorded" if value is None else f"`{value}`"
        counts[text] = counts.get(text, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{v} ({n} runs)" for v, n in counts.items())


def _what_was_run(cells: Sequence[CellSummary]) -> list[str]:
    """results.md's "What was run" section: data, sizes, epochs, batch, the recipe, software and devices of the
    finished runs, each a single value or the values with their run counts (from config.yaml/environment.yaml)."""
    runs = [r for c in cells for r in c.finished]
    if not runs:
        return []
    defaults = RECIPE_DEFAULTS

    def conf(key: str):
        return lambda r: r.config.get(key, defaults.get(key)) if r.config else None

    changed = sorted(
        k
        for k in RECIPE_FLAGS
        if k not in _HEADER_KEYS and any(r.config and r.config.get(k, defaults.get(k)) != defaults.get(k) for r in runs)
    )

    def env(key: str):
        return lambda r: r.environment.get(key)

    archs = sorted({r.arch for r in runs})
    paddings = sorted({r.padding for r in runs}, key=_padding_key)
    lines = ["## What was run", ""]
    lines += [f"- **runs**: {len(runs)} finished ({', '.join(archs)} x {', '.join(paddings)})"]
    lines += [f"- **data**: train {_values(runs, conf('data_train'))}, val {_values(runs, conf('data_val'))}"]
    lines += [f"- **classes**: {_values(runs, conf('num_classes'))}"]
    lines += [
        f"- **image sizes**: train crop {_values(runs, conf('train_crop_size'))}, eval resize "
        f"{_values(runs, conf('val_resize_size'))} / crop {_values(runs, conf('val_crop_size'))}"
    ]
    lines += [f"- **epochs**: {_values(runs, lambda r: r.epochs_planned)}; **batch** (global): "
              f"{_values(runs, conf('batch_size'))}"]  # fmt: skip
    recipe = ", ".join(f"{k} {_values(runs, conf(k))}" for k in ("opt", "lr", "lr_schedule", "weight_decay"))
    lines += [f"- **recipe**: {recipe}" + "".join(f", {k} {_values(runs, conf(k))}" for k in changed)]
    lines += [
        f"- **software**: torch {_values(runs, env('torch'))}, torchvision {_values(runs, env('torchvision'))}, "
        f"Python {_values(runs, env('python'))}"
    ]
    lines += [
        f"- **devices**: {_values(runs, env('device_name'))} x {_values(runs, env('processes'))} process(es) per run"
    ]
    return [*lines, ""]


# Recipe flags the header names on their own line (the others are listed only where a run changed them).
_HEADER_KEYS = ("batch_size", "train_crop_size", "val_resize_size", "val_crop_size", "opt", "lr", "lr_schedule")
_HEADER_KEYS += ("weight_decay",)


def _markdown_text(
    root: Path, cells: Sequence[CellSummary], figures: Sequence[Path], problems: Sequence[str], notes: Sequence[str]
) -> str:
    width = max([cell.n for cell in cells] + [1])
    lines = [
        "# Padding comparison",
        "",
        f"Results root: `{root}`. Best validation top-1 (1-crop) of each finished run, in percent; average, "
        "average of the last epoch's top-1 (the best epoch is chosen on the validation set itself, so it is biased "
        "upward), difference to zero padding and sample stdev (n-1). Incomplete runs are listed, never averaged; "
        "runs that continue another run or repeat a seed are listed as excluded, never counted. Runs of one network "
        "with different recipes (epochs, batch size, learning rate, crops, data, ...) are separate groups, named in "
        "brackets.",
        "",
        "- **p (Welch)**: two-sided Welch t-test (unequal variances, unpaired; `scipy.stats.ttest_ind(equal_var="
        "False)`) of the runs' best top-1 against the same network's zero padding.",
        "- **p (paired)**: two-sided paired t-test (`scipy.stats.ttest_rel`) over the seeds present in both cells "
        "(run k of every padding shares seed k: initialisation, data order, augmentation); **95% CI**: confidence "
        "interval of the mean per-seed difference (Student's t, n_pairs - 1 degrees of freedom).",
        "- **NVIDIA avg / NVIDIA diff**: NVIDIA's published 5-run average best top-1 and its difference to zero "
        "padding (NVIDIA/partialconv README, `imgs/compare_all_padding.png`; 100 epochs, shipped as "
        "`partialconv/analysis_data/nvidia_padding_table.csv`); **PyTorch official**: torchvision's published "
        "top-1 of the zero-padded model (IMAGENET1K_V1 weights). Both are shown only for ImageNet-1k runs "
        "(config.yaml `num_classes: 1000`, or runs without a config.yaml).",
        "",
        *_what_was_run(cells),
    ]
    head = ["arch", "padding"] + [f"run{i}" for i in range(1, width + 1)]
    head += ["average", "last-epoch avg", "diff", "stdev", "n", "p (Welch)", "p (paired)", "95% CI of diff"]
    head += ["NVIDIA avg", "NVIDIA diff", "top-5 avg", "PyTorch official", "incomplete", "excluded"]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 4) + ["---"] * 2) + "|",
    ]
    for c in cells:
        runs = [_fmt(v) for v in c.acc1] + [""] * (width - c.n)
        p = "—" if c.padding == "zero" else _fmt_p(c.pvalue_vs_zero)
        paired_p, ci = "—", "—"
        if c.paired is not None:
            paired_p = _fmt_p(c.paired.pvalue) + f" (n={c.paired.n})"
            if c.paired.ci_low is not None:
                ci = f"[{c.paired.ci_low:+.2f}, {c.paired.ci_high:+.2f}]"
        arch = f"{c.arch} [{c.recipe}]" if c.recipe else c.arch
        pub = c.published
        row = [arch, c.padding, *runs, _fmt(c.mean1), _fmt(c.mean_final1), _fmt(c.diff_to_zero, signed=True)]
        row += [_fmt(c.std1), str(c.n), p, paired_p, ci, _fmt(pub and pub.average, 3)]
        row += [_fmt(pub and pub.diff, 3, signed=True), _fmt(c.mean5), _fmt(c.official_top1, 3)]
        row += [_incomplete_text(c), _excluded_text(c)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Runs", ""]
    lines += ["| run | arch | padding | seed | epochs | best top-1 | top-5 | best epoch | final top-1 | status |"]
    lines += ["|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in cells:
        why = {id(r): reason for r, reason in c.excluded}
        for r in sorted(c.finished + c.incomplete + [r for r, _ in c.excluded], key=lambda r: str(r.path)):
            rel = r.path.relative_to(root) if r.path.is_relative_to(root) else r.path
            status = "incomplete" if not r.finished else f"excluded: {why[id(r)]}" if id(r) in why else "finished"
            seed = "" if r.seed is None else str(r.seed)
            lines.append(
                f"| `{rel}` | {r.arch} | {r.padding} | {seed} | {r.epochs_done}/{r.epochs_planned} | "
                f"{_fmt(r.best_acc1)} | {_fmt(r.best_acc5)} | {r.best_epoch} | {_fmt(r.final_acc1)} | {status} |"
            )
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures]
    if notes:
        lines += ["", "## Warnings", "", "Runs kept apart or left out of the statistics:", ""]
        lines += [f"- `{n}`" for n in notes]
    if problems:
        lines += ["", "## Problems", "", "Lines and files skipped while reading the runs:", ""]
        lines += [f"- `{p}`" for p in problems]
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def _padding_colors(paddings: Sequence[str]) -> dict[str, str]:
    palette = ["#7f7f7f", "#76b900", "#1f77b4", "#d62728", "#9467bd", "#8c564b"]
    ordered = sorted(set(paddings), key=_padding_key)
    return {p: palette[i % len(palette)] for i, p in enumerate(ordered)}


def _group_name(cell: CellSummary) -> str:
    return f"{cell.arch} [{cell.recipe}]" if cell.recipe else cell.arch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_top1_bars(cells: Sequence[CellSummary], path: Path) -> dict[str, Any]:
    """Average best top-1 per arch (groups) and padding (bars), stdev error bars, each run as a dot on its bar and
    NVIDIA's published average as a marker where it exists. Returns what was drawn, read back from the artists:
    ``bars`` [(group, padding, height)], ``runs`` [(group, padding, top-1)], ``published`` [(group, padding,
    value)], ``ylim`` and ``title``."""
    plt = _pyplot()
    done = [c for c in cells if c.n]
    groups = list(dict.fromkeys(_group_name(c) for c in done))
    paddings = sorted({c.padding for c in done}, key=_padding_key)
    colors = _padding_colors(paddings)
    width = 0.8 / max(len(paddings), 1)
    n_bars = len(groups) * len(paddings)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * n_bars + 0.4 * len(groups)), 4.0), layout="constrained")
    placed = []  # (x, cell)
    for j, padding in enumerate(paddings):
        for i, group in enumerate(groups):
            cell = next((c for c in done if _group_name(c) == group and c.padding == padding), None)
            if cell is not None:
                placed.append((i + (j - (len(paddings) - 1) / 2) * width, cell))
    for padding in paddings:
        mine = [(x, c) for x, c in placed if c.padding == padding]
        ax.bar(
            [x for x, _ in mine],
            [c.mean1 for _, c in mine],
            width,
            yerr=[c.std1 or 0.0 for _, c in mine],
            capsize=3,
            color=colors[padding],
            alpha=0.75,
            label=padding,
            gid=f"bars:{padding}",
        )
    for x, c in placed:
        # Every run as a dot, spread sideways so equal values stay visible.
        offsets = [(k - (c.n - 1) / 2) * width * 0.5 / max(c.n, 1) for k in range(c.n)]
        ax.plot([x + o for o in offsets], c.acc1, "o", ms=3, color="black", gid=f"runs:{_group_name(c)}:{c.padding}")
    published = [(x, c) for x, c in placed if c.published is not None]
    for k, (x, c) in enumerate(published):
        label = "NVIDIA published avg" if k == 0 else None
        ax.plot(
            [x],
            [c.published.average],
            "D",
            ms=6,
            mfc="white",
            mec="black",
            label=label,
            gid=f"published:{_group_name(c)}:{c.padding}",
        )
    # Differences between paddings are a few tenths of a percent on ImageNet: the axis starts where the data does
    # (lowest run, error bar or published marker), not at 0, and the title states the range shown.
    values = [v for _, c in placed for v in c.acc1 + [c.mean1 - (c.std1 or 0.0), c.mean1 + (c.std1 or 0.0)]]
    values += [c.published.average for _, c in published]
    low, high = min(values), max(values)
    margin = 0.18 * max(high - low, 1.0)
    bottom, top = max(0.0, low - margin), high + 2 * margin  # room for the averages written above the bars
    ax.set_ylim(bottom, top)
    pad = 0.02 * (top - bottom)
    for x, c in placed:
        # Each average sits just above its own bar (error bar, run dots and published marker included), not at
        # the top of the axis where it floats away from a low bar.
        above = max([c.mean1 + (c.std1 or 0.0), *c.acc1] + ([c.published.average] if c.published else []))
        ax.text(
            x, above + pad, f"{c.mean1:.2f}", ha="center", va="bottom", fontsize=7, rotation=90,
            gid=f"label:{_group_name(c)}:{c.padding}",
        )  # fmt: skip
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("best val top-1 (%)")
    ax.set_title(
        f"Average best top-1 per padding (bars; error bars: stdev; dots: runs)\n"
        f"y-axis from {bottom:.2f} to {top:.2f} %, not from 0",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    data = _drawn(ax, groups)
    _save_figure(fig, path)
    plt.close(fig)
    return data


def _drawn(ax, groups: Sequence[str]) -> dict[str, Any]:
    """The values the bar chart's artists hold, keyed as plot_top1_bars documents."""
    centers = dict(enumerate(groups))
    out: dict[str, Any] = {
        "bars": [],
        "runs": [],
        "published": [],
        "ylim": tuple(ax.get_ylim()),
        "title": ax.get_title(),
    }
    for container in ax.containers:
        gid = container.patches[0].get_gid() if getattr(container, "patches", None) else None
        if gid and gid.startswith("bars:"):
            for patch in container.patches:
                x = patch.get_x() + patch.get_width() / 2
                out["bars"].append((centers[round(x)], gid.split(":", 1)[1], float(patch.get_height())))
    for line in ax.lines:
        gid = line.get_gid() or ""
        kind, _, rest = gid.partition(":")
        if kind in ("runs", "published"):
            group, padding = rest.rsplit(":", 1)
            out[kind] += [(group, padding, float(y)) for y in line.get_ydata()]
    out["labels"] = []  # (group, padding, text, y of the text's bottom)
    for text in ax.texts:
        kind, _, rest = (text.get_gid() or "").partition(":")
        if kind == "label":
            group, padding = rest.rsplit(":", 1)
            out["labels"].append((group, padding, text.get_text(), float(text.get_position()[1])))
    return out


_MEAN_OFFSET = 0.22  # the mean and CI bar of a category: just right of its dots (jittered within +-0.15)


def plot_paired_diffs(cells: Sequence[CellSummary], path: Path) -> dict[str, Any]:
    """Per-seed difference of best top-1 to the same network's zero padding: one dot per seed, the mean (bar
    marker) and its 95% CI (paired t), a line at 0. Returns {"<group> <padding>": {"diffs": [...], "dots_x": [...],
    "mean": m, "mean_x": x, "ci": (low, high), "xlim": (left, right)}}, read back from the artists."""
    plt = _pyplot()
    shown = [c for c in cells if c.paired is not None and c.paired.n]
    colors = _padding_colors([c.padding for c in cells])  # the same colour per padding as in the bar chart
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(shown)), 3.6), layout="constrained")
    names = [f"{_group_name(c)} {c.padding}" for c in shown]
    for i, (name, c) in enumerate(zip(names, shown)):
        diffs = [d for _, d in c.paired.diffs]
        jitter = [(k - (len(diffs) - 1) / 2) * 0.06 for k in range(len(diffs))]
        ax.plot([i + j for j in jitter], diffs, "o", ms=4, color=colors[c.padding], alpha=0.8, gid=f"dots:{name}")
        low, high = c.paired.ci_low, c.paired.ci_high
        yerr = None if low is None else [[c.paired.mean_diff - low], [high - c.paired.mean_diff]]
        ax.errorbar(
            [i + _MEAN_OFFSET],
            [c.paired.mean_diff],
            yerr=yerr,
            fmt="_",
            ms=14,
            mew=2,
            capsize=4,
            color="black",
            label=f"mean:{name}",
        )
    ax.axhline(0.0, color="grey", lw=1, ls="--")
    # Each category spans one unit around its tick: with a single pair, autoscaling would put the dots at the left
    # edge and the mean at the right one.
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("best top-1 minus zero padding (points)")
    ax.set_title("Per-seed difference to zero padding (dots: seeds; bar: mean, 95% CI)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    data: dict[str, Any] = {}
    for line in ax.lines:
        kind, _, name = (line.get_gid() or "").partition(":")
        if kind == "dots":
            data.setdefault(name, {})["diffs"] = [float(y) for y in line.get_ydata()]
            data[name]["dots_x"] = [float(x) for x in line.get_xdata()]
            data[name]["xlim"] = tuple(float(v) for v in ax.get_xlim())
    for container in ax.containers:
        kind, _, name = (container.get_label() or "").partition(":")
        if kind == "mean":
            mean = float(container.lines[0].get_ydata()[0])
            data[name]["mean"] = mean
            data[name]["mean_x"] = float(container.lines[0].get_xdata()[0])
            segs = container.lines[2][0].get_segments() if container.has_yerr else []
            data[name]["ci"] = (float(segs[0][0][1]), float(segs[0][1][1])) if segs else None
    _save_figure(fig, path)
    plt.close(fig)
    return data


def plot_val_curves(cells: Sequence[CellSummary], path: Path) -> dict[str, list[dict[str, Any]]]:
    """Validation top-1 per epoch, one panel per arch: mean over finished runs with a +-1 stdev band; incomplete
    runs as thin dashed lines. Returns, per panel, each line's label, marker and (x, y) points as drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    archs = list(dict.fromkeys(_group_name(c) for c in cells))
    paddings = sorted({c.padding for c in cells}, key=_padding_key)
    colors = _padding_colors(paddings)
    # Curves that coincide (e.g. the same value every epoch) stay visible: each padding has its own marker and a
    # small sideways offset.
    markers = {p: "osD^vP*X"[i % 8] for i, p in enumerate(paddings)}
    shift = {p: (i - (len(paddings) - 1) / 2) * 0.06 for i, p in enumerate(paddings)}
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), squeeze=False, layout="constrained")
    for ax, arch in zip(axes[0], archs):
        for cell in (c for c in cells if _group_name(c) == arch):
            color = colors[cell.padding]
            if cell.finished:
                epochs = sorted({e for r in cell.finished for e, _ in r.curve})
                per_epoch = [[a for r in cell.finished for e, a in r.curve if e == ep] for ep in epochs]
                mean = [statistics.fmean(v) for v in per_epoch]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
                xs = [e + shift[cell.padding] for e in epochs]
                ax.plot(
                    xs,
                    mean,
                    color=color,
                    marker=markers[cell.padding],
                    ms=4,
                    mfc="none",
                    label=f"{cell.padding} (n={cell.n})",
                )
                lo = [m - s for m, s in zip(mean, std)]
                hi = [m + s for m, s in zip(mean, std)]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
            for i, run in enumerate(cell.incomplete):
                label = f"{cell.padding} incomplete" if i == 0 else None
                ax.plot(*zip(*run.curve), color=color, ls="--", lw=0.8, marker=".", label=label)
        last = max(e for c in cells if _group_name(c) == arch for r in c.finished + c.incomplete for e, _ in r.curve)
        ax.set_xlim(0.5, last + 0.5)
        ax.set_title(arch, fontsize=10)
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    drawn = {
        arch: [
            {
                "label": line.get_label(),
                "marker": line.get_marker(),
                "xy": [tuple(map(float, p)) for p in line.get_xydata()],
            }
            for line in ax.lines
        ]
        for ax, arch in zip(axes[0], archs)
    }
    _save_figure(fig, path)
    plt.close(fig)
    return drawn


def write_report(root: Path, out_dir: Optional[Path] = None) -> ReportFiles:
    """Read every run under ``root`` and write results.md, results.csv, top1_bar.png, paired_diff_to_zero.png and
    val_top1_curves.png to ``out_dir`` (default: ``root``). Raises ReportError for an unusable root; bad lines are
    listed, not fatal; runs kept apart or left out are listed in ``warnings``."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    runs, problems = collect_runs(root)
    notes: list[str] = []
    cells = summarize(runs, notes)
    figures = []
    if any(c.n for c in cells):
        figures.append(out_dir / "top1_bar.png")
        plot_top1_bars(cells, figures[-1])
    if any(c.paired is not None and c.paired.n for c in cells):
        figures.append(out_dir / "paired_diff_to_zero.png")
        plot_paired_diffs(cells, figures[-1])
    figures.append(out_dir / "val_top1_curves.png")
    plot_val_curves(cells, figures[-1])
    md_path, csv_path = out_dir / "results.md", out_dir / "results.csv"
    write_bytes_atomic(csv_path, _csv_text(cells).encode())
    write_bytes_atomic(md_path, _markdown_text(root, cells, figures, problems, notes).encode())
    return ReportFiles(md_path, csv_path, figures, problems, notes)
