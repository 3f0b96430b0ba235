"""Nothing already written is lost, and a run tells its user what it is doing: full disks (injected ENOSPC and a real
small tmpfs), inpaint.py's inputs, resuming into a new directory or a finished run, progress lines, worker counts,
and train_inpainting.py's start."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from partialconv.checkpoint_io import read_checkpoint
from partialconv.config import parse_config
from partialconv.data.demo import make_demo_dataset
from partialconv.models import create_model
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "3",
    "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--deterministic",
    "--no-tensorboard",
]  # fmt: skip
TIMING = {"images_per_sec", "epoch_seconds", "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=4, val_per_class=2, size=24)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *BASE,
        "--data_train",
        str(data / "train"),
        "--data_val",
        str(data / "val"),
        "--output-dir",
        str(out),
        *extra,
    ]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train.cli(args(data, out, "--epochs", "2")) == 0
    return out


# ---------------------------------------------------------------------------------------------------- full disk


def test_checkpoint_on_full_disk_is_one_line_and_the_last_checkpoint_stays(
    data, straight, tmp_path, monkeypatch, capsys
):
    """ENOSPC from the file write inside torch.save of epoch 2's checkpoint (after 4 KiB of it were written; the 4th
    save: each epoch saves its training before validation, then the epoch)."""
    real_save = torch.save
    calls = []

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written + len(b) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *a, **kw):
        calls.append(f)
        return real_save(obj, FullDisk(f) if len(calls) == 4 else f, *a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save)
    assert train.cli(args(data, out, "--epochs", "2")) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert str(out / "checkpoint.pth.tar") in lines[0] and "no space left" in lines[0]
    monkeypatch.setattr(torch, "save", real_save)
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 1  # epoch 1's, where --resume auto looks
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert [m["epoch"] for m in metrics(out)] == [1]
    assert train.cli(args(data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert untimed(metrics(out)) == untimed(metrics(straight))


def test_metrics_line_on_full_disk_fails_loudly_and_resume_records_it(data, straight, tmp_path, monkeypatch, capsys):
    """os.write of epoch 2's metrics line returns a short count (the disk filled up mid-line)."""
    real_write = os.write

    def short_write(fd, b):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl") and b'"epoch": 2,' in b:
            return real_write(fd, b[: len(b) // 2])
        return real_write(fd, b)

    out = tmp_path / "run"
    monkeypatch.setattr(os, "write", short_write)
    assert train.cli(args(data, out, "--epochs", "2")) == 2
    monkeypatch.setattr(os, "write", real_write)
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(out / "metrics.jsonl") in lines[0] and "no space left" in lines[0], lines
    assert [m["epoch"] for m in metrics(out)] == [1]  # whole lines only: the torn half was taken back
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 2
    # A torn line left by an older version (or a kill mid-write) is dropped; epoch 2 is recorded from the checkpoint.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "ep')
    assert train.cli(args(data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert untimed(metrics(out)) == untimed(metrics(straight))


def tensorboard_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``tb_dir`` (TensorBoard's reader, which also checks the records' CRCs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_on_full_disk_is_one_line_and_earlier_events_stay(data, tmp_path, monkeypatch, capsys):
    """os.write of epoch 2's TensorBoard event returns a short count: one error line naming the event file, and the
    file keeps whole records only (TensorBoard reads epoch 1's scalars)."""
    real_write = os.write
    events = []

    def short_write(fd, b):
        if "tfevents" in os.readlink(f"/proc/self/fd/{fd}"):
            events.append(len(b))
            if len(events) == 3:  # the file's header record, epoch 1's scalars, epoch 2's scalars
                return real_write(fd, b[: len(b) // 2])
        return real_write(fd, b)

    out = tmp_path / "run"
    flags = [f for f in args(data, out, "--epochs", "2") if f != "--no-tensorboard"]
    monkeypatch.setattr(os, "write", short_write)
    assert train.cli(flags) == 2
    monkeypatch.setattr(os, "write", real_write)
    lines = error_lines(capsys.readouterr().err)
    (event_file,) = (out / "tb").iterdir()
    assert len(lines) == 1 and str(event_file) in lines[0] and "no space left" in lines[0], lines
    scalars = tensorboard_scalars(out / "tb")
    assert scalars["val_acc1"] == [(1, pytest.approx(metrics(out)[0]["val_acc1"]))]
    assert [m["epoch"] for m in metrics(out)] == [1, 2] and read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 2


def run_in_mount_namespace(tmp_path: Path, script: str) -> None:
    """Run ``script`` (sh) as root in a private mount namespace, where it may mount tmpfs file systems; skip the test
    where that is not possible. The script must exit 0 (its train.py runs record their own exit codes)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to mount a tmpfs")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], check=False)
    if probe.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # OMP_NUM_THREADS=1 (conftest), as the in-process straight run
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env, timeout=600, check=False)
    assert done.returncode == 0, done


def exit_code_and_error_lines(tmp_path: Path, name: str) -> tuple[str, list[str]]:
    """The exit code a script's train.py run wrote to ``<name>.rc`` and the non-blank lines of its ``<name>.err``."""
    err = (tmp_path / f"{name}.err").read_text()
    return (tmp_path / f"{name}.rc").read_text().strip(), error_lines(err)


def test_real_full_tmpfs_under_tensorboard(data, straight, tmp_path):
    """tb/ on its own real 16 KiB tmpfs, filled before the run: one error line naming the event file (TensorBoard's
    own writer printed its background thread's traceback and a bare OSError), epoch 1's checkpoint and metrics line
    kept; with space again, --resume auto finishes the run as a straight one."""
    out = tmp_path / "run"
    (out / "tb").mkdir(parents=True)
    cmd = " ".join(f for f in args(data, out, "--epochs", "2") if f != "--no-tensorboard")
    py = sys.executable
    script = f"""
        mount -t tmpfs -o size=16k tmpfs {out / "tb"} || exit 99
        {py} -c '{FILL}' {out / "tb"}/filler 0
        {py} train.py {cmd} >/dev/null 2>{tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp {out}/metrics.jsonl {tmp_path}/metrics_after_full.jsonl
        rm {out / "tb"}/filler
        {py} train.py {cmd} --resume auto >/dev/null 2>{tmp_path}/again.err; echo $? > {tmp_path}/again.rc
        cp -r {out / "tb"} {tmp_path}/tb_kept
    """
    run_in_mount_namespace(tmp_path, script)
    code, lines = exit_code_and_error_lines(tmp_path, "full")
    assert code == "2" and len(lines) == 1, lines
    assert "/tb/events.out.tfevents." in lines[0] and "no space left" in lines[0], lines
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics_after_full.jsonl").read_text().splitlines()] == [1]
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 2
    code, lines = exit_code_and_error_lines(tmp_path, "again")
    assert code == "0", lines
    assert untimed(metrics(out)) == untimed(metrics(straight))
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tb_kept")["val_acc1"]] == [2]


FILL = """
import os, sys
path, keep = sys.argv[1], int(sys.argv[2])
with open(path, "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"\\0" * 4096)
    except OSError:
        pass
    f.truncate(max(0, os.fstat(f.fileno()).st_size - keep))
"""


def test_real_full_tmpfs(data, straight, tmp_path):
    """A real 4 MiB tmpfs in a private mount namespace (needs root; skipped otherwise), filled to 16 KiB free after
    epoch 1: log and metrics lines still fit, epoch 2's checkpoint does not."""
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    cmd = " ".join(args(data, mnt / "run", "--epochs", "2"))
    py = sys.executable
    script = f"""
        mount -t tmpfs -o size=4m tmpfs {mnt} || exit 99
        {py} train.py {cmd.replace("--epochs 2", "--epochs 1")} >/dev/null 2>&1 || exit 98
        {py} -c '{FILL}' {mnt}/filler 16384
        {py} train.py {cmd} --resume auto >/dev/null 2>{tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp -r {mnt}/run {tmp_path}/after_full
        rm {mnt}/filler
        {py} train.py {cmd} --resume auto >/dev/null 2>{tmp_path}/again.err; echo $? > {tmp_path}/again.rc
        cp -r {mnt}/run {keep}
    """
    run_in_mount_namespace(tmp_path, script)
    code, lines = exit_code_and_error_lines(tmp_path, "full")
    assert code == "2" and len(lines) == 1, lines
    assert "checkpoint.pth.tar" in lines[0] and "no space left" in lines[0], lines
    assert read_checkpoint(tmp_path / "after_full" / "checkpoint.pth.tar")["epoch"] == 1
    assert [m["epoch"] for m in metrics(tmp_path / "after_full")] == [1]
    code, lines = exit_code_and_error_lines(tmp_path, "again")
    assert code == "0", lines
    ignore = {"epochs"}  # the first run planned one epoch
    assert [{k: v for k, v in r.items() if k not in ignore} for r in untimed(metrics(keep))] == [
        {k: v for k, v in r.items() if k not in ignore} for r in untimed(metrics(straight))
    ]


# ---------------------------------------------------------------------------------------------------- inpaint.py


def load_script(name: str):
    return importlib.import_module(f"partialconv.programs.{name}")  # scripts/<name>.py runs it


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    """A (random) train_inpainting.py-style checkpoint of a 3-stage PConv U-Net, and the same as a bare state_dict."""
    root = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    state = create_model("pconv_unet", layer_size=3).state_dict()
    torch.save({"arch": "pconv_unet", "layer_size": 3, "state_dict": state}, root / "unet.pth.tar")
    torch.save(state, root / "plain.pth")
    torch.save(create_model("simple_cnn", num_classes=10).state_dict(), root / "classifier.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(np.where(rng.random((16, 20)) < 0.3, 255, 0).astype(np.uint8)).save(root / "small_mask.png")
    return root


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (8-bit RGB) and has no pixel data: enough for PIL's size checks."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def inpaint_fails(capsys, *argv: str) -> str:
    rc = load_script("inpaint").cli(list(argv))
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1, (rc, lines)
    return lines[0]


def test_inpaint_refuses_a_mask_of_another_size(unet, tmp_path, capsys):
    out = tmp_path / "filled.png"
    common = ["--checkpoint", str(unet / "unet.pth.tar"), "--input", str(unet / "photo.png")]
    line = inpaint_fails(capsys, *common, "--mask", str(unet / "small_mask.png"), "--output", str(out))
    assert "small_mask.png" in line and "20x16" in line and "40x32" in line and "--resize-mask" in line
    assert not out.exists()
    argv = [*common, "--mask", str(unet / "small_mask.png"), "--resize-mask", "--output", str(out)]
    assert load_script("inpaint").cli(argv) == 0 and Image.open(out).size == (40, 32)


def test_inpaint_wrong_checkpoints_are_one_line(unet, straight, tmp_path, capsys):
    common = ["--input", str(unet / "photo.png"), "--random-mask", "0.2", "--output", str(tmp_path / "o.png")]
    line = inpaint_fails(capsys, "--checkpoint", str(straight / "checkpoint.pth.tar"), *common)
    assert "checkpoint.pth.tar" in line and "simple_cnn" in line and "not a PConv U-Net" in line
    line = inpaint_fails(capsys, "--checkpoint", str(unet / "classifier.pth"), "--layer-size", "3", *common)
    assert "classifier.pth" in line and "does not fit" in line
    line = inpaint_fails(capsys, "--checkpoint", str(unet / "plain.pth"), "--layer-size", "4", *common)
    assert "plain.pth" in line and "--layer-size 4" in line
    line = inpaint_fails(capsys, "--checkpoint", str(unet / "unet.pth.tar"), "--layer-size", "2", *common)
    assert "unet.pth.tar" in line and "--layer-size 2" in line


def test_inpaint_huge_image_is_one_line(unet, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    png_header_only(huge, 20000, 20000)
    argv = ["--checkpoint", str(unet / "unet.pth.tar"), "--random-mask", "0.2"]
    line = inpaint_fails(capsys, *argv, "--input", str(huge), "--output", str(tmp_path / "h.png"))
    assert "huge.png" in line and "decompression-bomb" in line


def test_inpaint_output_under_a_file_is_one_line(unet, tmp_path, capsys):
    argv = ["--checkpoint", str(unet / "unet.pth.tar"), "--random-mask", "0.2"]
    (tmp_path / "afile").write_text("x")
    line = inpaint_fails(capsys, *argv, "--input", str(unet / "photo.png"), "--output", str(tmp_path / "afile/o.png"))
    assert "afile" in line and "is a file" in line
    line = inpaint_fails(capsys, *argv, "--input", str(unet), "--output", str(tmp_path / "afile" / "sub"))
    assert "afile" in line and "is a file" in line


# ---------------------------------------------------------------------------------------------------- resume, progress


@pytest.fixture(scope="module")
def three_epochs(data, tmp_path_factory) -> Path:
    """Val top-1 per epoch 5, 10, 15 (and a 4th epoch would give 5: it does not beat the best)."""
    out = tmp_path_factory.mktemp("runs") / "three"
    assert train.cli(args(data, out, "--epochs", "3")) == 0
    assert [m["val_acc1"] for m in metrics(out)] == [5.0, 10.0, 15.0]
    return out


def test_resume_into_a_new_output_dir_carries_model_best(data, three_epochs, tmp_path, capsys):
    new = tmp_path / "new"
    argv = args(data, new, "--epochs", "4", "--resume", str(three_epochs / "checkpoint.pth.tar"))
    assert train.cli(argv) == 0
    assert "(best 15.000)" in capsys.readouterr().out
    assert (new / "model_best.pth.tar").read_bytes() == (three_epochs / "model_best.pth.tar").read_bytes()


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(data, three_epochs, capsys):
    def files():  # but the run directory's lock, which names its last holder
        return {
            p: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in three_epochs.rglob("*")
            if p.is_file() and p.name != ".lock"
        }

    before = files()
    assert train.cli(args(data, three_epochs, "--epochs", "3", "--resume", "auto")) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(error_lines(out)) == 1 and "finished" in out and "3 of --epochs 3" in out, out
    assert files() == before


def test_progress_lines_show_data_time_eta_scope_and_validation(data, tmp_path, capsys):
    assert train.cli(args(data, tmp_path / "run", "--epochs", "1", "-p", "2")) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("Epoch: [1][")]
    vals = [line for line in out if line.startswith("Val: [")]
    assert [line.split("]")[1] for line in steps] == ["[2/5", "[4/5", "[5/5"]
    assert [line.split("]")[0] for line in vals] == ["Val: [2/3", "Val: [3/3"]
    for line in steps + vals:
        assert re.search(r" data \d+\.\d ms/step eta \d+:\d\d:\d\d \[rank 0 of 1\]$", line), line
    assert steps[-1].split(" eta ")[1].startswith("0:00:00")  # nothing left at the last step
    (summary,) = [line for line in out if line.startswith("Epoch 1/1:")]
    assert summary.endswith("[all ranks]")


# ---------------------------------------------------------------------------------------------------- -j


def run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_workers_above_the_cpus_per_process_are_capped_with_one_warning(data, tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    argv = args(data, tmp_path / "run", "--epochs", "1")
    argv[argv.index("-j") + 1] = "3"
    assert train.cli(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "-j/--workers 3" in warnings[0] and "using 2" in warnings[0], warnings
    assert not [w for w in recwarn if "worker" in str(w.message)]  # torch's own (per loader) warning is not reached
    assert run_config(tmp_path / "run")["workers"] == 2


def test_default_workers_follow_the_cpus_of_each_local_rank(data, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # 3 ranks on this node: 2 CPUs each, one of them for the rank
    argv = args(data, tmp_path / "run", "--epochs", "1")
    del argv[argv.index("-j") : argv.index("-j") + 2]
    assert train.cli(argv) == 0
    assert run_config(tmp_path / "run")["workers"] == 1


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("imagenet_*.yaml")), ids=lambda p: p.stem)
def test_imagenet_configs_leave_the_worker_count_to_the_default(config):
    assert parse_config(["--config", str(config), "--data_train", "t", "--data_val", "v"]).workers is None


# -------------------------------------------------------------------------------------------------- train_inpainting.py


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def inpainting_argv(photos: Path, out: Path, vgg: Path, *extra: str) -> list[str]:
    return [
        "--data", str(photos), "--vgg-weights", str(vgg), "--output-dir", str(out), "--image-size", "32",
        "--layer-size", "3", "-b", "1", "-j", "0", "--iters", "1", "--val-images", "1", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_failed_inpainting_start_leaves_nothing_behind(photos, vgg_file, tmp_path, capsys):
    script = load_script("train_inpainting")
    out = tmp_path / "run"
    assert script.cli(inpainting_argv(photos, out, tmp_path / "missing.pth")) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1 and not out.exists()
    (tmp_path / "empty").mkdir()
    assert script.cli(inpainting_argv(tmp_path / "empty", out, vgg_file)) == 2
    assert "no images" in capsys.readouterr().err and not out.exists()


def test_vgg_file_is_needed_only_for_vgg_terms(photos, tmp_path):
    out = tmp_path / "run"
    no_vgg = ["--loss-weights", "perceptual=0,style_out=0,style_comp=0"]
    assert load_script("train_inpainting").cli(inpainting_argv(photos, out, tmp_path / "missing.pth", *no_vgg)) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 1 and all(np.isfinite(v) for v in record.values())


def test_vgg_file_named_like_torchvisions_is_checked_any_other_warned(photos, vgg_file, tmp_path, capsys):
    script = load_script("train_inpainting")
    fake = tmp_path / "vgg16-397923af.pth"  # torchvision's name, other content
    shutil.copy(vgg_file, fake)
    assert script.cli(inpainting_argv(photos, tmp_path / "a", fake)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "vgg16-397923af.pth" in line and "sha256" in line and "397923af" in line
    digest = hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    named = tmp_path / f"vgg16-{digest[:8]}.pth"  # a file whose name carries its own sha256 prefix: accepted quietly
    shutil.copy(vgg_file, named)
    assert script.cli(inpainting_argv(photos, tmp_path / "b", named)) == 0
    assert "warning" not in capsys.readouterr().err
    assert script.cli(inpainting_argv(photos, tmp_path / "c", vgg_file)) == 0  # vgg16.pth: used, with a warning
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(vgg_file) in warnings[0] and "not checked" in warnings[0]


def test_under_torchrun_lines_name_their_scope_and_data_warnings_come_once(data, tmp_path):
    """Two real ranks (gloo): progress lines are rank 0's, summaries all ranks', the hidden-folder warning is printed
    by rank 0 only, and the default -j follows LOCAL_WORLD_SIZE (torchrun sets it)."""
    train_dir = tmp_path / "train"
    shutil.copytree(data / "train", train_dir)
    (train_dir / ".ipynb_checkpoints").mkdir()
    argv = args(data, tmp_path / "run", "--epochs", "1", "-p", "2")
    argv[argv.index("--data_train") + 1] = str(train_dir)
    del argv[argv.index("-j") : argv.index("-j") + 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    steps = [line for line in res.stdout.splitlines() if line.startswith(("Epoch: [", "Val: ["))]
    assert steps and all(line.endswith("[rank 0 of 2]") for line in steps)
    assert [line for line in res.stdout.splitlines() if line.startswith("Epoch 1/1:")][0].endswith("[all ranks]")
    assert res.stderr.count("ignored hidden folders/files") == 1
    expected = max(0, len(os.sched_getaffinity(0)) // 2 - 1)
    assert run_config(tmp_path / "run")["workers"] == expected


def test_train_inpainting_workers_are_capped_with_one_warning(photos, vgg_file, tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    argv = inpainting_argv(
        photos, tmp_path / "run", vgg_file, "--loss-weights", "perceptual=0,style_out=0,style_comp=0"
    )
    argv[argv.index("-j") + 1] = "3"
    assert load_script("train_inpainting").cli(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "-j/--workers 3" in warnings[0] and "using 1" in warnings[0], warnings
    assert not [w for w in recwarn if "worker" in str(w.message)]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["workers"] == 1


def test_resume_of_an_older_checkpoint_does_not_carry_a_later_best(data, three_epochs, tmp_path, capsys):
    old = tmp_path / "old"  # epoch 2's checkpoint (best 10) next to the run's model_best (best 15, epoch 3)
    old.mkdir()
    shutil.copy(three_epochs / "checkpoint.prev.pth.tar", old / "checkpoint.pth.tar")
    shutil.copy(three_epochs / "model_best.pth.tar", old / "model_best.pth.tar")
    new = tmp_path / "new"
    assert train.cli(args(data, new, "--epochs", "3", "--resume", str(old / "checkpoint.pth.tar"))) == 0
    assert "no model_best.pth.tar of best acc@1 10.000" in capsys.readouterr().err
    best = read_checkpoint(new / "model_best.pth.tar")
    assert best["epoch"] == 3 and best["best_acc1"] == 15.0  # written by the resumed run's own epoch 3
