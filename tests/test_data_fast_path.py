"""The ``pil_fast`` train pipeline is accuracy-equivalent to the ``pil`` one (torchvision's transforms): the same crop
and flip draws for the same per-sample seed, pixels within a resampling difference, uint8 batches until
``batch_to_device`` which normalises them like ``Normalize``, and the same bad-image policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from benchmarks._jpeg_folder import make_jpeg_folder
from partialconv.data import BadImageError, ClassificationFolder, DataParams, batch_to_device, build_loaders
from partialconv.data.datasets import FastTrainFolder
from partialconv.data.fast_pil import FastTrainCrop, draft_scale
from partialconv.data.loaders import normalize_images
from partialconv.data.presets import IMAGENET_MEAN, IMAGENET_STD, train_transform
from partialconv.engine.distributed import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # 200x150 photo-like JPEGs (a fifth portrait): 48 px crops use reduced-DCT-scale decodes (draft) for the larger
    # crops and full-size decodes for the smaller ones, so both branches are compared with the reference.
    return make_jpeg_folder(tmp_path_factory.mktemp("jpeg"), num_images=24, num_classes=3, size=(200, 150))


def _levels(x: torch.Tensor) -> torch.Tensor:
    """A normalised float crop back in uint8 levels (float, unrounded)."""
    return (x * STD + MEAN) * 255


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (400, 40), (333, 333), (64, 48)])
def test_crop_and_flip_draws_are_torchvisions_for_the_same_seed(size: tuple[int, int]) -> None:
    width, height = size
    crop = FastTrainCrop(224)
    flip = v2.RandomHorizontalFlip()
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for seed in range(100):
        torch.manual_seed(seed)
        ours = crop.params(width, height)
        torch.manual_seed(seed)
        box = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        flipped = flip(image) is not image
        assert ours == (*box, flipped)


def test_draft_scale_only_when_the_crop_is_shrunk_at_least_that_much() -> None:
    assert draft_scale(447, 1000, 224) == 1 and draft_scale(448, 448, 224) == 2
    assert draft_scale(900, 1000, 224) == 4 and draft_scale(1792, 1800, 224) == 8 and draft_scale(100, 90, 224) == 1


def test_crops_match_the_reference_pipeline_within_resampling_differences(folder: Path) -> None:
    """Several hundred crops: the same (index, seed) keys through the reference ``train_transform`` and the fast
    pipeline. A different crop box or flip would differ by tens of levels on these textured images."""
    crop_size = 48
    fast = FastTrainFolder(folder, FastTrainCrop(crop_size))
    drafted = 0
    diffs, maxima = [], []
    reference = ClassificationFolder(folder, train_transform(crop_size))
    for index in range(len(fast)):
        for seed in range(index * 100, index * 100 + 13):
            ours, target = fast[(index, seed)]
            ref, ref_target = reference[(index, seed)]
            assert target == ref_target and ours.dtype == torch.uint8 and ours.shape == (crop_size, crop_size, 3)
            diff = (ours.permute(2, 0, 1).float() - _levels(ref)).abs()
            diffs.append(diff.mean().item())
            maxima.append(diff.max().item())
            torch.manual_seed(seed)
            with Image.open(fast.samples[index][0]) as img:
                _, _, h, w, _ = fast.crop.params(*img.size)
            drafted += draft_scale(w, h, crop_size) > 1
    assert len(diffs) >= 300 and 50 <= drafted <= len(diffs) - 50  # both decode branches exercised
    assert np.mean(diffs) < 2.0, np.mean(diffs)
    assert np.percentile(diffs, 99) < 5.0 and max(maxima) <= 96, (np.percentile(diffs, 99), max(maxima))


def test_full_size_decode_path_is_the_reference_resampling(folder: Path) -> None:
    """Without a reduced-scale decode the only difference is the resampling step (one pass, PIL's kernel in torch):
    about a rounding level."""
    crop_size = 160  # larger than most crops: never drafted
    fast = FastTrainFolder(folder, FastTrainCrop(crop_size))
    reference = ClassificationFolder(folder, train_transform(crop_size))
    for index in range(0, len(fast), 3):
        ours, _ = fast[(index, index)]
        ref, _ = reference[(index, index)]
        diff = (ours.permute(2, 0, 1).float() - _levels(ref)).abs()
        assert diff.mean() < 0.75 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_device_normalisation_equals_normalize(fused: bool, channels_last: bool) -> None:
    x = torch.randint(0, 256, (4, 17, 9, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = x.permute(0, 3, 1, 2)  # what collate_hwc_uint8 yields
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = normalize_images(x, fmt, fused=fused)
    expected = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x.float() / 255)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the CPU passes (per-channel planes, tiled operands) compute the fused kernel's values, bit for bit
    assert torch.equal(out, normalize_images(x, fmt, fused=not fused))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_uint8_until_batch_to_device(folder: Path, workers: int) -> None:
    def loaders(backend: str):
        params = DataParams(folder, folder, batch_size=8, workers=workers, backend=backend, train_crop_size=48)
        return build_loaders(params, CPU)

    fast, ref = loaders("pil_fast"), loaders("pil")
    assert fast.backend == "pil_fast"
    for (x, y, bad), (xr, yr, badr) in zip(fast.train, ref.train):
        assert (
            x.dtype == torch.uint8 and x.shape == (8, 3, 48, 48) and x.is_contiguous(memory_format=torch.channels_last)
        )
        assert xr.dtype == torch.float32 and torch.equal(y, yr) and bad == badr == 0
        images, targets = batch_to_device(x, y, torch.device("cpu"), channels_last=True)
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(
            images, v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x.float() / 255), rtol=0, atol=1e-6
        )
        assert torch.equal(targets, y)
        levels = (images - xr).abs() * 255 * STD  # the normalised difference in uint8 levels
        assert levels.mean() < 3.0  # per batch of 8 (the per-crop bound is tested above over 300 crops)
    if workers:  # the same keys give the same batches whatever the worker count
        params0 = DataParams(folder, folder, batch_size=8, workers=0, backend="pil_fast", train_crop_size=48)
        for (a, _, _), (b, _, _) in zip(build_loaders(params0, CPU).train, fast.train):
            assert torch.equal(a, b)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("crop_size", [16, 224])  # 16: the draft (PIL) decode; 224: the full-size libjpeg-turbo one
def test_truncated_jpeg_follows_the_bad_image_policy(tmp_path: Path, crop_size: int) -> None:
    root = make_jpeg_folder(tmp_path / "jpeg", num_images=8, num_classes=2, size=(200, 150))
    bad = sorted(root.rglob("*.JPEG"))[0]
    _truncate(bad)
    crop = FastTrainCrop(crop_size)
    skipping = FastTrainFolder(root, crop, "skip")
    index = next(i for i, (p, _) in enumerate(skipping.samples) if Path(p) == bad)
    with Image.open(bad) as img:
        size = img.size  # the header is intact
    scales = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, _, h, w, _ = crop.params(*size)
        scales.add(draft_scale(w, h, crop_size))
        assert skipping[(index, seed)] is None
    assert (max(scales) > 1) == (crop_size == 16)
    with pytest.raises(BadImageError, match=bad.name):
        FastTrainFolder(root, crop, "error")[(index, 0)]
    params = DataParams(root, root, batch_size=8, workers=2, backend="pil_fast", train_crop_size=crop_size)
    total_bad = sum(b for _, _, b in build_loaders(params, CPU).train)
    assert total_bad == 1


def test_loader_benchmark_measures_the_torchvision_reference_side_by_side(tmp_path: Path) -> None:
    import benchmarks.train_throughput as tt

    jpegs = make_jpeg_folder(tmp_path / "jpeg", num_images=16, num_classes=2, size=(120, 90))
    argv = ["--data", "loader-only", "--data-dir", str(jpegs), "--data-backend", "pil_fast", "-j", "0", "1"]
    argv += ["-b", "4", "--image-size", "32", "--warmup", "1", "--steps", "1", "--windows", "3"]
    payload = tt.main(argv + ["--pixel-diff", "20", "--output-dir", str(tmp_path / "out")])
    rows = {(r["pipeline"], r["workers"]): r for r in payload["loader"]}
    assert set(rows) == {("pil_fast", 0), ("torchvision", 0), ("pil_fast", 1), ("torchvision", 1)}
    for workers in (0, 1):
        ours, ref = rows[("pil_fast", workers)], rows[("torchvision", workers)]
        per_window = sorted(a / b for a, b in zip(ours["rates"], ref["rates"]))
        assert ours["vs_torchvision"] == pytest.approx(per_window[1]) and ref["vs_torchvision"] is None
    diff = payload["pixel_difference"]
    assert diff["all"]["crops"] == 20 and diff["all"]["mean_levels"] < 2.0
    md = next((tmp_path / "out").glob("*_loader-only.md")).read_text()
    assert "| torchvision | train | 1 |" in md and "--pixel-diff 20" in md


def test_a_seeded_sample_leaves_the_callers_rng_alone(folder: Path) -> None:
    fast = FastTrainFolder(folder, FastTrainCrop(32))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = fast[(0, 7)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(fast[(0, 7)][0], first)  # the seed alone decides the crop


@pytest.mark.parametrize("mode", ["L", "CMYK", "PNG"])
def test_grayscale_cmyk_and_png_files_match_the_reference(tmp_path: Path, folder: Path, mode: str) -> None:
    """Files off the common path (grayscale and CMYK JPEGs, PNGs) go through PIL's decode and conversion to RGB
    exactly as the reference does, at full size and at reduced scale."""
    source = sorted(folder.rglob("*.JPEG"))[0]
    root = tmp_path / "odd"
    (root / "a").mkdir(parents=True)
    with Image.open(source) as img:
        if mode == "PNG":
            img.save(root / "a" / "x.png")
        else:
            img.convert(mode).save(root / "a" / "x.jpg", quality=92)
    for crop_size in (16, 160):  # mostly drafted (JPEG) / never drafted
        fast = FastTrainFolder(root, FastTrainCrop(crop_size))
        reference = ClassificationFolder(root, train_transform(crop_size))
        for seed in range(10):
            ours, ref = fast[(0, seed)][0], reference[(0, seed)][0]
            diff = (ours.permute(2, 0, 1).float() - _levels(ref)).abs()
            limit = 3.0 if crop_size == 16 and mode != "PNG" else 0.75
            assert ours.shape == (crop_size, crop_size, 3) and diff.mean() < limit, (crop_size, seed, diff.mean())


def test_eval_batches_are_uint8_and_normalise_to_the_reference_exactly(folder: Path) -> None:
    def val(backend: str):
        params = DataParams(folder, folder, 8, workers=1, backend=backend, val_resize_size=64, val_crop_size=56)
        return build_loaders(params, CPU).val

    for (x, y, _), (xr, yr, _) in zip(val("pil_fast"), val("pil")):
        assert x.dtype == torch.uint8 and x.shape == (8, 3, 56, 56) and torch.equal(y, yr)
        images, _ = batch_to_device(x, y, torch.device("cpu"), channels_last=False)
        torch.testing.assert_close(images, xr, rtol=0, atol=1e-5)  # same PIL resize and crop: float rounding only


def test_pil_fast_resumes_exactly_after_a_mid_epoch_signal(tmp_path: Path) -> None:
    """test_resume_exact's recipe (a dropout model, SIGUSR1 after a training step, --resume auto) on pil_fast:
    straight with -j 0, interrupted and resumed with one persistent worker: the same weights and records."""
    import signal

    import test_resume_exact as rx

    from partialconv.data.demo import make_demo_dataset
    from partialconv.programs import train

    data = make_demo_dataset(tmp_path / "d", train_per_class=4, val_per_class=2, size=20)
    fast = ["--data-backend", "pil_fast"]
    straight, out = tmp_path / "straight", tmp_path / "preempted"
    rx.DropoutCNN.signal_after, rx.DropoutCNN.forwards = None, 0
    try:
        assert train.cli([*rx.argv(data, straight), "--epochs", "2", *fast]) == 0
        rx.DropoutCNN.signal_after, rx.DropoutCNN.forwards = 7, 0
        assert train.cli([*rx.argv(data, out), "--epochs", "2", "-j", "1", *fast]) == 128 + signal.SIGUSR1
        rx.DropoutCNN.signal_after = None
        assert train.cli([*rx.argv(data, out), "--epochs", "2", "--resume", "auto", "-j", "1", *fast]) == 0
    finally:
        rx.DropoutCNN.signal_after, rx.DropoutCNN.forwards = None, 0
    rx.assert_same_weights(straight, out)
    assert rx.records(out) == rx.records(straight)
