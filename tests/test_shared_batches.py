"""uint8 batches through reused shared-memory slots (data/shared_batches.py), the default loader of the uint8
pipelines on a CPU device: every batch holds exactly the pixels, targets and bad counts of the in-process loader,
slots are reused across steps and epochs, and a slot is never refilled while any tensor of the main process (the
batch, a view of one image) still refers to it, nor while a batch for it is in flight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks._jpeg_folder import make_jpeg_folder
from partialconv.data import DataParams, build_loaders
from partialconv.data.shared_batches import SharedBatchLoader, SlotBatch, _SlotCollate, slot_count
from partialconv.engine.distributed import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
pytest.importorskip("turbojpeg")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """JPEGs of 2 classes (both splits read them), with one truncated file (skipped: a short batch)."""
    root = make_jpeg_folder(tmp_path_factory.mktemp("slots"), num_images=44, num_classes=2, size=(96, 72))
    first = sorted(root.glob("*/*.JPEG"))[0]
    (first.parent / "zz_truncated.JPEG").write_bytes(first.read_bytes()[:300])
    return root


def _params(folder: Path, workers: int) -> DataParams:
    return DataParams(
        folder, folder, batch_size=8, workers=workers, train_crop_size=32,
        val_resize_size=40, val_crop_size=32, seed=3,
    )  # fmt: skip


def _epochs(loader, sampler, epochs: int, keep: bool) -> list[list[tuple[torch.Tensor, torch.Tensor, int]]]:
    out = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        batches = []
        for images, targets, bad in loader:
            # keep: the batches themselves (their slots stay referenced); else copies, the slots free again
            batches.append((images, targets, bad) if keep else (images.clone(), targets.clone(), bad))
        out.append(batches)
    return out


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for epoch_got, epoch_want in zip(got, want):
        assert len(epoch_got) == len(epoch_want)
        for (x, y, bad), (rx, ry, rbad) in zip(epoch_got, epoch_want):
            assert torch.equal(x, rx) and x.stride() == rx.stride() and x.dtype == torch.uint8
            assert torch.equal(y, ry) and bad == rbad


@pytest.fixture(scope="module")
def reference(folder: Path) -> dict[str, list]:
    """Two epochs of each split from the in-process loader (no workers, no slots)."""
    loaders = build_loaders(_params(folder, 0), CPU)
    assert not isinstance(loaders.train, SharedBatchLoader)
    return {
        "train": _epochs(loaders.train, loaders.train_sampler, 2, keep=False),
        "val": _epochs(loaders.val, None, 2, keep=False),
    }


@pytest.mark.parametrize("keep", [False, True], ids=["streamed", "all-batches-kept"])
def test_batches_are_the_in_process_loaders_and_slots_are_reused_only_when_free(folder, reference, keep) -> None:
    """Two workers, two epochs per split. Streamed, every batch comes through a slot and at most the pool's slots
    are ever used; with every batch kept, later batches find no free slot and are collated as before, and the kept
    ones still hold their own pixels at the end (a slot refilled while referenced would show another batch's)."""
    loaders = build_loaders(_params(folder, 2), CPU)
    assert loaders.backend == "turbo"
    for split, loader, sampler in (("train", loaders.train, loaders.train_sampler), ("val", loaders.val, None)):
        assert isinstance(loader, SharedBatchLoader)
        got = _epochs(loader, sampler, 2, keep=keep)
        _assert_same(got, reference[split])
        assert any(bad for _, _, bad in got[0]) or split == "train"  # the truncated file: a short val batch
        pool = loader.pool
        if keep:
            assert pool.missed > 0 and pool.taken <= len(pool.slots)
            in_slots = {x.untyped_storage().data_ptr() for epoch in got for x, _, _ in epoch}
            assert len(in_slots) == len([x for epoch in got for x, _, _ in epoch])  # no two batches share memory
        else:
            assert pool.missed == 0 and pool.taken == sum(len(e) for e in got)
            # the slots' memory: the batches were views of at most slot_count(2) storages
            assert len(pool.slots) == slot_count(2)


def test_a_view_of_one_image_keeps_its_slot(folder, reference) -> None:
    """Keeping only ``images[0]`` of each batch (a view) must keep that slot out of use as the whole batch would."""
    loaders = build_loaders(_params(folder, 1), CPU)
    kept = [images[0] for images, _, _ in loaders.val]
    kept += [images[0] for images, _, _ in loaders.val]
    want = [x[0] for epoch in reference["val"] for x, _, _ in epoch]
    assert len(kept) == len(want) and all(torch.equal(a, b) for a, b in zip(kept, want))
    assert loaders.val.pool.missed > 0


def test_epochs_left_early_give_their_slots_back(folder, reference) -> None:
    """Leaving iterations after one batch (an eval interrupted, a stop signal) leaves batches in flight; their
    reservations end with the iteration, so a full epoch after five such starts still gets a slot for every batch
    (it failed when the reservations were kept: the pool ran dry after the first abandoned iteration)."""
    loaders = build_loaders(_params(folder, 2), CPU)
    for _ in range(5):
        next(iter(loaders.val))
    missed = loaders.val.pool.missed
    _assert_same(_epochs(loaders.val, None, 1, keep=False), reference["val"][:1])
    assert loaders.val.pool.missed == missed


def test_forkserver_workers_write_the_slots_of_the_main_process(folder, reference) -> None:
    """A rank of a distributed run starts its workers from the fork server: the slots reach them pickled (shared
    memory by file descriptor), not inherited; the batches are still the reference's and come through slots."""
    from partialconv.data.loaders import LoaderSpec, torch_loader
    from partialconv.data.sampler import SeededSampler

    dataset = build_loaders(_params(folder, 0), CPU).val.dataset
    spec = LoaderSpec(params=_params(folder, 1), local_batch=8, device=CPU.device, train=False, distributed=True)
    loader = torch_loader(dataset, SeededSampler(len(dataset), shuffle=False, seed=3), spec)
    assert loader.loader.multiprocessing_context.get_start_method() == "forkserver"
    _assert_same(_epochs(loader, None, 2, keep=False), reference["val"])
    assert loader.pool.taken > 0 and loader.pool.missed == 0


def test_images_that_do_not_fit_the_slot_are_collated_as_before() -> None:
    """The worker side alone: another size than the slot's, a float image, or no good image at all give the usual
    collated batch (with the slot's number, so the main process can free it)."""
    from partialconv.data.loaders import collate_hwc_uint8
    from partialconv.data.shared_batches import _WithSlot

    slots = [torch.zeros(2 * 4 * 4 * 3, dtype=torch.uint8)]
    collate = _SlotCollate(slots, collate_hwc_uint8)

    def samples(*images):
        out = _WithSlot([None if im is None else (im, k) for k, im in enumerate(images)])
        out.slot = 0
        return out

    small = torch.full((4, 4, 3), 7, dtype=torch.uint8)
    fits = collate(samples(small, None, small + 1))
    assert isinstance(fits, SlotBatch) and fits.collated is None and fits.shape == (2, 4, 4, 3) and fits.bad == 1
    assert fits.targets == (0, 2) and torch.equal(slots[0].view(2, 4, 4, 3)[1], small + 1)
    for images in ((torch.zeros(6, 6, 3, dtype=torch.uint8),), (small, small, small), (small.float(),), (None,)):
        out = collate(samples(*images))
        assert isinstance(out, SlotBatch) and out.slot == 0 and out.collated is not None
        assert out.collated[2] == sum(im is None for im in images)


def test_without_room_in_shared_memory_the_loader_collates_as_torch_does(folder, reference, monkeypatch) -> None:
    """Slots that would fill more than a quarter of the free shared memory (a container's small /dev/shm: a worker
    writing to a full one dies of SIGBUS) are not made: the plain DataLoader, the same batches."""
    from torch.utils.data import DataLoader

    import partialconv.data.shared_batches as shared_batches

    slot_bytes = 8 * 32 * 32 * 3
    monkeypatch.setattr(shared_batches, "shared_memory_free", lambda: 4 * slot_count(1) * slot_bytes - 1)
    loaders = build_loaders(_params(folder, 1), CPU)
    assert type(loaders.val) is DataLoader and type(loaders.train) is DataLoader
    _assert_same(_epochs(loaders.val, None, 1, keep=False), reference["val"][:1])
    monkeypatch.setattr(shared_batches, "shared_memory_free", lambda: 4 * slot_count(1) * slot_bytes)
    assert isinstance(build_loaders(_params(folder, 1), CPU).val, SharedBatchLoader)
