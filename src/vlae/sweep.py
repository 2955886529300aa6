"""Old home of the collapse sweep, kept for one release: the sweep is now
:mod:`vlae.experiments.sweep` (its runner :mod:`vlae.experiments.runner`) and
``vlae sweep`` is :mod:`vlae.cli.sweep`. ``python -m vlae.sweep ...`` still runs
``vlae sweep ...``."""

from __future__ import annotations

import sys
from typing import Sequence

from .cli._experiment import command, standalone
from .cli.sweep import register as add_cli
from .experiments.receptive_field import context_coverage, receptive_field_record
from .experiments.report import scope_note, write_table
from .experiments.results import check_tasks, collect_results, training_budget
from .experiments.results import write_json as _write_json  # noqa: F401 - tests/test_faults_io.py
from .experiments.runner import run_tasks
from .experiments.sweep import run_sweep, sweep_tasks, write_sweep_report
from .experiments.tasks import Task, base_config, check_run_options, parse_list
from .experiments.workers import STOP_GRACE, Stopped

__all__ = [
    "Task",
    "Stopped",
    "STOP_GRACE",
    "sweep_tasks",
    "check_tasks",
    "run_tasks",
    "run_sweep",
    "collect_results",
    "write_sweep_report",
    "receptive_field_record",
    "context_coverage",
    "training_budget",
    "parse_list",
    "write_table",
    "base_config",
    "check_run_options",
    "add_cli",
    "main",
    "command",
    "standalone",
    "scope_note",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``vlae sweep`` without the ``vlae`` front end: ``python -m vlae.sweep --list``."""
    return standalone(add_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
