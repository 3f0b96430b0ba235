"""Published numbers the report sets beside the user's runs: NVIDIA's 5-run padding table and torchvision's
official top-1 (the weights' metadata, via :func:`partialconv.models.pytorch_official`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..models import pytorch_official

__all__ = ["PUBLISHED_TABLE", "PublishedCell", "published_table", "pytorch_official"]

# NVIDIA's published 5-run table (the seed README's padding comparison), shipped with the package; its header
# comment names the source image and notes the one inconsistency in it (the zero/partial stdev column).
PUBLISHED_TABLE = Path(__file__).resolve().parent / "data" / "nvidia_padding_table.csv"


@dataclass
class PublishedCell:
    """One row of NVIDIA's published table: best top-1 of each of 5 runs, their average, diff to zero, stdev."""

    arch: str
    padding: str
    runs: list[float]
    average: float
    diff: Optional[float]
    stdev: float
    pt_official: Optional[float]


def published_table(path: Path = PUBLISHED_TABLE) -> dict[tuple[str, str], PublishedCell]:
    """NVIDIA's published table, keyed by (arch, padding); '#' lines are its source note."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))

    def num(text: str) -> Optional[float]:
        return float(text) if text.strip() else None

    return {
        (r["arch"], r["padding"]): PublishedCell(
            arch=r["arch"],
            padding=r["padding"],
            runs=[float(r[f"run{i}"]) for i in range(1, 6)],
            average=float(r["average"]),
            diff=num(r["diff"]),
            stdev=float(r["stdev"]),
            pt_official=num(r["pt_official"]),
        )
        for r in rows
    }
