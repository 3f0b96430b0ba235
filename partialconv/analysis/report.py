"""The whole padding report of a results root: read the runs, summarise, write the figures and tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..fileio import write_bytes_atomic
from .figures import plot_paired_diffs, plot_top1_bars, plot_val_curves
from .runs import collect_runs
from .summary import summarize
from .tables import csv_text, markdown_text

__all__ = ["ReportFiles", "write_report"]


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    figures: list[Path]
    problems: list[str]
    warnings: list[str] = field(default_factory=list)  # runs kept apart (recipes) or not counted (and why)


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
    write_bytes_atomic(csv_path, csv_text(cells).encode())
    write_bytes_atomic(md_path, markdown_text(root, cells, figures, problems, notes).encode())
    return ReportFiles(md_path, csv_path, figures, problems, notes)
