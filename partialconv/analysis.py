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
import os
import statistics
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

__all__ = [
    "PADDING_ORDER",
    "PYTORCH_OFFICIAL",
    "CellSummary",
    "ReportError",
    "ReportFiles",
    "RunResult",
    "collect_runs",
    "load_run",
    "read_metrics",
    "run_state",
    "summarize",
    "welch_pvalue",
    "write_report",
]

PADDING_ORDER = ("zero", "partial", "reflect", "replicate")

# PyTorch's published ImageNet-1K accuracy (top-1, top-5; 1-crop 224 px) for the zero-padded torchvision models
# with their IMAGENET1K_V1 weights, the reference the seed's PT_official column refers to. Source: torchvision model
# documentation (https://pytorch.org/vision/stable/models.html, "acc@1"/"acc@5" of each *_Weights.IMAGENET1K_V1),
# identical to the ``meta["_metrics"]["ImageNet-1K"]`` of torchvision 0.29's weight enums.
PYTORCH_OFFICIAL: dict[str, tuple[float, float]] = {
    "resnet18": (69.758, 89.078),
    "resnet34": (73.314, 91.420),
    "resnet50": (76.130, 92.862),
    "resnet101": (77.374, 93.546),
    "resnet152": (78.312, 94.046),
    "resnext50_32x4d": (77.618, 93.698),
    "wide_resnet50_2": (78.468, 94.086),
    "vgg11": (69.020, 88.628),
    "vgg13": (69.928, 89.246),
    "vgg16": (71.592, 90.382),
    "vgg19": (72.376, 90.876),
    "vgg11_bn": (70.370, 89.810),
    "vgg13_bn": (71.586, 90.374),
    "vgg16_bn": (73.360, 91.516),
    "vgg19_bn": (74.218, 91.842),
}

METRICS_FILE = "metrics.jsonl"
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

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs_planned


@dataclass
class CellSummary:
    """All runs of one (arch, padding). Statistics use finished runs only."""

    arch: str
    padding: str
    finished: list[RunResult] = field(default_factory=list)
    incomplete: list[RunResult] = field(default_factory=list)
    diff_to_zero: Optional[float] = None
    pvalue_vs_zero: Optional[float] = None

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
    def official_top1(self) -> Optional[float]:
        return PYTORCH_OFFICIAL[self.arch][0] if self.arch in PYTORCH_OFFICIAL else None


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    figures: list[Path]
    problems: list[str]


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
    and one message per unusable line, naming the file and line number."""
    by_epoch: dict[int, dict] = {}
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{lineno}: not valid JSON ({e.msg})")
                continue
            why = _check_record(obj)
            if why:
                problems.append(f"{path}:{lineno}: {why}")
                continue
            by_epoch[int(obj["epoch"])] = obj
    return [by_epoch[e] for e in sorted(by_epoch)], problems


def canonical_arch(arch: str, padding: str) -> str:
    """Group the seed's pd names with their base architecture (``pdresnet50`` + partial -> ``resnet50``)."""
    if padding == "partial" and arch.startswith("pd") and len(arch) > 2:
        return arch[2:]
    return arch


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
        ),
        problems,
    )


def run_state(run_dir: Path) -> str:
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


def summarize(runs: Sequence[RunResult]) -> list[CellSummary]:
    """One summary per (arch, padding), archs in first-seen order and paddings in the seed's order, with the
    difference and Welch p-value against the same arch's zero padding (finished runs only)."""
    cells: dict[tuple[str, str], CellSummary] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        cell = cells.setdefault((run.arch, run.padding), CellSummary(run.arch, run.padding))
        (cell.finished if run.finished else cell.incomplete).append(run)
    archs = list(dict.fromkeys(arch for arch, _ in cells))
    ordered = sorted(cells.values(), key=lambda c: (archs.index(c.arch), _padding_key(c.padding)))
    for cell in ordered:
        zero = cells.get((cell.arch, "zero"))
        if cell.padding == "zero" or zero is None or zero.mean1 is None or cell.mean1 is None:
            continue
        cell.diff_to_zero = cell.mean1 - zero.mean1
        cell.pvalue_vs_zero = welch_pvalue(cell.acc1, zero.acc1)
    return ordered


# ---------------------------------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; reports are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _incomplete_text(cell: CellSummary, empty: str = "—") -> str:
    return ", ".join(f"{r.path.name} ({r.epochs_done}/{r.epochs_planned} ep)" for r in cell.incomplete) or empty


def _csv_text(cells: Sequence[CellSummary]) -> str:
    width = max(cell.n for cell in cells)
    header = ["arch", "padding", "n_runs", "mean_top1", "diff_to_zero", "stdev_top1", "p_welch_vs_zero"]
    header += ["mean_top5", "stdev_top5", "pytorch_official_top1", "n_incomplete", "incomplete"]
    header += [f"run{i}_top1" for i in range(1, width + 1)] + [f"run{i}_top5" for i in range(1, width + 1)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)

    def num(v: Optional[float]) -> str:
        return "" if v is None else f"{v:.6g}"

    for c in cells:
        pad = [""] * (width - c.n)
        row = [c.arch, c.padding, c.n, num(c.mean1), num(c.diff_to_zero), num(c.std1), num(c.pvalue_vs_zero)]
        row += [num(c.mean5), num(c.std5), num(c.official_top1), len(c.incomplete), _incomplete_text(c, empty="")]
        row += [num(v) for v in c.acc1] + pad + [num(v) for v in c.acc5] + pad
        writer.writerow(row)
    return out.getvalue()


def _markdown_text(root: Path, cells: Sequence[CellSummary], figures: Sequence[Path], problems: Sequence[str]) -> str:
    width = max([cell.n for cell in cells] + [1])
    lines = [
        "# Padding comparison",
        "",
        f"Results root: `{root}`. Best validation top-1 (1-crop) of each finished run, in percent; average, "
        "difference to zero padding, sample stdev (n-1) and a two-sided Welch t-test p-value against the same "
        "network with zero padding. Incomplete runs are listed, never averaged. "
        "PyTorch official: torchvision's published top-1 of the zero-padded ImageNet model (IMAGENET1K_V1 weights); "
        "it applies to ImageNet training only.",
        "",
    ]
    head = ["arch", "padding"] + [f"run{i}" for i in range(1, width + 1)]
    head += ["average", "diff", "stdev", "n", "p (Welch)", "top-5 avg", "PyTorch official", "incomplete"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 3) + ["---"]) + "|"]
    for c in cells:
        runs = [_fmt(v) for v in c.acc1] + [""] * (width - c.n)
        p = "—" if c.padding == "zero" else _fmt_p(c.pvalue_vs_zero)
        row = [c.arch, c.padding, *runs, _fmt(c.mean1), _fmt(c.diff_to_zero, signed=True), _fmt(c.std1), str(c.n)]
        row += [p, _fmt(c.mean5), _fmt(c.official_top1, 3), _incomplete_text(c)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Runs", ""]
    lines += ["| run | arch | padding | seed | epochs | best top-1 | top-5 | best epoch | status |"]
    lines += ["|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in cells:
        for r in sorted(c.finished + c.incomplete, key=lambda r: str(r.path)):
            rel = r.path.relative_to(root) if r.path.is_relative_to(root) else r.path
            status = "finished" if r.finished else "incomplete"
            seed = "" if r.seed is None else str(r.seed)
            lines.append(
                f"| `{rel}` | {r.arch} | {r.padding} | {seed} | {r.epochs_done}/{r.epochs_planned} | "
                f"{_fmt(r.best_acc1)} | {_fmt(r.best_acc5)} | {r.best_epoch} | {status} |"
            )
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures]
    if problems:
        lines += ["", "## Problems", "", "Lines and files skipped while reading the runs:", ""]
        lines += [f"- `{p}`" for p in problems]
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())


def _padding_colors(paddings: Sequence[str]) -> dict[str, str]:
    palette = ["#7f7f7f", "#76b900", "#1f77b4", "#d62728", "#9467bd", "#8c564b"]
    ordered = sorted(set(paddings), key=_padding_key)
    return {p: palette[i % len(palette)] for i, p in enumerate(ordered)}


def plot_top1_bars(cells: Sequence[CellSummary], path: Path) -> None:
    """Average best top-1 per arch (groups) and padding (bars), stdev error bars, like the seed's bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in cells if c.n]
    archs = list(dict.fromkeys(c.arch for c in done))
    paddings = sorted({c.padding for c in done}, key=_padding_key)
    colors = _padding_colors(paddings)
    width = 0.8 / max(len(paddings), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.6 * len(archs)), 3.6), layout="constrained")
    bars = []  # (x, mean, stdev, padding)
    for j, padding in enumerate(paddings):
        for i, arch in enumerate(archs):
            cell = next((c for c in done if c.arch == arch and c.padding == padding), None)
            if cell is not None:
                bars.append((i + (j - (len(paddings) - 1) / 2) * width, cell.mean1, cell.std1 or 0.0, padding))
    for padding in paddings:
        xs, means, errs = zip(*[(x, m, e) for x, m, e, p in bars if p == padding])
        ax.bar(xs, means, width, yerr=errs, capsize=3, color=colors[padding], label=padding)
    # Differences between paddings are a few tenths of a percent on ImageNet: start the axis below the lowest
    # error bar rather than at 0, and write each average above its error bar.
    low = min(m - e for _, m, e, _ in bars)
    high = max(m + e for _, m, e, _ in bars)
    margin = 0.18 * max(high - low, 1.0)
    bottom = max(0.0, low - margin)
    ax.set_ylim(bottom, high + margin)
    for x, m, e, _ in bars:
        ax.text(x, m + e + 0.1 * margin, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylabel("best val top-1 (%)")
    ax.set_title("Average best top-1 per padding (error bars: stdev over runs)", fontsize=9)
    ax.legend(fontsize=8, ncol=len(paddings), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    _save_figure(fig, path)
    plt.close(fig)


def plot_val_curves(cells: Sequence[CellSummary], path: Path) -> None:
    """Validation top-1 per epoch, one panel per arch: mean over finished runs with a +-1 stdev band; incomplete
    runs as thin dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    archs = list(dict.fromkeys(c.arch for c in cells))
    colors = _padding_colors([c.padding for c in cells])
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), squeeze=False, layout="constrained")
    for ax, arch in zip(axes[0], archs):
        for cell in (c for c in cells if c.arch == arch):
            color = colors[cell.padding]
            if cell.finished:
                epochs = sorted({e for r in cell.finished for e, _ in r.curve})
                per_epoch = [[a for r in cell.finished for e, a in r.curve if e == ep] for ep in epochs]
                mean = [statistics.fmean(v) for v in per_epoch]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
                ax.plot(epochs, mean, color=color, marker="o", ms=3, label=f"{cell.padding} (n={cell.n})")
                lo = [m - s for m, s in zip(mean, std)]
                hi = [m + s for m, s in zip(mean, std)]
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
            for i, run in enumerate(cell.incomplete):
                label = f"{cell.padding} incomplete" if i == 0 else None
                ax.plot(*zip(*run.curve), color=color, ls="--", lw=0.8, marker=".", label=label)
        last = max(e for c in cells if c.arch == arch for r in c.finished + c.incomplete for e, _ in r.curve)
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
    _save_figure(fig, path)
    plt.close(fig)


def write_report(root: Path, out_dir: Optional[Path] = None) -> ReportFiles:
    """Read every run under ``root`` and write results.md, results.csv, top1_bar.png and val_top1_curves.png to
    ``out_dir`` (default: ``root``). Raises ReportError for an unusable root; bad lines are listed, not fatal."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    runs, problems = collect_runs(root)
    cells = summarize(runs)
    figures = []
    if any(c.n for c in cells):
        figures.append(out_dir / "top1_bar.png")
        plot_top1_bars(cells, figures[-1])
    figures.append(out_dir / "val_top1_curves.png")
    plot_val_curves(cells, figures[-1])
    md_path, csv_path = out_dir / "results.md", out_dir / "results.csv"
    _atomic_write(csv_path, _csv_text(cells).encode())
    _atomic_write(md_path, _markdown_text(root, cells, figures, problems).encode())
    return ReportFiles(md_path, csv_path, figures, problems)
