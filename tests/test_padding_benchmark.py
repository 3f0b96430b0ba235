"""scripts/padding_benchmark.py: planning, commands, GPU slots, argument checks, --dry-run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "padding_benchmark.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("padding_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


pb = _load_benchmark()


def write_metrics(run_dir: Path, arch: str, padding: str, done: int, planned: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for e in range(1, done + 1):
            rec = {"epoch": e, "epochs": planned, "arch": arch, "padding": padding, "seed": 1}
            f.write(json.dumps(rec | {"val_acc1": 10.0 * e, "val_acc5": 20.0 * e}) + "\n")


def test_plan_matrix_order_seeds_and_states(tmp_path):
    write_metrics(tmp_path / "resnet18" / "zero" / "run1", "resnet18", "zero", 2, 2)
    write_metrics(tmp_path / "resnet18" / "zero" / "run2", "resnet18", "zero", 1, 2)
    (tmp_path / "resnet18" / "partial" / "run1").mkdir(parents=True)
    (tmp_path / "resnet18" / "partial" / "run1" / "checkpoint.pth.tar").write_bytes(b"x")  # killed in epoch 1
    jobs = pb.plan_matrix(["resnet18", "vgg11"], ["zero", "partial"], 2, tmp_path, seed_offset=10)
    assert [j.name for j in jobs] == [
        f"{a}/{p}/run{k}" for a in ("resnet18", "vgg11") for p in ("zero", "partial") for k in (1, 2)
    ]
    assert [j.seed for j in jobs[:2]] == [11, 12]
    assert [j.state for j in jobs[:4]] == ["finished", "partial", "partial", "new"]
    assert jobs[5].run_dir == tmp_path / "vgg11" / "zero" / "run2"


def test_build_command_single_process_and_torchrun(tmp_path):
    job = pb.Job("resnet50", "reflect", 3, 3, tmp_path / "resnet50" / "reflect" / "run3", "new")
    cmd = pb.build_command(job, "cuda", 1, "/d/train", "/d/val", ["--epochs", "90", "--amp", "bf16"])
    assert cmd[:2] == [sys.executable, str(ROOT / "train.py")]
    flags = " ".join(cmd[2:])
    assert flags == (
        f"-a resnet50 --padding reflect --seed 3 --output-dir {job.run_dir} --resume auto --device cuda "
        "--data_train /d/train --data_val /d/val --epochs 90 --amp bf16"
    )
    multi = pb.build_command(job, "cuda", 4, None, None, [])
    assert multi[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert "--data_train" not in multi
    text = pb.format_command(multi, ["4", "5", "6", "7"])
    assert text.startswith("CUDA_VISIBLE_DEVICES=4,5,6,7 ")


def test_gpu_slots():
    gpus = [str(i) for i in range(8)]
    assert pb.gpu_slots("cuda", gpus, 1, None) == [gpus]
    assert pb.gpu_slots("cuda", gpus, 2, None) == [gpus[:4], gpus[4:]]
    assert pb.gpu_slots("cuda", gpus, 3, 2) == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert pb.gpu_slots("cpu", [], 1, None) == [None]
    with pytest.raises(pb.UsageError, match="needs 9 GPUs; 8 available"):
        pb.gpu_slots("cuda", gpus, 3, 3)
    with pytest.raises(pb.UsageError, match="no GPU visible"):
        pb.gpu_slots("cuda", [], 1, None)
    with pytest.raises(pb.UsageError, match="on CPU runs are sequential"):
        pb.gpu_slots("cpu", [], 2, None)


def test_visible_gpus_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert pb.visible_gpus(None) == ["2", "3"]
    assert pb.visible_gpus("0, 1,5") == ["0", "1", "5"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--archs", "resnet18", "--", "--seed", "3"], "--seed after `--` is set by the benchmark"),
        (["--archs", "resnet18", "--", "--output-dir=x"], "--output-dir after `--`"),
        (["--archs", "resnet18", "--", "-avgg11"], "-avgg11 after `--`"),
        (["--archs", "resnet5"], "unknown model 'resnet5'; did you mean resnet50"),
        (["--archs", "pdresnet18"], "use resnet18 (the padding comes from --paddings)"),
        (["--archs", "resnet18", "--paddings", "circular"], "invalid choice: 'circular'"),
        (["--archs", "resnet18", "--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        pb.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_passthrough_after_double_dash():
    args, rest = pb.parse_args(["--archs", "vgg11", "--runs", "2", "--", "--epochs", "3", "-b", "8", "--lr", "0.1"])
    assert args.archs == ["vgg11"] and args.runs == 2 and args.paddings == ["zero", "partial", "reflect", "replicate"]
    assert rest == ["--epochs", "3", "-b", "8", "--lr", "0.1"]


def test_dry_run_prints_commands_and_skips_finished(tmp_path):
    root = tmp_path / "res"
    write_metrics(root / "vgg11" / "zero" / "run1", "vgg11", "zero", 1, 1)
    write_metrics(root / "vgg11" / "partial" / "run1", "vgg11", "partial", 1, 3)
    before = sorted(p for p in root.rglob("*"))
    cmd = [sys.executable, str(BENCH), "--archs", "vgg11", "--runs", "1", "--root", str(root), "--dry-run"]
    cmd += ["--device", "cuda", "--gpus", "0,1,2,3", "--parallel", "2", "--", "--epochs", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "4 runs (1 archs x 4 paddings x 1)" in out and "1 finished (skipped), 1 to resume, 2 new" in out
    assert "# skip vgg11/zero/run1: finished" in out
    commands = [line for line in out.splitlines() if "train.py" in line]
    assert len(commands) == 3
    assert commands[0].startswith("CUDA_VISIBLE_DEVICES=0,1 ") and "--nproc_per_node=2" in commands[0]
    assert "--padding partial" in commands[0] and commands[0].endswith("--epochs 3")
    assert commands[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ") and "--padding reflect" in commands[1]
    assert sorted(p for p in root.rglob("*")) == before  # nothing created
