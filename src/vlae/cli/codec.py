"""``vlae compress`` and ``vlae decompress``: images to a bits-back file and back
with a trained model (:mod:`vlae.codec`)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..errors import VLAEError
from ._common import add_model_options, add_progress, progress_bar

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae compress`` and ``vlae decompress``."""
    from ..codec import BATCH_RANGE, DEFAULT_PRECISION

    p = subparsers.add_parser(
        "compress",
        help="lossless bits-back compression of images with a trained model",
        description="Compress binary or 8-bit (grey or RGB) images with a trained VLAE: bits-back ANS, whose "
        "length is the model's -ELBO plus a fixed overhead. INPUT is an .npy array or a folder of "
        "PNGs; or use --dataset.",
    )
    p.add_argument("run", metavar="RUN", help="run folder or .pt checkpoint")
    p.add_argument("input", metavar="INPUT", nargs="?", help=".npy array or folder of PNG images")
    p.add_argument(
        "-o", "--out", "--output", dest="output", required=True, metavar="FILE", help="compressed file to write"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="compress a dataset split instead of INPUT, e.g. binarized-mnist, cifar10, photos-embedded",
    )
    p.add_argument("--split", choices=("test", "valid", "train"), default="test", help="split of --dataset")
    p.add_argument("--subset", type=int, default=0, help="a fixed subset of N images of the split (0: all)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the run's)")
    p.add_argument(
        "--precision",
        type=int,
        default=DEFAULT_PRECISION,
        help=f"latent bins per dimension, in bits (default {DEFAULT_PRECISION})",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per chunk (default: by the decoder's size, %d to %d; vlae.codec.default_batch)" % BATCH_RANGE,
    )
    _model_options(p)
    p.set_defaults(func=run)
    p = subparsers.add_parser(
        "decompress",
        help="invert vlae compress",
        description="Decompress a file written by `vlae compress` with the same model. "
        "OUTPUT: an .npy file, or a folder for PNGs (any other name but an image file's, such as x.png).",
    )
    p.add_argument("run", metavar="RUN", help="run folder or .pt checkpoint (the one that compressed)")
    p.add_argument("file", metavar="FILE", help="compressed file")
    p.add_argument(
        "-o", "--out", "--output", dest="output", required=True, metavar="OUTPUT", help=".npy file or folder for PNGs"
    )
    _model_options(p)
    p.set_defaults(func=run)


_DEFAULT_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    # Two threads by default, where the machine has them: measured on a 2-core CPU, 2 threads
    # code 1.4-1.6x faster than one (binary and 8-bit, either way); more are not measured.
    add_progress(p, "images")
    add_model_options(
        p,
        device=None,
        threads=_DEFAULT_THREADS,
        note="; the entropy coder runs on the CPU, and the file decodes on any device",
    )


def run(args: argparse.Namespace) -> int:
    """``vlae compress`` or ``vlae decompress``, by ``args.command``."""
    return _compress(args) if args.command == "compress" else _decompress(args)


def _load(args: argparse.Namespace):
    from ..checkpoint import load_model
    from ..codec.models import check_model

    model, cfg = load_model(args.run, weights=args.weights, device="cpu")
    check_model(model)  # a colour model fails here, before any data is read
    return model, cfg


def _compress(args: argparse.Namespace) -> int:
    from ..codec import compress, read_images
    from ..codec.files import check_overwrite
    from ..codec.models import is_binary

    out = Path(args.output)
    if (args.input is None) == (args.dataset is None):
        raise VLAEError("compress: give exactly one of INPUT or --dataset")
    if args.subset < 0:
        raise VLAEError(f"invalid --subset: must be >= 0, got {args.subset}")
    if out.is_dir():
        raise VLAEError(f"{out} is a folder; name the compressed file")
    check_overwrite(out, args.force)
    model, cfg = _load(args)
    if args.dataset is not None:
        from ..data import fixed_subset, load_dataset

        data = load_dataset(args.dataset, args.split, args.data_dir or cfg.train.data_dir)
        if data.dynamic and is_binary(model):
            raise VLAEError(f"{args.dataset} has grey levels (binarized on the fly); compress a binary .npy instead")
        images = fixed_subset(data.images, args.subset).numpy()
        if images.ndim == 3:
            images = images[:, None]
    else:
        images = read_images(args.input, model.cfg.image_shape[0], is_binary(model))
        if args.subset:
            raise VLAEError("--subset applies to --dataset only")
    with progress_bar(args.progress, "compress") as progress:
        blob, stats = compress(
            model,
            images,
            precision=args.precision,
            batch=args.batch,
            device=args.device,
            progress=progress,
            return_stats=True,
        )
    from ..outputs import writing

    with writing(out) as tmp:
        tmp.write_bytes(blob)
    print(
        f"wrote {out}: {stats.images} images, {stats.file_bytes} bytes, {stats.bits_per_dim:.4f} bits/dim "
        f"({stats.nats_per_image:.2f} nats/image) net of {stats.initial_bits} initial bits, "
        f"{stats.images / stats.seconds:.1f} images/s"
    )
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from ..codec import decompress, write_images
    from ..codec.files import check_output
    from ..codec.models import is_binary

    out, source = Path(args.output), Path(args.file)
    check_output(out, args.force)
    if source.is_dir():
        raise VLAEError(f"{source}: is a folder; give the file that `vlae compress` wrote (-o FILE)")
    if not source.is_file():
        raise VLAEError(f"{source}: no such file")
    model, _ = _load(args)
    start = time.perf_counter()
    with progress_bar(args.progress, "decompress") as progress:
        x = decompress(model, source.read_bytes(), name=str(source), device=args.device, progress=progress)
    seconds = time.perf_counter() - start
    write_images(x, out, force=args.force, binary=is_binary(model))
    print(f"wrote {out}: {len(x)} images of {x.shape[2]}x{x.shape[3]} ({len(x) / seconds:.1f} images/s)")
    return 0
