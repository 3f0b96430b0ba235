"""Inpainting-program and benchmark flags the README promises, checked by their effect: train_inpainting.py's
--masks, --val-data and --loss-weights, eval_inpainting.py's mask-folder buckets (with L1 values computed by hand),
and padding_benchmark.py's --no-report."""

from __future__ import annotations

import csv
import importlib
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from partialconv.data.inpainting import InpaintingDataset
from partialconv.data.masks import save_mask_png
from partialconv.engine.distributed import DistInfo
from partialconv.losses.inpainting import DEFAULT_WEIGHTS
from partialconv.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def load_script(name: str):
    return importlib.import_module(f"partialconv.programs.{name}")  # scripts/<name>.py runs it


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).resize((48, 40)).save(root / f"{name}.png")
    return root


def train_args(photos: Path, vgg_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(photos), "--vgg-weights", str(vgg_file), "--output-dir", str(out), "--image-size", "32",
        "--layer-size", "3", "-b", "2", "-j", "0", "--device", "cpu", "--val-images", "3", *extra,
    ]  # fmt: skip


def test_masks_folder_supplies_the_training_masks(photos, vgg_file, tmp_path):
    """A folder holding one hole-free mask: every training mask is hole-free (augmentation never invents holes);
    without --masks the generated masks always have holes."""
    script = load_script("train_inpainting")
    (tmp_path / "masks").mkdir()
    save_mask_png(np.ones((64, 64)), tmp_path / "masks" / "none.png")
    args = script.parse_args(train_args(photos, vgg_file, tmp_path / "r", "--masks", str(tmp_path / "masks")))
    train_loader, _ = script.build_data(args, CPU, 0)
    # the training stream is endless: 6 steps of 2 (every photo drawn several times)
    masks = torch.cat([mask for _, mask, _ in itertools.islice(train_loader, 6)])
    assert masks.shape == (12, 1, 32, 32) and bool((masks == 1).all())
    generated, _ = script.build_data(script.parse_args(train_args(photos, vgg_file, tmp_path / "r")), CPU, 0)
    for _, mask, _ in itertools.islice(generated, 6):
        assert bool(((mask == 0).flatten(1).float().mean(1) > 0.01).all())


def test_val_data_is_the_validation_folder(photos, vgg_file, tmp_path):
    (tmp_path / "val").mkdir()
    Image.new("RGB", (40, 36), (10, 200, 30)).save(tmp_path / "val" / "green.png")
    script = load_script("train_inpainting")
    args = script.parse_args(train_args(photos, vgg_file, tmp_path / "r", "--val-data", str(tmp_path / "val")))
    _, val_loader = script.build_data(args, CPU, 0)
    targets = torch.cat([target for _, _, target in val_loader])
    assert targets.shape == (1, 3, 32, 32)  # one validation image, from the --val-data folder
    colour = torch.tensor([10, 200, 30]).view(3, 1, 1) / 255
    torch.testing.assert_close(targets[0], colour.expand(3, 32, 32), atol=1e-6, rtol=0)
    _, default = script.build_data(script.parse_args(train_args(photos, vgg_file, tmp_path / "r")), CPU, 0)
    assert sum(len(t) for _, _, t in default) == 3  # default: the training folder


def logged_terms(run: Path) -> dict[str, float]:
    full = next(s for s in (run / "log.txt").read_text().splitlines() if "iter 1/1 " in s)
    # log.txt lines start with the time, as train.py's; progress lines end with the ETA
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d iter 1/1 .* img/s \| eta 0:00:00", full), full
    line = full[full.index("iter 1/1 ") :]
    return {k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+)(?= |$)", line.split(" | ")[0][len("iter 1/1 ") :])}


def test_loss_weights_scale_the_logged_terms(photos, vgg_file, tmp_path):
    """Same seed, same first batch and weights: with hole=12 and tv=0 the first step's weighted hole term doubles
    (default 6), tv vanishes, the others stay, and the total is their sum."""
    script = load_script("train_inpainting")
    common = ["--iters", "1", "--log-every", "1", "--val-every", "1"]
    assert script.main(train_args(photos, vgg_file, tmp_path / "default", *common)) == 0
    argv = train_args(photos, vgg_file, tmp_path / "custom", *common, "--loss-weights", "hole=12,tv=0")
    assert script.main(argv) == 0
    a, b = logged_terms(tmp_path / "default"), logged_terms(tmp_path / "custom")
    assert set(a) == set(b) == {*DEFAULT_WEIGHTS, "total"}
    assert a["hole"] > 0.01 and a["tv"] > 0
    assert b["hole"] == pytest.approx(2 * a["hole"], abs=2e-4) and b["tv"] == 0
    for k in ("valid", "perceptual", "style_out", "style_comp"):
        assert b[k] == pytest.approx(a[k], abs=1e-4), k
    assert b["total"] == pytest.approx(sum(v for k, v in b.items() if k != "total"), abs=5e-4)


# ---------------------------------------------------------------------------------------------- eval buckets


def rect_mask(size: int, top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.ones((size, size))
    m[top : top + h, left : left + w] = 0
    return m


def test_eval_mask_folder_buckets_by_hole_ratio_and_border(photos, tmp_path):
    """Masks with known hole ratios at 32 px (border margin 3 px): each lands in its (bucket, N/B) column, masks
    outside every bucket are skipped, and with an all-zero network (output 0) the composite's L1 is the mean of the
    image over the hole, computed here by hand."""
    masks = {
        "a_inner_3pct": rect_mask(32, 10, 10, 4, 8),  # 32/1024, no hole within 3 px of the border: B
        "b_corner_3pct": rect_mask(32, 0, 0, 4, 8),  # touches the border: N
        "c_inner_34pct": rect_mask(32, 8, 5, 16, 22),  # 352/1024: (0.3, 0.4] B
        "d_edge_56pct": rect_mask(32, 0, 0, 18, 32),  # 576/1024: (0.5, 0.6] N
        "e_tiny": rect_mask(32, 12, 12, 2, 2),  # 0.4 %: no bucket
        "f_huge": rect_mask(32, 0, 0, 24, 32),  # 75 %: no bucket
    }
    (tmp_path / "masks").mkdir()
    for name, m in masks.items():
        save_mask_png(m, tmp_path / "masks" / f"{name}.png")
    model = create_model("pconv_unet", layer_size=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    torch.save({"state_dict": model.state_dict(), "layer_size": 3}, tmp_path / "zero.pth.tar")
    out = tmp_path / "eval.md"
    argv = ["--checkpoint", str(tmp_path / "zero.pth.tar"), "--data", str(photos), "--masks", str(tmp_path / "masks")]
    argv += ["--image-size", "32", "-j", "0", "-b", "4", "--device", "cpu", "--output", str(out)]
    assert load_script("eval_inpainting").main(argv) == 0
    rows = {(r["bucket_lo"], r["bucket_hi"], r["border"]): r for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert set(rows) == {("0.01", "0.1", "B"), ("0.01", "0.1", "N"), ("0.3", "0.4", "B"), ("0.5", "0.6", "N")}
    assert all(r["images"] == "1" for r in rows.values())
    images = InpaintingDataset(photos, 32, train=False)
    # mask j (sorted by name) goes with image j mod 3
    expected = {}
    for j, (key, m) in enumerate(zip(["0.01-B", "0.01-N", "0.3-B", "0.5-N"], list(masks.values())[:4])):
        _, _, image = images[j % 3]
        hole = torch.from_numpy(1 - m).float()
        expected[key] = float((image * hole).abs().mean()) * 100  # composite = image * mask: error = image in holes
    got = {f"{lo}-{border}": float(r["l1_percent"]) for (lo, _, border), r in rows.items()}
    assert got == pytest.approx(expected, abs=1e-4)
    table = out.read_text()
    assert "| images | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 1 | 0 | 0 | 1 | 0 |" in table  # columns: bucket x (N, B)


# --------------------------------------------------------------------------------------- benchmark --no-report


def test_benchmark_no_report_runs_but_writes_no_report(tmp_path, capsys):
    from partialconv.data.demo import make_demo_dataset
    from partialconv.programs import padding_benchmark

    data = make_demo_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, size=32)
    root = tmp_path / "results"
    argv = ["--archs", "simple_cnn", "--runs", "1"]
    argv += ["--paddings", "zero", "--root", str(root), "--device", "cpu", "--no-report"]
    argv += ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "--"]
    argv += ["--epochs", "1", "-b", "20", "-j", "0", "--no-tensorboard", "-p", "100", "--train-crop-size", "32"]
    argv += ["--val-resize-size", "32", "--val-crop-size", "32"]
    # main() in this process (one interpreter fewer); the training run it starts is a process of its own
    code = padding_benchmark.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert (root / "simple_cnn" / "zero" / "run1" / "metrics.jsonl").is_file()  # the run happened
    written = {p.name for p in root.iterdir()}
    assert not written & {"results.md", "results.csv", "top1_bar.png", "val_top1_curves.png"}, written
