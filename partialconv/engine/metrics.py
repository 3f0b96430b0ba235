"""On-device metric sums: no host synchronisation per step; one all-reduce per epoch gives exact global numbers."""

from __future__ import annotations

from typing import Optional

import torch

from .distributed import all_reduce_sum, is_main_process

__all__ = ["topk_correct", "EpochMeter"]

_FIELDS = ("loss_sum", "correct1", "correct5", "count")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets[:, None])
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class EpochMeter:
    """Sums of loss, top-1/top-5 hits and sample count, in float64 on ``device``; ``bad`` counts skipped images."""

    def __init__(self, device: torch.device) -> None:
        dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.sums = torch.zeros(len(_FIELDS), dtype=dtype, device=device)
        self.bad = 0

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        c1, c5 = topk_correct(logits, targets)
        count = torch.full((), n, dtype=self.sums.dtype, device=self.sums.device)  # a fill, not a host copy
        dt = self.sums.dtype
        self.sums += torch.stack([loss.detach().to(dt) * n, c1.to(dt), c5.to(dt), count])

    def state_dict(self) -> dict[str, float]:
        """The sums over all ranks as plain floats, to carry a partial epoch over a preemption (a collective in a
        distributed run: every rank must call it)."""
        total = all_reduce_sum(torch.cat([self.sums, self.sums.new_tensor([self.bad])]))
        return dict(zip((*_FIELDS, "bad"), total.tolist()))

    def load_state_dict(self, state: Optional[dict[str, float]]) -> None:
        """Rank 0 takes the saved sums (over all ranks of the run that saved them), the others start from zero:
        the epoch's :meth:`reduce` then counts every sample once, whatever the world size of either run."""
        if state and is_main_process():
            self.sums.copy_(torch.tensor([state[f] for f in _FIELDS], dtype=self.sums.dtype))
            self.bad = int(state["bad"])

    def local_summary(self) -> dict[str, float]:
        """This rank's running averages (for progress lines)."""
        loss_sum, c1, c5, n = self.sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss_sum / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n}

    def reduce(self) -> dict[str, float]:
        """Global averages over all ranks (a collective: every rank must call it)."""
        total = all_reduce_sum(torch.cat([self.sums, self.sums.new_tensor([self.bad])]))
        loss_sum, c1, c5, n, bad = total.tolist()
        denom = max(n, 1.0)
        return {
            "loss": loss_sum / denom,
            "acc1": 100.0 * c1 / denom,
            "acc5": 100.0 * c5 / denom,
            "count": n,
            "bad": bad,
        }
