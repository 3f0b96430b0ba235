"""The report's figures (matplotlib, Agg): top-1 bars, per-seed differences to zero padding, validation curves.

Each plot function returns what it drew, read back from the artists, so tests check the picture's values rather
than the data handed to it.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..fileio import write_bytes_atomic
from .summary import CellSummary, padding_key

__all__ = ["plot_paired_diffs", "plot_top1_bars", "plot_val_curves"]


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def _padding_colors(paddings: Sequence[str]) -> dict[str, str]:
    palette = ["#7f7f7f", "#76b900", "#1f77b4", "#d62728", "#9467bd", "#8c564b"]
    ordered = sorted(set(paddings), key=padding_key)
    return {p: palette[i % len(palette)] for i, p in enumerate(ordered)}


def _group_name(cell: CellSummary) -> str:
    return f"{cell.arch} [{cell.recipe}]" if cell.recipe else cell.arch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_top1_bars(cells: Sequence[CellSummary], path: Path) -> dict[str, Any]:
    """Average best top-1 per arch (groups) and padding (bars), stdev error bars, each run as a dot on its bar and
    NVIDIA's published average as a marker where it exists. Returns what was drawn, read back from the artists:
    ``bars`` [(group, padding, height)], ``runs`` [(group, padding, top-1)], ``published`` [(group, padding,
    value)], ``ylim`` and ``title``."""
    plt = _pyplot()
    done = [c for c in cells if c.n]
    groups = list(dict.fromkeys(_group_name(c) for c in done))
    paddings = sorted({c.padding for c in done}, key=padding_key)
    colors = _padding_colors(paddings)
    width = 0.8 / max(len(paddings), 1)
    n_bars = len(groups) * len(paddings)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * n_bars + 0.4 * len(groups)), 4.0), layout="constrained")
    placed = []  # (x, cell)
    for j, padding in enumerate(paddings):
        for i, group in enumerate(groups):
            cell = next((c for c in done if _group_name(c) == group and c.padding == padding), None)
            if cell is not None:
                placed.append((i + (j - (len(paddings) - 1) / 2) * width, cell))
    for padding in paddings:
        mine = [(x, c) for x, c in placed if c.padding == padding]
        ax.bar(
            [x for x, _ in mine],
            [c.mean1 for _, c in mine],
            width,
            yerr=[c.std1 or 0.0 for _, c in mine],
            capsize=3,
            color=colors[padding],
            alpha=0.75,
            label=padding,
            gid=f"bars:{padding}",
        )
    for x, c in placed:
        # Every run as a dot, spread sideways so equal values stay visible.
        offsets = [(k - (c.n - 1) / 2) * width * 0.5 / max(c.n, 1) for k in range(c.n)]
        ax.plot([x + o for o in offsets], c.acc1, "o", ms=3, color="black", gid=f"runs:{_group_name(c)}:{c.padding}")
    published = [(x, c) for x, c in placed if c.published is not None]
    for k, (x, c) in enumerate(published):
        label = "NVIDIA published avg" if k == 0 else None
        ax.plot(
            [x],
            [c.published.average],
            "D",
            ms=6,
            mfc="white",
            mec="black",
            label=label,
            gid=f"published:{_group_name(c)}:{c.padding}",
        )
    # Differences between paddings are a few tenths of a percent on ImageNet: the axis starts where the data does
    # (lowest run, error bar or published marker), not at 0, and the title states the range shown.
    values = [v for _, c in placed for v in c.acc1 + [c.mean1 - (c.std1 or 0.0), c.mean1 + (c.std1 or 0.0)]]
    values += [c.published.average for _, c in published]
    low, high = min(values), max(values)
    margin = 0.18 * max(high - low, 1.0)
    bottom, top = max(0.0, low - margin), high + 2 * margin  # room for the averages written above the bars
    ax.set_ylim(bottom, top)
    pad = 0.02 * (top - bottom)
    for x, c in placed:
        # Each average sits just above its own bar (error bar, run dots and published marker included), not at
        # the top of the axis where it floats away from a low bar.
        above = max([c.mean1 + (c.std1 or 0.0), *c.acc1] + ([c.published.average] if c.published else []))
        ax.text(
            x, above + pad, f"{c.mean1:.2f}", ha="center", va="bottom", fontsize=7, rotation=90,
            gid=f"label:{_group_name(c)}:{c.padding}",
        )  # fmt: skip
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("best val top-1 (%)")
    ax.set_title(
        f"Average best top-1 per padding (bars; error bars: stdev; dots: runs)\n"
        f"y-axis from {bottom:.2f} to {top:.2f} %, not from 0",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    data = _drawn(ax, groups)
    _save_figure(fig, path)
    plt.close(fig)
    return data


def _drawn(ax, groups: Sequence[str]) -> dict[str, Any]:
    """The values the bar chart's artists hold, keyed as plot_top1_bars documents."""
    centers = dict(enumerate(groups))
    out: dict[str, Any] = {
        "bars": [],
        "runs": [],
        "published": [],
        "ylim": tuple(ax.get_ylim()),
        "title": ax.get_title(),
    }
    for container in ax.containers:
        gid = container.patches[0].get_gid() if getattr(container, "patches", None) else None
        if gid and gid.startswith("bars:"):
            for patch in container.patches:
                x = patch.get_x() + patch.get_width() / 2
                out["bars"].append((centers[round(x)], gid.split(":", 1)[1], float(patch.get_height())))
    for line in ax.lines:
        gid = line.get_gid() or ""
        kind, _, rest = gid.partition(":")
        if kind in ("runs", "published"):
            group, padding = rest.rsplit(":", 1)
            out[kind] += [(group, padding, float(y)) for y in line.get_ydata()]
    out["labels"] = []  # (group, padding, text, y of the text's bottom)
    for text in ax.texts:
        kind, _, rest = (text.get_gid() or "").partition(":")
        if kind == "label":
            group, padding = rest.rsplit(":", 1)
            out["labels"].append((group, padding, text.get_text(), float(text.get_position()[1])))
    return out


_MEAN_OFFSET = 0.22  # the mean and CI bar of a category: just right of its dots (jittered within +-0.15)


def plot_paired_diffs(cells: Sequence[CellSummary], path: Path) -> dict[str, Any]:
    """Per-seed difference of best top-1 to the same network's zero padding: one dot per seed, the mean (bar
    marker) and its 95% CI (paired t), a line at 0. Returns {"<group> <padding>": {"diffs": [...], "dots_x": [...],
    "mean": m, "mean_x": x, "ci": (low, high), "xlim": (left, right)}}, read back from the artists."""
    plt = _pyplot()
    shown = [c for c in cells if c.paired is not None and c.paired.n]
    colors = _padding_colors([c.padding for c in cells])  # the same colour per padding as in the bar chart
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(shown)), 3.6), layout="constrained")
    names = [f"{_group_name(c)} {c.padding}" for c in shown]
    for i, (name, c) in enumerate(zip(names, shown)):
        diffs = [d for _, d in c.paired.diffs]
        jitter = [(k - (len(diffs) - 1) / 2) * 0.06 for k in range(len(diffs))]
        ax.plot([i + j for j in jitter], diffs, "o", ms=4, color=colors[c.padding], alpha=0.8, gid=f"dots:{name}")
        low, high = c.paired.ci_low, c.paired.ci_high
        yerr = None if low is None else [[c.paired.mean_diff - low], [high - c.paired.mean_diff]]
        ax.errorbar(
            [i + _MEAN_OFFSET],
            [c.paired.mean_diff],
            yerr=yerr,
            fmt="_",
            ms=14,
            mew=2,
            capsize=4,
            color="black",
            label=f"mean:{name}",
        )
    ax.axhline(0.0, color="grey", lw=1, ls="--")
    # Each category spans one unit around its tick: with a single pair, autoscaling would put the dots at the left
    # edge and the mean at the right one.
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("best top-1 minus zero padding (points)")
    ax.set_title("Per-seed difference to zero padding (dots: seeds; bar: mean, 95% CI)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    data: dict[str, Any] = {}
    for line in ax.lines:
        kind, _, name = (line.get_gid() or "").partition(":")
        if kind == "dots":
            data.setdefault(name, {})["diffs"] = [float(y) for y in line.get_ydata()]
            data[name]["dots_x"] = [float(x) for x in line.get_xdata()]
            data[name]["xlim"] = tuple(float(v) for v in ax.get_xlim())
    for container in ax.containers:
        kind, _, name = (container.get_label() or "").partition(":")
        if kind == "mean":
            mean = float(container.lines[0].get_ydata()[0])
            data[name]["mean"] = mean
            data[name]["mean_x"] = float(container.lines[0].get_xdata()[0])
            segs = container.lines[2][0].get_segments() if container.has_yerr else []
            data[name]["ci"] = (float(segs[0][0][1]), float(segs[0][1][1])) if segs else None
    _save_figure(fig, path)
    plt.close(fig)
    return data


def plot_val_curves(cells: Sequence[CellSummary], path: Path) -> dict[str, list[dict[str, Any]]]:
    """Validation top-1 per epoch, one panel per arch: mean over finished runs with a +-1 stdev band; incomplete
    runs as thin dashed lines. Returns, per panel, each line's label, marker and (x, y) points as drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    archs = list(dict.fromkeys(_group_name(c) for c in cells))
    paddings = sorted({c.padding for c in cells}, key=padding_key)
    colors = _padding_colors(paddings)
    # Curves that coincide (e.g. the same value every epoch) stay visible: each padding has its own marker and a
    # small sideways offset.
    markers = {p: "osD^vP*X"[i % 8] for i, p in enumerate(paddings)}
    shift = {p: (i - (len(paddings) - 1) / 2) * 0.06 for i, p in enumerate(paddings)}
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), squeeze=False, layout="constrained")
    for ax, arch in zip(axes[0], archs):
        for cell in (c for c in cells if _group_name(c) == arch):
            color = colors[cell.padding]
            if cell.finished:
                epochs = sorted({e for r in cell.finished for e, _ in r.curve})
                per_epoch = [[a for r in cell.finished for e, a in r.curve if e == ep] for ep in epochs]
                mean = [statistics.fmean(v) for v in per_epoch]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
                xs = [e + shift[cell.padding] for e in epochs]
                ax.plot(
                    xs,
                    mean,
                    color=color,
                    marker=markers[cell.padding],
                    ms=4,
                    mfc="none",
                    label=f"{cell.padding} (n={cell.n})",
                )
                lo = [m - s for m, s in zip(mean, std)]
                hi = [m + s for m, s in zip(mean, std)]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
            for i, run in enumerate(cell.incomplete):
                label = f"{cell.padding} incomplete" if i == 0 else None
                ax.plot(*zip(*run.curve), color=color, ls="--", lw=0.8, marker=".", label=label)
        last = max(e for c in cells if _group_name(c) == arch for r in c.finished + c.incomplete for e, _ in r.curve)
        ax.set_xlim(0.5, last + 0.5)
        ax.set_title(arch, fontsize=10)
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    drawn = {
        arch: [
            {
                "label": line.get_label(),
                "marker": line.get_marker(),
                "xy": [tuple(map(float, p)) for p in line.get_xydata()],
            }
            for line in ax.lines
        ]
        for ax, arch in zip(axes[0], archs)
    }
    _save_figure(fig, path)
    plt.close(fig)
    return drawn
