"""The ``vlae`` command line (also ``python -m vlae``).

Subcommands::

    vlae train --preset mnist-small [--time-budget 3600] [--set model.latent_dim=16 ...]
    vlae eval RUN_OR_CHECKPOINT [--k 4096] [--subset N] [--split test] [--shard I/N | --merge]
    vlae sample RUN_OR_CHECKPOINT [--n 64] [--out samples.png]
    vlae plot RUN
    vlae download NAME [--data-dir DIR]
    vlae presets [NAME]
    vlae verify
    vlae sweep ... / vlae ablation ...   (many runs alike: vlae.experiments)
    vlae compress RUN INPUT -o FILE / vlae decompress RUN FILE -o OUTPUT   (bits-back codec)

One module per subcommand (``compress`` and ``decompress`` share :mod:`.codec`),
each with the same two functions: ``register(subparsers)`` adds its parser and
``run(args)`` runs it, returning the exit status. The library modules hold no
argparse.

Errors caused by the user's input print ``error: <message>`` on stderr and
exit with status 2; an unexpected failure of the system (``OSError``) prints
one such line too and exits with 1; Ctrl-C exits with 130 (the last
checkpoint can be resumed). JSON outputs are strict (:mod:`vlae.outputs`).
``vlae train`` turns SIGINT and SIGTERM into a checkpoint after the current
step, then exits with 130 or 143 (128 + the signal number).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import VLAEError
from . import ablation, codec, download, evaluate, plot, presets, reproduce, sample, sweep, train, verify
from ._common import Parser, set_threads
from .train import config_from_args

__all__ = ["main", "build_parser", "config_from_args"]

#: The subcommands in the order ``vlae --help`` lists them.
COMMANDS = (train, evaluate, sample, plot, download, presets, verify, sweep, ablation, codec, reproduce)

#: How each command continues after Ctrl-C (``vlae train``, sweep and ablation print their own line).
_CONTINUE = {
    "eval": "run the same `vlae eval` command again to continue: its finished blocks are kept",
    "train": "continue with `vlae train --resume --run-dir RUN_DIR` if the run folder holds a checkpoint",
    "reproduce": "continue with the same `vlae reproduce` command and --resume if the run folder holds a checkpoint",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``vlae`` argument parser with every subcommand."""
    from .. import __version__

    parser = Parser(
        prog="vlae",
        description="Variational Lossy Autoencoder (Chen et al., ICLR 2017): "
        "train, evaluate (IW bound), sample, plot, reproduce the paper's experiments and compress "
        "images (bits-back).",
    )
    parser.add_argument("--version", action="version", version=f"vlae {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vlae`` command; returns the exit status."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        set_threads(getattr(args, "threads", None))  # every command that computes here takes --threads
        return int(args.func(args) or 0)
    except VLAEError as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment, not the input: a full disk, a vanished folder, ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        command = str(getattr(args, "command", ""))
        print(f"\ninterrupted; {_CONTINUE.get(command, 'run the same command again')}", file=sys.stderr)
        return 130
