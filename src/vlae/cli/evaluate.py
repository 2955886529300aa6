"""``vlae eval``: the test NLL of a run by the importance-weighted bound, with
ELBO, KL and active units (:func:`vlae.evaluate.evaluate_checkpoint`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_model_options, add_progress, check_range

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae eval``."""
    p = subparsers.add_parser(
        "eval",
        help="IW bound on test (or valid) data",
        description="Estimate the NLL with the importance-weighted bound (Burda et al., 2016) and report ELBO, KL "
        "and active units; writes <run>/eval_<dataset>_<split>_k<k>[_n<images>].json (strict JSON; "
        "never over a result of other data).",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder (best.pt or latest) or .pt file")
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="importance samples per image (default: the run's eval.k; paper: 512 on CIFAR-10, 4096 on MNIST)",
    )
    p.add_argument(
        "--subset", type=int, default=0, help="evaluate N images only, a fixed choice spread over the split (0: all)"
    )
    p.add_argument("--split", choices=("test", "valid", "train"), default="test", help="data split")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the config's)")
    p.add_argument("--chunk", type=int, default=0, help="samples per pass (0: automatic; bounds memory)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the importance samples")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the run's)")
    add_model_options(p)
    p.add_argument("-o", "--out", default=None, help="JSON output path (default: beside the checkpoint)")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="evaluate part I of N (0 <= I < N) and write a partial result; merge with --merge",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="combine the partial results of all shards (same options otherwise) into the result",
    )
    add_progress(p, "images")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the per-pass computation (pays for long runs; the first passes compile)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the bound, ELBO and KL, and name the result file."""
    from ..evaluate import evaluate_checkpoint

    for name in ("k", "batch_size"):
        check_range(name, getattr(args, name), 1)
    for name in ("chunk", "subset", "seed"):
        check_range(name, getattr(args, name), 0)
    r = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        k=args.k,
        subset=args.subset,
        data_dir=args.data_dir,
        seed=args.seed,
        out=args.out,
        batch_size=args.batch_size,
        chunk=args.chunk,
        weights=args.weights,
        device=args.device,
        notice=lambda m: print(m, file=sys.stderr),
        shard=args.shard,
        merge=args.merge,
        progress={"auto": None, "on": True, "off": False}[args.progress],
        compile=args.compile,
    )
    if r.get("partial"):
        if "path" in r:
            print(
                f"shard {r['shard'][0]}/{r['shard'][1]}: {r['images']} images, mean NLL {r['nll']:.2f} nats "
                f"(partial); wrote {r['path']}; combine all shards with --merge"
            )
        return 0
    fallback = f" (embedded fallback for {r['requested_dataset']})" if r["data_fallback"] else ""
    print(f"{r['dataset']}{fallback} {r['split']}, {r['images']} images, {r['estimator']} ({r['weights']} weights)")
    print(f"  NLL    {r['nll']:.2f} ± {r['nll_se']:.2f} nats   ({r['bits_per_dim']:.4f} bits/dim)")
    print(f"  -ELBO  {-r['elbo']:.2f} ± {r['elbo_se']:.2f} nats   ({r['elbo_bits_per_dim']:.4f} bits/dim)")
    print(f"  KL     {r['kl']:.2f} nats   active units {r['active_units']}/{r['latent_dim']}")
    print(f"wrote {r['path']}")
    return 0
