"""What every subcommand shares: the parser that turns usage errors into one
``error:`` line, and the checks of numeric options."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Iterator, NoReturn

from ..errors import VLAEError

__all__ = [
    "Parser",
    "add_overrides",
    "add_model_options",
    "add_device",
    "add_threads",
    "add_progress",
    "progress_bar",
    "check_range",
    "set_threads",
]


class Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and status 2 (argparse's own convention)."""

    def error(self, message: str) -> NoReturn:
        raise VLAEError(f"{self.prog}: {message}")


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set SECTION.FIELD=VALUE`` (repeatable) into ``args.overrides``: one spelling of the
    configuration override for every subcommand that builds a configuration."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=help
    )


def add_model_options(
    parser: argparse.ArgumentParser, *, device: str | None = "auto", threads: int | None = None, note: str = ""
) -> None:
    """``--weights``, ``--device`` and ``--threads``: one spelling of the options of every
    subcommand that loads a trained model. ``device`` and ``threads`` are their defaults
    (``None``: the CPU; torch's choice of threads); ``note`` ends ``--device``'s help."""
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="Polyak-averaged or raw weights")
    add_device(parser, "the model runs", device, note)
    add_threads(parser, threads)


def add_device(parser: argparse.ArgumentParser, what: str, default: str | None = "auto", note: str = "") -> None:
    """``--device``: where ``what`` (e.g. "the model runs"); ``default`` ``None`` is the CPU."""
    choices = "auto (a GPU where there is one), cpu, cuda, cuda:1, mps" if default == "auto" else "e.g. cpu or cuda"
    parser.add_argument("--device", default=default, help=f"where {what}: {choices} (default {default or 'cpu'}){note}")


def add_threads(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads``: torch's CPU threads in this process (``None``: torch's choice), set once by
    the front end (:func:`vlae.cli.main`) for every command."""
    given = "torch's choice" if default is None else default
    parser.add_argument("--threads", type=int, default=default, help=f"CPU threads for torch (default {given})")


def add_progress(parser: argparse.ArgumentParser, counts: str, default: str | None = "auto") -> None:
    """``--progress auto|on|off``: one spelling of the progress bar (on stderr, with ETA) of every
    long-running subcommand; ``counts`` names its unit (``None`` default: the configuration's)."""
    given = "the run's train.progress" if default is None else default
    parser.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default=default,
        help=f"progress bar counting {counts}, with ETA (auto: only on a terminal; default {given})",
    )


def check_range(name: str, value: int | None, low: int, high: int = 2**63 - 1) -> None:
    """``--name`` must lie in ``[low, high]`` (``None``: not given)."""
    if value is not None and not low <= value <= high:
        bound = f">= {low}" if value < low else f"<= {high}"
        raise VLAEError(f"invalid --{name.replace('_', '-')}: must be {bound}, got {value}")


def set_threads(n: int | None) -> None:
    """``--threads``: torch's CPU threads (``None``: torch's choice)."""
    if n is None:
        return
    if n < 1:
        raise VLAEError(f"invalid --threads: must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)


@contextlib.contextmanager
def progress_bar(mode: str, desc: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for the library's long loops, drawn as a tqdm bar
    on stderr counting ``unit``, with ETA (``mode`` of :func:`add_progress`; auto: only when
    stderr is a terminal)."""
    from tqdm.auto import tqdm

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            show = mode == "on" or (mode == "auto" and sys.stderr.isatty())
            bar = tqdm(total=total, unit=unit, desc=desc, disable=not show, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
