"""The CPU normalisation's reused float batches (partialconv/data/batch_buffers.py): a buffer is handed out again
only when nothing refers to the batch any more: not the caller, not a view, not autograd's saved input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from partialconv.data import batch_buffers, batch_to_device
from partialconv.data.batch_buffers import BatchBuffers
from partialconv.data.loaders import normalize_images


def _batches(count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # what collate_hwc_uint8 yields: (B, 3, H, W) views of HWC pixels
    pixels = [torch.randint(0, 256, (4, 12, 10, 3), dtype=torch.uint8, generator=g) for _ in range(count)]
    return [x.permute(0, 3, 1, 2) for x in pixels]


def _expected(x: torch.Tensor) -> torch.Tensor:
    return normalize_images(x, fused=True)  # the one-kernel path allocates its own output


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchBuffers]:
    fresh = BatchBuffers()
    monkeypatch.setattr(batch_buffers, "_CPU_BUFFERS", fresh)
    yield fresh


def test_a_dropped_batch_is_reused_and_a_held_one_never_overwritten(pool: BatchBuffers) -> None:
    x1, x2, x3, x4 = _batches(4)
    held = normalize_images(x1)
    second = normalize_images(x2)
    assert held.data_ptr() != second.data_ptr()
    address = second.data_ptr()
    del second
    third = normalize_images(x3)
    assert third.data_ptr() == address, "a batch nobody holds is reused (else the pool does nothing)"
    for x in (x4, x2, x3):  # more calls while `held` and `third` are alive: fresh buffers beyond the pool's two
        assert torch.equal(normalize_images(x), _expected(x))
    assert torch.equal(held, _expected(x1)) and torch.equal(third, _expected(x3))


def test_a_view_of_a_dropped_batch_keeps_its_values(pool: BatchBuffers) -> None:
    x1, *others = _batches(5)
    row = normalize_images(x1)[2]  # the batch itself is dropped, one image of it kept
    for x in others:
        normalize_images(x)
    assert torch.equal(row, _expected(x1)[2])


def test_autograds_saved_input_is_not_overwritten_before_backward(pool: BatchBuffers) -> None:
    x1, *others = _batches(4)
    conv = nn.Conv2d(3, 2, 3)
    conv(normalize_images(x1)).sum().backward()  # the weight gradient reads the saved input
    expected = conv.weight.grad.clone()
    conv.weight.grad = None
    loss = conv(normalize_images(x1)).sum()  # the input lives on only inside the graph
    for x in others:
        normalize_images(x)
    loss.backward()
    assert torch.equal(conv.weight.grad, expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_training_loop_gets_the_weights_of_fresh_batches(
    pool: BatchBuffers, monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    def train() -> tuple[dict, int]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        addresses = set()
        for step, images in enumerate(_batches(8, seed=1)):
            # the trainer's pattern; the loss (and its freed graph) of the previous step is still bound
            images, targets = batch_to_device(images, torch.tensor([step % 3] * 4), torch.device("cpu"), channels_last)
            addresses.add(images.data_ptr())
            loss = nn.functional.cross_entropy(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.state_dict(), len(addresses)

    pooled, buffers_used = train()
    assert buffers_used in (1, 2)  # reused: at most the pool's two buffers per shape over 8 steps
    monkeypatch.setattr(batch_buffers, "_CPU_BUFFERS", BatchBuffers(per_shape=0))  # a fresh batch every step
    fresh, _ = train()
    assert all(torch.equal(pooled[k], fresh[k]) for k in fresh)


def test_shapes_beyond_the_limit_push_out_the_oldest(pool: BatchBuffers) -> None:
    small = BatchBuffers(per_shape=1, shapes=2)
    cpu, fmt = torch.device("cpu"), torch.contiguous_format
    first = small.empty(torch.Size([2, 3]), fmt, cpu).data_ptr()
    small.empty(torch.Size([4, 3]), fmt, cpu)
    assert small.empty(torch.Size([2, 3]), fmt, cpu).data_ptr() == first  # still pooled
    small.empty(torch.Size([4, 3]), fmt, cpu)
    small.empty(torch.Size([5, 3]), fmt, cpu)  # a third shape: [2, 3] was used longest ago
    assert len(small._pool) == 2 and (2, 3) not in {key[0] for key in small._pool}
