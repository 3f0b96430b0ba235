"""Issue 20's faults delivered the way they happen: a malicious checkpoint, data changed under a mid-epoch stop,
symlink loops in the data, a damaged metrics.jsonl, unusable output directories, Ctrl-C during start-up and TERMs
in a row. Each answer is one line (or one warning) and the documented exit code; never a traceback."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from partialconv.checkpoint_io import CheckpointError, read_checkpoint
from partialconv.data.demo import make_demo_dataset
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-a", "simple_cnn", "-j", "0", "-b", "4", "--train-crop-size", "16", "--val-resize-size", "20"]
BASE += ["--val-crop-size", "16", "--no-tensorboard", "--device", "cpu", "--seed", "3", "--lr", "0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    return [*BASE, *dirs, "--output-dir", str(out), *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------ malicious checkpoints


class _RunsShell:
    """Unpickling this runs ``os.system`` (``posix.system`` on Linux): it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize(
    "payload, writer, refused",
    [
        (_RunsShell, "torch.save", f"{os.system.__module__}.system"),
        (_RunsEval, "torch.save", "builtins.eval"),
        (_RunsShell, "pickle.dump", f"{os.system.__module__}.system"),  # torch stops at its framing, not the global
    ],
    ids=["os.system", "builtins.eval", "plain-pickle"],
)
def test_malicious_checkpoint_is_refused_by_its_global(data, tmp_path, capsys, payload, writer, refused):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth.tar"
    obj = {"state_dict": {}, "optimizer": {}, "epoch": 1, "payload": payload(marker)}
    if writer == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(evil)
    assert refused in str(e.value) and "\n" not in str(e.value)
    assert train.cli(args(data, tmp_path / "run", "--epochs", "1", "--resume", str(evil))) == 2
    line = error_line(capsys)
    assert f"it needs the global {refused}, which weights_only loading does not allow" in line
    assert "False" not in line and "trust" not in line  # never torch's advice to load it unsafely
    assert not marker.exists()


# ------------------------------------------------------------------------------------ a damaged metrics.jsonl


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory) -> Path:
    """A run of one epoch, to be continued to two."""
    out = tmp_path_factory.mktemp("runs") / "one_epoch"
    assert train.cli(args(data, out, "--epochs", "1")) == 0
    return out


@pytest.mark.parametrize("damage", ["binary", "torn-and-latin1"])
def test_damaged_metrics_keep_valid_lines_and_resume(data, one_epoch, tmp_path, capsys, damage):
    import shutil

    from partialconv.programs import padding_report

    run = tmp_path / "root" / "run"
    shutil.copytree(one_epoch, run)
    metrics = run / "metrics.jsonl"
    good = metrics.read_bytes()
    garbage = bytes(range(256)) * 40 + b"\n\xff\xfe\x00 binary\n"
    if damage == "binary":  # the whole file replaced by garbage: the checkpoint's copy of epoch 1 comes back
        metrics.write_bytes(garbage)
    else:  # a good line, then a line in Latin-1 and a torn one
        metrics.write_bytes(good + '{"epoch": 7, "note": "caf\u00e9"}\n'.encode("latin-1") + good[:25])
    capsys.readouterr()
    assert train.cli(args(data, run, "--epochs", "2", "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "damaged line(s) dropped" in line]
    assert len(warnings) == 1 and str(metrics) in warnings[0], err
    records = [__import__("json").loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0] == __import__("json").loads(good)
    assert (run / "metrics.jsonl.damaged").is_file()
    # the report reads the run, with the damage named (not thousands of lines, no traceback)
    metrics.write_bytes(metrics.read_bytes() + garbage * 3)
    assert padding_report.main(["--root", str(tmp_path / "root")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 8, err
    assert f"{metrics}:3: not valid JSON" in err and "not UTF-8 text" in err and "more unusable line(s)" in err


# ------------------------------------------------------------------------------------ symlinks in the data


@pytest.fixture()
def linked_data(data, tmp_path) -> Path:
    """The demo data (40 train / 20 val images) with a symlink loop in train/ and in val/, a duplicate link to an
    image of the same class and a link to itself."""
    import shutil

    root = tmp_path / "linked"
    shutil.copytree(data, root)
    train_class, val_class = sorted((root / "train").iterdir())[0], sorted((root / "val").iterdir())[1]
    (train_class / "loop").symlink_to(root / "train")  # to the split: every class again, under this class's label
    (val_class / "sub").mkdir()
    (val_class / "sub" / "back").symlink_to("..")  # to the class folder it is inside of
    first = sorted(train_class.glob("*.png"))[0]
    (train_class / "zz_again.png").symlink_to(first.name)  # the same image under a second name
    (val_class / "self.png").symlink_to("self.png")  # a link to itself
    return root


@pytest.mark.parametrize("backend", ["pil", "pil_fast", "gpu"])
def test_symlink_loops_and_duplicate_links_list_each_file_once(linked_data, tmp_path, capsys, backend):
    extra = ["--epochs", "1", "--data-backend", backend, "--val-resize-size", "16"]
    assert train.cli(args(linked_data, tmp_path / "run", *extra)) == 0
    out, err = capsys.readouterr()
    assert "40 train / 20 val images" in out
    loops = [line for line in err.splitlines() if "symlink loops not followed" in line]
    assert len(loops) == 1 and "loop" in loops[0] and "back" in loops[0] and "self.png" in loops[0], err
    duplicates = [line for line in err.splitlines() if "reached again through symbolic links" in line]
    assert len(duplicates) == 1 and "zz_again.png" in duplicates[0], err
    assert "Traceback" not in err


def test_symlink_loop_with_on_bad_image_error_is_one_line(linked_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.cli(args(linked_data, out, "--epochs", "1", "--on-bad-image", "error")) != 0
    line = error_line(capsys)
    assert "symlink loop at" in line and str(linked_data / "train") in line and "--on-bad-image skip" in line
    assert not out.exists()


# ------------------------------------------------------------------------------------ data changed under a resume


def _change_data(root: Path) -> None:
    """Three images added to the first class (copies under new names), one removed from the last."""
    import shutil

    classes = sorted((root / "train").iterdir())
    first = sorted(classes[0].glob("*.png"))[0]
    for k in range(3):
        shutil.copy(first, classes[0] / f"added_{k}.png")
    sorted(classes[-1].glob("*.png"))[0].unlink()


def test_changed_data_refuses_a_mid_epoch_resume_and_restart_epoch_starts_it_over(data, tmp_path, capsys):
    import shutil
    import signal
    import subprocess
    import sys

    from tests.signalling import signal_at_line, to_group

    root = tmp_path / "data"
    shutil.copytree(data, root)
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *args(root, run, "--epochs", "2", "-p", "1")]
    code, out, _ = signal_at_line(cmd, "Epoch: [1][3/10]", to_group(signal.SIGTERM))
    assert code == 143, out[-2000:]
    ckpt = read_checkpoint(run / "checkpoint.pth.tar")
    step = ckpt["step"]  # after the step whose line was seen (3), or the next one if the run got there first
    assert ckpt["epoch"] == 0 and step in (3, 4) and ckpt["data"]["train"]["samples"] == 40
    _change_data(root)
    before = (run / "checkpoint.pth.tar").read_bytes()
    resume = [sys.executable, "train.py", *args(root, run, "--epochs", "2", "--resume", "auto")]
    refused = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert refused.returncode == 2, refused.stderr[-2000:]
    (line,) = refused.stderr.strip().splitlines()
    assert (
        line.startswith("train.py: error: --resume ") and "the data changed" in line and f"epoch 1 step {step}" in line
    )
    assert "train: 40 -> 42 images" in line and "images per class: " in line and "+3" in line and "-1" in line
    assert "add --restart-epoch to start epoch 1 over" in line
    assert (run / "checkpoint.pth.tar").read_bytes() == before  # nothing written
    capsys.readouterr()
    assert train.cli(args(root, run, "--epochs", "2", "--resume", "auto", "--restart-epoch")) == 0
    out, err = capsys.readouterr()
    assert "epoch 1 starts over on the new data" in err and "42 train / 20 val images" in out
    assert "resumed from" in out and "epoch 1, step 0" in out
    ckpt = read_checkpoint(run / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["data"]["train"]["samples"] == 42
    metrics = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [__import__("json").loads(line)["epoch"] for line in metrics] == [1, 2]


def test_changed_data_at_an_epoch_boundary_warns_once(data, tmp_path, capsys):
    import shutil

    root, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, root)
    assert train.cli(args(root, run, "--epochs", "1")) == 0
    _change_data(root)
    capsys.readouterr()
    assert train.cli(args(root, run, "--epochs", "2", "--resume", "auto")) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if "the data changed" in line]
    assert len(warned) == 1 and "epoch 2 starts on the new data" in warned[0] and "40 -> 42 images" in warned[0]
    assert "42 train / 20 val images" in out


def test_mid_epoch_checkpoint_without_fingerprint_resumes_with_a_warning(data, tmp_path, capsys):
    """A checkpoint of an older version (no ``data``): resumed as before, with a warning that nothing was checked."""
    import signal
    import sys

    from partialconv.checkpoint_io import save_checkpoint
    from tests.signalling import signal_at_line, to_group

    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *args(data, run, "--epochs", "1", "-p", "1")]
    code, out, _ = signal_at_line(cmd, "Epoch: [1][3/10]", to_group(signal.SIGUSR1))
    assert code == 138, out[-2000:]
    step = read_checkpoint(run / "checkpoint.pth.tar")["step"]  # 3, or 4 if the run got there before the signal
    for name in ("checkpoint.pth.tar", "checkpoint.prev.pth.tar"):
        if (run / name).is_file():
            ckpt = read_checkpoint(run / name)
            del ckpt["data"]
            save_checkpoint(ckpt, run / name)
    capsys.readouterr()
    assert train.cli(args(data, run, "--epochs", "1", "--resume", "auto")) == 0
    out, err = capsys.readouterr()
    assert "records no data fingerprint" in err and f"epoch 1, step {step}" in out


# ------------------------------------------------------------------------------------ unusable output directories


def test_output_dir_that_is_a_file_or_under_a_file_is_one_line_exit_2(data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    for out in (afile, afile / "run"):
        assert train.cli(args(data, out, "--epochs", "1")) == 2
        line = error_line(capsys)
        assert f"--output-dir {out}" in line, line
    assert afile.read_text() == "not a directory\n"


def test_output_dir_on_a_read_only_mount_is_one_line_exit_2(data, tmp_path):
    """A real read-only tmpfs (tests run as root, for whom chmod 0555 does not stop a write): the run directory
    inside it (to be created) and the mount point itself (existing, not writable)."""
    import sys

    from tests.test_run_safety import error_lines, run_in_mount_namespace

    ro = tmp_path / "ro"
    ro.mkdir()
    py = sys.executable
    runs = {"inside": ro / "run", "itself": ro}
    script = f"mount -t tmpfs -o ro,size=64k tmpfs {ro} || exit 99\n" + "\n".join(
        f"{py} train.py {' '.join(args(data, out, '--epochs', '1'))} >/dev/null 2>{tmp_path}/{name}.err; "
        f"echo $? > {tmp_path}/{name}.rc"
        for name, out in runs.items()
    )
    run_in_mount_namespace(tmp_path / "ro", script)
    for name, out in runs.items():
        err = (tmp_path / f"{name}.err").read_text()
        lines = error_lines(err)
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2" and len(lines) == 1, err
        assert f"--output-dir {out}" in lines[0] and "read-only file system" in lines[0].lower(), lines
        assert "Traceback" not in err


# ------------------------------------------------------------------------------------ Ctrl-C and TERMs


# train.py, and the module form the padding benchmark starts its runs in
STARTS = [("train.py", t) for t in (0.2, 0.5, 1.0, 2.0, 3.5)] + [("module", t) for t in (0.2, 1.0, 2.0)]


@pytest.mark.parametrize("form, after", STARTS)
def test_ctrl_c_at_any_moment_of_start_up_exits_130_without_traceback(data, tmp_path, form, after):
    import signal
    import subprocess
    import sys
    import time

    start = ["train.py"] if form == "train.py" else ["-m", "partialconv.programs.train"]
    cmd = [
        sys.executable,
        *start,
        *args(data, tmp_path / "run", "--epochs", "50"),
    ]  # still running at 3.5 s on a quiet machine
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-1000:], err[-2000:])
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err[-2000:]


@pytest.mark.parametrize("target", ["group", "process"])
def test_terms_in_a_row_exit_143_with_one_checkpoint(data, tmp_path, target):
    """Six SIGTERMs within a second (a scheduler and a user insisting): while the step finishes, while the checkpoint
    is written and while the program exits. Exit 143, one mid-epoch checkpoint, no traceback."""
    import signal
    import sys
    import threading
    import time

    from tests.signalling import signal_at_line

    def terms(pid: int) -> None:
        def kill() -> None:
            try:
                os.killpg(pid, signal.SIGTERM) if target == "group" else os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        kill()

        def more() -> None:
            for delay in (0.02, 0.05, 0.1, 0.2, 0.4):
                time.sleep(delay)
                kill()

        threading.Thread(target=more, daemon=True).start()

    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *args(data, run, "--epochs", "2", "-p", "1", "-j", "1")]
    code, out, _ = signal_at_line(cmd, "Epoch: [1][3/10]", terms)
    assert code == 143, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ckpt = read_checkpoint(run / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 3 <= ckpt["step"] < 10
    assert sorted(p.name for p in run.glob("*.pth.tar")) == ["checkpoint.pth.tar"]


def test_train_inpainting_output_dir_errors_and_ctrl_c_at_start_up(tmp_path, capsys):
    """train_inpainting.py shares the behaviour: a file in the way is one line (exit 2), Ctrl-C while it imports
    torch exits 130 without a traceback."""
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    from PIL import Image

    from partialconv.programs import train_inpainting

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, dtype=np.uint8)).save(photos / f"p{i}.png")
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    flags = ["--data", str(photos), "--vgg-weights", str(tmp_path / "unused.pth"), "--image-size", "32"]
    flags += ["--layer-size", "3", "-b", "2", "-j", "0", "--val-images", "1", "--device", "cpu", "--iters", "1"]
    flags += ["--loss-weights", "perceptual=0,style_out=0,style_comp=0"]
    for out in (afile, afile / "run"):
        assert train_inpainting.cli([*flags, "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"train_inpainting.py: error: --output-dir {out}: "), err
    cmd = [sys.executable, "-m", "scripts.train_inpainting", *flags, "--output-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"Traceback" not in err, err[-2000:]
