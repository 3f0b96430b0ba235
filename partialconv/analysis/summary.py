"""Runs grouped into cells, one per (arch, recipe, padding), with each cell's difference to zero padding.

Runs of one network with different recipes (RECIPE_KEYS) are separate groups, never pooled; runs that continue
another or repeat a seed are excluded from every statistic, each decision one warning line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..layers import PADDINGS
from .published import PublishedCell, published_table, pytorch_official
from .runs import RunResult
from .stats import PairedResult, mean_of, paired_ttest, stdev_of, welch_pvalue

__all__ = ["PADDING_ORDER", "CellSummary", "padding_key", "summarize"]

PADDING_ORDER = PADDINGS  # the order of columns and bars: zero (the baseline) first


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
        return mean_of(self.acc1)

    @property
    def std1(self) -> Optional[float]:
        return stdev_of(self.acc1)

    @property
    def mean5(self) -> Optional[float]:
        return mean_of(self.acc5)

    @property
    def std5(self) -> Optional[float]:
        return stdev_of(self.acc5)

    @property
    def final1(self) -> list[float]:
        return [r.final_acc1 for r in self.finished]

    @property
    def mean_final1(self) -> Optional[float]:
        return mean_of(self.final1)

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


def padding_key(padding: str) -> tuple[int, str]:
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
        key=lambda c: (archs.index(c.arch), label_order[(c.arch, c.recipe)], padding_key(c.padding)),
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
