"""``vlae ablation``: the five ablation models at equal budget
(:mod:`vlae.experiments.ablation`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._experiment import add_runner_options, command, experiment_settings, failed_runs, print_outputs

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae ablation``."""
    from ..experiments.ablation import VARIANTS

    p = subparsers.add_parser(
        "ablation",
        help="unconditional PixelCNN vs Gaussian prior vs AF prior vs IAF posterior vs factorized "
        "decoder at equal budget",
        description="Train the five ablation models (the paper's appendix D, extended) with the same budget, "
        "seed and data, and tabulate NLL (IW bound), ELBO and KL. Rerunning continues an "
        "interrupted ablation.",
    )
    add_runner_options(p, "runs/ablation", 64)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        metavar="LIST",
        help=f"variants to run, comma-separated (default: all: {','.join(VARIANTS)})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ablation or its ``--report``; ends as :func:`command` says."""
    return command("ablation", lambda: _ablation(args))


def _ablation(args: argparse.Namespace) -> int:
    from ..experiments.ablation import run_ablation, write_ablation_report
    from ..experiments.tasks import parse_list

    if args.report:
        print_outputs(write_ablation_report(args.report))
        return 0
    variants = parse_list(args.variants, "--variants", str)
    base, record, runner = experiment_settings(args)
    _, status = run_ablation(
        args.out,
        base,
        variants=variants,
        ablation_config=record,
        **runner,
    )
    print_outputs(status["outputs"])
    return failed_runs(status)
