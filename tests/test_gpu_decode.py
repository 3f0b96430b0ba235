"""The GPU decode path (run on CPU here) must preprocess exactly like the PIL path: same crop/flip draws from the same
RNG state, same resize interpolation and normalisation within a rounding level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from benchmarks._jpeg_folder import make_jpeg_folder, render_image
from partialconv.data.gpu_decode import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncodedImageFolder,
    GpuPreprocess,
    build_gpu_loader,
    collate_encoded,
    decode_images,
    sample_train_params,
)

LEVEL = 1 / 255 / min(IMAGENET_STD)  # one uint8 level in normalised units (upper bound over channels)
NORMALIZE = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(make_jpeg_folder(tmp_path_factory.mktemp("jpeg"), num_images=8, num_classes=2, size=(160, 120)))


def pil_train_transform(size: int) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.ToTensor(), NORMALIZE])


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (40, 400), (333, 333)])
def test_crop_params_equal_torchvision_draws_from_same_rng_state(height: int, width: int) -> None:
    image = Image.new("RGB", (width, height))
    flip = T.RandomHorizontalFlip()
    for seed in range(40):
        torch.manual_seed(seed)
        ours = sample_train_params(height, width)
        torch.manual_seed(seed)
        crop = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        flipped = flip(image) is not image
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


def test_train_batch_matches_pil_path(folder: str) -> None:
    pil = datasets.ImageFolder(folder, pil_train_transform(64))
    encoded = EncodedImageFolder(folder)
    assert encoded.samples == pil.samples
    torch.manual_seed(7)
    reference = torch.stack([pil[i][0] for i in range(len(pil))])
    torch.manual_seed(7)
    batch = collate_encoded(train=True)([encoded[i] for i in range(len(encoded))])
    x, y = GpuPreprocess(train=True, crop_size=64)(batch, torch.device("cpu"))
    assert x.shape == reference.shape and x.dtype == torch.float32
    assert y.tolist() == [t for _, t in pil.samples]
    flips = batch.params[:, 4].tolist()
    assert 0 < sum(flips) < len(flips)  # both branches exercised
    diff = (x - reference).abs()
    assert diff.max() <= 1.5 * LEVEL  # PIL rounds each resize to uint8; we stay in float
    assert diff.mean() <= 0.5 * LEVEL


def test_eval_batch_matches_pil_resize_center_crop(folder: str) -> None:
    pil = datasets.ImageFolder(
        folder, T.Compose([T.Resize(72, antialias=True), T.CenterCrop(64), T.ToTensor(), NORMALIZE])
    )
    encoded = EncodedImageFolder(folder)
    batch = collate_encoded(train=False)([encoded[i] for i in range(len(encoded))])
    x, _ = GpuPreprocess(train=False, crop_size=64, resize_size=72)(batch, torch.device("cpu"))
    reference = torch.stack([pil[i][0] for i in range(len(pil))])
    diff = (x - reference).abs()
    assert diff.max() <= 1.5 * LEVEL and diff.mean() <= 0.5 * LEVEL


def test_seeded_loaders_draw_identical_augmentations(folder: str) -> None:
    """Through real DataLoaders with two workers: same generator seed -> same order, crops and flips."""
    pil = DataLoader(
        datasets.ImageFolder(folder, pil_train_transform(48)),
        batch_size=4,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(3),
    )
    gpu = build_gpu_loader(folder, True, 4, 2, "cpu", crop_size=48, generator=torch.Generator().manual_seed(3))
    assert len(gpu) == len(pil) == 2 and gpu.sampler is gpu.loader.sampler
    for (xp, yp), (xg, yg) in zip(pil, gpu):
        assert torch.equal(yp, yg)
        assert (xp - xg).abs().max() <= 1.5 * LEVEL


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


def test_channels_last_output_and_bad_interpolation(folder: str) -> None:
    encoded = EncodedImageFolder(folder)
    batch = collate_encoded(train=True)([encoded[0], encoded[1]])
    x, _ = GpuPreprocess(True, 32, memory_format=torch.channels_last)(batch, torch.device("cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        GpuPreprocess(True, interpolation="nearest")
