"""The padding report's top-5 columns and its figures' plotted numbers against hand-computed values (issue 15, bug 6).

Top-5 values are chosen unrelated to top-1 (not top-1 + a constant), so a top-5 statistic computed from the top-1
values, or from the wrong epoch, cannot match. The figures are checked through their matplotlib artists: the bar
heights, error bars and curve points are the data the PNGs are drawn from.
"""

from __future__ import annotations

import csv
import statistics

import pytest
from test_padding_report import write_run

from partialconv import analysis
from partialconv.analysis import figures as report_figures

# (arch, padding) -> per run: (val_acc1 per epoch, val_acc5 per epoch); best top-1 epoch marked in the comments
RUNS = {
    # one recipe per arch (the report keeps runs of different epochs apart): 3 epochs for every resnet18 run
    ("resnet18", "zero"): [([50.0, 61.0, 58.0], [80.0, 84.5, 99.5]), ([52.0, 60.0, 59.0], [79.0, 83.0, 98.0])],
    ("resnet18", "partial"): [([55.0, 63.0, 62.0], [90.0, 85.0, 99.0]), ([64.5, 53.0, 60.0], [86.25, 95.0, 97.0])],
    ("vgg11", "zero"): [([30.0, 40.0], [70.0, 72.0]), ([35.0, 41.0], [71.5, 76.0]), ([20.0, 39.0], [60.0, 77.75])],
}
# top-5 at the best top-1 epoch of each run, by hand
BEST5 = {
    ("resnet18", "zero"): [84.5, 83.0],
    ("resnet18", "partial"): [85.0, 86.25],
    ("vgg11", "zero"): [72.0, 76.0, 77.75],
}
BEST1 = {
    ("resnet18", "zero"): [61.0, 60.0],
    ("resnet18", "partial"): [63.0, 64.5],
    ("vgg11", "zero"): [40.0, 41.0, 39.0],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    for (arch, padding), runs in RUNS.items():
        for k, (acc1, acc5) in enumerate(runs, 1):
            write_run(root, arch, padding, k, acc1, acc5)
    figures = {}
    real_save = report_figures._save_figure

    def keep(fig, path):
        figures[path.name] = fig  # the figure object, with its artists, before it is closed
        real_save(fig, path)

    mp = pytest.MonkeyPatch()
    mp.setattr(report_figures, "_save_figure", keep)
    mp.setattr("matplotlib.pyplot.close", lambda fig=None: None)  # keep the figures readable
    try:
        files = analysis.write_report(root)
    finally:
        mp.undo()
    return root, files, figures


def test_summary_top5_is_the_top5_of_the_best_top1_epoch(report):
    root, _, _ = report
    cells = {(c.arch, c.padding): c for c in analysis.summarize(analysis.collect_runs(root)[0])}
    for key, best5 in BEST5.items():
        assert cells[key].acc5 == best5 and cells[key].acc1 == BEST1[key]
        assert cells[key].mean5 == pytest.approx(statistics.fmean(best5))
        assert cells[key].std5 == pytest.approx(statistics.stdev(best5))


def test_csv_and_markdown_top5_columns(report):
    root, files, _ = report
    rows = {(r["arch"], r["padding"]): r for r in csv.DictReader(files.csv.open())}
    for key, best5 in BEST5.items():
        row = rows[key]
        assert float(row["mean_top5"]) == pytest.approx(statistics.fmean(best5), abs=1e-4)
        assert float(row["stdev_top5"]) == pytest.approx(statistics.stdev(best5), rel=1e-5)
        assert [float(row[f"run{i}_top5"]) for i in range(1, len(best5) + 1)] == best5
    assert rows[("resnet18", "zero")]["run3_top5"] == ""  # fewer runs than the widest cell
    md = files.markdown.read_text()
    table = [line for line in md.splitlines() if line.startswith("| resnet18 |") or line.startswith("| vgg11 |")]
    # the main table's "top-5 avg" column: 10th of 12 cells for three run columns
    head = next(line for line in md.splitlines() if line.startswith("| arch | padding | run1"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    i5 = cols.index("top-5 avg")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    got = {(c[0], c[1]): c[i5] for c in cells}
    assert got == {k: f"{statistics.fmean(v):.2f}" for k, v in BEST5.items()}
    # the runs table: best top-1, its top-5, its epoch and the last epoch's top-1 per run
    assert "| `resnet18/partial/run2` | resnet18 | partial | 2 | 3/3 | 64.50 | 86.25 | 1 | 60.00 | finished |" in md
    assert "| `vgg11/zero/run3` | vgg11 | zero | 3 | 2/2 | 39.00 | 77.75 | 2 | 39.00 | finished |" in md


def test_bar_figure_plots_the_mean_top1_and_stdev(report):
    _, files, figures = report
    assert [f.name for f in files.figures] == ["top1_bar.png", "paired_diff_to_zero.png", "val_top1_curves.png"]
    (ax,) = figures["top1_bar.png"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet18", "vgg11"]
    bars = {c.get_label(): c for c in ax.containers if hasattr(c, "datavalues")}
    assert sorted(bars) == ["partial", "zero"]
    zero = [statistics.fmean(BEST1[("resnet18", "zero")]), statistics.fmean(BEST1[("vgg11", "zero")])]
    assert list(bars["zero"].datavalues) == pytest.approx(zero)
    assert list(bars["partial"].datavalues) == pytest.approx([statistics.fmean(BEST1[("resnet18", "partial")])])
    # error bars: mean -+ stdev
    segments = bars["zero"].errorbar.lines[2][0].get_segments()
    stds = [statistics.stdev(BEST1[("resnet18", "zero")]), statistics.stdev(BEST1[("vgg11", "zero")])]
    for seg, m, s in zip(segments, zero, stds):
        assert (seg[0][1], seg[1][1]) == pytest.approx((m - s, m + s))
    # the value written above each bar
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(f"{m:.2f}" for m in zero + [63.75])


def test_curve_figure_plots_the_mean_val_top1_per_epoch(report):
    _, _, figures = report
    axes = figures["val_top1_curves.png"].axes
    assert [ax.get_title() for ax in axes] == ["resnet18", "vgg11"]
    lines = {ln.get_label(): ln for ln in axes[0].get_lines()}
    # each padding's curve is shifted sideways by a fixed small offset so coinciding curves stay visible
    shift = lines["zero (n=2)"].get_xdata()[0] - 1
    assert abs(shift) < 0.1
    assert list(lines["zero (n=2)"].get_xdata()) == pytest.approx([1 + shift, 2 + shift, 3 + shift])
    assert list(lines["zero (n=2)"].get_ydata()) == pytest.approx([51.0, 60.5, 58.5])
    assert list(lines["partial (n=2)"].get_ydata()) == pytest.approx([59.75, 58.0, 61.0])
    (vgg,) = axes[1].get_lines()
    assert list(vgg.get_ydata()) == pytest.approx([statistics.fmean([30, 35, 20]), statistics.fmean([40, 41, 39])])
