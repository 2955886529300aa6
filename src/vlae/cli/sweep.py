"""``vlae sweep``: KL and NLL as the decoder's receptive field grows
(:mod:`vlae.experiments.sweep`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._experiment import add_runner_options, command, experiment_settings, failed_runs, print_outputs

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae sweep``."""
    p = subparsers.add_parser(
        "sweep",
        help="KL and NLL as the decoder's receptive field grows (posterior collapse)",
        description="Train one model per (decoder depth, kernel size, prior) with the same budget, evaluate "
        "each on the same test images, and tabulate and plot the KL term and the IW NLL against "
        "the decoder's receptive field. Rerunning continues an interrupted sweep.",
    )
    add_runner_options(p, "runs/sweep", 16)  # the KL needs one sample; the NLL column is a side result here
    p.add_argument(
        "--decoder", default="masked", choices=("masked", "gated"), help="PixelCNN kind of every run (default: masked)"
    )
    p.add_argument(
        "--layers",
        default="1,2,4,8,16",
        metavar="LIST",
        help="decoder depths (masked or gated layers), comma-separated (default: 1,2,4,8,16)",
    )
    p.add_argument(
        "--kernels", default="3,5", metavar="LIST", help="odd decoder kernel sizes, comma-separated (default: 3,5)"
    )
    p.add_argument(
        "--priors",
        default="gaussian,af",
        metavar="LIST",
        help="priors p(z), comma-separated, from gaussian and af (default: gaussian,af)",
    )
    p.add_argument(
        "--fields",
        default=None,
        metavar="LIST",
        help="instead of --layers/--kernels: the paper's receptive fields AxB of a gated decoder, "
        "comma-separated, e.g. 4x2,5x3,7x4,9x5 (colour presets such as cifar-small)",
    )
    p.add_argument(
        "--list", action="store_true", help="print the grid with each point's receptive field and exit without training"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The sweep, its ``--report`` or its ``--list``; ends as :func:`command` says."""
    return command("sweep", lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import receptive_fields, run_sweep, sweep_tasks, write_sweep_report
    from ..experiments.tasks import parse_list

    if args.report:
        print_outputs(write_sweep_report(args.report))
        return 0
    layers = parse_list(args.layers, "--layers", int)
    kernels = parse_list(args.kernels, "--kernels", int)
    priors = parse_list(args.priors, "--priors", str)
    fields = parse_list(args.fields, "--fields", str) if args.fields is not None else []
    base, record, runner = experiment_settings(args, fields=fields)
    if args.list:
        tasks = sweep_tasks(base, args.decoder, layers, kernels, priors, fields)
        for t, rf in zip(tasks, receptive_fields(tasks)):
            field = f" field {rf['rf_name']}," if rf["rf_name"] else ""
            print(
                f"{t.name:24s}{field} RF {rf['rf_size']:6d} px, {rf['rf_up']:3d} rows up, "
                f"{rf['rf_left']:3d} cols left/right, sees {100 * rf['rf_coverage']:5.1f}% of the context"
            )
        return 0
    _, status = run_sweep(
        args.out,
        base,
        decoder=args.decoder,
        layers=layers,
        kernels=kernels,
        priors=priors,
        sweep_config=record,
        fields=fields,
        **runner,
    )
    print_outputs(status["outputs"])
    return failed_runs(status)
