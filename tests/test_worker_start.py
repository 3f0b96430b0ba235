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
from typing import Optional

import pytest
import torch
from signalling import parent_of

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


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _targets(loader) -> list[list[int]]:
    return [t.tolist() for _, t, _ in loader]


def _fork_server(rank_pid: int) -> Optional[int]:
    """The fork server started by ``rank_pid``, if any (multiprocessing starts it as ``python -c "from
    multiprocessing.forkserver import main; ..."``)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and parent_of(int(entry.name)) == rank_pid:
                if b"multiprocessing.forkserver" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def _rank(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loaders = build_loaders(_params(Path(data)), DistInfo(rank, rank, world, torch.device("cpu")))
    server = _fork_server(os.getpid())  # started with the loaders, still importing torch
    if server is not None:
        os.kill(server, signal.SIGTERM)  # what a signal to the whole process group does to it, at its start
    first = {"train": _targets(loaders.train), "val": _targets(loaders.val)}  # starts both loaders' workers
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    parents = sorted({parent_of(p.pid) for p in workers})
    record = {"rank_pid": os.getpid(), "server": server, "workers": len(workers), "parents": parents}
    if server is not None:
        record["server_alive"] = _is_running(server)
        os.kill(server, signal.SIGTERM)  # and once it serves workers
        time.sleep(1.0)
        record["server_alive_after_second_sigterm"] = _is_running(server)
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
        assert record["server"] is not None and record["parents"] == [record["server"]], record  # not the rank
        # the same server throughout: a SIGTERM while it imported, and one while it served, did not end it
        assert record["server_alive"] and record["server_alive_after_second_sigterm"], record
        assert record["same_batches_after"], record


def test_a_one_process_run_forks_its_workers(data):
    loaders = build_loaders(_params(data), DistInfo(0, 0, 1, torch.device("cpu")))
    assert _targets(loaders.train) and _targets(loaders.val)
    inner = [getattr(loader, "loader", loader) for loader in (loaders.train, loaders.val)]  # in a SharedBatchLoader
    assert all(loader.multiprocessing_context is None for loader in inner)
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    assert workers and all(parent_of(p.pid) == os.getpid() for p in workers)
    del loaders  # ends the persistent workers
