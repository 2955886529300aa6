"""Draw the figures of a trained VLAE, or the receptive field of a fresh decoder.

    python visualization.py RUN_DIR [--out DIR]
    python visualization.py --receptive-field --decoder-layers 6 --kernel 3 [--decoder gated] [--out rf.png]

The first form writes every figure of a run (training curves, samples,
reconstructions, lossy decompression, KL heat map, latent traversals,
interpolations, receptive field) into RUN_DIR/figures/ or DIR; the second draws
which input pixels one output logit of an untrained PixelCNN depends on, checked
against autograd. See vlae.experiments.plots for the figures themselves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlae.errors import VLAEError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="run directory holding the checkpoint and metrics.jsonl")
    parser.add_argument("--out", default=None, help="output folder (run) or PNG file (--receptive-field)")
    parser.add_argument("--receptive-field", action="store_true", help="draw a fresh decoder's receptive field")
    parser.add_argument("--decoder", default="masked", choices=["masked", "gated"],
                        help="decoder kind (default: masked)")
    parser.add_argument("--decoder-layers", type=int, default=6, help="masked/gated layers (default: 6)")
    parser.add_argument("--kernel", type=int, default=3, help="odd kernel size (default: 3)")
    parser.add_argument("--size", type=int, default=28, help="image height and width (default: 28)")
    args = parser.parse_args(argv)
    try:
        import torch

        from vlae.experiments import plots
        from vlae.pixelcnn import DECODERS

        torch.set_num_threads(min(torch.get_num_threads(), 4))
        if args.receptive_field:
            if args.decoder_layers < 1 or args.kernel < 1 or args.kernel % 2 == 0:
                raise VLAEError("--decoder-layers must be >= 1 and --kernel a positive odd number")
            torch.manual_seed(0)
            decoder = DECODERS[args.decoder](layers=args.decoder_layers, kernel_size=args.kernel)
            out = Path(args.out or f"receptive_field_{args.decoder}_L{args.decoder_layers}_k{args.kernel}.png")
            print(plots.plot_receptive_field(decoder, out, shape=(args.size, args.size)))
            return 0
        if args.run_dir is None:
            raise VLAEError("give a RUN_DIR, or --receptive-field")
        for path in plots.plot_run(args.run_dir, out_dir=args.out):
            print(path)
        return 0
    except VLAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
