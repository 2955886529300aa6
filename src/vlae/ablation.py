"""Old home of the ablation, kept for one release: the ablation is now
:mod:`vlae.experiments.ablation` and ``vlae ablation`` is :mod:`vlae.cli.ablation`.
``python -m vlae.ablation ...`` still runs ``vlae ablation ...``."""

from __future__ import annotations

import sys
from typing import Sequence

from .cli._experiment import standalone
from .cli.ablation import register as add_cli
from .experiments.ablation import VARIANTS, ablation_tasks, run_ablation, write_ablation_report

__all__ = ["VARIANTS", "ablation_tasks", "run_ablation", "write_ablation_report", "add_cli", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``vlae ablation`` without the ``vlae`` front end: ``python -m vlae.ablation ...``."""
    return standalone(add_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
