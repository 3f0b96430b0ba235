"""train.py end to end on a tiny generated ImageFolder set (CPU): outputs, exact resume, preemption by a real
signal, evaluation, torchrun/DDP equivalence, bad images, NaN loss and the up-front error cases."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from signalling import child_with_env, descendants, kill_tree, no_process_left, signal_at_line, to_group

from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import parse_config
from partialconv.data import ClassificationFolder
from partialconv.data.demo import make_demo_dataset
from partialconv.data.sampler import SeededSampler
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"images_per_sec", "epoch_seconds", "time"}
# 10 classes x 8 train images, batch 4: 20 steps per epoch (a signal sent at step 1 surely lands inside epoch 1).
# No BatchNorm: a DDP run is the same computation as one process.
BASE = [
    "-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "4", "--lr", "0.05", "--seed", "3",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--deterministic",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=8, val_per_class=4, size=24)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [*BASE, "--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(out)]


def run(argv: list[str]) -> int:
    return train.cli(argv)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, name: str = "checkpoint.pth.tar") -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / name)["state_dict"]


def assert_same_run(a: Path, b: Path, ignore: frozenset = frozenset()) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = [[{k: v for k, v in m.items() if k not in TIMING_KEYS | ignore} for m in metrics(run)] for run in (a, b)]
    assert strip[0] == strip[1]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """Two epochs without interruption: the reference the other runs must reproduce."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert run([*args(data, out), "--epochs", "2", "-p", "2"]) == 0
    return out


def test_run_directory_contents(straight, data):
    assert {"config.yaml", "log.txt", "metrics.jsonl", "checkpoint.pth.tar", "model_best.pth.tar"} <= {
        p.name for p in straight.iterdir()
    }
    environment = yaml.safe_load((straight / "environment.yaml").read_text())
    assert environment["torch"] == torch.__version__ and environment["device"] == "cpu"
    assert any((straight / "tb").glob("events.out.tfevents.*"))
    lines = metrics(straight)
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["epochs"] == 2
    required = {"epoch", "epochs", "arch", "padding", "seed", "lr", "train_loss", "train_acc1", "train_acc5"}
    required |= {"val_loss", "val_acc1", "val_acc5", "images_per_sec", "epoch_seconds", "time"}
    assert required <= lines[0].keys()
    assert lines[0]["arch"] == "simple_cnn" and lines[0]["padding"] == "zero" and lines[0]["seed"] == 3
    for m in lines:
        assert 0 <= m["val_acc1"] <= m["val_acc5"] <= 100 and m["images_per_sec"] > 0
        # 40 val images: top-1 in percent is a multiple of 2.5 exactly when every image is counted once
        assert (m["val_acc1"] / 2.5).is_integer()
    ckpt = read_checkpoint(straight / "checkpoint.pth.tar")  # weights_only=True
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0 and ckpt["config"]["arch"] == "simple_cnn"
    assert {"optimizer", "scheduler", "scaler", "rng", "best_acc1"} <= ckpt.keys()
    best = read_checkpoint(straight / "model_best.pth.tar")["best_acc1"]
    assert best == max(m["val_acc1"] for m in lines)
    cfg = yaml.safe_load((straight / "config.yaml").read_text())
    assert cfg["arch"] == "simple_cnn" and cfg["batch_size"] == 4 and cfg["num_classes"] == 10
    again = vars(parse_config(["--config", str(straight / "config.yaml")]))  # accepted back by --config
    assert {k: again[k] for k in cfg} == cfg
    assert "Epoch 2/2" in (straight / "log.txt").read_text()


def test_resume_after_one_epoch_is_exact(straight, data, tmp_path):
    out = tmp_path / "resumed"
    assert run([*args(data, out), "--epochs", "1"]) == 0
    assert run([*args(data, out), "--epochs", "2", "--resume", "auto", "-p", "2"]) == 0
    assert_same_run(straight, out, ignore=frozenset({"epochs"}))  # the first run planned 1 epoch


def test_auto_resume_falls_back_to_previous_checkpoint(straight, data, tmp_path, capsys):
    out = tmp_path / "corrupt"
    shutil.copytree(straight, out)
    (out / "checkpoint.pth.tar").write_bytes(b"not a checkpoint")  # the epoch-2 checkpoint is lost
    metrics_before = (out / "metrics.jsonl").read_text()
    assert run([*args(data, out), "--epochs", "2", "--resume", "auto", "-p", "2"]) == 0
    assert f"checkpoint {out / 'checkpoint.pth.tar'}: cannot be read" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() != metrics_before  # epoch 2 re-run: its line replaced, not added
    assert_same_run(straight, out)


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(straight, data, tmp_path):
    out = tmp_path / "preempted"
    cmd = [sys.executable, "-u", str(ROOT / "train.py"), *args(data, out), "--epochs", "2", "-p", "1"]
    cmd += ["--no-tensorboard", "--resume", "auto"]  # as padding_benchmark runs it: a fresh start, resumable as typed
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch: [1][1/20]"):
            # Freeze the process so the signal surely lands in epoch 1, deliver it, let it run on.
            os.kill(proc.pid, signal.SIGSTOP)
            os.kill(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 143, output
    assert "preempted by SIGTERM" in output and "; rerun the same command (it has --resume auto)" in output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] < 20  # stopped inside epoch 1, after the current step
    assert not (out / "metrics.jsonl").exists() or not metrics(out)
    assert run([*args(data, out), "--epochs", "2", "--resume", "auto", "-p", "2"]) == 0
    assert_same_run(straight, out)


def test_evaluate_prints_top1_top5_of_checkpoint(straight, data, capsys):
    assert run([*args(data, straight / "unused"), "-e", "--resume", str(straight / "model_best.pth.tar")]) == 0
    best = max(m["val_acc1"] for m in metrics(straight))
    out = capsys.readouterr().out
    assert f"top-1 {best:.3f}" in out and "top-5" in out and "on 40 images" in out
    assert not (straight / "unused").exists()


def test_evaluate_uses_the_runs_eval_sizes_or_refuses_others(straight, data, tmp_path, capsys):
    """-e of a run's checkpoint evaluates at that run's --val-resize-size/--val-crop-size (20/16 here) when the
    command does not set them (not at the flags' 256/224 defaults), and says so; other sizes are refused with
    --resume and taken on purpose with --pretrained."""
    sizeless = [a for i, a in enumerate(BASE) if not {a, BASE[i - 1]} & {"--val-resize-size", "--val-crop-size"}]
    dirs = ["--data_train", str(data / "train"), "--data_val", str(data / "val")]
    best = straight / "model_best.pth.tar"
    capsys.readouterr()
    assert run([*sizeless, *dirs, "-e", "--resume", str(best)]) == 0
    out = capsys.readouterr().out
    top1 = max(m["val_acc1"] for m in metrics(straight))
    assert f"at resize 20, crop 16 (the checkpoint's run): top-1 {top1:.3f}" in out, out
    assert run([*sizeless, *dirs, "-e", "--resume", str(best), "--val-resize-size", "24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its run evaluates at --val-resize-size 20 --val-crop-size 16" in err
    assert "this command sets --val-resize-size 24" in err and f"--pretrained {best}" in err
    assert run([*sizeless, *dirs, "-e", "--pretrained", str(best), "--val-resize-size", "24"]) == 0
    out = capsys.readouterr().out
    assert "at resize 24, crop 16 (the flags; the checkpoint's run used --val-resize-size 20 --val-crop-size 16)" in out
    # the same sizes from a YAML recipe are the command's too
    recipe = tmp_path / "r.yaml"
    recipe.write_text("val_crop_size: 12\n")
    assert run([*sizeless, *dirs, "--config", str(recipe), "-e", "--resume", str(best)]) == 2
    assert "this command sets --val-crop-size 12" in capsys.readouterr().err


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(straight, data, tmp_path, capsys):
    out = tmp_path / "nan"
    shutil.copytree(straight, out)
    before = (out / "checkpoint.pth.tar").read_bytes()
    assert run([*args(data, out), "--epochs", "2", "--lr", "1e30", "-p", "100", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "loss is NaN/Inf at epoch 1 step" in err
    (aside,) = out.glob("replaced-*")  # --overwrite moved the old run aside; the failed run wrote no checkpoint
    assert (aside / "checkpoint.pth.tar").read_bytes() == before and not (out / "checkpoint.pth.tar").exists()


def test_torchrun_two_processes_match_one_process(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run([*args(data, one), "--epochs", "1", "--no-tensorboard"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*cmd, *args(data, two), "--epochs", "1", "--no-tensorboard"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "on 2 x cpu" in res.stdout
    w1, w2 = weights(one), weights(two)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    m1, m2 = metrics(one)[0], metrics(two)[0]
    assert m1["val_acc1"] == m2["val_acc1"] and m1["val_acc5"] == m2["val_acc5"]
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-5)


@pytest.fixture()
def bad_data(data, tmp_path) -> tuple[Path, list[str]]:
    """The tiny set plus odd-mode images (grayscale, CMYK, palette, RGBA) and two undecodable files."""
    root = tmp_path / "bad"
    shutil.copytree(data, root)
    img = Image.open(next((root / "train" / "dots").glob("*.png")))
    for mode in ("L", "CMYK", "P", "RGBA"):
        ext = "jpg" if mode == "CMYK" else "png"
        img.convert(mode).save(root / "train" / "dots" / f"mode_{mode}.{ext}")
    truncated = root / "train" / "grid" / "truncated.png"
    truncated.write_bytes((root / "train" / "grid" / "0000.png").read_bytes()[:200])
    (root / "val" / "rings" / "garbage.jpg").write_bytes(b"\x00" * 64)
    return root, [str(truncated), str(root / "val" / "rings" / "garbage.jpg")]


def test_bad_images_are_skipped_with_warning_and_count(bad_data, tmp_path, capsys):
    root, bad = bad_data
    out = tmp_path / "run"
    for mode in ("L", "CMYK", "P", "RGBA"):
        ext = "jpg" if mode == "CMYK" else "png"
        assert (
            ClassificationFolder(root / "train").loader(str(root / "train" / "dots" / f"mode_{mode}.{ext}")).mode
            == "RGB"
        )
    # 85 train images at batch 17: every one is drawn, so both bad files are met once
    assert run([*args(root, out), "--epochs", "1", "--no-tensorboard", "-b", "17"]) == 0
    captured = capsys.readouterr()
    for path in bad:
        assert f"skipping bad image {path}" in captured.err
    (line,) = metrics(out)
    assert line["bad_images"] == 2
    assert "epoch 1: 2 bad image(s) skipped" in captured.err


def _torchrun(nproc: int, argv: list[str], timeout: float = 180) -> tuple[int, str]:
    """train.py under a real torchrun in its own session: exit code and the whole output. A run that hangs fails the
    test after ``timeout`` seconds with every rank's Python stacks (faulthandler, on SIGABRT) in its message, and
    leaves no process behind."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py"]
    proc = subprocess.Popen(
        [*cmd, *argv],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # the ranks run in sessions of their own: torchrun must end them
        ranks = descendants(proc.pid)  # taken now: once torchrun is gone they are no longer below it
        for pid in ranks:  # where each one is stuck, then torchrun ends the rest
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        try:
            output, _ = proc.communicate(timeout=60)
        finally:
            for pid in (proc.pid, *ranks):
                kill_tree(pid)
        pytest.fail(f"torchrun hung for {timeout} s:\n{output[-12000:]}")
    assert no_process_left(proc.pid), "ranks or workers outlived torchrun"
    return proc.returncode, output


def _corrupt_global_batch(data: Path, tmp: Path, step: int, how_many: int) -> Path:
    """A copy of the set in which ``how_many`` of the two images of global batch ``step`` (at -b 2, --seed 3, epoch 1)
    are undecodable; the other files and the sample order stay as they were."""
    root = tmp / "bad"
    shutil.copytree(data, root)
    samples = ClassificationFolder(root / "train").samples
    order = SeededSampler(len(samples), shuffle=True, seed=3, local_batch=2)._indices()
    for i in order[2 * step : 2 * step + how_many]:
        Path(samples[i][0]).write_bytes(b"\x00" * 64)
    return root


@pytest.mark.parametrize("bad_in_step", [1, 2], ids=["one-rank-empty", "all-ranks-empty"])
def test_torchrun_step_with_an_empty_local_batch_matches_one_process(data, tmp_path, bad_in_step):
    """-b 2 on two ranks: one image per rank per step. A bad image leaves one rank (or both) without an image in
    one step; the ranks must still take every step together (no collective mismatch), weight the good image as one
    process does, skip the update together when no rank has one, and count each bad image once."""
    root = _corrupt_global_batch(data, tmp_path, step=3, how_many=bad_in_step)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--epochs", "1", "--no-tensorboard", "-b", "2"]
    assert run([*args(root, one), *common]) == 0
    code, output = _torchrun(2, [*args(root, two), *common, "-j", "1"])
    assert code == 0, output[-3000:]
    w1, w2 = weights(one), weights(two)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    m1, m2 = metrics(one)[0], metrics(two)[0]
    assert m1["bad_images"] == m2["bad_images"] == bad_in_step
    assert m1["lr"] == m2["lr"] and m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-5)
    assert read_checkpoint(two / "checkpoint.pth.tar")["scheduler"]["last_epoch"] == 40  # every step counted


@pytest.mark.parametrize("workers", [0, 2])
def test_torchrun_one_rank_error_ends_the_run_in_one_line_per_rank(data, tmp_path, workers):
    """--on-bad-image error: only the rank that draws the file fails. It must exit (its DataLoader workers, which
    ignore SIGTERM, must not keep it alive at exit), torchrun must stop the other rank, and what the user reads is
    that rank's one error line, plus one line from the rank that stopped because of it; no tracebacks."""
    root = _corrupt_global_batch(data, tmp_path, step=3, how_many=1)
    argv = [*args(root, tmp_path / "run"), "--epochs", "1", "--no-tensorboard", "-b", "2", "-j", str(workers)]
    code, output = _torchrun(2, [*argv, "--on-bad-image", "error"], timeout=120)
    assert code != 0
    errors = [line for line in output.splitlines() if "train.py: error:" in line]
    assert len(errors) == 2, output[-3000:]
    assert sum("bad image" in line and "(use --on-bad-image skip)" in line for line in errors) == 1
    assert sum("stopped: another rank failed" in line for line in errors) == 1
    assert not [line for line in output.splitlines() if line.startswith("[rank") and "Traceback" in line], output


def test_bad_image_policy_error_names_the_file(bad_data, tmp_path, capsys):
    root, bad = bad_data
    code = run([*args(root, tmp_path / "run"), "--epochs", "1", "--no-tensorboard", "--on-bad-image", "error"])
    assert code == 2  # the data: the user must fix it (exit-code rule)
    err = capsys.readouterr().err
    assert "train.py: error: bad image" in err and any(p in err for p in bad)


def _empty_class(data: Path, tmp: Path) -> list[str]:
    root = tmp / "d"
    shutil.copytree(data, root)
    for f in (root / "val" / "noise").iterdir():
        f.unlink()
    return ["--data_train", str(root / "train"), "--data_val", str(root / "val")]


def _class_mismatch(data: Path, tmp: Path) -> list[str]:
    root = tmp / "d"
    shutil.copytree(data, root)
    (root / "val" / "noise").rename(root / "val" / "static")
    return ["--data_train", str(root / "train"), "--data_val", str(root / "val")]


def _corrupt_resume(data: Path, tmp: Path) -> list[str]:
    (tmp / "bad.pth.tar").write_bytes(b"\x80\x02 truncated")
    return ["--resume", str(tmp / "bad.pth.tar")]


def _unknown_yaml_key(data: Path, tmp: Path) -> list[str]:
    (tmp / "bad.yaml").write_text("epochs: 3\nlearning_rate_typo: 0.1\n")
    return ["--config", str(tmp / "bad.yaml")]


@pytest.mark.parametrize(
    "make_flags, message",
    [
        (lambda d, t: ["--data_train", str(t / "nope"), "--data_val", str(d / "val")], "no such directory"),
        (_empty_class, "class folders without images: noise"),
        (_class_mismatch, "have different classes (train only: ['noise']; val only: ['static'])"),
        (lambda d, t: ["-a", "pdresnet5"], "unknown model 'pdresnet5'; did you mean pdresnet50"),
        (_unknown_yaml_key, "bad.yaml: unknown key 'learning_rate_typo'"),
        (_corrupt_resume, "bad.pth.tar: cannot be read"),
        (lambda d, t: ["-a", "pdresnet18", "--padding", "zero"], "partial padding by name"),
        (lambda d, t: ["-b", "0"], "-b/--batch-size must be >= 1"),
        (
            lambda d, t: ["-a", "resnet18", "--padding", "reflect", "--train-crop-size", "32"],
            "--train-crop-size 32 does not fit resnet18 with reflect padding",
        ),
    ],
    ids=[
        "missing-dir",
        "empty-class",
        "class-mismatch",
        "unknown-arch",
        "yaml-key",
        "bad-resume",
        "pd-padding",
        "zero-batch",
        "crop-too-small",
    ],
)
def test_errors_before_training(data, tmp_path, capsys, make_flags, message):
    out = tmp_path / "run"
    argv = [*args(data, out), *make_flags(data, tmp_path)]
    assert run(argv) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and message in err[0], err
    assert not out.exists()


def test_bf16_channels_last_cosine_warmup_and_snapshots(data, tmp_path):
    out = tmp_path / "modern"
    extra = ["--amp", "bf16", "--channels-last", "--lr-schedule", "cosine", "--warmup-epochs", "0.5"]
    extra += ["--label-smoothing", "0.1", "--save-every", "1", "--no-tensorboard", "--padding", "partial"]
    assert run([*args(data, out), "--epochs", "2", *extra]) == 0
    lines = metrics(out)
    assert [m["padding"] for m in lines] == ["partial", "partial"]
    assert lines[0]["lr"] == pytest.approx(0.05 * (0.01 + 0.99 / 10))  # 10 warm-up iterations from 0.01 x lr: 1/10 up
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in lines)
    assert (out / "checkpoint_epoch1.pth.tar").is_file() and (out / "checkpoint_epoch2.pth.tar").is_file()


def test_progress_bar_on_a_terminal_plain_lines_otherwise(data, tmp_path):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    cmd = [sys.executable, str(ROOT / "train.py"), *args(data, tmp_path / "tty"), "--epochs", "1", "-p", "1"]
    proc = subprocess.Popen([*cmd, "--no-tensorboard"], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert re.search(r"epoch 1:\s+\d+%\|.*\| \d+/20 \[", terminal), terminal  # tqdm's bar on the terminal
    assert "Epoch: [1][" not in out and "Epoch 1/1:" in out  # no per-step lines next to a bar


# Preemption as clusters deliver it: the signal to the whole process group (scheduler, torchrun, Ctrl-C in a
# terminal), DataLoader workers included, mid-epoch.
EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGUSR1: 138}


@pytest.mark.parametrize(
    "workers, sig",
    [("0", signal.SIGTERM), ("1", signal.SIGTERM), ("2", signal.SIGTERM), ("2", signal.SIGINT), ("1", signal.SIGUSR1)],
)
def test_signal_to_process_group_with_workers_checkpoints_and_resumes_exactly(straight, data, tmp_path, workers, sig):
    out = tmp_path / "preempted"
    cmd = [sys.executable, "-u", str(ROOT / "train.py"), *args(data, out), "-j", workers, "--epochs", "2", "-p", "1"]
    code, output, pgid = signal_at_line([*cmd, "--no-tensorboard"], "Epoch: [1][2/20]", to_group(sig))
    assert no_process_left(pgid), "DataLoader workers outlived the run"
    name = signal.Signals(sig).name
    assert code == EXIT[sig], output
    assert f"preempted by {name}" in output and "--resume auto" in output, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["step"] < 20  # inside epoch 1, after the step in progress
    assert run([*args(data, out), "--epochs", "2", "--resume", "auto", "-p", "2"]) == 0
    assert_same_run(straight, out)


def test_torchrun_signalled_as_a_group_stops_every_rank_at_one_step(data, tmp_path):
    """SIGTERM to torchrun's whole process group (what a scheduler does): the ranks' workers ignore it, the ranks
    agree on one step, rank 0 writes the mid-epoch checkpoint, and the resumed run under torchrun completes."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(ROOT / "train.py"), *args(data, out), "-j", "1", "--epochs", "1", "-p", "1"]
    code, output, pgid = signal_at_line([*cmd, "--no-tensorboard"], "Epoch: [1][2/20]", to_group(signal.SIGTERM))
    assert no_process_left(pgid), "ranks or workers outlived torchrun"
    assert code != 0, output
    assert "preempted by SIGTERM" in output, output
    assert "killed by signal: Terminated" not in output and "DataLoader worker" not in output, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["step"] < 20
    proc = subprocess.run(
        [*torchrun, str(ROOT / "train.py"), *args(data, out), "-j", "1", "--epochs", "1", "--resume", "auto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (Path(out) / "metrics.jsonl").read_text().count("\n") == 1


def test_signal_to_one_rank_only_stops_every_rank_at_one_step(data, tmp_path):
    """A signal that reaches one rank and its workers only (a node-local kill, an OOM killer's warning, a user's
    kill of one PID's group): any rank's signal stops all ranks after the same step, with one checkpoint."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(ROOT / "train.py"), *args(data, out), "-j", "1", "--epochs", "1", "-p", "1"]
    ranks = {}

    def to_rank_1(torchrun_pid: int) -> None:
        ranks.update({r: child_with_env(torchrun_pid, f"RANK={r}") for r in (0, 1)})
        os.killpg(os.getpgid(ranks[1]), signal.SIGTERM)  # rank 1 and its DataLoader worker, not rank 0 or torchrun

    code, output, _ = signal_at_line([*cmd, "--no-tensorboard"], "Epoch: [1][2/20]", to_rank_1)
    assert set(ranks) == {0, 1}, output
    assert code != 0 and "preempted by SIGTERM" in output, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["step"] < 20, output  # rank 0 stopped too, mid-epoch
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_sigusr1_to_torchrun_alone_reaches_the_ranks_when_listed(data, tmp_path):
    """SLURM-style: SIGUSR1 to the torchrun process only. With SIGUSR1 in PET_SIGNALS_TO_HANDLE (what
    scripts/slurm_train.sh exports) torchrun forwards it; every rank checkpoints mid-epoch and exits 138."""
    out = tmp_path / "usr1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(ROOT / "train.py"), *args(data, out), "-j", "1", "--epochs", "1", "-p", "1"]
    if "signals-to-handle" not in subprocess.run([*torchrun[:3], "--help"], capture_output=True, text=True).stdout:
        pytest.skip("this torchrun does not forward SIGUSR1 (older torch): slurm_train.sh sends SIGTERM instead")
    env = {**os.environ, "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
    proc = subprocess.Popen(
        [*cmd, "--no-tensorboard"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch: [1][2/20]"):
            os.kill(proc.pid, signal.SIGUSR1)
            break
    rest, _ = proc.communicate(timeout=180)
    output = "".join(seen) + rest
    assert "preempted by SIGUSR1" in output, output
    ckpt = read_checkpoint(out / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["step"] < 20, output
