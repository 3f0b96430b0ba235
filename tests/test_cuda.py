"""The CUDA set (``pytest -m cuda``): what only a GPU exercises. Skipped cleanly without CUDA; run by
benchmarks/h200_suite.sh (part 0) whenever a GPU is available.

Where a check is cheap on CPU too, it is parametrised over ``cpu`` (unmarked, runs everywhere, so the check itself is
exercised on every machine) and ``cuda`` (marked). The layer against the float64 CPU reference; AMP training steps
(fp16 with the GradScaler, bf16), channels_last and --compile compared with a plain fp32 run; --sync-bn under a
real torchrun (needs two GPUs); the nvJPEG decode path, CMYK JPEGs included; DataParallel across two GPUs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_layers import case_of, check_against_reference
from torch import nn

from benchmarks._jpeg_folder import make_jpeg_folder, render_image
from partialconv import PartialConv2d
from partialconv.checkpoint_io import read_checkpoint
from partialconv.data import ClassificationFolder, train_transform
from partialconv.data.demo import make_demo_dataset
from partialconv.data.gpu_decode import EncodedImageFolder, GpuPreprocess, collate_encoded, decode_images
from partialconv.data.presets import IMAGENET_STD
from partialconv.programs import train

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
TWO_GPUS = [pytest.mark.cuda, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
LEVEL = 1 / 255 / min(IMAGENET_STD)


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """fp32 means fp32 here: TF32 convs/matmuls (10 mantissa bits) would differ between the compared runs' kernels.
    train.py leaves these flags alone under --deterministic, which every run here uses."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # matmuls: the public switch (the cuBLAS flag varies by version)
    yield
    torch.set_float32_matmul_precision(before)


# ------------------------------------------------------------------------------------------------------ the layer

REFERENCE_CASES = [
    case_of(padding=3, size=2),  # windows entirely in the padding (dense path), bias
    case_of(k=[3, 5], padding=[1, 2], size=[9, 11]),  # border path, non-square
    case_of(stride=2, dilation=2, padding=2, size=[7, 8], bias=False),
    case_of(masked=True, multi_channel=True, per_sample=True, c_in=3, seed=1),
    case_of(masked=True, batch=1, size=[5, 4], padding=[0, 1], seed=2),
    case_of(groups=2, c_in=4, c_out=2, masked=True, multi_channel=True, seed=3),
    case_of(nd=3, k=[1, 3, 2], padding=[0, 1, 2], size=[2, 3, 3], stride=[1, 2, 1], masked=True, seed=4),
    case_of(nd=3, k=3, padding=1, size=4, multi_channel=True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("index", range(len(REFERENCE_CASES)))
def test_layer_matches_the_cpu_float64_reference(device, dtype, index):
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    check_against_reference(REFERENCE_CASES[index], device=device, dtype=dtype, tol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_layer_under_autocast_is_close_to_fp32_and_finite(device, dtype):
    torch.manual_seed(0)
    layer = PartialConv2d(8, 16, 3, padding=1, multi_channel=True, return_mask=True).to(device)
    x = torch.randn(4, 8, 32, 32, device=device)
    mask = (torch.rand(4, 8, 32, 32, device=device) > 0.5).float()
    mask[..., 8:20, 8:20] = 0
    with torch.autocast(device, dtype=dtype):
        out, upd = layer(x, mask)
        border = PartialConv2d(8, 16, 3, padding=1).to(device)(x)
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(border).all()
    ref, ref_upd = layer(x, mask)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert torch.equal(upd.float(), ref_upd.float()) and (out[..., 10:18, 10:18] == 0).all()


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=TWO_GPUS)])
def test_dataparallel_over_two_gpus_matches_the_module(device):
    """DataParallel replicates only with two or more devices (with one it just calls the module); the CPU
    counterpart, replicas made as DataParallel makes them, is test_layers.py's test_replicas_match_module_*."""
    torch.manual_seed(0)
    model = nn.Sequential(PartialConv2d(3, 4, 3, padding=1), nn.ReLU(), PartialConv2d(4, 2, 3, stride=2, padding=1))
    model = model.double().cuda()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64, device="cuda")
    dp = nn.DataParallel(model, device_ids=[0, 1])
    out = dp(x)
    out.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref = model(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- train.py steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes x 4 train images, batch 8: 5 steps per epoch
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "d", train_per_class=4, val_per_class=2, size=24)


def run_train(data: Path, out: Path, device: str, *extra: str, arch: str = "pdsimple_cnn_bn") -> dict:
    argv = ["-a", arch, "--device", device, "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "2", "--epochs", "1"]
    argv += ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16", "--no-tensorboard"]
    argv += ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "--output-dir", str(out), *extra]
    assert train.cli(argv) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return record


@pytest.fixture(scope="module")
def fp32_runs() -> dict:
    """Cache of one plain fp32 epoch per device (see reference())."""
    return {}


def reference(fp32_runs: dict, data: Path, tmp: Path, device: str) -> dict:
    """The plain fp32 epoch the AMP / channels_last / compile runs are compared with, run once per device."""
    if device not in fp32_runs:
        fp32_runs[device] = run_train(data, tmp / f"fp32-{device}", device, "--deterministic")
    return fp32_runs[device]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_training_step_tracks_fp32(data, tmp_path_factory, fp32_runs, device, amp):
    tmp = tmp_path_factory.mktemp(f"amp-{amp}")
    ref = reference(fp32_runs, data, tmp, device)
    got = run_train(data, tmp / amp, device, "--amp", amp, "--deterministic")
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=3e-2)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=3e-2)
    scaler = read_checkpoint(tmp / amp / "checkpoint.pth.tar")["scaler"]
    if amp == "fp16":
        # the GradScaler ran: its scale starts at 2**16, halves on an overflowing step, grows only after 2000 steps
        assert scaler["scale"] in [2.0 ** (16 - i) for i in range(6)] and 1 <= scaler["_growth_tracker"] <= 5
    else:
        assert scaler == {}  # bf16 needs no loss scaling: the scaler is disabled


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_training_matches_contiguous(data, tmp_path_factory, fp32_runs, device):
    tmp = tmp_path_factory.mktemp("nhwc")
    ref = reference(fp32_runs, data, tmp, device)
    got = run_train(data, tmp / "nhwc", device, "--channels-last", "--deterministic")
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(ref[key], rel=1e-3), key


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_compiled_training_matches_eager(data, tmp_path_factory, fp32_runs, device):
    tmp = tmp_path_factory.mktemp("compile")
    ref = reference(fp32_runs, data, tmp, device)
    torch._dynamo.reset()
    got = run_train(data, tmp / "compiled", device, "--compile", "--deterministic")
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(ref[key], rel=1e-3), key


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=TWO_GPUS)])
def test_sync_bn_under_torchrun_matches_one_process(data, tmp_path, device):
    """Two ranks of 4 images with SyncBatchNorm normalise over the global batch of 8, like one process: same
    weights. (Without --sync-bn each rank normalises over its 4 images and the runs differ.)"""
    one = tmp_path / "one"
    run_train(data, one, "cuda", "--deterministic")
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]
    argv = ["-a", "pdsimple_cnn_bn", "--device", "cuda", "-j", "0", "-b", "8", "--lr", "0.05", "--seed", "2"]
    argv += ["--epochs", "1", "--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16"]
    argv += ["--no-tensorboard", "--data_train", str(data / "train"), "--data_val", str(data / "val")]
    argv += ["--output-dir", str(two), "--sync-bn", "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "on 2 x cuda" in res.stdout
    w1 = read_checkpoint(one / "checkpoint.pth.tar")["state_dict"]
    w2 = read_checkpoint(two / "checkpoint.pth.tar")["state_dict"]
    for k in w1:
        if w1[k].is_floating_point():
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------------ nvJPEG decode


def jpeg_bytes(image: Image.Image, mode: str) -> bytes:
    buf = io.BytesIO()
    image.convert(mode).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_pil_for_rgb_gray_and_cmyk_jpegs(device):
    """nvJPEG decodes RGB/grayscale JPEGs in the batch; CMYK ones (ImageNet has a few) must come out as the same
    RGB image PIL makes, whichever decoder handles them."""
    image = render_image(3, 2, (120, 88))
    modes = ["RGB", "L", "CMYK", "RGB"]
    data = [jpeg_bytes(image, m) for m in modes]
    decoded = decode_images([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data], torch.device(device))
    for mode, raw, got in zip(modes, data, decoded):
        assert got is not None and got.device.type == device and got.dtype == torch.uint8, mode
        expected = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1).astype(int)
        diff = np.abs(got.cpu().numpy().astype(int) - expected)
        # decoders differ in IDCT/upsampling rounding by a few levels; a wrong colour conversion is off by ~100
        assert diff.max() <= (0 if device == "cpu" else 12) and diff.mean() <= (0 if device == "cpu" else 1.5), mode


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_preprocess_matches_the_pil_path(device, tmp_path):
    folder = str(make_jpeg_folder(tmp_path, num_images=8, num_classes=2, size=(160, 120)))
    pil = ClassificationFolder(folder, train_transform(64))
    encoded = EncodedImageFolder(folder, train=True)
    keys = [(i, 500 + i) for i in range(len(pil))]
    expected = torch.stack([pil[k][0] for k in keys])
    batch = collate_encoded([encoded[k] for k in keys])
    x, y, bad = GpuPreprocess(train=True, crop_size=64)(batch, torch.device(device))
    assert x.device.type == device and bad == 0 and y.tolist() == [t for _, t in pil.samples]
    diff = (x.cpu() - expected).abs()
    # on CUDA nvJPEG decodes (its IDCT and chroma upsampling round differently from libjpeg-turbo's)
    max_levels, mean_levels = (1.5, 0.5) if device == "cpu" else (8, 1)
    assert diff.max() <= max_levels * LEVEL and diff.mean() <= mean_levels * LEVEL
