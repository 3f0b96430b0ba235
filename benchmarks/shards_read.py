"""Tar shards vs the same images as files (issue 22): the reading cost, what reaches the filesystem, the HTTP cache
and the writer.

    python -m benchmarks.shards_read --images 512 --windows 6

1. Loader-only throughput of train.py's train loader, the folder backend whose decode shards use (``turbo`` where
   libturbojpeg 3 loads, else ``pil_fast``) on the folder vs ``shards`` on shards written from it, at 1 and 2
   workers, batch 32, crop 224, windows interleaved: wall img/s and images per CPU-second of all processes (main +
   workers, from /proc), with the per-window ratio shards/folder.
2. One epoch in the main process (-j 0): files opened (Python's ``open`` audit events) and bytes read
   (/proc/self/io ``rchar``) by each backend.
3. From a local ``python -m http.server``: one epoch with an empty cache (cold: every shard fetched) and again with
   the filled cache (warm), 2 workers.
4. The writer (``python -m scripts.write_shards``, a subprocess): images/s and its peak RSS, for two source sizes.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # Run by path (python or torchrun with the file's path): run again, in this same process, as `python -m` with
    # this checkout on PYTHONPATH (child processes such as DataLoader workers inherit it), before anything is imported.
    import os
    import sys

    _CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))
    _ORIG = getattr(sys, "orig_argv", sys.argv)  # Python >= 3.10; 3.9 keeps no interpreter options
    _FLAGS = _ORIG[1 : len(_ORIG) - len(sys.argv)]  # the interpreter's own options (-u, -X ...), kept
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "benchmarks.shards_read", *sys.argv[1:]])

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks._common import machine_info, save_results
from benchmarks._jpeg_folder import make_jpeg_folder
from partialconv.data import DataParams, build_loaders
from partialconv.data.shards import shard_pipeline
from partialconv.engine.distributed import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Runs a module or statement and reports its own peak RSS (VmHWM) at exit: a child's getrusage maxrss on Linux
# carries its parent's high-water mark across fork + exec, so it would report this benchmark's memory, not the writer's.
_PEAK = (
    "import runpy, sys\n"
    "try:\n"
    "    exec(sys.argv.pop(1)) if sys.argv[1].startswith('import ') else runpy.run_module(sys.argv.pop(1), "
    "run_name='__main__')\n"
    "finally:\n"
    "    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr, flush=True)\n"
)


def _peak_mb(stderr: str) -> float:
    line = next(line for line in stderr.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024  # kB


def write(src: Path, out: Path, shard_mb: float) -> dict[str, Any]:
    """Run the writer as a child: its wall time, the rate of its writing phase (its last line) and its peak RSS."""
    cmd = [sys.executable, "-c", _PEAK, "scripts.write_shards", str(src), str(out), "--shard-mb", str(shard_mb)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    rate = float(done.stdout.rsplit("(", 1)[1].split(" images/s")[0])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "write_img_per_s": rate, "peak_rss_mb": _peak_mb(done.stderr)}


def baseline_rss_mb() -> float:
    """Peak RSS of a process that only imports what the writer imports (Python, torch, torchvision, tqdm)."""
    done = subprocess.run([sys.executable, "-c", _PEAK, "import scripts.write_shards"], cwd=ROOT, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return _peak_mb(done.stderr)


def params(train: Path, backend: str, workers: int, **extra: Any) -> DataParams:
    return DataParams(train, train, batch_size=32, workers=workers, backend=backend, seed=0, **extra)


class Stream:
    def __init__(self, p: DataParams) -> None:
        self.loaders = build_loaders(p, CPU)
        self.epoch = 0
        self.loaders.train_sampler.set_epoch(0)
        self.it = iter(self.loaders.train)

    def next(self) -> None:
        try:
            next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loaders.train_sampler.set_epoch(self.epoch)
            self.it = iter(self.loaders.train)
            next(self.it)

    def cpu(self) -> float:
        return time.process_time() + sum(_cpu_seconds(w.pid) for w in getattr(self.it, "_workers", []))


def folder_backend() -> str:
    """The folder backend that decodes as a run on shards does: the comparison is of reading, not of decoders."""
    return shard_pipeline(params(Path("."), "shards", 0))


def loader_only(folder: Path, shards: Path, workers: list[int], windows: int, steps: int) -> list[dict]:
    configs = []
    for j in workers:
        name = f"folder ({folder_backend()})"
        configs.append({"pipeline": name, "workers": j, "s": Stream(params(folder, folder_backend(), j))})
        configs.append({"pipeline": "shards", "workers": j, "s": Stream(params(shards, "shards", j))})
    for c in configs:
        c.update(rates=[], cpu=0.0, images=0)
        for _ in range(2):
            c["s"].next()
    for w in range(windows):
        for c in configs if w % 2 == 0 else configs[::-1]:
            for _ in range(2 * c["workers"] + 1):  # drain what was prefetched while idle
                c["s"].next()
            cpu0, t0 = c["s"].cpu(), time.perf_counter()
            for _ in range(steps):
                c["s"].next()
            c["rates"].append(steps * 32 / (time.perf_counter() - t0))
            c["cpu"] += c["s"].cpu() - cpu0
            c["images"] += steps * 32
        print(f"window {w + 1}/{windows}: " + ", ".join(f"{c['pipeline']} -j {c['workers']} {c['rates'][-1]:.1f}"
                                                       for c in configs), flush=True)  # fmt: skip
    rows = []
    for j in workers:
        f, s = [c for c in configs if c["workers"] == j]
        ratios = [b / a for a, b in zip(f["rates"], s["rates"])]
        for c in (f, s):
            rows.append({
                "pipeline": c["pipeline"], "workers": j, "img_per_s": statistics.median(c["rates"]),
                "img_per_cpu_s": c["images"] / c["cpu"], "rates": c["rates"],
            })  # fmt: skip
        rows[-1]["wall_ratio_vs_folder"] = statistics.median(ratios)
        rows[-1]["wall_ratio_range"] = [min(ratios), max(ratios)]
        rows[-1]["cpu_ratio_vs_folder"] = rows[-1]["img_per_cpu_s"] / rows[-2]["img_per_cpu_s"]
    return rows


def per_sample_cpu(folder: Path, shards: Path, rounds: int) -> list[dict]:
    """CPU ms per train sample in this process (no DataLoader, no scheduling noise from worker processes): every
    4th sample of each dataset per round, the two datasets interleaved, medians over rounds."""
    folder_name = f"folder ({folder_backend()})"
    sets = {
        folder_name: build_loaders(params(folder, folder_backend(), 0), CPU).train.dataset,
        "shards": build_loaders(params(shards, "shards", 0), CPU).train.dataset,
    }
    times: dict[str, list[float]] = {name: [] for name in sets}
    for r in range(rounds):
        for name in list(sets) if r % 2 == 0 else list(sets)[::-1]:
            start = time.process_time()
            picked = range(0, len(sets[name]), 4)
            for i in picked:
                sets[name][(i, i)]
            times[name].append(1000 * (time.process_time() - start) / len(picked))
    ratios = [b / a for a, b in zip(times[folder_name], times["shards"])]
    return [{"pipeline": name, "cpu_ms_per_image": statistics.median(t), "rounds": t} for name, t in times.items()] + [
        {"pipeline": "shards/folder CPU", "ratio": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
    ]


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def epoch_io(folder: Path, shards: Path) -> list[dict]:
    """Files opened and bytes read by one epoch (-j 0, in this process) of each backend."""
    opened: list[str] = []
    counting = [False]

    def hook(event: str, args: tuple) -> None:
        if counting[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)
    rows = []
    for name, root, backend in (
        (f"folder ({folder_backend()})", folder, folder_backend()),
        ("shards", shards, "shards"),
    ):
        loaders = build_loaders(params(root, backend, 0), CPU)
        loaders.train_sampler.set_epoch(0)
        opened.clear()
        before, counting[0] = _rchar(), True
        images = sum(len(y) for _, y, _ in loaders.train)
        counting[0] = False
        data = [p for p in opened if p.startswith(str(root))]
        rows.append({"pipeline": name, "images": images, "files_opened": len(data), "bytes_read": _rchar() - before})
    return rows


def http_cold_warm(shards_root: Path, cache: Path, workers: int) -> list[dict]:
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(shards_root)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/train"
        rows = []
        for state in ("cold", "warm"):
            start = time.perf_counter()
            loaders = build_loaders(params(url, "auto", workers, cache_dir=str(cache)), CPU)
            loaders.train_sampler.set_epoch(0)
            images = sum(len(y) for _, y, _ in loaders.train)
            seconds = time.perf_counter() - start
            rows.append({"cache": state, "workers": workers, "images": images, "seconds": seconds,
                         "img_per_s": images / seconds})  # fmt: skip
            del loaders
        return rows
    finally:
        server.terminate()
        server.wait()


PARTS = ("writer", "loader", "sample", "io", "http")


def markdown(info: dict, args: argparse.Namespace, results: dict[str, list]) -> str:
    lines = [
        "# Tar shards vs image files (benchmarks/shards_read.py)",
        "",
        f"Command: `{info['command']}`; {info['date']}, {info['device_name']}, load average "
        f"{info['loadavg_1min']}, torch {torch.__version__}, commit {info['git_commit']}. Measured on a busy "
        "shared 2-core machine (other jobs running): ratios measured side by side in interleaved windows are the "
        "figures to read.",
        "",
        f"{args.images} ImageNet-like JPEGs (500x375, q90, ~100 KB), batch 32, crop 224, the train split.",
    ]
    if "loader" in results:
        lines += [
            "",
            "Train loader only (DataLoader workers, interleaved windows):",
            "",
            "| pipeline | -j | wall img/s (median) | img per CPU-second | shards/folder wall (range) | CPU ratio |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["loader"]:
            ratio = f"{r['wall_ratio_vs_folder']:.2f} ({r['wall_ratio_range'][0]:.2f}-{r['wall_ratio_range'][1]:.2f})" \
                if "wall_ratio_vs_folder" in r else ""  # fmt: skip
            cpu = f"{r['cpu_ratio_vs_folder']:.2f}" if "cpu_ratio_vs_folder" in r else ""
            lines.append(f"| {r['pipeline']} | {r['workers']} | {r['img_per_s']:.1f} | {r['img_per_cpu_s']:.1f} | "
                         f"{ratio} | {cpu} |")  # fmt: skip
    if "sample" in results:
        rows = results["sample"]
        lines += ["", "CPU per train sample, in-process (no workers), interleaved rounds:", "",
                  "| pipeline | CPU ms per image (median) |", "|---|---|"]  # fmt: skip
        lines += [f"| {r['pipeline']} | {r['cpu_ms_per_image']:.2f} |" for r in rows[:-1]]
        lines += [
            f"| shards / folder | {rows[-1]['ratio']:.2f} ({rows[-1]['range'][0]:.2f}-{rows[-1]['range'][1]:.2f}) |"
        ]
    if "io" in results:
        lines += ["", "One epoch, -j 0:", "", "| pipeline | images | files opened | bytes read |", "|---|---|---|---|"]
        lines += [f"| {r['pipeline']} | {r['images']} | {r['files_opened']} | {r['bytes_read']:,} |"
                  for r in results["io"]]  # fmt: skip
    if "http" in results:
        lines += ["", "From `python -m http.server` on 127.0.0.1 (one epoch, build_loaders included):", "",
                  "| cache | -j | seconds | img/s |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['cache']} | {r['workers']} | {r['seconds']:.1f} | {r['img_per_s']:.1f} |"
                  for r in results["http"]]  # fmt: skip
    if "writer" in results:
        writer = results["writer"]
        lines += [
            "",
            "Writer (a subprocess; seconds include starting Python and torch and the scan; images/s is the writing "
            "phase's; peak RSS is the writer's own):",
            "",
            "| images | source MB | shards | process seconds | writing images/s | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {r['images']} | {r['source_mb']:.0f} | {r['shards']} | {r['seconds']:.1f} | "
                  f"{r['write_img_per_s']:.0f} | {r['peak_rss_mb']:.0f} |" for r in writer if r["images"]]  # fmt: skip
        lines += [f"| (imports only) | | | | | {writer[-1]['peak_rss_mb']:.0f} |"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.shards_read", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("--images", type=int, default=512, help="generated 500x375 JPEGs (16 classes) to read")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers, each measured")
    parser.add_argument("--windows", type=int, default=6, help="interleaved timed windows per loader")
    parser.add_argument("--steps", type=int, default=4, help="batches per timed window")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the in-process per-sample measurement")
    parser.add_argument("--shard-mb", type=float, default=8.0, help="shard size the writer aims at (MB)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure: "
                        "loader (img/s and per CPU-second, folder vs shards), sample (CPU per sample in process), io "
                        "(files opened, bytes read), http (cold/warm cache), writer (rate, peak RSS)")  # fmt: skip
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "partialconv-bench"),
                        help="where the generated JPEG folder is kept between runs")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="directory for the JSON + markdown results")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info(torch.device("cpu"), "benchmarks/shards_read.py", sys.argv[1:])
    folder = make_jpeg_folder(args.cache, num_images=args.images, num_classes=16)
    work = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    results: dict[str, list] = {}
    try:
        sources = [(folder, args.images)]
        if "writer" in args.parts:
            sources.insert(
                0, (make_jpeg_folder(args.cache, num_images=args.images // 4, num_classes=16), args.images // 4)
            )
            results["writer"] = []
        for src, n in sources:
            out = work / f"w{n}"
            row = write(src, out, args.shard_mb)
            size = sum(p.stat().st_size for p in src.rglob("*.JPEG"))
            row.update(images=n, source_mb=size / 1e6, shards=len(list(out.glob("shard-*.tar"))))
            results.setdefault("writer", []).append(row)
            print(f"writer: {row}", flush=True)
        if "writer" in args.parts:
            results["writer"].append({"images": 0, "source_mb": 0.0, "shards": 0, "seconds": 0.0,
                                      "write_img_per_s": 0.0, "peak_rss_mb": baseline_rss_mb()})  # fmt: skip
        else:
            del results["writer"]
        shards_root = work / "shards"
        shards_root.mkdir()
        (work / f"w{args.images}").rename(shards_root / "train")
        if "loader" in args.parts:
            results["loader"] = loader_only(folder, shards_root / "train", args.workers, args.windows, args.steps)
        if "sample" in args.parts:
            results["sample"] = per_sample_cpu(folder, shards_root / "train", args.rounds)
            print(results["sample"], flush=True)
        if "io" in args.parts:
            results["io"] = epoch_io(folder, shards_root / "train")
            print(results["io"], flush=True)
        if "http" in args.parts:
            results["http"] = http_cold_warm(shards_root, work / "cache", max(args.workers))
            print(results["http"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(info, args, results)
    suffix = "" if set(args.parts) == set(PARTS) else "_" + "_".join(args.parts)
    base = save_results(
        args.out / f"shards_read_{time.strftime('%Y-%m-%d')}_cpu{suffix}", {"machine": info, **results}, text
    )
    print(text)
    print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
