"""``vlae presets``: the configuration presets, one line each, or one as JSON."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``vlae presets``."""
    p = subparsers.add_parser("presets", help="list presets, or print one as JSON")
    p.add_argument("name", nargs="?", help="preset to print")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the preset ``NAME`` as JSON, or a summary line per preset."""
    from ..config import PRESETS, get_preset

    if args.name:
        print(get_preset(args.name).to_json())
        return 0
    for name in PRESETS:
        m, t = get_preset(name).model, get_preset(name).train
        print(
            f"{name:12s} D={m.latent_dim:3d} prior={m.prior:8s} decoder={m.decoder}x{m.decoder_layers} "
            f"k{m.decoder_kernel}  batch {t.batch_size}, {t.epochs} epochs, lr {t.lr:g}"
        )
    return 0
