"""benchmarks/train_throughput.py end to end on CPU with tiny settings, its full-multiply pd baseline, and the JPEG
folder generator."""

from __future__ import annotations

import json
import os
import platform
import time

import pytest
import torch

from benchmarks import train_throughput as tt
from benchmarks._jpeg_folder import make_jpeg_folder, render_image
from partialconv import PartialConv2d, create_model
from partialconv.data.allocator import AllocatorWorkerInit, apply_allocator_setting

TINY = ["-b", "2", "--image-size", "32", "--num-classes", "10", "--warmup", "1", "--steps", "1", "--windows", "2"]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return make_jpeg_folder(tmp_path_factory.mktemp("jpeg"), num_images=8, num_classes=2, size=(160, 120))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["--archs", "resnet18", "pdresnet18", "--pd-impl", "border", "full", "--find-max-batch", *TINY]
    payload = tt.main(argv + ["--output-dir", str(out)])
    return payload, out


def test_synthetic_run_measures_interleaved_pd_and_zero(synthetic_run) -> None:
    payload, _ = synthetic_run
    labels = [r["label"] for r in payload["results"]]
    assert labels == ["resnet18", "pdresnet18", "pdresnet18 (full)"]
    for r in payload["results"]:
        assert len(r["rates"]) == 2 and all(rate > 0 for rate in r["rates"])
        assert r["peak_mem_bytes"] is None  # CPU: no GPU memory to report
    assert set(payload["pd_over_zero"]) == {"pdresnet18", "pdresnet18 (full)"}
    rates = {r["label"]: r["rates"] for r in payload["results"]}
    for label, ratio in payload["pd_over_zero"].items():
        # the median over windows of pd/zero measured in the same window (two windows: the mean of the two)
        paired = [p / z for p, z in zip(rates[label], rates["resnet18"])]
        assert ratio == pytest.approx(sum(paired) / 2, rel=1e-12)
    for r in payload["results"]:
        assert r["img_per_s"] == pytest.approx(sum(r["rates"]) / 2, rel=1e-12)
    assert "only meaningful on a CUDA device" in payload["max_batch"]


def test_results_files_record_machine_and_command(synthetic_run) -> None:
    payload, out = synthetic_run
    (js,) = out.glob("train_throughput_*_cpu_synthetic.json")
    saved = json.loads(js.read_text())
    assert saved["pd_over_zero"] == payload["pd_over_zero"]
    machine = saved["machine"]
    assert machine["device"] == "cpu" and machine["device_name"].startswith("CPU")
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1 and machine["date"]
    md = js.with_suffix(".md").read_text()
    assert "--pd-impl border full" in md and "| pdresnet18 (full) |" in md and torch.__version__ in md
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("backend", ["pil", "gpu"])
def test_real_data_run(jpegs, backend: str) -> None:
    argv = ["--archs", "resnet18", "--data", "real", "--data-dir", str(jpegs), "--data-backend", backend, "-j", "0"]
    payload = tt.main(argv + TINY + ["--channels-last", "--no-save"])
    (result,) = payload["results"]
    assert result["label"] == "resnet18" and len(result["rates"]) == 2 and min(result["rates"]) > 0


def test_loader_only_interleaves_worker_allocator_settings(jpegs, tmp_path) -> None:
    argv = ["--data", "loader-only", "--data-dir", str(jpegs), "-j", "1", "--malloc", "default", "pillow"]
    argv += ["--output-dir", str(tmp_path), "-b", "4", "--image-size", "32", "--warmup", "1", "--steps", "1"]
    payload = tt.main(argv + ["--windows", "2"])
    rows = [(r["pipeline"], r["workers"], r["malloc"]) for r in payload["loader"]]
    assert rows == [("turbo", 1, "default"), ("turbo", 1, "pillow"), ("torchvision", 1, "default")]  # auto: turbo
    assert all(len(r["rates"]) == 2 and r["img_per_s"] > 0 for r in payload["loader"])
    assert "PILLOW_BLOCKS_MAX=32" in next(tmp_path.glob("*_loader-only.md")).read_text()
    assert all(r["cpu_ms_per_image_main"] >= 0 and r["cpu_ms_per_image_workers"] >= 0 for r in payload["loader"])


class _BurnCPU(torch.utils.data.Dataset):
    """Each item costs its worker about 0.15 s of CPU."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        end = time.process_time() + 0.15
        while time.process_time() < end:
            pass
        return index


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="reads /proc")
def test_loader_cpu_accounting_reads_the_workers_not_the_main_process() -> None:
    loader = torch.utils.data.DataLoader(
        _BurnCPU(), batch_size=1, num_workers=1, prefetch_factor=1, persistent_workers=True
    )
    stream = tt.BatchStream(loader, torch.device("cpu"), torch.contiguous_format)
    before, main_before = tt._workers_cpu_seconds(stream), time.process_time()
    assert list(stream.it) == [torch.tensor([i]) for i in range(4)]
    worker_seconds = tt._workers_cpu_seconds(stream) - before
    assert 0.45 <= worker_seconds <= 1.5, worker_seconds  # 4 items x 0.15 s, less what ran before `before`
    assert time.process_time() - main_before < 0.3  # the main process only waited
    assert tt._workers_cpu_seconds(tt.BatchStream([1, 2], torch.device("cpu"), torch.contiguous_format)) is None


class _BlocksMax(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        from PIL import Image

        return Image.core.get_blocks_max()


@pytest.mark.parametrize("name,expected", [("default", 0), ("pillow", 32)])
def test_allocator_worker_init_applies_in_the_worker(name: str, expected: int) -> None:
    loader = torch.utils.data.DataLoader(_BlocksMax(), num_workers=1, worker_init_fn=AllocatorWorkerInit(name))
    assert next(iter(loader)).item() == expected


@pytest.mark.skipif(not platform.libc_ver()[0] == "glibc", reason="mallopt settings are glibc's")
def test_glibc_setting_is_accepted_by_mallopt() -> None:
    assert apply_allocator_setting("glibc")  # mallopt returns 0 for values glibc refuses (e.g. mmap > 32 MiB)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride,padding,size", [(1, 1, (9, 7)), (2, 1, (10, 11)), (1, 2, (6, 8)), (2, 3, (5, 5))])
def test_full_multiply_baseline_matches_the_layer(bias: bool, stride: int, padding: int, size: tuple) -> None:
    """The benchmark's plain-autograd baseline (full multiply) and the layer's border-only
    rescale with its own backward agree on outputs and on input, weight and bias gradients."""
    torch.manual_seed(0)
    layer = PartialConv2d(3, 4, 3, stride=stride, padding=padding, bias=bias).double()
    variants = []
    for impl, cls in (("full", tt.FullRatioPartialConv2d),):
        variant = PartialConv2d(3, 4, 3, stride=stride, padding=padding, bias=bias).double()
        variant.load_state_dict(layer.state_dict())
        assert tt.use_pd_variant(variant, impl) == 1 and type(variant) is cls
        variants.append(variant)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    grads = []
    for module in (layer, *variants):
        xi = x.clone().requires_grad_()
        out = module(xi)
        (out * torch.linspace(-1, 2, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((out.detach(), xi.grad, *(p.grad for p in module.parameters())))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b)


def test_full_ratio_swaps_every_partial_conv() -> None:
    model = create_model("pdresnet18", num_classes=10)
    padded = sum(type(m) is PartialConv2d for m in model.modules())
    assert tt.use_pd_variant(model, "full") == padded > 0
    assert not any(type(m) is PartialConv2d for m in model.modules())


@pytest.mark.parametrize("limit,start", [(100, 8), (1000, 256), (5, 8)])
def test_find_max_batch_doubles_then_bisects(monkeypatch, limit: int, start: int) -> None:
    """The search logic with an allocator that fits batches up to ``limit`` (OOM itself needs a GPU)."""
    tried = []
    monkeypatch.setattr(tt, "_fits", lambda args, arch, device, batch: tried.append(batch) or batch <= limit)
    args = tt.parse_args(["-b", str(start), "--max-batch-step", "4"])
    best = tt.find_max_batch(args, "pdresnet50", torch.device("cpu"))
    assert best <= limit < best + 4
    assert len(tried) <= 16


def test_repeated_worker_counts_are_measured_once() -> None:
    """The GPU suite passes -j 1 2 $(nproc, at most 16): on a 2-core machine that repeats 2."""
    assert tt.parse_args(["--data", "loader-only", "-j", "1", "2", "2"]).workers == [1, 2]


def test_out_of_memory_errors_are_recognised() -> None:
    assert tt._is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert tt._is_oom(RuntimeError("CUDA error: out of memory"))
    assert not tt._is_oom(RuntimeError("shape mismatch"))


def test_bad_arguments_fail_with_one_line(capsys, tmp_path) -> None:
    for argv, needle in (
        (["--archs", "resnet5O"], "--archs"),
        (["--data-dir", str(tmp_path / "missing")], "not a directory"),
        (["-j", "1", "2"], "loader-only"),
        (["--data", "loader-only", "-j", "0", "--malloc", "glibc"], "use -j >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
    ):
        with pytest.raises(SystemExit):
            tt.parse_args(argv)
        assert needle in capsys.readouterr().err


def test_generated_jpegs_are_deterministic_and_cached(jpegs) -> None:
    assert render_image(0, 3, (64, 48)).tobytes() == render_image(0, 3, (64, 48)).tobytes()
    assert render_image(0, 3, (64, 48)).tobytes() != render_image(1, 3, (64, 48)).tobytes()
    files = sorted(jpegs.glob("class_*/*.JPEG"))
    assert len(files) == 8 and len({f.parent for f in files}) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    assert make_jpeg_folder(jpegs.parent, num_images=8, num_classes=2, size=(160, 120)) == jpegs
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not rewritten
