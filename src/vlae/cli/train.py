"""``vlae train``: train a VLAE from a preset, or resume a run.

Each named flag sets one configuration field: the field is the flag's name
(``--max-steps`` sets ``train.max_steps``) and the flag's type is the field's,
read from the dataclass (:data:`TRAIN_FLAGS`), so a flag cannot drift from the
field it sets; a ``bool`` field is a switch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args, get_type_hints

from ..config import Config, ModelConfig, TrainConfig, apply_overrides, config_from_dict, get_preset
from ..errors import VLAEError
from ._common import add_overrides, add_progress, add_threads

__all__ = ["TRAIN_FLAGS", "flag_field", "config_from_args", "register", "run"]

#: The configuration fields ``vlae train`` names, in the order of its help: (section, flag, help).
#: All become ``--set`` overrides in this order, before the ``--set`` flags themselves.
TRAIN_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("train", "--epochs", "passes over the training set"),
    ("train", "--max-steps", "stop after this many optimiser steps (0: no limit)"),
    ("train", "--time-budget", "stop after this many seconds of training (0: no limit)"),
    ("train", "--batch-size", "images per optimiser step (per process)"),
    ("train", "--lr", "learning rate"),
    ("train", "--optimizer", "adamax or adam"),
    ("train", "--seed", "random seed (initialisation, data order, noise)"),
    ("train", "--dataset", "dataset name (see `vlae download --help`)"),
    ("train", "--data-dir", "folder holding the dataset files"),
    ("train", "--device", "auto, cpu, cuda, cuda:1, mps"),
    ("train", "--precision", "auto (bf16 on capable GPUs), fp32 or bf16"),
    ("train", "--cuda-graph", "auto (on for one CUDA process), on or off: replay each step as one CUDA graph"),
    ("train", "--polyak", "EMA decay of the evaluation weights (0: off)"),
    ("train", "--kl-warmup-steps", "steps over which the KL weight rises from 0 to 1"),
    ("train", "--eval-every", "epochs between validation passes"),
    ("train", "--eval-k", "importance samples for the validation IW bound (0: ELBO only)"),
    ("train", "--checkpoint-every", "epochs between checkpoints"),
    ("train", "--checkpoint-steps", "also checkpoint every this many steps (0: off)"),
    (
        "train",
        "--checkpoint-seconds",
        "also checkpoint after this many training seconds without one (default 600; 0: off)",
    ),
    (
        "train",
        "--max-skipped-steps",
        "stop with an error after this many non-finite updates in a row (default 10; 0: never)",
    ),
    ("model", "--latent-dim", "latent dimensions D (0: unconditional PixelCNN)"),
    ("model", "--prior", "prior p(z): gaussian or af (autoregressive flow)"),
    ("model", "--posterior", "posterior q(z|x): gaussian or iaf"),
    ("model", "--decoder", "decoder p(x|z): masked, gated or factorized"),
    ("model", "--decoder-layers", "PixelCNN layers (sets the receptive field)"),
    ("model", "--decoder-kernel", "PixelCNN kernel size (odd)"),
    ("model", "--free-bits", "free bits: KL floor in nats per data dimension (0: off)"),
    # bool fields: switches, listed after the valued flags
    ("train", "--train-on-valid", "train on train+valid (the paper's final runs)"),
    ("train", "--soft-free-bits", "soft free bits (paper appendix C) instead of the hard floor"),
    ("train", "--compile", "torch.compile the model"),
    ("train", "--tensorboard", "also log to TensorBoard in RUN_DIR/tb"),
)

_SECTIONS: dict[str, type] = {"train": TrainConfig, "model": ModelConfig}


def flag_field(section: str, flag: str) -> tuple[str, Any]:
    """The field a train flag sets and the type of the flag's value, the field's
    without ``None``: ``("model", "--latent-dim")`` -> ``("latent_dim", int)``,
    ``("train", "--data-dir")`` -> ``("data_dir", str)`` for ``str | None``.

    Raises:
        KeyError: no such section or field (a flag that names no field).
    """
    name = flag[2:].replace("-", "_")
    typ = get_type_hints(_SECTIONS[section])[name]
    given = [t for t in get_args(typ) if t is not type(None)]
    return name, given[0] if type(None) in get_args(typ) and len(given) == 1 else typ  # str | None: a str


def register(subparsers: Any) -> None:
    """Add ``vlae train``."""
    p = subparsers.add_parser(
        "train",
        help="train a model",
        description="Train a VLAE from a preset; writes config.json, metrics.jsonl, checkpoints (ckpt-*.pt, "
        "best.pt), summary.json and figures/ into the run folder.",
    )
    p.add_argument("--preset", help="configuration preset (see `vlae presets`); required unless --resume")
    p.add_argument("--run-dir", help="output folder (default: runs/<preset>-<timestamp>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from the latest checkpoint in --run-dir (its config, plus your flags)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in --run-dir and start afresh (a non-empty folder is refused otherwise)",
    )
    for section, flag, text in TRAIN_FLAGS:
        _, typ = flag_field(section, flag)
        if typ is bool:  # default None, not False: a switch left out keeps the preset's (or resumed run's) value
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, type=typ, default=None, help=text)
    add_progress(p, "steps", default=None)
    add_overrides(p, "any config field, e.g. --set model.flow_steps=2 (repeatable; applied last)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="skip drawing RUN/figures/*.png at the end (`vlae plot RUN` draws them later)",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's :class:`~vlae.config.Config`: preset (or the resumed run's
    config), then the named flags, then ``--set`` overrides; validated."""
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.resume and args.run_dir:
        cfg = _resumed_config(Path(args.run_dir) / "config.json")
    else:
        raise VLAEError("train: --preset is required (or --resume with --run-dir); see `vlae presets`")
    overrides = []
    for section, flag, _ in TRAIN_FLAGS:
        name, typ = flag_field(section, flag)
        value = getattr(args, name)
        if typ is bool and value:
            overrides.append(f"{section}.{name}=true")
        elif typ is not bool and value is not None:
            overrides.append(f"{section}.{name}={value}")
    if args.progress is not None:
        overrides.append(f"train.progress={args.progress}")
    apply_overrides(cfg, overrides + list(args.overrides))
    return cfg.validate()


def _resumed_config(path: Path) -> Config:
    if not path.is_file():
        raise VLAEError(f"{path}: not found; pass --preset or a --run-dir written by `vlae train`")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise VLAEError(f"{path}: not valid JSON ({error.msg})") from None


def run(args: argparse.Namespace) -> int:
    """Train; then draw the run's figures and say how to evaluate it."""
    import signal
    import threading

    from ..train import Interrupted, train

    if args.resume and not args.run_dir:
        raise VLAEError("train: --resume needs --run-dir (the folder to continue)")
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir or f"runs/{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}")

    def terminated(signum: int, frame: object) -> None:  # before training installs its own handler
        raise Interrupted(signum, run_dir, None, None)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        summary = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except Interrupted as stop:  # SIGINT or SIGTERM: a resumable checkpoint was written
        print(f"\ninterrupted by {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # before training installed its handlers
        print(
            f"\ninterrupted; continue with `vlae train --resume --run-dir {run_dir}` if it holds a checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    # Under torchrun every rank returns here; one of them draws.
    if not args.no_figures and int(os.environ.get("RANK", "0")) == 0:
        from ..experiments.plots import plot_run

        paths = plot_run(summary["run_dir"])
        if not args.quiet:
            print(f"wrote {len(paths)} figures to {Path(summary['run_dir']) / 'figures'}")
    if not args.quiet:
        print(f"run folder: {summary['run_dir']}\nevaluate with: vlae eval {summary['run_dir']} --k {cfg.eval.k}")
    return 0
