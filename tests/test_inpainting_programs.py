"""End to end: overfitting one photo, train/resume round trip, fine-tuning, inpaint.py and eval_inpainting.py."""

import csv
import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from partialconv.checkpoint_io import read_checkpoint
from partialconv.data.masks import IrregularMaskGenerator, hole_ratio, load_mask_png
from partialconv.losses import InpaintingLoss
from partialconv.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    return importlib.import_module(f"partialconv.programs.{name}")  # scripts/<name>.py runs it


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee"):
        img = Image.fromarray(getattr(skimage.data, name)()).resize((70, 60))
        (root / ("nested" if name == "coffee" else "")).mkdir(exist_ok=True)
        img.save(root / ("nested" if name == "coffee" else "") / f"{name}.png")
    return root


def test_overfitting_one_photo_lowers_the_hole_l1(vgg_file):
    torch.manual_seed(0)
    size = 32
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(size, size), mode="area")
    mask = IrregularMaskGenerator(size, bucket=2)(0)[None]
    model = create_model("pconv_unet", layer_size=3)
    loss = InpaintingLoss(vgg_file)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, hole = img * mask, 1 - mask

    def hole_l1() -> float:
        model.eval()
        with torch.no_grad():
            out, _ = model(x, mask)
        model.train()
        return float((hole * (out - img)).abs().sum() / (hole.sum() * 3))

    start = hole_l1()
    for _ in range(200):
        out, _ = model(x, mask)
        terms = loss(x, mask, out, img)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    end = hole_l1()
    # Filling the hole with the mean known colour is the trivial baseline the network must beat.
    mean_fill = (img * mask).sum((2, 3), keepdim=True) / mask.sum()
    baseline = float((hole * (mean_fill - img)).abs().sum() / (hole.sum() * 3))
    assert end < 0.25 * start and end < 0.5 * baseline, (start, end, baseline)


def _train_argv(photos, vgg_file, out_dir, iters, *extra) -> list[str]:
    return [
        "--data",
        str(photos),
        "--vgg-weights",
        str(vgg_file),
        "--output-dir",
        str(out_dir),
        "--image-size",
        "32",
        "--layer-size",
        "3",
        "-b",
        "2",
        "-j",
        "0",
        "--iters",
        str(iters),
        "--log-every",
        "1",
        "--val-every",
        "2",
        "--val-images",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def _train(tmp, photos, vgg_file, out, iters, *extra):
    return load_script("train_inpainting").main(_train_argv(photos, vgg_file, tmp / out, iters, *extra))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photos, vgg_file):
    tmp = tmp_path_factory.mktemp("runs")
    assert _train(tmp, photos, vgg_file, "straight", 4) == 0
    assert _train(tmp, photos, vgg_file, "split", 2) == 0
    assert _train(tmp, photos, vgg_file, "split", 4, "--resume", "auto") == 0
    return tmp


def test_train_resume_round_trip_is_exact(runs):
    a = read_checkpoint(runs / "straight" / "checkpoint.pth.tar")
    b = read_checkpoint(runs / "split" / "checkpoint.pth.tar")
    assert a["iteration"] == b["iteration"] == 4 and a["layer_size"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0, msg=k)
    first = read_checkpoint(runs / "straight" / "checkpoint.pth.tar")["state_dict"]
    init = create_model("pconv_unet", layer_size=3).state_dict()
    assert not torch.equal(first["decoder.0.conv.weight"], init["decoder.0.conv.weight"])
    lines = [json.loads(s) for s in (runs / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4] and all(0 < r["val_ssim"] <= 1 for r in lines)
    log = (runs / "split" / "log.txt").read_text()
    assert "resumed from" in log and "iter 3/4 valid" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "split" / "tb"))
    events.Reload()  # both processes' event files: the first run's iteration 2, the resumed run's 4
    assert [e.step for e in events.Scalars("val/ssim")] == [2, 4]
    image = events.Images("val/input_mask_output_composite_gt")[-1]
    assert image.step == 4 and image.width > image.height >= 32  # a grid of 32 px crops
    config = yaml.safe_load((runs / "split" / "config.yaml").read_text())
    assert (config["iters"], config["image_size"], config["layer_size"], config["resume"]) == (4, 32, 3, "auto")


def test_finetune_freezes_encoder_bn_and_checks_phase(runs, photos, vgg_file):
    pre = runs / "straight" / "checkpoint.pth.tar"
    assert _train(runs, photos, vgg_file, "ft", 1, "--finetune", "--pretrained", str(pre)) == 0
    before = read_checkpoint(pre)["state_dict"]
    after = read_checkpoint(runs / "ft" / "checkpoint.pth.tar")
    assert after["finetune"] and after["config"]["lr"] == 5e-5
    for key in ("encoder.1.bn.weight", "encoder.1.bn.running_mean", "encoder.2.bn.running_var"):
        assert torch.equal(after["state_dict"][key], before[key]), key
    assert not torch.equal(after["state_dict"]["decoder.1.bn.running_mean"], before["decoder.1.bn.running_mean"])
    assert not torch.equal(after["state_dict"]["encoder.1.conv.weight"], before["encoder.1.conv.weight"])
    from partialconv.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match="--pretrained, not --resume"):
        _train(runs, photos, vgg_file, "ft2", 2, "--finetune", "--resume", str(pre))


def test_inpaint_writes_composites_that_keep_known_pixels(runs, photos, tmp_path):
    inpaint = load_script("inpaint")
    ckpt = str(runs / "straight" / "checkpoint.pth.tar")
    out = tmp_path / "out"
    assert (
        inpaint.main(["--checkpoint", ckpt, "--input", str(photos), "--random-mask", "0.3", "--output", str(out)]) == 0
    )
    result = np.asarray(Image.open(out / "nested" / "coffee.png"))
    source = np.asarray(Image.open(photos / "nested" / "coffee.png"))
    mask = load_mask_png(out / "nested" / "coffee_mask.png")
    assert result.shape == source.shape == (60, 70, 3) and 0.25 < hole_ratio(mask) <= 0.325
    known = mask.astype(bool)
    assert np.array_equal(result[known], source[known])
    assert not np.array_equal(result[~known], source[~known])
    # Single file with an explicit mask file gives the same composite.
    single = tmp_path / "single.png"
    argv = [
        "--checkpoint",
        ckpt,
        "--input",
        str(photos / "nested" / "coffee.png"),
        "--mask",
        str(out / "nested" / "coffee_mask.png"),
        "--output",
        str(single),
    ]
    assert inpaint.main(argv) == 0
    assert np.array_equal(np.asarray(Image.open(single)), result)


def test_eval_writes_the_table_per_bucket_and_border(runs, photos, tmp_path):
    evaluate = load_script("eval_inpainting")
    out = tmp_path / "eval.md"
    argv = [
        "--checkpoint",
        str(runs / "straight" / "checkpoint.pth.tar"),
        "--data",
        str(photos),
        "--image-size",
        "32",
        "-j",
        "0",
        "-b",
        "12",
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    assert evaluate.main(argv) == 0
    table = out.read_text().splitlines()
    header = next(line for line in table if line.startswith("|  |"))
    assert header.count("|") == 14 and "(0.01,0.1] N" in header and "(0.5,0.6] B" in header
    assert any(line.startswith("| PSNR |") for line in table) and "| images | 3 | 3 |" in out.read_text()
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert len(rows) == 12 and all(int(r["images"]) == 3 for r in rows)
    l1 = [float(r["l1_percent"]) for r in rows if r["border"] == "N"]
    assert l1[-1] > l1[0] > 0  # bigger holes, bigger error


def test_programs_fail_with_one_clear_line(tmp_path, photos, capsys):
    train = load_script("train_inpainting")
    argv = [
        "--data",
        str(photos),
        "--vgg-weights",
        str(tmp_path / "missing.pth"),
        "--output-dir",
        str(tmp_path / "r"),
        "--image-size",
        "32",
        "--iters",
        "1",
        "--device",
        "cpu",
    ]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pth: no such file" in err and "--vgg-weights PATH" in err
    # the way out offline, and how to fetch the file once, are in the line and in --help
    assert "train without those terms: --loss-weights perceptual=0,style_out=0,style_comp=0" in err
    assert "curl -LO https://download.pytorch.org/models/vgg16-397923af.pth" in err
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "--loss-weights perceptual=0,style_out=0,style_comp=0" in " ".join(capsys.readouterr().out.split())
    inpaint = load_script("inpaint")
    argv = [
        "--checkpoint",
        str(tmp_path / "nope.pth.tar"),
        "--input",
        str(photos),
        "--random-mask",
        "0.2",
        "--output",
        str(tmp_path / "o"),
    ]
    assert inpaint.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pth.tar: no such file" in err


def test_preempted_run_checkpoints_and_resumes_exactly(runs, photos, vgg_file, monkeypatch):
    import os
    import signal

    train = load_script("train_inpainting")
    calls = []

    def step_then_signal(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM does before the time limit
        return out

    real_step = train.train_step
    monkeypatch.setattr(train, "train_step", step_then_signal)
    argv = _train_argv(photos, vgg_file, runs / "preempted", 4)
    assert train.main(argv) == 128 + signal.SIGUSR1
    assert read_checkpoint(runs / "preempted" / "checkpoint.pth.tar")["iteration"] == 2
    assert "--resume auto" in (runs / "preempted" / "log.txt").read_text()
    monkeypatch.setattr(train, "train_step", real_step)
    assert train.main([*argv, "--resume", "auto"]) == 0
    a = read_checkpoint(runs / "straight" / "checkpoint.pth.tar")["state_dict"]
    b = read_checkpoint(runs / "preempted" / "checkpoint.pth.tar")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embedded_demo_photos(tmp_path):
    from partialconv.data.inpainting import DEMO_PHOTOS, InpaintingDataset, skimage_demo_folder

    root = skimage_demo_folder(tmp_path / "demo")
    assert sorted(p.stem for p in root.glob("*.png")) == sorted(DEMO_PHOTOS)
    (root / "coffee.png").unlink()  # a missing photo is rewritten, the others are kept
    stamp = (root / "chelsea.png").stat().st_mtime_ns
    skimage_demo_folder(root)
    assert (root / "coffee.png").is_file() and (root / "chelsea.png").stat().st_mtime_ns == stamp
    masked, mask, image = InpaintingDataset(root, 32, train=True)[len(DEMO_PHOTOS) + 1]
    assert image.shape == (3, 32, 32) and torch.equal(masked, image * mask)


def test_fresh_start_over_a_run_is_refused_unless_overwrite(runs, photos, vgg_file, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(runs / "straight", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    train = load_script("train_inpainting")
    assert train.cli(_train_argv(photos, vgg_file, out, 2)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} holds a run (checkpoint" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched
    assert train.cli(_train_argv(photos, vgg_file, out, 2, "--overwrite")) == 0
    (aside,) = out.glob("replaced-*")
    assert (aside / "checkpoint.pth.tar").read_bytes() == before["checkpoint.pth.tar"]
    assert (aside / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert [json.loads(s)["iteration"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [2]


def test_train_inpainting_tensorboard_event_on_full_disk_is_one_line(photos, vgg_file, tmp_path, monkeypatch, capsys):
    """As train.py's (tests/test_run_safety.py): the second TensorBoard event's write comes back short."""
    real_write, events = os.write, []

    def short_write(fd, b):
        if "tfevents" in os.readlink(f"/proc/self/fd/{fd}"):
            events.append(len(b))
            if len(events) == 3:  # the file's header, iteration 1's scalars, then this one
                return real_write(fd, b[:10])
        return real_write(fd, b)

    argv = [a for a in _train_argv(photos, vgg_file, tmp_path / "run", 2) if a != "--no-tensorboard"]
    monkeypatch.setattr(os, "write", short_write)
    assert load_script("train_inpainting").cli(argv) == 2
    monkeypatch.setattr(os, "write", real_write)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(err) == 1 and "/tb/events.out.tfevents." in err[0] and "no space left on device" in err[0], err
