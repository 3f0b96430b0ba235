"""The statistics of the padding report: means, sample stdev, Welch's and the paired t-test with its CI.

scipy's implementations (``ttest_ind``, ``ttest_rel``, Student's t interval), imported when first needed: reading
runs and writing tables does not pay for scipy's import.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["PairedResult", "mean_of", "paired_ttest", "stdev_of", "welch_pvalue"]


@dataclass
class PairedResult:
    """Paired comparison of per-seed values: mean difference a - b, its 95% CI and the paired t-test p-value."""

    n: int
    mean_diff: Optional[float]
    pvalue: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    diffs: list[tuple[int, float]]  # (seed, a - b)


def mean_of(values: Sequence[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def stdev_of(values: Sequence[float]) -> Optional[float]:
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
