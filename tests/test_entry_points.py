"""After ``pip install``, every program is a console script (setup.cfg's entry points) that works from any directory:
the package installed for real (pip builds and installs a copy of the sources, which is then deleted), each script
run from an empty directory with only the install on PYTHONPATH, never the checkout."""

from __future__ import annotations

import configparser
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "partialconv-train",
    "partialconv-padding-benchmark",
    "partialconv-padding-report",
    "partialconv-train-inpainting",
    "partialconv-eval-inpainting",
    "partialconv-inpaint",
    "partialconv-write-shards",
}

# the long-running programs, whose start-up a scheduler's stop signal may interrupt
LAUNCHED = ("train", "train_inpainting")


def declared_scripts() -> dict[str, str]:
    """setup.cfg's console scripts: name -> ``module:function``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The package installed with pip (``--target``: its files and console scripts, no venv to build) from a copy of
    the sources, the copy then removed; and the environment that runs the install from another directory."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "partialconv", src / "partialconv", ignore=shutil.ignore_patterns("__pycache__"))
    site = base / "site"
    # no index, no dependencies, the venv's setuptools: the project's own files only (about 2 s)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    env = {**os.environ, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([*cmd, "--target", str(site), str(src)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(src)
    cwd = base / "elsewhere"
    cwd.mkdir()
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    return {"site": site, "bin": site / "bin", "cwd": cwd, "env": run_env}


def test_every_program_has_a_console_script():
    """partialconv-X runs partialconv.programs.x, the code of scripts/x.py (train.py for partialconv-train)."""
    declared = declared_scripts()
    assert set(declared) == SCRIPTS
    for name, target in declared.items():
        module, function = target.split(":")
        program = name.removeprefix("partialconv-").replace("-", "_")
        if program in LAUNCHED:  # started through launch.py: its stop-signal handlers come before torch's import
            assert (module, function) == ("partialconv.programs.launch", program), target
        else:
            assert module == "partialconv.programs." + program, target
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.fixture(scope="module")
def runs(installed) -> dict[str, subprocess.CompletedProcess]:
    """Every console script's --help and one real padding benchmark (one run of its matrix, one epoch: its train run
    started as ``python -m partialconv.programs.train`` on train.py's demo data and recipe, the recipe being package
    data), the interpreters started together (each mostly imports torch); then the report over the benchmark's root."""
    commands = {name: [str(installed["bin"] / name), "--help"] for name in sorted(SCRIPTS)}
    commands["benchmark"] = [str(installed["bin"] / "partialconv-padding-benchmark"), "--archs", "simple_cnn_bn"]
    commands["benchmark"] += ["--runs", "1", "--max-runs", "1", "--root", "bench", "--device", "cpu", "--"]
    commands["benchmark"] += ["--epochs", "1", "--no-tensorboard"]
    procs = {
        key: subprocess.Popen(
            cmd, cwd=installed["cwd"], env=installed["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, cmd in commands.items()
    }
    done = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    report = [str(installed["bin"] / "partialconv-padding-report"), "--root", "bench", "--out", "report"]
    done["report"] = subprocess.run(
        report, cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=600
    )
    return done


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_works_from_another_directory(runs, name):
    proc = runs[name]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name} ") and not proc.stderr, proc.stdout[:300] + proc.stderr


def test_installed_benchmark_trains_the_demo_and_the_report_reads_it(runs, installed):
    bench, report, cwd = runs["benchmark"], runs["report"], installed["cwd"]
    run_dir = cwd / "bench" / "simple_cnn_bn" / "zero" / "run1"
    log = (run_dir / "run.log").read_text() if (run_dir / "run.log").is_file() else ""
    assert bench.returncode == 0, bench.stdout + bench.stderr + log[-3000:]
    assert "[1/1] done    simple_cnn_bn/zero/run1 in " in bench.stdout, bench.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train_crop_size"] == 48  # the demo recipe's
    assert (cwd / "data" / "demo" / "train").is_dir()  # the demo data, made where the command ran
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("wrote report/results.md, report/results.csv"), report.stdout
    assert (cwd / "report" / "results.csv").read_text() == (cwd / "bench" / "results.csv").read_text()


def test_launch_imports_no_torch_and_stops_on_the_runs_signals():
    """launch.py sets the handlers before torch loads: neither it nor the package's __init__ may import torch."""
    code = "import sys, partialconv.programs.launch, partialconv.programs.startup_signals as s; "
    code += "print('torch' in sys.modules, *sorted(map(int, s.STOP_SIGNALS)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    from partialconv.data.worker_signals import STOP_SIGNALS

    assert done.stdout.split() == ["False", *map(str, sorted(map(int, STOP_SIGNALS)))], done.stderr


@pytest.mark.parametrize("after", [0.3, 1.0])
def test_installed_long_programs_stopped_during_start_up_exit_with_the_signals_code(installed, tmp_path, after):
    """A scheduler's SIGTERM or a Ctrl-C while the console script is still importing torch: the program's exit code
    (143, 130), no traceback, nothing written."""
    procs = {}
    for name, stop in (("partialconv-train", signal.SIGTERM), ("partialconv-train-inpainting", signal.SIGINT)):
        cwd = tmp_path / name
        cwd.mkdir()
        cmd = [str(installed["bin"] / name), "--output-dir", "run"]
        procs[name] = (
            stop,
            cwd,
            subprocess.Popen(
                cmd, cwd=cwd, env=installed["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
    time.sleep(after)
    for stop, _, proc in procs.values():
        proc.send_signal(stop)
    for name, (stop, cwd, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + stop, (name, proc.returncode, out[-1000:], err[-2000:])
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (name, err[-2000:])
        assert not (cwd / "run").exists(), name
