"""Padding comparisons over train.py runs: ``partialconv.programs.padding_report`` writes the report
(:func:`write_report`), ``partialconv.programs.padding_benchmark`` asks which runs are finished (:func:`run_status`).

runs (reading metrics.jsonl runs) -> summary (cells per arch, recipe and padding; stats: the t-tests; published:
NVIDIA's table and torchvision's top-1) -> tables (results.md/csv) and figures (PNG) -> report (all of it).
"""

from .published import PUBLISHED_TABLE, PublishedCell, published_table, pytorch_official
from .report import ReportFiles, write_report
from .runs import RECIPE_KEYS, ReportError, RunResult, collect_runs, load_run, read_metrics, run_status
from .stats import PairedResult, paired_ttest, welch_pvalue
from .summary import PADDING_ORDER, CellSummary, summarize

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
