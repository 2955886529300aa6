"""``vlae download``: fetch a dataset into the data folder (:func:`vlae.data.download`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae download``."""
    p = subparsers.add_parser("download", help="download a dataset")
    p.add_argument("name", help="dataset name, e.g. binarized-mnist")
    p.add_argument("--data-dir", default=None, help="target folder (default: $VLAE_DATA_DIR or ~/.cache/vlae)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download; one line per file the folder holds."""
    from ..data import download

    for path in download(args.name, args.data_dir):
        print(f"have {path}")
    return 0
