"""The ``turbo`` backend, train.py's default: decoding only the crop's region gives the reference's crops (the same
boxes and flips as torchvision's RandomResizedCrop for the same per-sample seed, pixels within one uint8 level), the
eval crop is ``Resize`` + ``CenterCrop``'s, and what libjpeg-turbo does not take goes through PIL with today's
results and bad-image policy; without the decoder, ``auto`` falls back to ``pil`` with one warning."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos
from torchvision.transforms import InterpolationMode, RandomResizedCrop, v2

from partialconv.config import parse_config
from partialconv.data import BadImageError, ClassificationFolder, DataParams, build_loaders, libturbojpeg
from partialconv.data.cropped_decode import CroppedEvalDecode, CroppedTrainDecode
from partialconv.data.fast_pil import eval_crop_uint8
from partialconv.data.imageio import open_rgb
from partialconv.data.presets import eval_transform, train_transform
from partialconv.data.sampler import seeded_draws
from partialconv.engine.distributed import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
tj = pytest.importorskip("turbojpeg") and libturbojpeg.load()  # the dev extra installs the decoder


def _jpeg(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _photos(max_side: int) -> list[np.ndarray]:
    """skimage's bundled photos (colour and grayscale), shrunk so the longer side is ``max_side``."""
    images = []
    for array in (photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket(), photos.camera()):
        image = Image.fromarray(array)
        scale = max_side / max(image.size)
        images.append(np.asarray(image.resize((round(image.width * scale), round(image.height * scale)))))
    return images


@pytest.fixture(scope="module")
def encoded() -> list[bytes]:
    """Small JPEGs in the chroma layouts ImageNet has (4:2:0 most, 4:2:2, 4:4:4, grayscale), odd sizes included
    (partial iMCUs at the right and bottom edges), one progressive."""
    out = []
    for k, array in enumerate(_photos(77)):
        for subsampling in ("4:2:0", "4:2:2", "4:4:4"):
            if array.ndim == 3 or subsampling == "4:2:0":
                out.append(_jpeg(array, subsampling=subsampling, progressive=k == 1 and subsampling == "4:2:0"))
    return out


def test_region_decode_is_bit_identical_to_the_full_decode(encoded: list[bytes]) -> None:
    """Through the region widening of cropped_decode (an iMCU left, two pixels right: the chroma upsampling reads
    those neighbours), random crops are exactly PIL's full-image pixels."""
    rng = random.Random(0)
    crop = CroppedTrainDecode(16)
    for data in encoded:
        full = np.asarray(open_rgb(io.BytesIO(data)))
        height, width = full.shape[:2]
        for _ in range(25):
            x, y = rng.randrange(width), rng.randrange(height)
            w, h = rng.randint(1, width - x), rng.randint(1, height - y)
            torch.manual_seed(0)
            region = crop.decode_region(data, x, y, w, h)
            assert region is not None and np.array_equal(region, full[y : y + h, x : x + w]), (x, y, w, h)


def test_train_crops_are_the_references_within_one_level_over_1000_crops(encoded: list[bytes], tmp_path) -> None:
    """RandomResizedCrop + RandomHorizontalFlip (torchvision v2 on the PIL decode) against the cropped decode with
    the same seeds: the same boxes (compared directly) and pixels at most one level apart."""
    crop_size = 24
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )
    ours = CroppedTrainDecode(crop_size)
    decoded = 0
    original = libturbojpeg.TurboJPEG.decode

    def counting(self, *args, **kwargs):
        nonlocal decoded
        decoded += 1
        return original(self, *args, **kwargs)

    crops, worst, mean = 0, 0, []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(libturbojpeg.TurboJPEG, "decode", counting)
        for data in encoded:
            image = open_rgb(io.BytesIO(data))
            for seed in range(84):
                with seeded_draws(seed):
                    out = ours(data)
                with seeded_draws(seed):
                    box = ours.params(*image.size)[:4]
                with seeded_draws(seed):
                    ref = reference(image)
                with seeded_draws(seed):
                    ref_box = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
                assert box == tuple(ref_box)
                assert out.dtype == torch.uint8 and out.shape == (crop_size, crop_size, 3)
                diff = (out.permute(2, 0, 1).int() - ref.int()).abs()
                worst, crops = max(worst, diff.max().item()), crops + 1
                mean.append(diff.float().mean().item())
    assert crops >= 1000 and decoded == crops  # every crop went through the region decode, none through PIL
    assert worst <= 1 and np.mean(mean) < 0.1, (worst, np.mean(mean))
    # bytes in memory and a file give the same crop (the shards reader's entry point is the bytes one)
    path = tmp_path / "x.jpg"
    path.write_bytes(encoded[0])
    with seeded_draws(7):
        from_file = ours(path)
    with seeded_draws(7):
        assert torch.equal(ours(encoded[0]), from_file)


@pytest.mark.parametrize("sizes", [(56, 48), (64, 48), (40, 36), (24, 20)])
def test_eval_crop_is_resize_and_center_crop(encoded: list[bytes], sizes: tuple[int, int]) -> None:
    """torch's resize, given the reference's scale factors, of the decoded rows and columns up to the centre crop's
    last taps is the reference's Resize + CenterCrop up to the two kernels' rounding (a level, rarely two)."""
    resize, crop = sizes
    ours, reference = CroppedEvalDecode(resize, crop), eval_crop_uint8(resize, crop)
    for data in encoded:
        diff = (ours(data).int() - reference(open_rgb(io.BytesIO(data))).int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.05, (diff.max(), diff.float().mean())


def _decoding_with_calls(decode: CroppedEvalDecode, data: bytes) -> tuple[torch.Tensor, list[tuple[tuple, int]]]:
    """``decode(data)`` and the (region, DCT scale) of each libturbojpeg decode it made."""
    calls = []
    original = libturbojpeg.TurboJPEG.decode

    def recorded(self, d, region, scale=1, gray=False):
        calls.append((region, scale))
        return original(self, d, region, scale, gray)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(libturbojpeg.TurboJPEG, "decode", recorded)
        return decode(data), calls


def test_eval_crop_decodes_only_up_to_the_last_rows_and_columns_it_reads() -> None:
    """An ImageNet-sized 500x375 JPEG at 256/224: the rows below and the columns right of the centre crop's last
    taps are not decoded (the columns to a chroma sample past them), and the crop is still the reference's."""
    data = _jpeg(np.asarray(Image.fromarray(_photos(400)[0]).resize((500, 375))))
    out, calls = _decoding_with_calls(CroppedEvalDecode(256, 224), data)
    seen = [region for region, _ in calls]
    # resized to 341x256 the crop is columns 58..281 and rows 16..239: they end at source x 282 * 500/341 = 413.5
    # and y 240 * 375/256 = 351.6; the taps reach 1.47 past that, +1 for rounding: 416 columns (+2 for the chroma
    # sample right of them) and 355 rows of 500 and 375
    assert seen == [(0, 0, 418, 355)], seen
    diff = (out.int() - eval_crop_uint8(256, 224)(open_rgb(io.BytesIO(data))).int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.05, (diff.max(), diff.float().mean())


def test_eval_crop_decodes_at_a_reduced_dct_scale_where_the_resize_shrinks_enough() -> None:
    """A resize by 4x or more decodes at 1/2 scale (then resizes by another 2x or more): a small, bounded change."""
    array = _photos(400)[0]
    data = _jpeg(array)
    out, calls = _decoding_with_calls(CroppedEvalDecode(100, 88), data)
    scales = [scale for _, scale in calls]
    assert scales == [2]
    diff = (out.int() - eval_crop_uint8(100, 88)(open_rgb(io.BytesIO(data))).int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 24, (diff.float().mean(), diff.max())


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """One class of what ImageNet-like folders hold besides baseline colour JPEGs, in train and val."""
    photo = _photos(64)[1]
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, "JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    good = _jpeg(photo)
    files = {
        "a_baseline.jpg": good,
        "b_cmyk.jpg": cmyk.getvalue(),
        "c_progressive.jpg": _jpeg(photo, progressive=True),
        "d_gray.jpg": _jpeg(np.asarray(Image.fromarray(photo).convert("L"))),
        "e_png.JPEG": png.getvalue(),
        "f_truncated.jpg": good[: len(good) // 2],
        "g_garbage.jpg": b"\xff\xd8\xff\xe0 this is no JPEG at all" * 20,
        "h_444.jpg": _jpeg(photo, subsampling="4:4:4"),
    }
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        for name, data in files.items():
            (tmp_path / split / "only" / name).write_bytes(data)
    return tmp_path


def _levels(x: torch.Tensor) -> torch.Tensor:
    from partialconv.data.presets import IMAGENET_MEAN, IMAGENET_STD

    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255 + torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255


def test_default_path_keeps_todays_results_for_cmyk_progressive_gray_png_and_bad_files(odd_folder: Path) -> None:
    """The default (``auto``) backend over every kind of file: the same samples decode or are skipped as under the
    ``pil`` backend (torchvision's transforms), with pixels within a level; ``error`` names the first bad file."""
    params = DataParams(odd_folder / "train", odd_folder / "val", batch_size=4, workers=0, train_crop_size=32)
    loaders = build_loaders(params, CPU)
    assert loaders.backend == "turbo"
    train, val = loaders.train.dataset, loaders.val.dataset
    ref_train = ClassificationFolder(odd_folder / "train", train_transform(32))
    ref_val = ClassificationFolder(odd_folder / "val", eval_transform(256, 224))
    skipped = []
    # within a level for the train crops; the eval crop's PIL box arithmetic adds a rare second one
    for ours, ref, levels in ((train, ref_train, 1), (val, ref_val, 2)):
        for index, (path, _) in enumerate(ours.samples):
            got, want = ours[(index, 1000 + index)], ref[(index, 1000 + index)]
            assert (got is None) == (want is None), path
            if got is None:
                skipped.append(Path(path).name)
                continue
            diff = (got[0].permute(2, 0, 1).float() - _levels(want[0])).abs()
            assert diff.max() <= levels + 0.01, (path, diff.max())
    assert skipped == ["f_truncated.jpg", "g_garbage.jpg"] * 2
    strict = build_loaders(DataParams(**{**params.__dict__, "on_bad_image": "error"}), CPU).train.dataset
    with pytest.raises(BadImageError, match="f_truncated.jpg"):
        strict[(5, 0)]


def test_without_the_decoder_auto_falls_back_to_pil_with_one_warning(odd_folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(libturbojpeg, "_loaded", None)
    monkeypatch.setattr(libturbojpeg, "_reason", None)
    monkeypatch.setattr(libturbojpeg, "_candidates", lambda: [])
    params = DataParams(odd_folder / "train", odd_folder / "val", batch_size=4, workers=0)
    assert build_loaders(params, CPU).backend == "pil"
    lines = [line for line in capsys.readouterr().err.splitlines() if "turbo" in line]
    assert len(lines) == 1 and "using pil" in lines[0] and "fast-decode" in lines[0], lines
    with pytest.raises(libturbojpeg.Unavailable):  # named, when asked for by name
        libturbojpeg.load()


def test_auto_takes_pil_silently_for_policy_augmentation(odd_folder: Path, capsys) -> None:
    params = DataParams(odd_folder / "train", odd_folder / "val", batch_size=4, workers=0, auto_augment="ra")
    assert build_loaders(params, CPU).backend == "pil"
    assert "turbo" not in capsys.readouterr().err


def test_train_py_defaults_to_auto() -> None:
    assert parse_config([]).data_backend == "auto"


def test_loader_benchmark_reports_the_default_path_per_cpu_second_beside_the_reference(tmp_path: Path) -> None:
    import benchmarks.train_throughput as tt
    from benchmarks._jpeg_folder import make_jpeg_folder

    jpegs = make_jpeg_folder(tmp_path / "jpeg", num_images=16, num_classes=2, size=(120, 90))
    argv = ["--data", "loader-only", "--data-dir", str(jpegs), "-j", "1", "--split", "train", "val", "-b", "4"]
    argv += ["--image-size", "32", "--warmup", "1", "--steps", "2", "--windows", "2", "--note", "busy 2-core test"]
    payload = tt.main(argv + ["--output-dir", str(tmp_path / "out")])
    rows = {(r["pipeline"], r["split"]): r for r in payload["loader"]}
    assert set(rows) == {(p, s) for p in ("turbo", "torchvision") for s in ("train", "val")}  # auto -> turbo
    for split in ("train", "val"):
        ours, ref = rows[("turbo", split)], rows[("torchvision", split)]
        cpu = [r["cpu_ms_per_image_main"] + r["cpu_ms_per_image_workers"] for r in (ours, ref)]
        assert ours["img_per_cpu_s"] == pytest.approx(1000 / cpu[0])
        assert ours["vs_torchvision_cpu"] == pytest.approx(cpu[1] / cpu[0]) and ref["vs_torchvision_cpu"] is None
    md = next((tmp_path / "out").glob("*_loader-only.md")).read_text()
    assert "| turbo | val | 1 |" in md and "img per CPU-s" in md and "machine: busy 2-core test" in md


def test_decode_parses_the_header_again_unless_header_just_read_the_same_bytes(encoded: list[bytes]) -> None:
    """decode() skips its own header parse only right after header() of the very same bytes: after the header of
    another (smaller) image, a region inside the larger one is still accepted and decoded exactly."""
    small, large = sorted(encoded[:4], key=lambda d: tj.header(d).width * tj.header(d).height)[::3]
    size = tj.header(large)
    assert size.width * size.height > tj.header(small).width * tj.header(small).height
    for first in (small, large):
        tj.header(first)
        pixels = tj.decode(large, (0, 0, size.width, size.height))
        assert np.array_equal(pixels, np.asarray(open_rgb(io.BytesIO(large))))
