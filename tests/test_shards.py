"""Tar shards (issue 22): the writer (WebDataset layout, ImageFolder order, killed and rerun, --verify), the
``shards`` backend (a run on shards is the run on the folder, bit for bit; resume on other data refused) and URLs
through the node-local cache, served by a real ``python -m http.server`` (and a server that cuts downloads short).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from partialconv.data import DataError, DataParams, build_loaders, shard_cache
from partialconv.data import shards as shards_module
from partialconv.data.cropped_decode import CroppedEvalDecode, CroppedTrainDecode, decoder_unavailable
from partialconv.data.demo import make_demo_dataset
from partialconv.data.fast_pil import FastTrainCrop
from partialconv.data.image_folder import scan_image_folder
from partialconv.data.shard_cache import ShardCache, sha256_file
from partialconv.data.shards import INDEX_NAME, ShardIndex
from partialconv.engine.distributed import DistInfo
from partialconv.models import is_model, register_model
from partialconv.models.small import SimpleCNN
from partialconv.programs import train, write_shards

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]
BASE = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "8", "--seed", "3", "--no-tensorboard", "-p", "100"]
BASE += ["--train-crop-size", "16", "--val-resize-size", "16", "--val-crop-size", "16", "--deterministic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes x 4 train images (5 steps of 8), 2 val images per class; small shards: several per split
    return make_demo_dataset(tmp_path_factory.mktemp("folder") / "d", train_per_class=4, val_per_class=2, size=20)


@pytest.fixture(scope="module")
def shards(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        write_shards.write_shards(data / split, out / split, shard_mb=0.01, workers=1)
    return out


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory) -> Path:
    """The demo's textures as 80 px JPEGs: large enough that the decodes differ (pil_fast's reduced-DCT train crops
    and full-size eval resize, turbo's region decode and 1/2-scale eval decode), so a run shows which one it used."""
    root = make_demo_dataset(tmp_path_factory.mktemp("jpeg") / "d", train_per_class=4, val_per_class=2, size=80)
    for png in sorted(root.rglob("*.png")):
        with Image.open(png) as image:
            image.convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    return root


@pytest.fixture(scope="module")
def jpeg_shards(jpeg_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jpeg_shards")
    for split in ("train", "val"):
        write_shards.write_shards(jpeg_data / split, out / split, shard_mb=0.01, workers=1)
    return out


# The folder backend whose decode a plain run on shards takes: the folder's default path where libturbojpeg loads;
# without it, shards keep pil_fast's uint8 pipeline (the folder's auto takes pil there, for old checkpoints).
SHARDS_DECODE = "turbo" if decoder_unavailable() is None else "pil_fast"


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth.tar", map_location="cpu", weights_only=False)["state_dict"]


def metrics(run: Path) -> list[dict]:
    drop = {"images_per_sec", "epoch_seconds", "time", "data_identity"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


# --- the writer -----------------------------------------------------------------------------------------------


def test_shards_are_webdataset_tars_in_imagefolder_order(data, shards):
    """Read as a WebDataset reader does: a stream of members, grouped by key (the name up to the first dot)."""
    _, _, samples, _, _ = scan_image_folder(data / "train")
    index = json.loads((shards / "train" / INDEX_NAME).read_text())
    assert len(index["shards"]) > 2  # the order must hold across shard boundaries
    grouped: list[dict[str, bytes]] = []
    for shard in index["shards"]:
        with tarfile.open(shards / "train" / shard["name"], mode="r|") as stream:  # sequential, as over a network
            for member in stream:
                key, ext = member.name.split(".", 1)
                if not grouped or grouped[-1]["__key__"] != key.encode():
                    grouped.append({"__key__": key.encode()})
                grouped[-1][ext] = stream.extractfile(member).read()
    assert len(grouped) == len(samples)
    for sample, (path, target) in zip(grouped, samples):
        (image_ext,) = [e for e in sample if e not in ("__key__", "cls")]
        assert image_ext == Path(path).suffix.lower().lstrip(".")
        assert sample[image_ext] == Path(path).read_bytes()  # the original bytes
        assert int(sample["cls"]) == target
    assert index["samples"]["name"] == [os.path.relpath(p, data / "train") for p, _ in samples]


def test_the_index_gives_each_image_member_by_offset(data, shards):
    index = ShardIndex.parse((shards / "train" / INDEX_NAME).read_bytes(), "index")
    _, _, samples, _, _ = scan_image_folder(data / "train")
    for i, (path, target) in enumerate(samples):
        shard = shards / "train" / index.shards[index.shard[i]]["name"]
        with open(shard, "rb") as f:
            f.seek(int(index.offset[i]))
            assert f.read(int(index.size[i])) == Path(path).read_bytes()
        assert index.target[i] == target
    assert write_shards.verify_shards(shards / "train") == []


def test_parallel_writers_write_the_same_shards(data, shards, tmp_path):
    out = tmp_path / "parallel"
    assert write_shards.main([str(data / "train"), str(out), "--shard-mb", "0.01", "--workers", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (shards / "train").iterdir())
    for f in (shards / "train").iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_verify_names_a_damaged_shard(shards, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in (shards / "val").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    shard = copy / "shard-000000.tar"
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert write_shards.main(["--verify", str(copy)]) == 1
    assert f"{shard}: size or sha256 differs from the index" in capsys.readouterr().err


def _writer(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "scripts.write_shards", str(src), str(out), "--shard-mb", "0.0001"]


def test_a_killed_writer_leaves_nothing_a_reader_takes_as_complete_and_a_rerun_finishes(tmp_path):
    src = make_demo_dataset(tmp_path / "d", train_per_class=30, val_per_class=1, size=20) / "train"
    out = tmp_path / "out"
    progress = out / write_shards.PROGRESS_NAME
    writer = subprocess.Popen(_writer(src, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and writer.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 6:  # header + 5 shards
            break
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL, "the writer finished before the kill: make the source larger"
    assert not (out / INDEX_NAME).exists()
    listed = {json.loads(line)["shard"] for line in progress.read_text().splitlines()[1:]}
    final = {int(shard.stem.split("-")[1]) for shard in out.glob("shard-*.tar")}
    assert len(final - listed) <= 1  # the kill may land between a shard's rename and its progress line
    for shard in out.glob("shard-*.tar"):  # every shard under its final name is whole
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) % 2 == 0
    with pytest.raises(FileNotFoundError):  # and a reader refuses the directory
        (out / INDEX_NAME).read_bytes()
    with pytest.raises(DataError, match="no index.json"):
        build_loaders(DataParams(out, out, 4, 0, backend="shards"), CPU)

    assert subprocess.run(_writer(src, out), cwd=ROOT, capture_output=True).returncode == 0
    straight = tmp_path / "straight"
    assert subprocess.run(_writer(src, straight), cwd=ROOT, capture_output=True).returncode == 0
    assert not progress.exists() and not list(out.glob(".*tmp"))
    assert (out / INDEX_NAME).read_bytes() == (straight / INDEX_NAME).read_bytes()
    for shard in straight.glob("shard-*.tar"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert write_shards.verify_shards(out) == []


def test_rerun_on_a_finished_or_foreign_output(data, shards, tmp_path, capsys):
    out = tmp_path / "v"
    assert write_shards.main([str(data / "val"), str(out)]) == 0
    before = (out / INDEX_NAME).read_bytes()
    assert write_shards.main([str(data / "val"), str(out)]) == 0
    assert "complete already" in capsys.readouterr().out and (out / INDEX_NAME).read_bytes() == before
    assert write_shards.main([str(data / "train"), str(out)]) == 2
    assert "holds the shards of another source" in capsys.readouterr().err


# --- the backend ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder_backend, extra, no_turbo",
    [(SHARDS_DECODE, [], False), ("pil_fast", [], True), ("pil", ["--random-erase", "0.5"], False)],
    ids=["default-decode", "pil_fast-without-libturbojpeg", "pil-transforms"],
)
def test_a_run_on_shards_is_the_run_on_the_folder_bit_for_bit(
    jpeg_data, jpeg_shards, tmp_path, monkeypatch, folder_backend, extra, no_turbo
):
    """On JPEGs, where the decodes differ: shards decode as the folder's default path (turbo where libturbojpeg
    loads), as pil_fast where it does not, and as pil under policy augmentation."""
    if no_turbo:
        monkeypatch.setattr(shards_module, "decoder_unavailable", lambda: "libturbojpeg: not found (planted)")
    runs = {}
    for name, root, backend in (("folder", jpeg_data, folder_backend), ("shards", jpeg_shards, "auto")):
        runs[name] = tmp_path / name
        argv = [*BASE, "--epochs", "2", "--data-backend", backend, *extra, "--output-dir", str(runs[name])]
        assert train.cli([*argv, "--data_train", str(root / "train"), "--data_val", str(root / "val")]) == 0
    a, b = final_state(runs["folder"]), final_state(runs["shards"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(runs["folder"]) == metrics(runs["shards"])
    identity = json.loads((runs["shards"] / "metrics.jsonl").read_text().splitlines()[-1])["data_identity"]
    fingerprint = json.loads((jpeg_shards / "train" / INDEX_NAME).read_text())["fingerprint"]
    assert fingerprint in identity


@pytest.mark.skipif(decoder_unavailable() is not None, reason="libturbojpeg 3 does not load here")
def test_shards_decode_with_turbo_crops_where_libturbojpeg_loads(jpeg_data, jpeg_shards, monkeypatch):
    """The crop-only decode of the data-path issue runs on shard bytes: the shard splits hold turbo's train and eval
    crops and give turbo's folder samples, not pil_fast's (which differ on these JPEGs)."""

    def splits(root: Path, backend: str, **extra):
        sizes = {"train_crop_size": 16, "val_resize_size": 16, "val_crop_size": 16}
        loaders = build_loaders(DataParams(root / "train", root / "val", 8, 0, backend=backend, **sizes, **extra), CPU)
        return loaders.train.dataset, loaders.val.dataset

    on_shards, turbo, pil_fast = splits(jpeg_shards, "auto"), splits(jpeg_data, "turbo"), splits(jpeg_data, "pil_fast")
    assert isinstance(on_shards[0].decode.crop, CroppedTrainDecode)
    assert isinstance(on_shards[1].decode.crop, CroppedEvalDecode)
    differ = 0
    for split in (0, 1):
        for i in range(len(on_shards[split])):
            image, target = on_shards[split][(i, 100 + i)]
            assert (image.dtype, target) == (torch.uint8, turbo[split][(i, 100 + i)][1])
            assert torch.equal(image, turbo[split][(i, 100 + i)][0])
            differ += not torch.equal(image, pil_fast[split][(i, 100 + i)][0])
    assert differ > 0, "the data cannot tell turbo's decode from pil_fast's"
    # without the decoder, pil_fast's; under policy augmentation, pil's transforms
    monkeypatch.setattr(shards_module, "decoder_unavailable", lambda: "planted")
    assert type(splits(jpeg_shards, "auto")[0].decode.crop) is FastTrainCrop
    monkeypatch.undo()
    train_split = splits(jpeg_shards, "auto", random_erase=0.5)[0]
    assert train_split.decode.crop is None and train_split.decode.transform is not None


class SignallingCNN(SimpleCNN):
    """simple_cnn with dropout (the global RNG matters on resume) that sends SIGUSR1 to this process after
    ``signal_after`` training forwards: a real mid-epoch stop through train.py's Preemption handler."""

    signal_after: int | None = None
    forwards = 0

    def __init__(self, **kwargs) -> None:
        super().__init__(width=8, **kwargs)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.device.type != "meta":
            SignallingCNN.forwards += 1
            if SignallingCNN.forwards == SignallingCNN.signal_after:
                os.kill(os.getpid(), signal.SIGUSR1)
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


if not is_model("signalling_cnn_shards_test"):

    @register_model(pd_variant=False)
    def signalling_cnn_shards_test(padding: str = "zero", **kwargs) -> SignallingCNN:
        return SignallingCNN(padding=padding, **kwargs)


def test_a_mid_epoch_stop_on_shards_resumes_to_the_straight_folder_run(data, shards, tmp_path):
    """Folder run straight through; shard run stopped by SIGUSR1 after step 7 (epoch 2 of 3, 5 steps per epoch),
    resumed with one persistent worker: same weights."""
    common = [
        *BASE,
        "-a",
        "signalling_cnn_shards_test",
        "--epochs",
        "3",
        "--lr-schedule",
        "step",
        "--lr-step-size",
        "1",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    folder = ["--data_train", str(data / "train"), "--data_val", str(data / "val"), "--data-backend", SHARDS_DECODE]
    on_shards = ["--data_train", str(shards / "train"), "--data_val", str(shards / "val"), "--data-backend", "auto"]
    SignallingCNN.forwards = 0
    assert train.cli([*common, *folder, "--output-dir", str(straight)]) == 0
    SignallingCNN.forwards, SignallingCNN.signal_after = 0, 7
    try:
        assert train.cli([*common, *on_shards, "--output-dir", str(split), "-j", "1"]) == 128 + signal.SIGUSR1
    finally:
        SignallingCNN.signal_after = None
    ckpt = torch.load(split / "checkpoint.pth.tar", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert train.cli([*common, *on_shards, "--output-dir", str(split), "-j", "1", "--resume", "auto"]) == 0
    a, b = final_state(straight), final_state(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(straight) == metrics(split)


def test_resume_on_other_shards_at_the_same_path_is_refused(data, tmp_path, capsys):
    root = tmp_path / "s"
    for split in ("train", "val"):
        write_shards.write_shards(data / split, root / split, shard_mb=0.01, workers=1)
    run = tmp_path / "run"
    argv = [*BASE, "--data-backend", "auto", "--output-dir", str(run)]
    argv += ["--data_train", str(root / "train"), "--data_val", str(root / "val")]
    assert train.cli([*argv, "--epochs", "1"]) == 0
    other = make_demo_dataset(tmp_path / "other", train_per_class=5, val_per_class=2, size=20)
    (root / "train" / INDEX_NAME).unlink()
    write_shards.write_shards(other / "train", root / "train", shard_mb=0.01, workers=1)
    capsys.readouterr()
    assert train.cli([*argv, "--epochs", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "train.py: error: --resume" in err and "trained on other data at these paths" in err
    assert len(err.strip().splitlines()) == 1


def test_backend_choice_for_shards_urls_and_folders(data, shards):
    assert build_loaders(DataParams(shards / "train", shards / "val", 8, 0, backend="auto"), CPU).backend == "shards"
    folder = "turbo" if decoder_unavailable() is None else "pil"  # auto on a folder: the default path
    assert build_loaders(DataParams(data / "train", data / "val", 8, 0, backend="auto"), CPU).backend == folder
    with pytest.raises(DataError, match="holds shards data, not pil's: use data backend shards or auto"):
        build_loaders(DataParams(shards / "train", shards / "val", 8, 0, backend="pil"), CPU)
    with pytest.raises(DataError, match=r"data backend pil reads local paths, not http://127.0.0.1:9/t"):
        build_loaders(DataParams("http://127.0.0.1:9/t", "http://127.0.0.1:9/v", 8, 0, backend="pil"), CPU)


# --- URLs and the cache ---------------------------------------------------------------------------------------


def _serve(directory: Path, *args: str, script: Path | None = None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-u"] + (
        [str(script), str(directory), *args]
        if script
        else ["-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)]
    )
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
    port = int(line.split(" port ")[1].split()[0])
    return server, f"http://127.0.0.1:{port}"


def _stop(server: subprocess.Popen) -> str:
    server.terminate()
    _, err = server.communicate(timeout=30)
    return err


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(shard_cache, "RETRY_DELAYS", (0.0,))


def test_http_shards_are_fetched_once_per_node_and_read_as_the_local_ones(shards, tmp_path, fast_retries):
    server, url = _serve(shards)
    try:
        cache = tmp_path / "cache"
        remote = DataParams(f"{url}/train", f"{url}/val", 8, 2, backend="auto", cache_dir=str(cache))
        local = DataParams(shards / "train", shards / "val", 8, 0, backend="shards")
        loaders = build_loaders(remote, CPU)
        assert loaders.backend == "shards"
        loaders.train_sampler.set_epoch(0)
        got = [(x, y) for x, y, _ in loaders.train]  # two DataLoader worker processes fetch lazily
        want_loaders = build_loaders(local, CPU)
        want_loaders.train_sampler.set_epoch(0)
        want = [(x, y) for x, y, _ in want_loaders.train]
        assert len(got) == len(want) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want)
        )
        assert loaders.identity == want_loaders.identity
    finally:
        log = _stop(server)
    names = json.loads((shards / "train" / INDEX_NAME).read_text())["shards"]
    for shard in names:  # every shard fetched exactly once, whatever process asked first
        assert log.count(f"GET /train/{shard['name']} ") == 1, log
    assert sorted(p.name for p in cache.glob("*/shard-*.tar")) == sorted(s["name"] for s in names)


def _fetch_all(root: Path, base: str, index: ShardIndex, barrier) -> None:
    barrier.wait()  # every process asks at the same moment
    for shard in index.shards:
        ShardCache(root).path(base, shard)


def test_processes_of_a_node_fetch_each_shard_once(shards, tmp_path):
    script = tmp_path / "slow_server.py"
    script.write_text(DYING_SERVER)
    server, url = _serve(shards, "0", "0.3", script=script)
    index = ShardIndex.parse((shards / "val" / INDEX_NAME).read_bytes(), "index")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    try:
        procs = [
            context.Process(target=_fetch_all, args=(tmp_path / "cache", f"{url}/val", index, barrier))
            for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0] * 4
    finally:
        log = _stop(server)
    for shard in index.shards:
        assert log.count(f"GET /val/{shard['name']} ") == 1, log


DYING_SERVER = textwrap.dedent(
    """
    import http.server, os, sys, time
    directory, cut_first, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    served = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=directory, **k)

        def do_GET(self):
            path = self.translate_path(self.path)
            if not path.endswith(".tar"):
                return super().do_GET()
            served[path] = served.get(path, 0) + 1
            data = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            time.sleep(delay)  # a slow server: concurrent requests overlap
            if served[path] <= cut_first:  # the server's process dies mid-body: the connection drops
                self.wfile.write(data[:1000])
                self.wfile.flush()
                self.connection.close()
                sys.stderr.write(f"cut {self.path}\\n")
                return
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"Serving HTTP on 127.0.0.1 port {server.server_address[1]} (cut the first {cut_first})", flush=True)
    server.serve_forever()
    """
)


@pytest.mark.parametrize("cuts", [1, 99])
def test_a_download_cut_short_is_retried_then_named(shards, tmp_path, fast_retries, cuts):
    script = tmp_path / "dying_server.py"
    script.write_text(DYING_SERVER)
    server, url = _serve(shards, str(cuts), "0", script=script)
    try:
        cache = ShardCache(tmp_path / "cache")
        index = ShardIndex.parse((shards / "val" / INDEX_NAME).read_bytes(), "index")
        if cuts < shard_cache.DOWNLOAD_TRIES:
            local = cache.path(f"{url}/val", index.shards[0])
            assert sha256_file(local) == index.shards[0]["sha256"]
        else:
            with pytest.raises(DataError) as raised:
                cache.path(f"{url}/val", index.shards[0])
            message = str(raised.value)
            assert message.startswith(f"shard {url}/val/shard-000000.tar: download failed after 3 tries")
            assert "\n" not in message
            assert not list((tmp_path / "cache").glob("*/*.tar")) and not list((tmp_path / "cache").glob("*/.*part"))
    finally:
        log = _stop(server)
    assert log.count("cut /val/shard-000000.tar") == min(cuts, shard_cache.DOWNLOAD_TRIES)


def test_a_run_whose_shard_cannot_be_fetched_stops_with_one_line_naming_the_url(shards, tmp_path, fast_retries, capsys):
    script = tmp_path / "dying_server.py"
    script.write_text(DYING_SERVER)
    server, url = _serve(shards, "99", "0", script=script)
    try:
        argv = [*BASE, "--epochs", "1", "--data-backend", "auto", "--output-dir", str(tmp_path / "run")]
        argv += ["--data_train", f"{url}/train", "--data_val", f"{url}/val", "--data-cache", str(tmp_path / "c")]
        assert train.cli([*argv, "-j", "1"]) == 2  # the error comes from a DataLoader worker; data: exit 2
    finally:
        _stop(server)
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith(f"train.py: error: shard {url}/train/shard-"), err
    assert "download failed after 3 tries (got 1000 of " in err[0]


def test_a_url_without_an_index_is_one_line(shards, tmp_path, capsys):
    server, url = _serve(shards)
    try:
        argv = [*BASE, "--epochs", "1", "--data-backend", "auto", "--output-dir", str(tmp_path / "run")]
        assert train.cli([*argv, "--data_train", f"{url}/nope", "--data_val", f"{url}/val"]) == 2
    finally:
        _stop(server)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"train.py: error: --data_train {url}/nope: no index.json (write one with python -m scripts.write_shards)"
    ]


def test_a_corrupted_cached_shard_is_fetched_again(shards, tmp_path, fast_retries, capsys):
    server, url = _serve(shards)
    try:
        cache = ShardCache(tmp_path / "cache")
        index = ShardIndex.parse((shards / "val" / INDEX_NAME).read_bytes(), "index")
        local = cache.path(f"{url}/val", index.shards[0])
        assert cache.path(f"{url}/val", index.shards[0]) == local  # warm: no second request
        raw = bytearray(local.read_bytes())
        raw[600] ^= 0x55  # same size, other bytes: only the checksum can tell
        local.write_bytes(bytes(raw))
        assert cache.path(f"{url}/val", index.shards[0]) == local
        assert sha256_file(local) == index.shards[0]["sha256"]
    finally:
        log = _stop(server)
    assert "does not match its index (size or sha256): fetching it again" in capsys.readouterr().err
    assert log.count("GET /val/shard-000000.tar ") == 2


def test_the_cache_evicts_the_least_recently_used_shards(shards, tmp_path):
    index = ShardIndex.parse((shards / "train" / INDEX_NAME).read_bytes(), "index")
    size = index.shards[0]["size"]
    cache = ShardCache(tmp_path / "cache", limit_bytes=2 * size)
    base = (shards / "train").as_uri()  # file:// goes through fsspec, the path of s3:// and gs://
    for k in (0, 1, 0, 2):  # shard 1 is the least recently used when shard 2 arrives
        cache.path(base, index.shards[k])
        time.sleep(0.01)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/shard-*.tar")) == [
        index.shards[0]["name"],
        index.shards[2]["name"],
    ]
