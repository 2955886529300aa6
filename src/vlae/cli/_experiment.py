"""What ``vlae sweep`` and ``vlae ablation`` share: their runner flags, how they
end (one ``error:`` line, or one line on how to continue after a signal), and
running one of them without the ``vlae`` front end."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import PRESETS, Config
from ..errors import VLAEError
from ..experiments.tasks import base_config
from ..experiments.workers import Stopped
from ._common import add_overrides

__all__ = ["add_runner_options", "experiment_settings", "print_outputs", "failed_runs", "command", "standalone"]


def add_runner_options(p: argparse.ArgumentParser, default_out: str, default_k: int) -> None:
    """Flags shared by ``vlae sweep`` and ``vlae ablation``."""
    p.add_argument(
        "-o",
        "--out",
        default=default_out,
        metavar="DIR",
        help=f"output directory: one folder per run plus the tables (default: {default_out})",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="train nothing: rebuild the tables (and plots) from the finished runs in DIR",
    )
    p.add_argument(
        "--preset",
        default="mnist-small",
        choices=sorted(PRESETS),
        help="base configuration of every run (default: mnist-small)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder holding the dataset, for every run (train.data_dir; default: $VLAE_DATA_DIR, then ~/.cache/vlae)",
    )
    add_overrides(p, "override a configuration field of every run, e.g. --set model.free_bits=0 (repeatable)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="training time per run in seconds (train.time_budget), the same for every run "
        "(default: 300 when neither --budget nor --max-steps is given)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="optimiser steps per run (train.max_steps); with --budget, whichever comes first",
    )
    p.add_argument(
        "--eval-subset",
        type=int,
        default=1000,
        metavar="N",
        help="evaluate on N test images, a fixed random choice (0: all; default: 1000)",
    )
    p.add_argument(
        "--k",
        type=int,
        default=default_k,
        help=f"importance samples of the IW bound on the test NLL (default: {default_k}; the paper "
        "uses 4096; evaluation costs k decoder passes per test image)",
    )
    p.add_argument(
        "--eval-batch-size", type=int, default=50, metavar="N", help="test images per evaluation batch (default: 50)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="runs trained at once, each in its own process (default: CPU cores // --threads)",
    )
    # Each run's, not this process's: its own dest, so the front end's --threads leaves it alone.
    p.add_argument(
        "--threads", dest="run_threads", type=int, default=1, metavar="N", help="torch threads per run (default: 1)"
    )


def experiment_settings(args: argparse.Namespace, **extra: Any) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """What the flags make of an experiment: the base configuration of every run (300 s each
    when neither ``--budget`` nor ``--max-steps`` is given), what its config file records of
    the command line (``extra`` after the budget), and the runner flags of
    :func:`add_runner_options` as keywords of ``run_sweep`` and ``run_ablation``."""
    budget = args.budget if (args.budget is not None or args.max_steps is not None) else 300.0
    record = {
        "preset": args.preset,
        "overrides": list(args.overrides),
        "budget": budget,
        **extra,
        "max_steps": args.max_steps,
        "command": " ".join(sys.argv),
    }
    runner = {
        "eval_subset": args.eval_subset,
        "k": args.k,
        "eval_batch_size": args.eval_batch_size,
        "jobs": args.jobs,
        "threads": args.run_threads,
    }
    # --data-dir first, so that a --set of train.data_dir still comes last and wins, as --set does everywhere.
    given = [] if args.data_dir is None else [f"train.data_dir={os.path.abspath(args.data_dir)}"]
    overrides = given + list(args.overrides)
    return base_config(args.preset, overrides, budget, args.max_steps), record, runner


def print_outputs(paths: dict[str, Path]) -> None:
    """One ``wrote`` line per file."""
    for path in paths.values():
        print(f"wrote {path}")


def failed_runs(status: dict[str, Any]) -> int:
    """Status 1 with one ``error:`` line when some runs failed, else 0."""
    if status["failed"]:
        print(f"error: {len(status['failed'])} run(s) failed: {', '.join(status['failed'])}", file=sys.stderr)
        return 1
    return 0


def command(what: str, body: Callable[[], int]) -> int:
    """Run ``vlae sweep`` or ``vlae ablation`` (``what``): one ``error:`` line and
    status 2 for bad input; on SIGINT or SIGTERM one line saying how to continue
    and status 130 or 143 (the workers have checkpointed, see
    :func:`vlae.experiments.runner.run_tasks`)."""

    def terminated(signum: int, frame: object) -> None:  # until run_tasks takes over the signals
        raise Stopped(signum, {})

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    again = (
        f"run the same command again to continue the {what} (finished runs are kept, stopped ones "
        "resume from their last checkpoint)"
    )
    try:
        return body()
    except VLAEError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"\ninterrupted by {stop}; {again}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted by SIGINT; {again}", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def standalone(register: Callable[[Any], None], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` (the arguments after the subcommand) with the one subcommand
    that ``register`` adds, and run it; what :func:`vlae.cli.main` does for all of them."""
    parser = argparse.ArgumentParser(prog="vlae")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    name = next(iter(subparsers.choices))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
