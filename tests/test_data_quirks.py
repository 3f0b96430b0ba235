"""Data quirks real datasets have: Jupyter/macOS debris (hidden folders and files) and 16-bit grayscale PNGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partialconv.data import ClassificationFolder
from partialconv.data.demo import make_demo_dataset
from partialconv.data.gpu_decode import EncodedImageFolder, decode_images
from partialconv.data.inpainting import load_image
from partialconv.data.masks import list_images, load_mask_png
from partialconv.programs import train


@pytest.fixture(scope="module")
def debris_data(tmp_path_factory) -> Path:
    """The demo layout plus what Jupyter and macOS leave behind: ``.ipynb_checkpoints/`` at the train root (with an
    image in it, as Jupyter's copies are), one inside a class folder, a ``._`` AppleDouble file and a ``.DS_Store``."""
    root = make_demo_dataset(tmp_path_factory.mktemp("quirks") / "demo", train_per_class=4, val_per_class=2, size=24)
    train_dir = root / "train"
    first = sorted(p for p in train_dir.iterdir() if p.is_dir())[0]
    some_image = sorted(first.glob("*.png"))[0]
    (train_dir / ".ipynb_checkpoints").mkdir()
    shutil.copy(some_image, train_dir / ".ipynb_checkpoints" / "x-checkpoint.png")
    (first / ".ipynb_checkpoints").mkdir()
    shutil.copy(some_image, first / ".ipynb_checkpoints" / "0000-checkpoint.png")
    (first / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # not an image at all
    (train_dir / ".DS_Store").write_bytes(b"\x00")
    return root


def test_hidden_entries_are_neither_classes_nor_samples(debris_data):
    train_set = ClassificationFolder(debris_data / "train")
    val_set = ClassificationFolder(debris_data / "val")
    assert train_set.classes == val_set.classes and train_set.class_to_idx == val_set.class_to_idx
    assert len(train_set.classes) == 10 and len(train_set) == 40
    assert not any("/." in path for path, _ in train_set.samples)
    assert set(train_set.ignored) == {
        str(debris_data / "train" / ".ipynb_checkpoints"),
        str(debris_data / "train" / train_set.classes[0] / ".ipynb_checkpoints"),
        str(debris_data / "train" / train_set.classes[0] / "._0000.png"),
    }
    # the GPU-decode backend scans the same way, sample for sample
    encoded = EncodedImageFolder(str(debris_data / "train"), train=True)
    assert encoded.classes == train_set.classes and encoded.samples == train_set.samples


@pytest.mark.parametrize("backend", ["pil", "gpu", "auto"])
def test_training_with_hidden_folders_warns_once_and_learns_labels_that_agree(debris_data, tmp_path, capsys, backend):
    out = tmp_path / "run"
    argv = [
        "-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--epochs", "1", "--seed", "1",
        "--train-crop-size", "16", "--val-resize-size", "20", "--val-crop-size", "16", "--no-tensorboard",
        "--data_train", str(debris_data / "train"), "--data_val", str(debris_data / "val"),
        "--output-dir", str(out), "--data-backend", backend,
    ]  # fmt: skip
    assert train.cli(argv) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "ignored hidden" in line]
    assert len(warnings) == 1 and ".ipynb_checkpoints" in warnings[0] and "._0000.png" in warnings[0]
    assert "bad image" not in err  # the AppleDouble file was never read as an image
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["bad_images"] == 0
    assert yaml_num_classes(out) == 10


def yaml_num_classes(run_dir: Path) -> int:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["num_classes"]


@pytest.fixture()
def png16(tmp_path) -> tuple[Path, np.ndarray]:
    """A 16-bit grayscale PNG whose values span the whole 16-bit range (what scanners and microscopes write)."""
    values = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL really reads it as 16 bits (else this test checks nothing)
    return path, (values >> 8).astype(np.uint8)


def test_16bit_png_is_scaled_not_clipped_by_every_loader(png16, tmp_path):
    path, expected = png16
    rgb = np.repeat(expected[None], 3, axis=0)
    # classification (PIL backend)
    (tmp_path / "cls" / "a").mkdir(parents=True)
    shutil.copy(path, tmp_path / "cls" / "a" / "x.png")
    image, _ = ClassificationFolder(tmp_path / "cls")[0]
    assert np.array_equal(np.asarray(image).transpose(2, 0, 1), rgb)
    # inpainting images and masks
    assert torch.equal(load_image(path), torch.from_numpy(rgb).float() / 255)
    assert np.array_equal(load_mask_png(path), (expected < 128).astype(np.uint8))
    # GPU-decode backend (torchvision decodes 16-bit PNGs as uint16)
    data = torch.from_numpy(np.frombuffer(path.read_bytes(), dtype=np.uint8).copy())
    (decoded,) = decode_images([data], torch.device("cpu"))
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, torch.from_numpy(rgb))


def test_inpainting_folders_skip_hidden_files(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ("a.png", "sub/b.png", ".ipynb_checkpoints/a-checkpoint.png", "sub/._b.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / rel, format="PNG")
    assert list_images(tmp_path, (".png",)) == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
