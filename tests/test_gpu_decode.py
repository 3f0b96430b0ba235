"""The GPU decode path (run on CPU here) must preprocess exactly like the PIL path: same crop/flip draws from the same
RNG state, same resize interpolation and normalisation within a rounding level."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from benchmarks._jpeg_folder import make_jpeg_folder, render_image
from partialconv.config import parse_config
from partialconv.data import ClassificationFolder, DataError, eval_transform, train_transform
from partialconv.data.gpu_decode import (
    EncodedImageFolder,
    GpuDecodeLoader,
    GpuPreprocess,
    collate_encoded,
    decode_images,
    sample_train_params,
)
from partialconv.data.presets import IMAGENET_STD
from partialconv.engine.data_setup import data_error_message, loaders_from_config
from partialconv.engine.distributed import DistInfo

LEVEL = 1 / 255 / min(IMAGENET_STD)  # one uint8 level in normalised units (upper bound over channels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(make_jpeg_folder(tmp_path_factory.mktemp("jpeg"), num_images=8, num_classes=2, size=(160, 120)))


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (40, 400), (333, 333)])
def test_crop_params_equal_torchvision_draws_from_same_rng_state(height: int, width: int) -> None:
    image = Image.new("RGB", (width, height))
    flip = T.RandomHorizontalFlip()
    for seed in range(40):
        torch.manual_seed(seed)
        ours = sample_train_params(height, width)
        torch.manual_seed(seed)
        crop = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        flipped = int(flip(image) is not image)
        assert ours == (*crop, flipped)
        assert 0 <= ours[0] and ours[0] + ours[2] <= height and 0 <= ours[1] and ours[1] + ours[3] <= width


def test_crop_params_equal_transforms_v2_draws() -> None:
    from torchvision.transforms import v2

    rrc = v2.RandomResizedCrop(64, antialias=True)
    image = torch.zeros(3, 375, 500, dtype=torch.uint8)
    for seed in range(20):
        torch.manual_seed(seed)
        p = rrc.make_params([image])
        torch.manual_seed(seed)
        assert sample_train_params(375, 500)[:4] == (p["top"], p["left"], p["height"], p["width"])


def cpu_cfg(folder: str, *extra: str):
    return parse_config(["--data_train", folder, "--data_val", folder, "-b", "4", "--device", "cpu", *extra])


CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_train_samples_match_pil_path_for_same_sample_seeds(folder: str) -> None:
    pil = ClassificationFolder(folder, train_transform(64))
    encoded = EncodedImageFolder(folder, train=True)
    assert encoded.samples == pil.samples
    keys = [(i, 1000 + i) for i in range(len(pil))]
    reference = torch.stack([pil[k][0] for k in keys])
    batch = collate_encoded([encoded[k] for k in keys])
    x, y, bad = GpuPreprocess(train=True, crop_size=64)(batch, torch.device("cpu"))
    assert x.shape == reference.shape and x.dtype == torch.float32 and bad == 0
    assert y.tolist() == [t for _, t in pil.samples]
    flips = batch.params[:, 4].tolist()
    assert 0 < sum(flips) < len(flips)  # both branches exercised
    diff = (x - reference).abs()
    assert diff.max() <= 1.5 * LEVEL  # PIL rounds its resize to uint8; we stay in float
    assert diff.mean() <= 0.5 * LEVEL


def test_eval_samples_match_pil_resize_center_crop(folder: str) -> None:
    pil = ClassificationFolder(folder, eval_transform(72, 64))
    encoded = EncodedImageFolder(folder, train=False)
    batch = collate_encoded([encoded[i] for i in range(len(encoded))])
    assert batch.params[:, :4].eq(-1).all()
    x, _, _ = GpuPreprocess(train=False, crop_size=64, resize_size=72)(batch, torch.device("cpu"))
    reference = torch.stack([pil[i][0] for i in range(len(pil))])
    diff = (x - reference).abs()
    assert diff.max() <= 1.5 * LEVEL and diff.mean() <= 0.5 * LEVEL


def test_train_py_loaders_agree_between_backends(folder: str) -> None:
    """train.py's loaders, --data-backend pil (no workers) and gpu (two workers): same batches, same draws."""
    pil = loaders_from_config(cpu_cfg(folder, "-j", "0", "--train-crop-size", "48", "--data-backend", "pil"), CPU)
    gpu = loaders_from_config(cpu_cfg(folder, "-j", "2", "--train-crop-size", "48", "--data-backend", "gpu"), CPU)
    assert isinstance(gpu.train, GpuDecodeLoader) and len(gpu.train) == len(pil.train) == 2
    assert len(gpu.train.dataset) == len(pil.train.dataset) == 8 and gpu.classes == pil.classes
    for loader in ("train", "val"):
        for (xp, yp, bp), (xg, yg, bg) in zip(getattr(pil, loader), getattr(gpu, loader)):
            assert torch.equal(yp, yg) and bp == bg == 0
            assert xg.shape == xp.shape and (xp - xg).abs().max() <= 1.5 * LEVEL


def test_bad_files_follow_on_bad_image(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    render_image(0, 0, (64, 48)).save(tmp_path / "a" / "good.JPEG")
    (tmp_path / "a" / "broken.JPEG").write_bytes(b"not an image at all")
    skip = EncodedImageFolder(str(tmp_path), train=True)
    with pytest.warns(RuntimeWarning, match="broken.JPEG"):
        batch = collate_encoded([skip[i] for i in range(len(skip))])
    x, y, bad = GpuPreprocess(True, 32)(batch, torch.device("cpu"))
    assert bad == 1 and x.shape == (1, 3, 32, 32) and y.tolist() == [0]
    strict = EncodedImageFolder(str(tmp_path), train=True, on_bad_image="error")
    with pytest.raises(DataError, match="broken.JPEG"):
        strict[[p for p, _ in strict.samples].index(str(tmp_path / "a" / "broken.JPEG"))]


def test_non_jpeg_and_grayscale_files_fall_back(tmp_path) -> None:
    rgb = render_image(0, 1, (96, 64))
    paths = {"png.JPEG": ("PNG", rgb), "gray.JPEG": ("JPEG", rgb.convert("L"))}
    encoded = []
    for name, (fmt, image) in paths.items():
        image.save(tmp_path / name, fmt)
        encoded.append(torch.from_numpy(np.fromfile(tmp_path / name, dtype=np.uint8)))
    decoded = decode_images(encoded, torch.device("cpu"))
    for (name, _), image in zip(paths.items(), decoded):
        expected = np.asarray(Image.open(tmp_path / name).convert("RGB")).transpose(2, 0, 1)
        assert image.shape == (3, 64, 96) and np.abs(image.numpy().astype(int) - expected).max() <= 1, name


def test_channels_last_output_and_bad_eval_sizes(folder: str) -> None:
    encoded = EncodedImageFolder(folder, train=True)
    batch = collate_encoded([encoded[0], encoded[1]])
    x, _, _ = GpuPreprocess(True, 32, memory_format=torch.channels_last)(batch, torch.device("cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (2, 3, 32, 32)
    plain, _, _ = GpuPreprocess(True, 32)(batch, torch.device("cpu"))
    assert plain.is_contiguous() and torch.equal(x, plain)  # the same values, only the layout differs
    with pytest.raises(DataError, match="val resize size 200 must be >= val crop size 224") as raised:
        GpuPreprocess(False, 224, 200)
    # train.py's words for the same error (library messages name parameters by meaning, the CLI by flag)
    assert data_error_message(raised.value) == "GPU decode: --val-resize-size 200 must be >= --val-crop-size 224"


def test_train_py_with_gpu_backend_trains_like_pil(folder: str, tmp_path) -> None:
    """train.py end to end (train + eval + metrics) with either backend: same data, same draws, same numbers up to
    the backends' rounding difference."""
    from partialconv.programs import train

    base = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "4", "--epochs", "1", "--seed", "1"]
    base += ["--deterministic", "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32"]
    base += ["--data_train", folder, "--data_val", folder, "--no-tensorboard", "--lr", "0.01"]
    records = {}
    for backend in ("pil", "gpu"):
        out = tmp_path / backend
        assert train.cli([*base, "--data-backend", backend, "--output-dir", str(out)]) == 0
        (records[backend],) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss"):
        assert records["gpu"][key] == pytest.approx(records["pil"][key], rel=1e-2), key
    assert records["gpu"]["val_acc1"] == records["pil"]["val_acc1"]
    assert "data_backend: gpu" in (tmp_path / "gpu" / "config.yaml").read_text()
