"""The report's text: results.csv and results.md (its "What was run" header, the table, the runs, warnings)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

from ..recipe_flags import RECIPE_DEFAULTS, RECIPE_FLAGS
from .runs import RunResult
from .stats import PairedResult
from .summary import CellSummary, padding_key

__all__ = ["csv_text", "markdown_text"]


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


def csv_text(cells: Sequence[CellSummary]) -> str:
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
    paddings = sorted({r.padding for r in runs}, key=padding_key)
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


def markdown_text(
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
        "`partialconv/analysis/data/nvidia_padding_table.csv`); **PyTorch official**: torchvision's published "
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
