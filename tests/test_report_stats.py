"""Issue 13: NVIDIA's published numbers, paired statistics, last epoch beside best, figures, like-with-like pooling."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from partialconv.analysis import (
    PUBLISHED_TABLE,
    collect_runs,
    paired_ttest,
    published_table,
    pytorch_official,
    summarize,
    write_report,
)
from partialconv.analysis.figures import plot_paired_diffs, plot_top1_bars, plot_val_curves

ROOT = Path(__file__).resolve().parents[1]
REPORT = [sys.executable, "-m", "scripts.padding_report"]  # run from the repository root (cwd=ROOT)


def read_table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The published CSV read here with the csv module alone (its '#' lines are the source note)."""
    with open(path, encoding="utf-8") as f:
        return {(r["arch"], r["padding"]): r for r in csv.DictReader(x for x in f if not x.startswith("#"))}


NVIDIA = read_table(PUBLISHED_TABLE)


def nvidia_runs(arch: str, padding: str) -> list[float]:
    return [float(NVIDIA[(arch, padding)][f"run{i}"]) for i in range(1, 6)]


def write_run(
    root: Path,
    name: str,
    arch: str,
    padding: str,
    seed: int,
    acc1: list[float],
    epochs: int | None = None,
    first_epoch: int = 1,
    config: dict | None = None,
) -> Path:
    """A run directory as train.py leaves it: metrics.jsonl (one line per epoch) and, if given, config.yaml."""
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = epochs or first_epoch - 1 + len(acc1)
    lines = []
    for e, a1 in enumerate(acc1, first_epoch):
        rec = {"epoch": e, "epochs": epochs, "arch": arch, "padding": padding, "seed": seed}
        rec |= {"val_acc1": a1, "val_acc5": min(100.0, a1 + 15), "val_loss": 1.0, "lr": 0.1}
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if config is not None:
        full = {"arch": arch, "padding": padding, "seed": seed, "epochs": epochs, "batch_size": 256, "lr": 0.1}
        full |= {"num_classes": 1000, "data_train": "/data/train", "data_val": "/data/val", "resume": None}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(full | config))
    return run_dir


def rows_of(csv_path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["arch"], r["recipe"], r["padding"]): r for r in csv.DictReader(csv_path.open())}


@pytest.fixture(scope="module")
def nvidia_root(tmp_path_factory) -> Path:
    """NVIDIA's resnet50 zero/partial runs (run k = seed k) and vgg16_bn's, written as 2-epoch runs whose best epoch
    is the published value; the last epoch is 0.3 lower. Partial's directories are named so that path order is not
    seed order, and one partial seed is missing: pairing must go by seed."""
    root = tmp_path_factory.mktemp("nvidia")
    for arch in ("resnet50", "vgg16_bn"):
        for padding in ("zero", "partial"):
            for k, best in enumerate(nvidia_runs(arch, padding), 1):
                if arch == "vgg16_bn" and padding == "partial" and k == 3:
                    continue
                name = f"{arch}/{padding}/{'x' if k % 2 else 'a'}run{k}"
                write_run(root, name, arch, padding, k, [best, best - 0.3], config={})
    return root


def test_published_table_is_the_shared_reference():
    shared = ROOT.parent / "shared" / "reference" / "nvidia_padding_table.csv"
    if not shared.is_file():
        shared = Path("/work/shared/reference/nvidia_padding_table.csv")
    if not shared.is_file():
        pytest.skip("the shared reference copy is not on this machine")
    assert PUBLISHED_TABLE.read_bytes() == shared.read_bytes()
    assert PUBLISHED_TABLE.read_text().startswith("# Transcribed from NVIDIA/partialconv")


def test_published_table_parses_every_row():
    table = published_table()
    assert set(table) == set(NVIDIA) and len(table) == 20
    for key, row in NVIDIA.items():
        cell = table[key]
        assert cell.runs == nvidia_runs(*key)
        assert cell.average == float(row["average"])
        # the transcription is consistent: each average is the mean of its five runs to the published 3 decimals
        assert statistics.fmean(cell.runs) == pytest.approx(cell.average, abs=1e-3)
        assert cell.diff == (float(row["diff"]) if row["diff"] else None)
    assert table[("resnet50", "zero")].diff is None and table[("resnet50", "partial")].diff == 0.478


def test_paired_ttest_matches_scipy():
    zero, partial = nvidia_runs("resnet50", "zero"), nvidia_runs("resnet50", "partial")
    res = paired_ttest(dict(enumerate(partial, 1)), dict(enumerate(zero, 1)))
    diffs = [p - z for p, z in zip(partial, zero)]
    assert res.n == 5 and res.mean_diff == pytest.approx(statistics.fmean(diffs))
    assert res.pvalue == pytest.approx(stats.ttest_rel(partial, zero).pvalue, rel=1e-12)
    low, high = stats.t.interval(0.95, 4, loc=statistics.fmean(diffs), scale=stats.sem(diffs))
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert res.pvalue == pytest.approx(5.5e-4, rel=0.05)  # the cross-check
    # only seeds present in both count, whatever order they come in
    res = paired_ttest({5: partial[4], 1: partial[0], 3: partial[2], 9: 99.0}, dict(enumerate(zero, 1)))
    assert res.n == 3 and [s for s, _ in res.diffs] == [1, 3, 5]
    assert res.pvalue == pytest.approx(stats.ttest_rel(partial[::2], zero[::2]).pvalue, rel=1e-12)
    one = paired_ttest({1: 2.0}, {1: 1.0})
    assert one.n == 1 and one.mean_diff == 1.0 and one.pvalue is None and one.ci_low is None
    same = paired_ttest({1: 2.0, 2: 3.0}, {1: 1.0, 2: 2.0})  # every difference the same: no spread, no p
    assert same.pvalue is None and (same.ci_low, same.ci_high) == (1.0, 1.0)


def test_report_csv_has_published_paired_and_final_columns(nvidia_root):
    files = write_report(nvidia_root)
    rows = rows_of(files.csv)
    zero, partial = nvidia_runs("resnet50", "zero"), nvidia_runs("resnet50", "partial")
    row = rows[("resnet50", "", "partial")]
    assert float(row["published_top1"]) == float(NVIDIA[("resnet50", "partial")]["average"]) == 76.611
    assert float(row["published_diff"]) == float(NVIDIA[("resnet50", "partial")]["diff"])
    assert (
        rows[("resnet50", "", "zero")]["published_diff"] == ""
        and rows[("resnet50", "", "zero")]["p_paired_vs_zero"] == ""
    )
    assert float(row["p_paired_vs_zero"]) == pytest.approx(stats.ttest_rel(partial, zero).pvalue, rel=1e-5)
    assert float(row["p_welch_vs_zero"]) == pytest.approx(
        stats.ttest_ind(partial, zero, equal_var=False).pvalue, rel=1e-5
    )
    assert float(row["p_welch_vs_zero"]) == pytest.approx(6.4e-5, rel=0.05)  # the cross-check
    diffs = [p - z for p, z in zip(partial, zero)]
    low, high = stats.t.interval(0.95, 4, loc=statistics.fmean(diffs), scale=stats.sem(diffs))
    assert (float(row["diff_ci95_low"]), float(row["diff_ci95_high"])) == pytest.approx((low, high), rel=1e-5)
    assert row["n_pairs"] == "5"
    # last epoch beside best
    assert float(row["mean_top1"]) == pytest.approx(statistics.fmean(partial), abs=1e-4)
    assert float(row["mean_final_top1"]) == pytest.approx(statistics.fmean(partial) - 0.3, abs=1e-4)
    finals = sorted(float(row[f"run{i}_final_top1"]) for i in range(1, 6))
    assert finals == pytest.approx(sorted(a - 0.3 for a in partial), abs=1e-6)
    # vgg16_bn partial lacks seed 3: paired over 4 seeds, matched by seed although path order differs
    vgg = rows[("vgg16_bn", "", "partial")]
    vz, vp = nvidia_runs("vgg16_bn", "zero"), nvidia_runs("vgg16_bn", "partial")
    keep = [0, 1, 3, 4]
    assert vgg["n_pairs"] == "4" and vgg["n_runs"] == "4"
    expected = stats.ttest_rel([vp[i] for i in keep], [vz[i] for i in keep]).pvalue
    assert float(vgg["p_paired_vs_zero"]) == pytest.approx(expected, rel=1e-5)
    md = files.markdown.read_text()
    assert "| 76.611 | +0.478 |" in md and "ttest_rel" in md and "ttest_ind(equal_var=False)" in md
    assert "compare_all_padding.png" in md and "last-epoch avg" in md
    assert "| 76.31 |" in md  # resnet50 partial's last-epoch average beside the best (76.61)


def test_incomplete_runs_stay_out_of_paired_statistics(tmp_path):
    for k, (z, p) in enumerate([(50.0, 52.0), (51.0, 54.0), (49.0, 50.5)], 1):
        write_run(tmp_path, f"zero{k}", "resnet18", "zero", k, [z - 5, z])
        write_run(tmp_path, f"partial{k}", "resnet18", "partial", k, [p - 5, p])
    write_run(tmp_path, "partial4", "resnet18", "partial", 4, [90.0], epochs=2)  # interrupted
    write_run(tmp_path, "zero4", "resnet18", "zero", 4, [10.0, 11.0])
    cells = {c.padding: c for c in summarize(collect_runs(tmp_path)[0])}
    assert cells["partial"].paired.n == 3
    assert cells["partial"].paired.pvalue == pytest.approx(stats.ttest_rel([52.0, 54.0, 50.5], [50, 51, 49]).pvalue)
    assert cells["partial"].mean_final1 == pytest.approx(statistics.fmean([52.0, 54.0, 50.5]))
    assert [r.path.name for r in cells["partial"].incomplete] == ["partial4"] and cells["partial"].n == 3


def test_bar_chart_draws_runs_published_markers_and_a_stated_range(nvidia_root, tmp_path):
    write_run(nvidia_root / "extra", "tiny/zero/run1", "tinynet", "zero", 1, [75.0, 75.5], config={})
    try:
        cells = summarize(collect_runs(nvidia_root)[0])
        data = plot_top1_bars(cells, tmp_path / "bar.png")
    finally:
        import shutil

        shutil.rmtree(nvidia_root / "extra")
    assert (tmp_path / "bar.png").read_bytes()[:4] == b"\x89PNG"
    published = {(g, p): v for g, p, v in data["published"]}
    assert published == {
        (a, p): float(NVIDIA[(a, p)]["average"]) for a in ("resnet50", "vgg16_bn") for p in ("zero", "partial")
    }
    bars = {(g, p): h for g, p, h in data["bars"]}
    assert bars[("resnet50", "zero")] == pytest.approx(statistics.fmean(nvidia_runs("resnet50", "zero")))
    assert ("tinynet", "zero") in bars and ("tinynet", "zero") not in published
    runs = sorted(v for g, p, v in data["runs"] if (g, p) == ("resnet50", "partial"))
    assert runs == sorted(nvidia_runs("resnet50", "partial"))
    bottom, top = data["ylim"]
    lowest = min(v for _, _, v in data["runs"])
    assert 60 < bottom < lowest and top > max(v for _, _, v in data["runs"])  # starts where the data does
    assert f"y-axis from {bottom:.2f} to {top:.2f} %" in data["title"]  # ... and says so


def test_paired_difference_figure_shows_each_seed_mean_and_ci(nvidia_root, tmp_path):
    cells = summarize(collect_runs(nvidia_root)[0])
    data = plot_paired_diffs(cells, tmp_path / "diff.png")
    assert (tmp_path / "diff.png").read_bytes()[:4] == b"\x89PNG"
    assert set(data) == {"resnet50 partial", "vgg16_bn partial"}
    zero, partial = nvidia_runs("resnet50", "zero"), nvidia_runs("resnet50", "partial")
    diffs = [p - z for p, z in zip(partial, zero)]
    got = data["resnet50 partial"]
    assert got["diffs"] == pytest.approx(diffs)
    assert got["mean"] == pytest.approx(statistics.fmean(diffs))
    low, high = stats.t.interval(0.95, 4, loc=statistics.fmean(diffs), scale=stats.sem(diffs))
    assert got["ci"] == pytest.approx((low, high))
    assert len(data["vgg16_bn partial"]["diffs"]) == 4
    assert "paired_diff_to_zero.png" in [f.name for f in write_report(nvidia_root, tmp_path / "out").figures]


def test_coinciding_curves_stay_visible(tmp_path):
    for padding in ("zero", "partial", "reflect"):
        write_run(tmp_path, f"{padding}/run1", "resnet18", padding, 1, [25.0, 25.0, 25.0])
    data = plot_val_curves(summarize(collect_runs(tmp_path)[0]), tmp_path / "curves.png")
    lines = [line for line in data["resnet18"] if "(n=" in line["label"]]
    assert len(lines) == 3
    assert len({line["marker"] for line in lines}) == 3  # told apart by marker ...
    assert len({tuple(x for x, _ in line["xy"]) for line in lines}) == 3  # ... and drawn side by side


def test_recipes_are_not_pooled_and_duplicates_and_continuations_are_not_counted(tmp_path):
    """The issue's example: a 'resnet18 partial, n=5' row pooling 1-, 2-, 3- and 4-epoch runs, a continuation of
    one of them and a duplicate seed."""
    for epochs in (1, 2, 3, 4):
        acc = [40.0 + e + epochs / 10 for e in range(epochs)]
        write_run(tmp_path, f"partial_e{epochs}", "resnet18", "partial", 1, acc, config={"epochs": epochs})
        write_run(tmp_path, f"zero_e{epochs}", "resnet18", "zero", 1, [a - 1 for a in acc], config={"epochs": epochs})
    # --resume partial_e2/checkpoint.pth.tar --epochs 4 into a new directory: records epochs 3-4 only
    write_run(tmp_path, "partial_e2_more", "resnet18", "partial", 1, [44.0, 45.0], epochs=4, first_epoch=3, config={})
    write_run(tmp_path, "partial_e4_again", "resnet18", "partial", 1, [50.0, 51, 52, 53], config={"epochs": 4})
    write_run(tmp_path, "partial_e4_seed2", "resnet18", "partial", 2, [41.0, 42, 43, 44], config={"epochs": 4})
    proc = subprocess.run([*REPORT, "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(tmp_path / "results.csv")
    assert [(r, p) for _, r, p in rows] == [(f"epochs={e}", p) for e in (1, 2, 3, 4) for p in ("zero", "partial")]
    e4 = rows[("resnet18", "epochs=4", "partial")]
    assert e4["n_runs"] == "2" and e4["n_excluded"] == "2"
    assert float(e4["mean_top1"]) == pytest.approx(statistics.fmean([43.4, 44.0]))
    assert "duplicate seed 1" in e4["excluded"] and "partial_e4_again" in e4["excluded"]
    assert "partial_e2_more (starts at epoch 3: continues another run)" in e4["excluded"]
    assert rows[("resnet18", "epochs=2", "partial")]["n_runs"] == "1"
    assert e4["n_pairs"] == "1"  # seed 1 only; zero has no seed 2
    for name in ("partial_e1", "partial_e4", "partial_e2_more", "partial_e4_again"):
        assert name in proc.stderr
    assert "runs with different recipes are reported as separate groups" in proc.stderr
    md = (tmp_path / "results.md").read_text()
    assert "| resnet18 [epochs=4] | partial |" in md and "## Warnings" in md
    assert "excluded: duplicate seed 1" in md


def test_other_recipe_keys_split_groups_too(tmp_path):
    write_run(tmp_path, "a", "resnet18", "zero", 1, [50.0], config={"lr": 0.1})  # no train_crop_size: the default, 224
    write_run(tmp_path, "b", "resnet18", "zero", 2, [52.0], config={"lr": 0.2})
    write_run(
        tmp_path, "c", "resnet18", "zero", 3, [51.0], config={"lr": 0.1, "train_crop_size": 128}
    )  # missing keys: the default (224)
    write_run(tmp_path, "d", "resnet18", "zero", 4, [53.0], config={"lr": 0.1, "workers": 8})  # speed only
    notes: list[str] = []
    cells = summarize(collect_runs(tmp_path)[0], notes)
    assert sorted((c.recipe, c.n) for c in cells) == [
        ("lr=0.1, train_crop_size=128", 1),
        ("lr=0.1, train_crop_size=224", 2),
        ("lr=0.2, train_crop_size=224", 1),
    ]
    assert len(notes) == 1 and all(str(tmp_path / n) in notes[0] for n in "abcd")


def test_pytorch_official_and_published_only_for_imagenet_1k(tmp_path):
    write_run(tmp_path, "toy/z", "resnet50", "zero", 1, [60.0], config={"num_classes": 4})
    write_run(tmp_path, "toy/p", "resnet50", "partial", 1, [61.0], config={"num_classes": 4})
    write_run(tmp_path, "in1k/z", "resnet101", "zero", 1, [60.0], config={"num_classes": 1000})
    rows = rows_of(write_report(tmp_path).csv)
    toy = rows[("resnet50", "", "partial")]
    assert toy["pytorch_official_top1"] == "" and toy["published_top1"] == "" and toy["published_diff"] == ""
    assert rows[("resnet50", "", "zero")]["pytorch_official_top1"] == ""
    real = rows[("resnet101", "", "zero")]
    assert float(real["pytorch_official_top1"]) == pytorch_official("resnet101")[0]
    assert float(real["published_top1"]) == float(NVIDIA[("resnet101", "zero")]["average"])


def test_a_run_resumed_from_another_directory_is_a_continuation(tmp_path):
    """Resumed from another run's checkpoint saved mid-epoch 1: it records epoch 1 itself, but its config.yaml names
    a checkpoint outside its directory. A run resumed from its own directory is not a continuation."""
    first = write_run(tmp_path, "a", "resnet18", "zero", 1, [50.0, 51.0], config={})
    write_run(tmp_path, "b", "resnet18", "zero", 2, [52.0, 53.0], config={"resume": str(first / "checkpoint.pth.tar")})
    own = tmp_path / "c"
    write_run(tmp_path, "c", "resnet18", "zero", 3, [54.0, 55.0], config={"resume": str(own / "checkpoint.pth.tar")})
    write_run(tmp_path, "d", "resnet18", "zero", 4, [56.0, 57.0], config={"resume": "auto"})
    notes: list[str] = []
    (cell,) = summarize(collect_runs(tmp_path)[0], notes)
    assert [r.path.name for r in cell.finished] == ["a", "c", "d"]
    assert [(r.path.name, why) for r, why in cell.excluded] == [
        ("b", f"resumed from {first / 'checkpoint.pth.tar'}: continues another run")
    ]
    assert notes == [f"{tmp_path / 'b'}: not counted in resnet18/zero: {cell.excluded[0][1]}"]


LAYOUTS = {  # the report's commonest shapes: one zero-vs-partial pair, one arch in 4 paddings, 3 archs
    "one pair": (["resnet18"], ["zero", "partial"], 1),
    "one arch x 4 paddings": (["resnet18"], ["zero", "partial", "reflect", "replicate"], 3),
    "three archs": (["resnet18", "resnet50", "vgg16_bn"], ["zero", "partial"], 3),
}


def layout_root(tmp_path: Path, case: str) -> Path:
    archs, paddings, runs = LAYOUTS[case]
    for a, arch in enumerate(archs):
        for p, padding in enumerate(paddings):
            for seed in range(runs):
                top = 50.0 + 10 * a + 0.7 * p + [0.0, 0.9, -0.4][seed]
                write_run(tmp_path, f"{arch}/{padding}/run{seed}", arch, padding, seed, [top - 9, top], config={})
    return tmp_path


@pytest.mark.parametrize("case", LAYOUTS)
def test_figure_labels_and_means_sit_by_their_data(case, tmp_path):
    """top1_bar.png: each average is written just above its own bar (not at the top of the axis, far above a low
    bar); paired_diff_to_zero.png: each mean and CI bar stands next to its dots, inside the axis (with one pair,
    autoscaling put the dots at the left edge and the mean at the right one)."""
    cells = summarize(collect_runs(layout_root(tmp_path, case))[0])
    bars = plot_top1_bars(cells, tmp_path / "bar.png")
    bottom, top = bars["ylim"]
    heights = {(g, p): h for g, p, h in bars["bars"]}
    assert len(bars["labels"]) == len(heights)
    for group, padding, text, y in bars["labels"]:
        cell = next(c for c in cells if c.arch == group and c.padding == padding)
        published = [cell.published.average] if cell.published else []  # NVIDIA's marker, for resnet50/vgg16_bn
        own_top = max([cell.mean1 + (cell.std1 or 0.0), *cell.acc1, *published])
        assert text == f"{heights[(group, padding)]:.2f}"
        assert own_top < y <= own_top + 0.05 * (top - bottom) and y < top, (group, padding, y, own_top, top)
    diffs = plot_paired_diffs(cells, tmp_path / "diff.png")
    assert len(diffs) == len(heights) - len(LAYOUTS[case][0])  # every non-zero padding of every arch
    for name, got in diffs.items():
        left, right = got["xlim"]
        centre = statistics.fmean(got["dots_x"])
        assert abs(got["mean_x"] - centre) <= 0.3, (name, got)
        assert left + 0.3 <= min(got["dots_x"]) and got["mean_x"] <= right - 0.15, (name, got)


def test_results_md_says_what_was_run(tmp_path):
    root = layout_root(tmp_path, "one pair")
    for run in root.rglob("config.yaml"):
        config = yaml.safe_load(run.read_text())
        config |= {"data_train": "/d/train", "data_val": "/d/val", "num_classes": 6, "train_crop_size": 64}
        config |= {"val_resize_size": 72, "val_crop_size": 64, "label_smoothing": 0.1}
        run.write_text(yaml.safe_dump(config))
        environment = {"torch": "2.5.1", "torchvision": "0.20.1", "python": "3.11.2", "processes": 2}
        (run.parent / "environment.yaml").write_text(yaml.safe_dump({**environment, "device_name": "NVIDIA H200"}))
    text = write_report(root).markdown.read_text()
    head = text[text.index("## What was run") : text.index("| arch |")]
    assert "- **runs**: 2 finished (resnet18 x zero, partial)" in head
    assert "- **data**: train `/d/train`, val `/d/val`" in head and "- **classes**: `6`" in head
    assert "- **image sizes**: train crop `64`, eval resize `72` / crop `64`" in head
    assert "- **epochs**: `2`; **batch** (global): `256`" in head
    assert "lr `0.1`" in head and "label_smoothing `0.1`" in head  # a flag off its default is named
    assert "torch `2.5.1`, torchvision `0.20.1`" in head and "`NVIDIA H200` x `2` process(es)" in head
