"""The programs under scripts/ and benchmarks/ are modules run from the repository root (``python -m scripts.X``),
with no sys.path manipulation anywhere: from a checkout, without installing and without PYTHONPATH. Run by path
(``python scripts/X.py``, ``torchrun scripts/X.py``, from any directory) each one runs itself again as that module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every program: each non-private module of the two packages (helpers such as benchmarks/_common.py start with _).
PROGRAMS = sorted(
    f"{package}.{path.stem}"
    for package in ("scripts", "benchmarks")
    for path in (ROOT / package).glob("*.py")
    if not path.name.startswith("_")
)


def test_every_program_is_found():
    assert {"scripts.padding_benchmark", "scripts.padding_report", "benchmarks.train_throughput"} <= set(PROGRAMS)
    assert {"benchmarks.layer_overhead", "scripts.train_inpainting", "benchmarks.inpainting_speed"} <= set(PROGRAMS)
    assert not any(p.endswith(("_common", "_jpeg_folder", "__init__")) for p in PROGRAMS)


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every program's --help, the interpreters started together (each one mostly imports torch)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the repository root comes from `-m` alone
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for module in PROGRAMS
    }
    done = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[module] = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    return done


@pytest.mark.parametrize("module", PROGRAMS)
def test_help_runs_as_a_module_from_the_repository_root(helps, module):
    proc = helps[module]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ") and not proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", PROGRAMS)
def test_usage_shows_the_module_command(helps, module):
    assert helps[module].stdout.startswith(f"usage: python -m {module} "), helps[module].stdout[:200]


def test_no_program_or_library_module_changes_sys_path():
    files = [ROOT / "train.py", *sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    files += sorted((ROOT / "partialconv").rglob("*.py"))
    assert len(files) > 20
    hacks = [f"{f.relative_to(ROOT)}" for f in files if "sys.path." in f.read_text()]
    assert hacks == []


@pytest.mark.parametrize("module", PROGRAMS)
def test_each_program_reruns_itself_as_its_module_when_run_by_path(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    body = [node for node in ast.parse(path.read_text()).body if not isinstance(node, ast.Expr)]  # no docstring
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__"
    guard = ast.unparse(body[1])  # the first statement after it: nothing is imported before
    assert guard.startswith("if __name__ == '__main__' and (not __package__):"), guard
    assert f"'-m', '{module}', *sys.argv[1:]]" in guard and "os.execv(sys.executable" in guard, guard
    # the same guard, word for word, as the one run by path from elsewhere below (padding_report's): a line dropped
    # from one program's copy (its PYTHONPATH, say) would otherwise pass until a user runs that program by path
    reference = ROOT / "scripts" / "padding_report.py"
    tested = [node for node in ast.parse(reference.read_text()).body if not isinstance(node, ast.Expr)][1]
    assert guard.replace(module, "PROGRAM") == ast.unparse(tested).replace("scripts.padding_report", "PROGRAM")


def test_a_program_run_by_path_from_elsewhere_works_without_pythonpath(tmp_path):
    """From another directory, without the package installed or PYTHONPATH, its arguments passed on.
    scripts/train_inpainting.py is run by path (-u, torchrun), signalled and resumed in test_inpainting_engine.py."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-u", str(ROOT / "scripts" / "padding_report.py"), "--root", str(tmp_path / "none")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"padding_report: error: results root {tmp_path / 'none'} does not exist"
    ]


def test_checkpoint_cost_writes_and_times_a_real_run_checkpoint(tmp_path, capsys):
    """The benchmark's own code path (run_state + the commit protocol), not only its --help."""
    from benchmarks import checkpoint_cost

    assert checkpoint_cost.main(["-a", "simple_cnn", "--reps", "2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| simple_cnn | " in out and " MB | " in out, out
    assert list(tmp_path.iterdir()) == []  # its temporary run directory is gone


def test_no_program_takes_a_prefix_for_a_flag():
    """``--hel`` is not ``--help`` in any program (argparse's allow_abbrev off): a prefix is an error (exit 2), never
    silently another flag. All programs in one interpreter (runpy, as ``python -m`` runs them): torch loads once."""
    script = (
        "import contextlib, io, json, runpy, sys\n"
        "seen = {}\n"
        "for module in sys.argv[1:]:\n"
        "    sys.argv, out, err = [module, '--hel'], io.StringIO(), io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "            runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "        code = 0\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "    seen[module] = [code, out.getvalue()[:80], err.getvalue().strip().splitlines()[-1:]]\n"
        "print(json.dumps(seen))\n"
    )
    command = [sys.executable, "-c", script, *PROGRAMS]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    wrong = {module: result for module, result in seen.items() if result[0] != 2 or result[1]}
    assert set(seen) == set(PROGRAMS) and wrong == {}
