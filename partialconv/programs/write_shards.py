"""Write an ImageFolder split as WebDataset tar shards plus the index the ``shards`` data backend reads.

    python -m scripts.write_shards /data/imagenet/train /data/imagenet-shards/train --workers 8
    python -m scripts.write_shards /data/imagenet/val /data/imagenet-shards/val --workers 8 --verify
    python -m scripts.write_shards --verify /data/imagenet-shards/train      # re-read every member

Shards (``shard-NNNNNN.tar``, about ``--shard-mb`` each) hold ``<key>.<ext>`` (the file's original bytes) and
``<key>.cls`` (its class index) per image, in ImageFolder's sorted order (the order of train.py's folder backends);
``index.json`` (partialconv/data/shards.py describes it) is written last. A shard is written to a temp name and
renamed when complete, and noted in ``.write_shards.progress.jsonl``: a killed writer leaves no shard or index a
reader would take as complete, and the same command run again writes only what is missing. Memory stays at one
image per process (images are streamed into the tar), whatever the dataset's size.

Exit codes: 0 done (or verified), 1 --verify found a difference, 2 bad arguments or an unusable source/output.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np
from tqdm import tqdm

from partialconv.data.image_folder import ignored_message, scan_image_folder
from partialconv.data.shard_cache import locked, sha256_file
from partialconv.data.shards import FORMAT, INDEX_NAME, VERSION, ShardIndex, index_fingerprint
from partialconv.engine.cli import command_name
from partialconv.fileio import append_line, atomic_write, write_text_atomic

PROGRESS_NAME = ".write_shards.progress.jsonl"
_BLOCK = tarfile.BLOCKSIZE


class WriterError(Exception):
    """A source or output that cannot be used: one line, exit 2."""


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


@dataclass(frozen=True)
class Source:
    root: Path
    classes: list[str]
    files: list[tuple[str, int, int]]  # (path relative to root, class index, size in bytes)
    fingerprint: str


def scan_source(root: Path) -> Source:
    """The split as ImageFolder (and train.py's folder backends) order it, with each file's size."""
    if not root.is_dir():
        raise WriterError(f"{root}: no such directory")
    classes, _, samples, ignored, _links = scan_image_folder(root)  # links: the writer copies each listed file
    if not samples:
        raise WriterError(f"{root}: no images (expected <root>/<class>/<image files>)")
    if ignored:
        print(f"warning: {ignored_message(ignored)}", file=sys.stderr)
    files = []
    for path, target in tqdm(samples, desc="scan", unit="img", disable=None):
        files.append((os.path.relpath(path, root), target, os.stat(path).st_size))
    listing = json.dumps({"classes": classes, "files": files}, separators=(",", ":"))
    return Source(root, classes, files, hashlib.sha256(listing.encode()).hexdigest())


def plan_shards(files: list[tuple[str, int, int]], shard_bytes: int) -> list[tuple[int, int]]:
    """Consecutive sample ranges ``[start, stop)``, each shard about ``shard_bytes`` (at least one image)."""
    ranges, start, size = [], 0, 0
    for i, (_, _, nbytes) in enumerate(files):
        entry = 3 * _BLOCK + _padded(nbytes)  # image header + data, class header + its one block
        if size and size + entry > shard_bytes:
            ranges.append((start, i))
            start, size = i, 0
        size += entry
    ranges.append((start, len(files)))
    return ranges


class _HashingWriter:
    """The file object tarfile writes to: hashes what passes through (no second read of the shard)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest, self.pos = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.pos += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.pos


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0  # the same bytes from the same source, every time
    return info


def write_shard(job: tuple[Path, Path, int, int, int, list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Write one shard (temp name, renamed when complete); returns its progress record."""
    root, out, k, start, width, files = job
    offsets = []
    with atomic_write(out / shard_name(k)) as f:
        sink = _HashingWriter(f)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (rel, target, size) in enumerate(files, start):
                with open(root / rel, "rb") as src:
                    data = src.read()
                if len(data) != size:
                    raise WriterError(f"{root / rel}: changed while the shards were written (run again)")
                key = f"{i:0{width}d}"
                info = _member(f"{key}.{Path(rel).suffix.lower().lstrip('.')}", size)
                offsets.append(tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors)))
                tar.addfile(info, io.BytesIO(data))
                label = str(target).encode()
                tar.addfile(_member(f"{key}.cls", len(label)), io.BytesIO(label))
    return {"shard": k, "size": sink.pos, "sha256": sink.digest.hexdigest(), "offsets": offsets}


def _read_progress(path: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    if not path.exists():
        append_line(path, json.dumps(header))
        return {}
    lines = path.read_text().splitlines()
    try:
        first = json.loads(lines[0]) if lines else None
    except ValueError:
        first = None
    if first != header:
        raise WriterError(
            f"{path}: an unfinished write of another source or --shard-mb is in this directory "
            "(use an empty output directory, or the arguments it was started with)"
        )
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a crash: that shard is written again
            continue
        done[record["shard"]] = record
    return done


def write_shards(src: Path, out: Path, shard_mb: float, workers: int) -> Path:
    """Write (or finish writing) the shards and index of ``src`` into ``out``; returns the index path."""
    source = scan_source(src)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / ".write_shards.lock", blocking=False) as mine:
        if not mine:
            raise WriterError(f"{out}: another write_shards is writing into it (wait for it, or stop it)")
        return _write_locked(source, out, shard_mb, workers)


def _write_locked(source: Source, out: Path, shard_mb: float, workers: int) -> Path:
    src = source.root
    index_path = out / INDEX_NAME
    if index_path.exists():
        index = ShardIndex.parse(index_path.read_bytes(), str(index_path))
        if index.source_fingerprint != source.fingerprint:
            raise WriterError(f"{out}: holds the shards of another source (its {INDEX_NAME}); use another directory")
        print(f"{out}: complete already ({len(index)} images in {len(index.shards)} shards)")
        return index_path
    for stale in out.glob(".shard-*.tmp"):  # temp files of a killed writer
        stale.unlink()
    shard_bytes = max(1, int(shard_mb * 2**20))
    ranges = plan_shards(source.files, shard_bytes)
    header = {"source_fingerprint": source.fingerprint, "shard_bytes": shard_bytes, "shards": len(ranges)}
    progress = out / PROGRESS_NAME
    done = _read_progress(progress, header)
    done = {k: r for k, r in done.items() if (out / shard_name(k)).is_file()}
    width = max(8, len(str(len(source.files) - 1)))
    todo = [(src, out, k, a, width, source.files[a:b]) for k, (a, b) in enumerate(ranges) if k not in done]
    start = time.perf_counter()
    bar = tqdm(total=len(source.files), initial=len(source.files) - sum(len(j[5]) for j in todo), unit="img")
    bar.set_description(f"{len(ranges)} shards")
    with bar:
        if workers > 1 and len(todo) > 1:
            # fork: the children only read files and write tars (no torch ops), and start without re-importing
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for record in pool.imap_unordered(write_shard, todo):
                    append_line(progress, json.dumps(record))
                    done[record["shard"]] = record
                    bar.update(ranges[record["shard"]][1] - ranges[record["shard"]][0])
        else:
            for job in todo:
                record = write_shard(job)
                append_line(progress, json.dumps(record))
                done[record["shard"]] = record
                bar.update(len(job[5]))
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "classes": source.classes,
        "source_fingerprint": source.fingerprint,
        "shards": [
            {"name": shard_name(k), "size": done[k]["size"], "sha256": done[k]["sha256"]} for k in range(len(ranges))
        ],
        "samples": {
            "name": [rel for rel, _, _ in source.files],
            "shard": [k for k, (a, b) in enumerate(ranges) for _ in range(a, b)],
            "offset": [o for k in range(len(ranges)) for o in done[k]["offsets"]],
            "size": [size for _, _, size in source.files],
            "class": [target for _, target, _ in source.files],
        },
    }
    body["fingerprint"] = index_fingerprint(body)
    write_text_atomic(index_path, json.dumps(body, separators=(",", ":")))  # last: the shards are all there
    progress.unlink()
    rate = sum(len(job[5]) for job in todo) / max(time.perf_counter() - start, 1e-9)
    print(f"{out}: {len(source.files)} images in {len(ranges)} shards; index {index_path} ({rate:.1f} images/s)")
    return index_path


def verify_shards(out: Path) -> list[str]:
    """Re-read every shard (size, sha256) and every member (name, offset, size, class) against the index; returns
    the differences found, one line each."""
    index_path = out / INDEX_NAME
    if not index_path.is_file():
        raise WriterError(f"{out}: no {INDEX_NAME}")
    try:
        index = ShardIndex.parse(index_path.read_bytes(), str(index_path))
    except ValueError as e:
        raise WriterError(str(e)) from None
    problems: list[str] = []
    width = max(8, len(str(len(index) - 1)))
    if np.any(np.diff(index.shard) < 0):
        return [f"{index_path}: samples out of shard order"]
    with tqdm(total=len(index), unit="img", desc="verify", disable=None) as bar:
        for k, shard in enumerate(index.shards):
            path = out / shard["name"]
            # samples are in shard order: shard k's are one run of the column
            samples = range(*np.searchsorted(index.shard, [k, k + 1]).tolist())
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if path.stat().st_size != shard["size"] or sha256_file(path) != shard["sha256"]:
                problems.append(f"{path}: size or sha256 differs from the index")
            try:
                with tarfile.open(path, mode="r:") as tar:
                    members = [m for m in tar]
                    for j, i in enumerate(samples):
                        image, label = members[2 * j], members[2 * j + 1]
                        key = f"{i:0{width}d}"
                        if not (image.name.startswith(key + ".") and label.name == f"{key}.cls"):
                            problems.append(f"{path}: member {image.name} where the index has sample {key}")
                        elif image.offset_data != index.offset[i] or image.size != index.size[i]:
                            problems.append(f"{path}: {image.name} lies elsewhere than the index says")
                        elif tar.extractfile(label).read() != str(index.target[i]).encode():
                            problems.append(f"{path}: {label.name} differs from the index's class")
                        bar.update()
                    if len(members) != 2 * len(samples):
                        problems.append(f"{path}: {len(members)} members, the index has {2 * len(samples)}")
            except (tarfile.TarError, IndexError, OSError) as e:
                problems.append(f"{path}: unreadable tar ({type(e).__name__}: {e})")
    return problems


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("python -m scripts.write_shards"),
        description="Write an ImageFolder split (SRC/<class>/<images>) as WebDataset tar shards plus index.json in "
        "OUT, in ImageFolder's order, for train.py's shards backend (--data_train OUT, a copy of it, or its URL).",
        allow_abbrev=False,  # a prefix of a flag is an error, never silently another flag
    )
    parser.add_argument("paths", nargs="+", metavar="SRC OUT", help="source split and output directory (with "
                        "--verify alone: OUT, to verify it)")  # fmt: skip
    parser.add_argument("--shard-mb", type=float, default=512.0, help="target shard size in MiB")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    parser.add_argument("--verify", action="store_true", help="re-read every shard and member against the index")
    args = parser.parse_args(argv)
    if len(args.paths) > 2 or (len(args.paths) == 1 and not args.verify):
        parser.error("give SRC OUT (write), SRC OUT --verify (write, then verify) or --verify OUT")
    if not args.shard_mb > 0:
        parser.error(f"--shard-mb {args.shard_mb}: must be > 0")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    paths = [Path(p) for p in args.paths]
    try:
        if len(paths) == 2:
            write_shards(paths[0], paths[1], args.shard_mb, args.workers)
        if args.verify:
            problems = verify_shards(paths[-1])
            for line in problems:
                print(f"write_shards: {line}", file=sys.stderr)
            if problems:
                return 1
            print(f"{paths[-1]}: every shard and member matches the index")
    except WriterError as e:
        print(f"write_shards: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
