"""What the sweep and the ablation run: a :class:`Task` (one training-and-evaluation
run), the base configuration every task starts from, and the checks of the
options that the command line passes on (lists, runner settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import Config, apply_overrides, get_preset
from ..errors import VLAEError

__all__ = ["Task", "parse_list", "check_run_options", "base_config"]


@dataclass
class Task:
    """One training-and-evaluation run.

    Attributes:
        name: folder name under the output directory (unique in a sweep).
        config: the run's full configuration.
        meta: extra columns for the tables (grid coordinates, variant label).
    """

    name: str
    config: Config
    meta: dict[str, Any] = field(default_factory=dict)


def parse_list(text: str, option: str, kind: type = int) -> list:
    """Read a comma-separated ``option`` value: ``"1,2,4"`` -> ``[1, 2, 4]``.

    Raises:
        VLAEError: empty list, or an item that is not a ``kind``.
    """
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise VLAEError(f"invalid {option}: empty list")
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise VLAEError(
            f"invalid {option}: cannot read {text!r} as a comma-separated list of {kind.__name__}s"
        ) from None
    return list(dict.fromkeys(values))  # drop repeats, keep order


def check_run_options(*, jobs: int, threads: int, k: int, eval_subset: int, eval_batch_size: int) -> None:
    """Raise :class:`VLAEError`, naming the flag, for an impossible runner option."""
    for flag, value, low in (
        ("--jobs", jobs, 0),
        ("--threads", threads, 1),
        ("--k", k, 1),
        ("--eval-subset", eval_subset, 0),
        ("--eval-batch-size", eval_batch_size, 1),
    ):
        if value < low:
            raise VLAEError(f"invalid {flag}: must be >= {low}, got {value}")


def base_config(preset: str, overrides: Sequence[str], budget: float | None, max_steps: int | None) -> Config:
    """The preset with ``--set`` overrides and the per-run training budget."""
    cfg = apply_overrides(get_preset(preset), list(overrides))
    if budget is not None:
        if budget <= 0:
            raise VLAEError(f"invalid --budget: must be > 0 seconds, got {budget}")
        cfg.train.time_budget = float(budget)
    if max_steps is not None:
        if max_steps <= 0:
            raise VLAEError(f"invalid --max-steps: must be > 0, got {max_steps}")
        cfg.train.max_steps = int(max_steps)
    cfg.train.progress = "off"
    return cfg.validate()
