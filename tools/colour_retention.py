"""How much colour a trained colour model's code keeps: the grayscale experiment in numbers.

    python tools/colour_retention.py RUN [--images 64] [--draws 2] [--threads 1]

Decodes each of ``--images`` fixed test images (the ones ``vlae plot`` uses) from
one posterior sample of its code and prints, in 0..255 units per channel, how
far the decodings' chroma (mean colour minus its luma) lies from their own
image's, from another test image's, and that of samples from the prior
(:func:`vlae.experiments.plots.colour_retention`). For a gray-context model (``cifar-gray``,
or ``model.gray_context=true``) only the code can hold the colour.
"""

from __future__ import annotations

import argparse
import sys

import torch

from vlae.checkpoint import load_model
from vlae.errors import VLAEError
from vlae.experiments.plots.colour import colour_retention
from vlae.experiments.plots.run import _test_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN", help="run folder (or checkpoint) of a colour model")
    parser.add_argument("--images", type=int, default=64, help="fixed test images to measure (default: 64)")
    parser.add_argument("--draws", type=int, default=2, help="decodings per image (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.images < 2 or args.draws < 1:
        parser.error("--images must be >= 2 and --draws >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, cfg = load_model(args.run, weights="ema", device="cpu")
        model.eval()
        result = colour_retention(model, _test_images(cfg, count=args.images), draws=args.draws, seed=args.seed)
    except VLAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result['images']} test images, {result['draws']} decodings each; mean |chroma difference| "
          f"(0..255 per channel):")
    print(f"  decodings from the image's own z: {result['own']:.1f}")
    print(f"  against another test image:       {result['other']:.1f}")
    print(f"  samples with z ~ p(z):            {result['prior']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
