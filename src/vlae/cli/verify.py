"""``vlae verify``: check the implementation against the paper's claims
(:func:`vlae.verify.run_checks`; seconds on a CPU)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae verify``."""
    p = subparsers.add_parser("verify", help="check the implementation against the paper's claims (seconds, CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Status 0 when every check passes, 1 otherwise."""
    from ..verify import run_checks

    return 0 if run_checks(verbose=True) else 1
