"""``vlae reproduce``: one of the paper's experiments, end to end
(:func:`vlae.reproduce.reproduce`)."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from typing import Any

from ..protocols import PROTOCOLS
from ._common import add_device, add_overrides, add_threads

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae reproduce``."""
    p = subparsers.add_parser(
        "reproduce",
        help="one of the paper's experiments, end to end",
        description="Project, train, evaluate (the paper's k on the whole test set) and report one of the paper's "
        "experiments (arXiv 1611.02731v2; each report names its full source): "
        + ", ".join(f"{n} ({p.table}, {p.paper_value} {p.unit})" for n, p in PROTOCOLS.items()),
    )
    p.add_argument("protocol", choices=sorted(PROTOCOLS), help="which experiment")
    p.add_argument("--run-dir", required=True, help="the run folder (one reproduction per folder)")
    p.add_argument("--yes", action="store_true", help="start even when the projection says it takes long (CPU)")
    p.add_argument("--time-budget", type=float, default=0.0, help="train for at most this many seconds (a deviation)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted reproduction in --run-dir")
    add_device(p, "it trains and evaluates")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset")
    p.add_argument("--warmup-steps", type=int, default=30, help="timed steps of the projection (default: 30)")
    p.add_argument("--subset", type=int, default=0, help="evaluate on this many test images (0: all; a deviation)")
    p.add_argument("--k", type=int, default=None, help="importance samples of the IW bound (default: the paper's)")
    add_threads(p)
    add_overrides(p, "config override (repeatable; a deviation)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Reproduce; print ours beside the paper's number as one JSON line. Status 1 for
    a non-finite result, 130 or 143 when a signal stopped the training."""
    from ..reproduce import reproduce
    from ..train import Interrupted

    try:
        report = reproduce(
            args.protocol,
            args.run_dir,
            yes=args.yes,
            time_budget=args.time_budget,
            resume=args.resume,
            device=args.device,
            data_dir=args.data_dir,
            overrides=args.overrides,
            warmup_steps=args.warmup_steps,
            subset=args.subset,
            k=args.k,
        )
    except Interrupted as stop:  # SIGINT or SIGTERM during training: a resumable checkpoint was written
        where = f"wrote {stop.checkpoint}; " if stop.checkpoint else ""
        print(
            f"\ninterrupted by {signal.Signals(stop.signum).name}: {where}continue with the same `vlae reproduce "
            f"{args.protocol}` command and --resume",
            file=sys.stderr,
        )
        return stop.exit_status
    print(
        json.dumps(
            {"ours": report["ours"], "paper": report["paper"], "unit": report["unit"], "faithful": report["faithful"]}
        )
    )
    return 0 if math.isfinite(report["ours"]) else 1
