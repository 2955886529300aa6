"""``vlae plot``: every figure of a run into ``RUN/figures``
(:func:`vlae.experiments.plots.plot_run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import VLAEError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae plot``."""
    p = subparsers.add_parser("plot", help="all figures of a run into RUN/figures")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the figures; one line per file written."""
    from ..experiments import plots

    if not Path(args.run).is_dir():
        raise VLAEError(f"{args.run}: not a run folder")
    for path in plots.plot_run(args.run, notice=lambda m: print(m, file=sys.stderr)):
        print(f"wrote {path}")
    return 0
