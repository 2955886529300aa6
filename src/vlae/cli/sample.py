"""``vlae sample``: samples of a trained model as one image grid."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ..errors import VLAEError
from ._common import add_model_options, add_progress, check_range, progress_bar

__all__ = ["MAX_GRID_PIXELS", "register", "run", "torch_grid"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
#: Pixels of the largest grid written: Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``), beyond which it
#: and the viewers built on it refuse to open an image as a possible decompression bomb.
MAX_GRID_PIXELS = 89_478_485


def register(subparsers: Any) -> None:
    """Add ``vlae sample``."""
    p = subparsers.add_parser("sample", help="draw samples into a PNG grid")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or .pt file")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("-o", "--out", default="samples.png", help="output image: .png, .jpg, .jpeg, .pdf or .svg")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--naive", action="store_true", help="naive pixel-by-pixel sampling instead of the fast sampler")
    add_model_options(p)
    add_progress(p, "images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sample ``--n`` images and write their grid to ``--out``."""
    import torch

    from ..checkpoint import load_model
    from ..outputs import prepare_output
    from ..sampling import sample_in_batches

    check_range("n", args.n, 1)
    check_range("seed", args.seed, 0)
    model, _ = load_model(args.checkpoint, weights=args.weights, device=args.device)
    _check_grid_fits(args.n, model.cfg.image_shape)
    out = prepare_output(args.out, "--out", _IMAGE_SUFFIXES)  # before sampling, which can take a while
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with progress_bar(args.progress, "sample") as progress:  # memory bounded whatever --n
        x = sample_in_batches(model, args.n, generator=gen, naive=args.naive, progress=progress)
    seconds = time.perf_counter() - t0
    _save_grid(x, out, 255 if model.cfg.observation == "logistic_mixture" else 1)
    print(f"wrote {args.n} samples to {out} ({seconds:.1f} s, {'naive' if args.naive else 'fast'} sampler)")
    return 0


def _grid_size(n: int, image_shape) -> tuple[int, int]:
    """``(height, width)`` in pixels of the grid :func:`_save_grid` draws for ``n`` images."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows * (image_shape[-2] + 1) + 1, cols * (image_shape[-1] + 1) + 1


def _check_grid_fits(n: int, image_shape) -> None:
    """One line, before anything is drawn, for a grid too large to be an image."""

    def pixels(count: int) -> int:
        height, width = _grid_size(count, image_shape)
        return height * width

    if pixels(n) > MAX_GRID_PIXELS:
        low, high = 1, n  # the largest count that fits: pixels() grows with the count
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if pixels(mid) <= MAX_GRID_PIXELS else (low, mid - 1)
        height, width = _grid_size(n, image_shape)
        most = low
        raise VLAEError(
            f"invalid --n: {n} samples make a grid of {width} x {height} pixels, more than an image "
            f"viewer opens ({MAX_GRID_PIXELS:,} pixels); use --n {most} or fewer"
        )


def _save_grid(x, out: Path, top: int = 1) -> None:
    """An image grid (format from ``out``'s suffix) of images ``(n, C, H, W)`` with values
    ``0..top``, written atomically: binary (``top=1``) black on white as MNIST is
    drawn, 8-bit grey levels (``C = 1``) or RGB (``C = 3``) as they are."""
    from matplotlib.image import imsave

    from ..outputs import writing

    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch_grid(x.float().cpu() / top, rows, cols, h, w)
    with writing(out) as tmp:
        imsave(
            tmp,
            grid if grid.shape[-1] == 3 else grid[..., 0],
            cmap="gray_r" if top == 1 else "gray",
            vmin=0,
            vmax=1,
            format=out.suffix[1:].lower(),
        )


def torch_grid(x, rows: int, cols: int, h: int, w: int):
    """Tile ``(n, C, h, w)`` into a ``(rows*(h+1)+1, cols*(w+1)+1, C)`` array with 1-pixel gaps."""
    import numpy as np

    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, x.shape[1]), 0.15, dtype=np.float32)
    for i in range(x.shape[0]):
        r, c = divmod(i, cols)
        top, left = 1 + r * (h + 1), 1 + c * (w + 1)
        grid[top : top + h, left : left + w] = x[i].permute(1, 2, 0).numpy()
    return grid
