"""Evaluate a PConv U-Net like Table 1 of Liu et al. (ECCV 2018): L1 (%), PSNR and SSIM of the composite per
hole-ratio bucket, without (N) and with (B) the border constraint, as a markdown table (plus CSV).

    python -m scripts.eval_inpainting --checkpoint runs/pconv/checkpoint.pth.tar --data places2_val/
        --output results/eval.md
    python -m scripts.eval_inpainting --checkpoint ... --data places2_val/ --masks testing_mask_dataset/

Generated masks (default): every image is evaluated once per bucket and border setting with a mask seeded by
(--seed, image, bucket, border). Mask folder (NVIDIA format, white = hole): each mask is assigned to its bucket by its
measured hole ratio and counted as B when no hole lies within the border margin (50 px at 512 px), else N; mask j is
applied to image j mod the number of images.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from partialconv.data.inpainting import InpaintingDataset
from partialconv.data.masks import (
    HOLE_RATIO_BUCKETS,
    IrregularMaskGenerator,
    MaskFolder,
    border_margin,
    bucket_of,
    hole_ratio,
)
from partialconv.engine.amp import AMP_DTYPES
from partialconv.engine.cli import command_name, run_cli
from partialconv.engine.distributed import init_distributed
from partialconv.engine.inpainting import CLI_ERRORS
from partialconv.engine.inpainting.inference import inpaint, load_inpainting_model
from partialconv.engine.inpainting.metrics import l1_percent, psnr, ssim
from partialconv.fileio import write_text_atomic

BORDERS = ("N", "B")  # N: no border constraint, B: no hole within the border margin
METRICS = (("l1", "L1 (%)", 2), ("psnr", "PSNR", 2), ("ssim", "SSIM", 3))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog=command_name("python -m scripts.eval_inpainting"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="train_inpainting.py checkpoint (or a plain state_dict)")
    p.add_argument("--data", required=True, help="folder of test images (recursive)")
    p.add_argument("--masks", help="folder of mask PNGs (NVIDIA format); default: generated masks")
    p.add_argument("--image-size", type=int, default=512, help="images are resized and centre-cropped to this")
    p.add_argument("--num-images", type=int, help="use only the first N images (sorted by path)")
    p.add_argument("--layer-size", type=int, help="network depth, only for checkpoints that do not store it")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("-j", "--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="mixed precision for the network")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated masks")
    p.add_argument("--output", default="eval_inpainting.md", help="markdown table (a .csv is written next to it)")
    return p.parse_args(argv)


class GeneratedCases(Dataset):
    """(image index, bucket, border) -> (masked image, mask, image, bucket, border)."""

    def __init__(self, images: InpaintingDataset, size: int, seed: int) -> None:
        self.images, self.size, self.seed = images, size, seed
        self.cases = [(i, b, f) for b in range(len(HOLE_RATIO_BUCKETS)) for f in range(2) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, k: int):
        i, b, f = self.cases[k]
        _, _, image = self.images[i]
        gen = IrregularMaskGenerator(self.size, bucket=b, border=bool(f))
        mask = gen(self.seed * 1_000_003 + (i * len(HOLE_RATIO_BUCKETS) + b) * 2 + f)
        return image * mask, mask, image, b, f


class FolderCases(Dataset):
    """Mask j of a folder on image j mod N, bucketed by its measured hole ratio (masks outside every bucket are
    skipped)."""

    def __init__(self, images: InpaintingDataset, masks: MaskFolder, size: int) -> None:
        self.images, self.masks = images, masks
        margin = border_margin(size, size)
        self.cases = []
        for j in range(len(masks)):
            m = masks.mask(j)
            b = bucket_of(hole_ratio(m))
            if b is None:
                continue
            inner = m[..., margin:-margin, margin:-margin]
            border = int((m == 0).sum() == (inner == 0).sum())
            self.cases.append((j, b, border))

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, k: int):
        j, b, f = self.cases[k]
        _, _, image = self.images[j % len(self.images)]
        mask = self.masks.mask(j)
        return image * mask, mask, image, b, f


def markdown_table(results: dict) -> str:
    """Rows: metrics; columns: bucket x (N, B); cells: mean (count in the last row)."""
    cols = [(b, f) for b in range(len(HOLE_RATIO_BUCKETS)) for f in range(2)]
    head = ["", *[f"({lo:g},{hi:g}] {BORDERS[f]}" for (lo, hi), f in ((HOLE_RATIO_BUCKETS[b], f) for b, f in cols)]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name, digits in METRICS:
        cells = []
        for c in cols:
            r = results.get(c)
            cells.append(f"{r[key] / r['n']:.{digits}f}" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| images | " + " | ".join(str(results[c]["n"]) if c in results else "0" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def csv_text(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["bucket_lo", "bucket_hi", "border", "images", "l1_percent", "psnr", "ssim"])
    for (b, f), r in sorted(results.items()):
        lo, hi = HOLE_RATIO_BUCKETS[b]
        w.writerow([lo, hi, BORDERS[f], r["n"], *(f"{r[k] / r['n']:.6f}" for k, _, _ in METRICS)])
    return buf.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    device = init_distributed(args.device).device
    model = load_inpainting_model(args.checkpoint, device, args.layer_size)
    images = InpaintingDataset(args.data, args.image_size, train=False)
    if args.num_images:
        images.files = images.files[: args.num_images]
    if args.masks:
        cases = FolderCases(images, MaskFolder(args.masks, args.image_size), args.image_size)
    else:
        cases = GeneratedCases(images, args.image_size, args.seed)
    loader = DataLoader(cases, batch_size=args.batch_size, num_workers=args.workers, pin_memory=device.type == "cuda")
    results: dict = {}
    for _, mask, image, buckets, borders in tqdm(loader, desc="evaluating", unit="batch"):
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        comp = inpaint(model, image, mask, args.amp)
        scores = {"l1": l1_percent(comp, image), "psnr": psnr(comp, image).clamp(max=100), "ssim": ssim(comp, image)}
        scores = {k: v.cpu() for k, v in scores.items()}
        for n, key in enumerate(zip(buckets.tolist(), borders.tolist())):
            r = results.setdefault(key, {"n": 0, "l1": 0.0, "psnr": 0.0, "ssim": 0.0})
            r["n"] += 1
            for k in scores:
                r[k] += float(scores[k][n])
    table = markdown_table(results)
    source = f"masks from {args.masks}" if args.masks else f"generated masks (seed {args.seed})"
    header = (
        f"# Inpainting evaluation\n\ncheckpoint `{args.checkpoint}`, images `{args.data}` "
        f"({len(images)} at {args.image_size} px), {source}; metrics on the composite. N: no border constraint, "
        f"B: no hole within {border_margin(args.image_size, args.image_size)} px of the border.\n\n"
    )
    out = Path(args.output)
    write_text_atomic(out, header + table)
    write_text_atomic(out.with_suffix(".csv"), csv_text(results))
    print(table, end="")
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def cli(argv=None) -> int:
    """main() with expected failures (bad paths, unreadable files, bad values) as one line on stderr, exit 2."""
    return run_cli(main, argv, Path(__file__).name, CLI_ERRORS)


if __name__ == "__main__":
    sys.exit(cli())
