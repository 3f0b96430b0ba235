"""Statistics, tables and figures of scripts/padding_report.py on metrics files written here."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from partialconv.analysis import (
    ReportError,
    collect_runs,
    load_run,
    pytorch_official,
    run_status,
    summarize,
    welch_pvalue,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
REPORT = [sys.executable, "-m", "scripts.padding_report"]  # run from the repository root (cwd=ROOT)


def write_run(root: Path, arch: str, padding: str, k: int, acc1: list, acc5: list | None = None, epochs=None) -> Path:
    """A metrics.jsonl with the keys train.py writes, one line per completed epoch."""
    run_dir = root / arch / padding / f"run{k}"
    run_dir.mkdir(parents=True, exist_ok=True)
    acc5 = acc5 or [min(100.0, a + 20) for a in acc1]
    lines = []
    for e, (a1, a5) in enumerate(zip(acc1, acc5), 1):
        rec = {
            "epoch": e,
            "epochs": epochs or len(acc1),
            "arch": arch,
            "padding": padding,
            "seed": k,
            "lr": 0.1,
            "train_loss": 1.0,
            "train_acc1": a1,
            "train_acc5": a5,
            "val_loss": 1.0,
            "val_acc1": a1,
            "val_acc5": a5,
            "images_per_sec": 100.0,
            "epoch_seconds": 1.0,
            "time": 1.7e9 + e,
        }
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def welch_by_hand(a: list, b: list) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * stats.t.sf(abs(t), df)


def test_welch_pvalue_matches_the_formula():
    a, b = [76.1, 76.4, 75.9, 76.3, 76.2], [76.6, 76.9, 76.5, 77.0]
    assert welch_pvalue(a, b) == pytest.approx(welch_by_hand(a, b), rel=1e-9)
    assert welch_pvalue(a, b) == pytest.approx(welch_pvalue(b, a))
    assert 0.0 < welch_pvalue(a, b) < 0.01  # clearly separated samples
    assert welch_pvalue([1.0, 2.0], [1.5, 2.5]) > 0.5


def test_welch_pvalue_undefined_cases():
    assert welch_pvalue([70.0], [71.0, 72.0]) is None
    assert welch_pvalue([70.0, 71.0], []) is None
    assert welch_pvalue([70.0, 70.0], [71.0, 71.0]) is None  # no spread in either sample


def test_summary_statistics(tmp_path):
    zero = [[10, 20, 30.0], [12, 22, 31.5], [11, 25, 29.0]]
    partial = [[15, 28, 33.0], [14, 35, 34.5], [13, 30, 32.0]]
    for k, accs in enumerate(zero, 1):
        write_run(tmp_path, "resnet18", "zero", k, accs)
    for k, accs in enumerate(partial, 1):
        write_run(tmp_path, "resnet18", "partial", k, accs)
    runs, problems = collect_runs(tmp_path)
    assert problems == []
    cells = {c.padding: c for c in summarize(runs)}
    assert list(cells) == ["zero", "partial"]
    best_zero = [max(a) for a in zero]
    best_partial = [max(a) for a in partial]
    assert cells["zero"].acc1 == best_zero
    assert cells["partial"].mean1 == pytest.approx(statistics.fmean(best_partial))
    assert cells["partial"].std1 == pytest.approx(statistics.stdev(best_partial))
    assert cells["partial"].diff_to_zero == pytest.approx(statistics.fmean(best_partial) - statistics.fmean(best_zero))
    assert cells["partial"].pvalue_vs_zero == pytest.approx(welch_by_hand(best_partial, best_zero))
    assert cells["zero"].diff_to_zero is None and cells["zero"].pvalue_vs_zero is None
    assert cells["zero"].official_top1 == pytorch_official("resnet18")[0] == 69.758


def test_best_top5_is_taken_at_the_best_top1_epoch(tmp_path):
    run_dir = write_run(tmp_path, "vgg11", "zero", 1, [30.0, 50.0, 40.0], [90.0, 70.0, 95.0])
    run, problems = load_run(run_dir)
    assert problems == []
    assert (run.best_acc1, run.best_acc5, run.best_epoch) == (50.0, 70.0, 2)


def test_resumed_epochs_are_not_double_counted(tmp_path):
    run_dir = write_run(tmp_path, "vgg11", "zero", 1, [30.0, 50.0], epochs=3)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    redo = json.loads(lines[1]) | {"val_acc1": 45.0}
    last = json.loads(lines[1]) | {"epoch": 3, "val_acc1": 47.0}
    path.write_text("\n".join(lines + [json.dumps(redo), json.dumps(last)]) + "\n")
    run, _ = load_run(run_dir)
    assert run.curve == [(1, 30.0), (2, 45.0), (3, 47.0)]
    assert run.finished and run.best_acc1 == 47.0


def test_incomplete_runs_are_listed_not_averaged(tmp_path):
    write_run(tmp_path, "resnet18", "zero", 1, [40.0, 50.0])
    write_run(tmp_path, "resnet18", "zero", 2, [44.0, 52.0])
    write_run(tmp_path, "resnet18", "zero", 3, [90.0], epochs=2)  # interrupted after epoch 1
    assert run_status(tmp_path / "resnet18" / "zero" / "run3") == "partial"
    assert run_status(tmp_path / "resnet18" / "zero" / "run1") == "finished"
    assert run_status(tmp_path / "resnet18" / "zero" / "run9") == "new"
    (cell,) = summarize(collect_runs(tmp_path)[0])
    assert cell.n == 2 and cell.mean1 == pytest.approx(51.0)
    assert [r.path.name for r in cell.incomplete] == ["run3"]
    files = write_report(tmp_path)
    md = files.markdown.read_text()
    assert "run3 (1/2 ep)" in md and "| 51.00 |" in md and "incomplete |" in md
    row = next(csv.DictReader(files.csv.open()))
    assert row["n_runs"] == "2" and row["n_incomplete"] == "1" and row["incomplete"] == "run3 (1/2 ep)"
    assert float(row["mean_top1"]) == pytest.approx(51.0)


def test_pd_arch_names_are_grouped_with_their_base(tmp_path):
    write_run(tmp_path, "resnet18", "zero", 1, [40.0])
    write_run(tmp_path / "by_hand", "pdresnet18", "partial", 1, [42.0])
    cells = summarize(collect_runs(tmp_path)[0])
    assert [(c.arch, c.padding) for c in cells] == [("resnet18", "zero"), ("resnet18", "partial")]
    assert cells[1].diff_to_zero == pytest.approx(2.0)
    assert cells[1].pvalue_vs_zero is None  # one run each


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A 2-arch report with a malformed line, a single-run cell and an unknown arch, via the CLI."""
    root = tmp_path_factory.mktemp("results")
    values = {
        ("resnet18", "zero"): [[50.0, 61.0], [52.0, 60.0]],
        ("resnet18", "partial"): [[55.0, 63.0], [53.0, 64.5]],
        ("resnet18", "reflect"): [[51.0, 59.0]],
        ("tinynet", "zero"): [[20.0, 30.0], [21.0, 33.0]],
        ("tinynet", "replicate"): [[22.0, 35.0], [23.0, 34.0]],
    }
    for (arch, padding), runs in values.items():
        for k, accs in enumerate(runs, 1):
            write_run(root, arch, padding, k, accs)
    bad = root / "resnet18" / "partial" / "run2" / "metrics.jsonl"
    bad.write_text(bad.read_text() + '{"epoch": 3, "epochs"\n' + '{"epoch": 3}\n')
    proc = subprocess.run([*REPORT, "--root", str(root)], cwd=ROOT, capture_output=True, text=True)
    return root, values, proc


def test_report_cli_writes_table_csv_and_figures(report):
    root, values, proc = report
    assert proc.returncode == 0, proc.stderr
    rows = {(r["arch"], r["padding"]): r for r in csv.DictReader((root / "results.csv").open())}
    assert list(rows) == list(values)
    for key, runs in values.items():
        best = [max(a) for a in runs]
        row = rows[key]
        assert int(row["n_runs"]) == len(best)
        assert float(row["mean_top1"]) == pytest.approx(statistics.fmean(best), abs=1e-4)
        assert [float(row[f"run{i}_top1"]) for i in range(1, len(best) + 1)] == best
        if len(best) > 1:
            assert float(row["stdev_top1"]) == pytest.approx(statistics.stdev(best), rel=1e-5)
        else:
            assert row["stdev_top1"] == "" and row["p_welch_vs_zero"] == ""
    zero = [max(a) for a in values[("resnet18", "zero")]]
    partial = [max(a) for a in values[("resnet18", "partial")]]
    p_value = float(rows[("resnet18", "partial")]["p_welch_vs_zero"])
    assert p_value == pytest.approx(welch_by_hand(partial, zero), rel=1e-5)
    assert float(rows[("resnet18", "partial")]["diff_to_zero"]) == pytest.approx(63.75 - 60.5)
    assert rows[("resnet18", "zero")]["pytorch_official_top1"] == "69.758"
    assert rows[("tinynet", "zero")]["pytorch_official_top1"] == ""
    md = (root / "results.md").read_text()
    assert "| resnet18 | reflect | 59.00 |" in md and "| n/a |" in md  # one run: no stdev, no p-value
    assert "![top1_bar](top1_bar.png)" in md
    for name in ("top1_bar.png", "val_top1_curves.png"):
        data = (root / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        img = matplotlib.image.imread(root / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_malformed_lines_are_named_and_skipped(report):
    root, _, proc = report
    bad = root / "resnet18" / "partial" / "run2" / "metrics.jsonl"
    assert f"{bad}:3: not valid JSON" in proc.stderr
    assert f"{bad}:4: missing key 'epochs'" in proc.stderr
    md = (root / "results.md").read_text()
    assert f"{bad}:3" in md and "## Problems" in md


def test_unusable_roots_fail_with_one_line(tmp_path, capsys):
    # main() in this process: its exit code and stderr (the report fixture and tests/test_programs.py run the
    # program as a process)
    from partialconv.programs.padding_report import main

    def run(root: Path) -> tuple[int, str]:
        code = main(["--root", str(root)])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "nope")
    assert code == 2 and err.strip() == f"padding_report: error: results root {tmp_path / 'nope'} does not exist"
    code, err = run(tmp_path)
    assert code == 2 and "contains no metrics.jsonl" in err
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "r" / "metrics.jsonl").parent.mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("garbage\n")
    with pytest.raises(ReportError, match="none of its 1 metrics.jsonl files has a usable line"):
        write_report(tmp_path)
    assert not (tmp_path / "results.md").exists()
