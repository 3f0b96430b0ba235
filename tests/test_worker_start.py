"""How DataLoader workers start: a rank of a distributed run starts them from multiprocessing's fork server (forking
a process whose process group runs threads can leave the child stuck in ``os.fork``: python/cpython#112275, seen
as a rank whose first validation never began), and that server outlives a stop signal to the process group so the
workers keep serving the rank while it finishes its step. A one-process run forks them, as before."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from partialconv.data.demo import make_demo_dataset
from partialconv.data.factory import build_loaders
from partialconv.data.params import DataParams
from partialconv.engine.distributed import DistInfo


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", train_per_class=2, val_per_class=1, size=24)


def _params(data: Path) -> DataParams:
    return DataParams(
        str(data / "train"), str(data / "val"), batch_size=4, workers=1,
        train_crop_size=16, val_resize_size=20, val_crop_size=16,
    )  # fmt: skip


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _targets(loader) -> list[list[int]]:
    return [t.tolist() for _, t, _ in loader]


def _rank(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loaders = build_loaders(_params(Path(data)), DistInfo(rank, rank, world, torch.device("cpu")))
    first = {"train": _targets(loaders.train), "val": _targets(loaders.val)}  # starts both loaders' workers
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    parents = sorted({_parent(p.pid) for p in workers})
    server_args = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in parents]
    record = {"rank_pid": os.getpid(), "workers": len(workers), "parents": parents, "server_args": server_args}
    if parents and os.getpid() not in parents:
        os.kill(parents[0], signal.SIGTERM)  # what a signal to the whole process group does to it
        time.sleep(1.0)
        record["server_after_sigterm"] = _is_running(parents[0])
        record["same_batches_after"] = _targets(loaders.val) == first["val"]
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see test_layers._ddp_worker: gloo's threads outlive the group and rarely abort at finalisation


def test_ranks_of_a_distributed_run_start_workers_from_the_fork_server(data, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["workers"] == 2, record  # one train and one val worker, both persistent
        assert record["rank_pid"] not in record["parents"], record  # not forked from the rank
        assert len(record["parents"]) == 1 and "multiprocessing.forkserver" in record["server_args"][0], record
        assert record["server_after_sigterm"] and record["same_batches_after"], record  # it keeps serving


def test_a_one_process_run_forks_its_workers(data):
    loaders = build_loaders(_params(data), DistInfo(0, 0, 1, torch.device("cpu")))
    assert _targets(loaders.train) and _targets(loaders.val)
    assert loaders.train.multiprocessing_context is None and loaders.val.multiprocessing_context is None
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    assert workers and all(_parent(p.pid) == os.getpid() for p in workers)
    del loaders  # ends the persistent workers
