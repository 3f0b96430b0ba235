"""Fill the holes of images with a trained PConv U-Net and write the composites as PNGs.

    python -m scripts.inpaint --checkpoint runs/pconv/checkpoint.pth.tar --input photo.jpg --mask holes.png
        --output filled.png
    python -m scripts.inpaint --checkpoint ... --input photos/ --random-mask 0.3 --output filled/

Mask PNGs use the NVIDIA irregular-mask convention: white = hole, black = known. A folder of inputs takes masks
from a folder (matched by file name stem) or one mask file for all; with --random-mask the generated masks are
written next to the outputs as NAME_mask.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from partialconv.data.inpainting import IMAGE_EXTENSIONS, load_image
from partialconv.data.masks import generate_mask, list_images, load_mask_png, save_mask_png
from partialconv.engine.amp import AMP_DTYPES
from partialconv.engine.cli import command_name, run_cli
from partialconv.engine.distributed import init_distributed
from partialconv.engine.inpainting import CLI_ERRORS
from partialconv.engine.inpainting.inference import inpaint, load_inpainting_model
from partialconv.fileio import atomic_write


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog=command_name("python -m scripts.inpaint"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="train_inpainting.py checkpoint (or a plain state_dict)")
    p.add_argument("--input", required=True, help="an image file or a folder of images (recursive)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mask", help="a mask PNG (white = hole) or a folder of them matched to inputs by name stem")
    src.add_argument(
        "--random-mask",
        type=float,
        metavar="RATIO",
        help="generate an irregular mask with about this hole ratio (0 < RATIO < 0.9) per image",
    )
    p.add_argument("--output", required=True, help="output PNG for a single input, else an output folder")
    p.add_argument("--layer-size", type=int, help="network depth, only for checkpoints that do not store it")
    p.add_argument(
        "--resize-mask",
        action="store_true",
        help="stretch a mask of another size than its image to the image (nearest); without it that is an error",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="mixed precision for the network")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-mask (image i uses seed+i)")
    args = p.parse_args(argv)
    if args.random_mask is not None and not 0.0 < args.random_mask < 0.9:
        p.error(f"--random-mask must be in (0, 0.9), got {args.random_mask}")
    return args


def _pairs(args) -> list[tuple[Path, Path | None, Path]]:
    """(image, mask file or None, output file) for every input."""
    src = Path(args.input)
    if src.is_file():
        images, out_paths = [src], [Path(args.output)]
        if out_paths[0].suffix.lower() != ".png":
            raise ValueError(f"--output {args.output}: a single input needs a .png output file")
    elif src.is_dir():
        images = list_images(src, IMAGE_EXTENSIONS)
        if not images:
            raise FileNotFoundError(f"--input {src}: no images found")
        out_paths = [Path(args.output) / img.relative_to(src).with_suffix(".png") for img in images]
    else:
        raise FileNotFoundError(f"--input {src}: no such file or folder")
    _check_writable(Path(args.output) if src.is_dir() else Path(args.output).parent)
    masks: list[Path | None] = [None] * len(images)
    if args.mask:
        mask_src = Path(args.mask)
        if mask_src.is_file():
            masks = [mask_src] * len(images)
        elif mask_src.is_dir():
            by_stem = {m.stem: m for m in list_images(mask_src, (".png",))}
            missing = [img.name for img in images if img.stem not in by_stem]
            if missing:
                raise FileNotFoundError(f"--mask {mask_src}: no mask PNG named like {', '.join(missing[:5])}")
            masks = [by_stem[img.stem] for img in images]
        else:
            raise FileNotFoundError(f"--mask {mask_src}: no such file or folder")
    pairs = list(zip(images, masks, out_paths))
    if not args.resize_mask:
        for image, mask, _ in pairs:  # headers only: refuse before anything is written
            sizes = (_size(image), _size(mask)) if mask is not None else (None, None)
            if None not in sizes and sizes[0] != sizes[1]:
                raise ValueError(_mask_size_message(mask, *sizes[1], *sizes[0]))
    return pairs


def _size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # reported with its own message when the file is loaded


def _mask_size_message(mask: Path, mw: int, mh: int, w: int, h: int) -> str:
    return f"--mask {mask}: {mw}x{mh} px, its image is {w}x{h}; give a mask of the image's size, or --resize-mask"


def _check_writable(folder: Path) -> None:
    """Refuse up front an output folder that is, or lies under, an existing file."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output: {parent} is a file, so {folder} cannot be a folder")
            return


def _mask_for(args, mask_path, index: int, h: int, w: int) -> torch.Tensor:
    if mask_path is None:
        r = args.random_mask
        arr = generate_mask(h, w, (max(0.0, r - 0.025), r + 0.025), seed=args.seed + index)
        return torch.from_numpy(arr).float()[None, None]
    m = torch.from_numpy(load_mask_png(mask_path)).float()[None, None]
    if m.shape[-2:] != (h, w):
        if not args.resize_mask:
            raise ValueError(_mask_size_message(mask_path, m.shape[-1], m.shape[-2], w, h))
        m = F.interpolate(m, size=(h, w), mode="nearest")  # nearest keeps it binary
    return m


def _save_png(image: torch.Tensor, path: Path) -> None:
    arr = (image[0].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_write(path) as f:
        Image.fromarray(arr).save(f, format="PNG")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = init_distributed(args.device).device
    pairs = _pairs(args)  # paths first: a wrong --output fails before the model is loaded
    model = load_inpainting_model(args.checkpoint, device, args.layer_size)
    for i, (img_path, mask_path, out_path) in enumerate(pairs):
        image = load_image(img_path)[None].to(device)
        mask = _mask_for(args, mask_path, i, *image.shape[-2:]).to(device)
        result = inpaint(model, image, mask, args.amp)
        _save_png(result, out_path)
        if mask_path is None:
            save_mask_png(mask[0, 0], out_path.with_name(out_path.stem + "_mask.png"))
        print(f"[{i + 1}/{len(pairs)}] {img_path} -> {out_path}", flush=True)
    return 0


def cli(argv=None) -> int:
    """main() with expected failures (bad paths, unreadable files, bad values) as one line on stderr, exit 2."""
    return run_cli(main, argv, Path(__file__).name, CLI_ERRORS)


if __name__ == "__main__":
    sys.exit(cli())
