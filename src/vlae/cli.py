"""The ``vlae`` command line (also ``python -m vlae``).

Subcommands::

    vlae train --preset mnist-small [--time-budget 3600] [--set model.latent_dim=16 ...]
    vlae eval RUN_OR_CHECKPOINT [--k 4096] [--subset N] [--split test] [--shard I/N | --merge]
    vlae sample RUN_OR_CHECKPOINT [--n 64] [--out samples.png]
    vlae plot RUN
    vlae download NAME [--data-dir DIR]
    vlae presets [NAME]
    vlae verify
    vlae sweep ... / vlae ablation ...   (when those modules are installed)
    vlae compress RUN INPUT -o FILE / vlae decompress RUN FILE -o OUTPUT   (bits-back codec)

Errors caused by the user's input print ``error: <message>`` on stderr and
exit with status 2; an unexpected failure of the system (``OSError``) prints
one such line too and exits with 1; Ctrl-C exits with 130 (the last
checkpoint can be resumed). JSON outputs are strict (:mod:`vlae.outputs`).
``vlae train`` turns SIGINT and SIGTERM into a checkpoint after the current
step, then exits with 130 or 143 (128 + the signal number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import VLAEError

__all__ = ["main", "build_parser", "config_from_args"]

# flag -> (section, field, type, help); all become --set overrides in the order given
_TRAIN_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--epochs", "train", "epochs", int, "passes over the training set"),
    ("--max-steps", "train", "max_steps", int, "stop after this many optimiser steps (0: no limit)"),
    ("--time-budget", "train", "time_budget", float, "stop after this many seconds of training (0: no limit)"),
    ("--batch-size", "train", "batch_size", int, "images per optimiser step (per process)"),
    ("--lr", "train", "lr", float, "learning rate"),
    ("--optimizer", "train", "optimizer", str, "adamax or adam"),
    ("--seed", "train", "seed", int, "random seed (initialisation, data order, noise)"),
    ("--dataset", "train", "dataset", str, "dataset name (see `vlae download --help`)"),
    ("--data-dir", "train", "data_dir", str, "folder holding the dataset files"),
    ("--device", "train", "device", str, "auto, cpu, cuda, cuda:1, mps"),
    ("--precision", "train", "precision", str, "auto (bf16 on capable GPUs), fp32 or bf16"),
    ("--cuda-graph", "train", "cuda_graph", str, "auto (on for one CUDA process), on or off: replay each step as "
     "one CUDA graph"),
    ("--polyak", "train", "polyak", float, "EMA decay of the evaluation weights (0: off)"),
    ("--kl-warmup-steps", "train", "kl_warmup_steps", int, "steps over which the KL weight rises from 0 to 1"),
    ("--eval-every", "train", "eval_every", int, "epochs between validation passes"),
    ("--eval-k", "train", "eval_k", int, "importance samples for the validation IW bound (0: ELBO only)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "epochs between checkpoints"),
    ("--checkpoint-steps", "train", "checkpoint_steps", int, "also checkpoint every this many steps (0: off)"),
    ("--checkpoint-seconds", "train", "checkpoint_seconds", float,
     "also checkpoint after this many training seconds without one (default 600; 0: off)"),
    ("--max-skipped-steps", "train", "max_skipped_steps", int,
     "stop with an error after this many non-finite updates in a row (default 10; 0: never)"),
    ("--latent-dim", "model", "latent_dim", int, "latent dimensions D (0: unconditional PixelCNN)"),
    ("--prior", "model", "prior", str, "prior p(z): gaussian or af (autoregressive flow)"),
    ("--posterior", "model", "posterior", str, "posterior q(z|x): gaussian or iaf"),
    ("--decoder", "model", "decoder", str, "decoder p(x|z): masked, gated or factorized"),
    ("--decoder-layers", "model", "decoder_layers", int, "PixelCNN layers (sets the receptive field)"),
    ("--decoder-kernel", "model", "decoder_kernel", int, "PixelCNN kernel size (odd)"),
    ("--free-bits", "model", "free_bits", float, "free bits: KL floor in nats per data dimension (0: off)"),
]
_TRAIN_SWITCHES = [
    ("--train-on-valid", "train", "train_on_valid", "train on train+valid (the paper's final runs)"),
    ("--soft-free-bits", "train", "soft_free_bits", "soft free bits (paper appendix C) instead of the hard floor"),
    ("--compile", "train", "compile", "torch.compile the model"),
    ("--tensorboard", "train", "tensorboard", "also log to TensorBoard in RUN_DIR/tb"),
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and status 2 (argparse's own convention)."""

    def error(self, message: str):  # type: ignore[override]
        raise VLAEError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``vlae`` argument parser with every subcommand."""
    from . import __version__

    parser = _Parser(prog="vlae", description="Variational Lossy Autoencoder (Chen et al., ICLR 2017): "
                     "train, evaluate (IW bound), sample and plot.")
    parser.add_argument("--version", action="version", version=f"vlae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model", description="Train a VLAE from a preset; writes config.json, "
                       "metrics.jsonl, checkpoints (ckpt-*.pt, best.pt), summary.json and figures/ into the run folder.")
    p.add_argument("--preset", help="configuration preset (see `vlae presets`); required unless --resume")
    p.add_argument("--run-dir", help="output folder (default: runs/<preset>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the latest checkpoint in --run-dir (its config, plus your flags)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --run-dir and start afresh (a non-empty folder is refused otherwise)")
    for flag, _, _, typ, text in _TRAIN_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=text)
    for flag, _, _, text in _TRAIN_SWITCHES:
        p.add_argument(flag, action="store_true", default=None, help=text)
    p.add_argument("--progress", choices=("auto", "on", "off"), default=None,
                   help="progress bar (auto: only on a terminal)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. --set model.flow_steps=2 (repeatable; applied last)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--no-figures", action="store_true",
                   help="skip drawing RUN/figures/*.png at the end (`vlae plot RUN` draws them later)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="IW bound on test (or valid) data",
                       description="Estimate the NLL with the importance-weighted bound (Burda et al., 2016) and "
                       "report ELBO, KL and active units; writes <run>/eval_<dataset>_<split>_k<k>[_n<images>].json "
                       "(strict JSON; never over a result of other data).")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder (best.pt or latest) or .pt file")
    p.add_argument("--k", type=int, default=None,
                   help="importance samples per image (default: the run's eval.k; paper: 512 on CIFAR-10, 4096 on MNIST)")
    p.add_argument("--subset", type=int, default=0, help="evaluate N images only, a fixed choice spread over the split (0: all)")
    p.add_argument("--split", choices=("test", "valid", "train"), default="test", help="data split")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the config's)")
    p.add_argument("--chunk", type=int, default=0, help="samples per pass (0: automatic; bounds memory)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the importance samples")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the run's)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="Polyak-averaged or raw weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--out", default=None, help="JSON output path (default: beside the checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="evaluate part I of N (0 <= I < N) and write a partial result; merge with --merge")
    p.add_argument("--merge", action="store_true",
                   help="combine the partial results of all shards (same options otherwise) into the result")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar with ETA (auto: only on a terminal)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the per-pass computation (pays for long runs; the first passes compile)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sample", help="draw samples into a PNG grid")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or .pt file")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default="samples.png", help="output image: .png, .jpg, .jpeg, .pdf or .svg")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--naive", action="store_true", help="naive pixel-by-pixel sampling instead of the fast sampler")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="Polyak-averaged or raw weights")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("plot", help="all figures of a run into RUN/figures")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("download", help="download a dataset")
    p.add_argument("name", help="dataset name, e.g. binarized-mnist")
    p.add_argument("--data-dir", default=None, help="target folder (default: $VLAE_DATA_DIR or ~/.cache/vlae)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("presets", help="list presets, or print one as JSON")
    p.add_argument("name", nargs="?", help="preset to print")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("verify", help="check the implementation against the paper's claims (seconds, CPU)")
    p.set_defaults(func=_cmd_verify)

    from . import ablation, codec, reproduce, sweep

    sweep.add_cli(sub)
    ablation.add_cli(sub)
    codec.add_cli(sub)
    reproduce.add_cli(sub)
    return parser


# ----------------------------------------------------------------------------- train


def config_from_args(args: argparse.Namespace):
    """The run's :class:`~vlae.config.Config`: preset (or the resumed run's
    config), then the named flags, then ``--set`` overrides; validated."""
    from .config import apply_overrides, config_from_dict, get_preset

    if args.preset:
        cfg = get_preset(args.preset)
    elif args.resume and args.run_dir:
        path = Path(args.run_dir) / "config.json"
        if not path.is_file():
            raise VLAEError(f"{path}: not found; pass --preset or a --run-dir written by `vlae train`")
        try:
            cfg = config_from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise VLAEError(f"{path}: not valid JSON ({error.msg})") from None
    else:
        raise VLAEError("train: --preset is required (or --resume with --run-dir); see `vlae presets`")
    overrides = [f"{section}.{name}={getattr(args, flag[2:].replace('-', '_'))}"
                 for flag, section, name, _, _ in _TRAIN_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    overrides += [f"{section}.{name}=true" for flag, section, name, _ in _TRAIN_SWITCHES
                  if getattr(args, flag[2:].replace("-", "_"))]
    if args.progress is not None:
        overrides.append(f"train.progress={args.progress}")
    apply_overrides(cfg, overrides + list(args.overrides))
    return cfg.validate()


def _cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .train import Interrupted, train

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
        print(f"\ninterrupted; continue with `vlae train --resume --run-dir {run_dir}` if it holds a checkpoint",
              file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    # Under torchrun every rank returns here; one of them draws.
    if not args.no_figures and int(os.environ.get("RANK", "0")) == 0:
        from .plots import plot_run

        paths = plot_run(summary["run_dir"])
        if not args.quiet:
            print(f"wrote {len(paths)} figures to {Path(summary['run_dir']) / 'figures'}")
    if not args.quiet:
        print(f"run folder: {summary['run_dir']}\nevaluate with: vlae eval {summary['run_dir']} --k {cfg.eval.k}")
    return 0


# ----------------------------------------------------------------------------- eval, sample, plot


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    for name in ("k", "batch_size"):
        _check_range(name, getattr(args, name), 1)
    for name in ("chunk", "subset", "seed"):
        _check_range(name, getattr(args, name), 0)
    r = evaluate_checkpoint(args.checkpoint, split=args.split, k=args.k, subset=args.subset,
                            data_dir=args.data_dir, seed=args.seed, out=args.out, batch_size=args.batch_size,
                            chunk=args.chunk, weights=args.weights, device=args.device,
                            notice=lambda m: print(m, file=sys.stderr), shard=args.shard, merge=args.merge,
                            progress={"auto": None, "on": True, "off": False}[args.progress], compile=args.compile)
    if r.get("partial"):
        if "path" in r:
            print(f"shard {r['shard'][0]}/{r['shard'][1]}: {r['images']} images, mean NLL {r['nll']:.2f} nats "
                  f"(partial); wrote {r['path']}; combine all shards with --merge")
        return 0
    fallback = f" (embedded fallback for {r['requested_dataset']})" if r["data_fallback"] else ""
    print(f"{r['dataset']}{fallback} {r['split']}, {r['images']} images, {r['estimator']} ({r['weights']} weights)")
    print(f"  NLL    {r['nll']:.2f} ± {r['nll_se']:.2f} nats   ({r['bits_per_dim']:.4f} bits/dim)")
    print(f"  -ELBO  {-r['elbo']:.2f} ± {r['elbo_se']:.2f} nats   ({r['elbo_bits_per_dim']:.4f} bits/dim)")
    print(f"  KL     {r['kl']:.2f} nats   active units {r['active_units']}/{r['latent_dim']}")
    print(f"wrote {r['path']}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .outputs import prepare_output

    _check_range("n", args.n, 1)
    _check_range("seed", args.seed, 0)
    model, _ = load_model(args.checkpoint, weights=args.weights, device="auto")
    _check_grid_fits(args.n, model.cfg.image_shape)
    out = prepare_output(args.out, "--out", _IMAGE_SUFFIXES)  # before sampling, which can take a while
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    t0 = time.perf_counter()
    from .sampling import sample_in_batches

    x = sample_in_batches(model, args.n, generator=gen, naive=args.naive)  # memory bounded whatever --n
    seconds = time.perf_counter() - t0
    _save_grid(x, out, 255 if model.cfg.observation == "logistic_mixture" else 1)
    print(f"wrote {args.n} samples to {out} ({seconds:.1f} s, {'naive' if args.naive else 'fast'} sampler)")
    return 0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
#: Pixels of the largest grid written: Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``), beyond which it
#: and the viewers built on it refuse to open an image as a possible decompression bomb.
MAX_GRID_PIXELS = 89_478_485


def _grid_size(n: int, image_shape) -> tuple[int, int]:
    """``(height, width)`` in pixels of the grid :func:`_save_grid` draws for ``n`` images."""
    import math

    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows * (image_shape[-2] + 1) + 1, cols * (image_shape[-1] + 1) + 1


def _check_grid_fits(n: int, image_shape) -> None:
    """One line, before anything is drawn, for a grid too large to be an image."""
    def pixels(count: int) -> int:
        height, width = _grid_size(count, image_shape)
        return height * width

    if pixels(n) > MAX_GRID_PIXELS:
        low, high = 1, n  # the largest count that fits: pixels() grows with the count
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if pixels(mid) <= MAX_GRID_PIXELS else (low, mid - 1)
        height, width = _grid_size(n, image_shape)
        most = low
        raise VLAEError(f"invalid --n: {n} samples make a grid of {width} x {height} pixels, more than an image "
                        f"viewer opens ({MAX_GRID_PIXELS:,} pixels); use --n {most} or fewer")


def _save_grid(x, out: Path, top: int = 1) -> None:
    """An image grid (format from ``out``'s suffix) of images ``(n, C, H, W)`` with values
    ``0..top``, written atomically: binary (``top=1``) black on white as MNIST is
    drawn, 8-bit grey levels (``C = 1``) or RGB (``C = 3``) as they are."""
    import math

    from matplotlib.image import imsave

    from .outputs import writing

    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch_grid(x.float().cpu() / top, rows, cols, h, w)
    with writing(out) as tmp:
        imsave(tmp, grid if grid.shape[-1] == 3 else grid[..., 0], cmap="gray_r" if top == 1 else "gray",
               vmin=0, vmax=1, format=out.suffix[1:].lower())


def torch_grid(x, rows: int, cols: int, h: int, w: int):
    """Tile ``(n, C, h, w)`` into a ``(rows*(h+1)+1, cols*(w+1)+1, C)`` array with 1-pixel gaps."""
    import numpy as np

    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, x.shape[1]), 0.15, dtype=np.float32)
    for i in range(x.shape[0]):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    if not Path(args.run).is_dir():
        raise VLAEError(f"{args.run}: not a run folder")
    for path in plot_run(args.run, notice=lambda m: print(m, file=sys.stderr)):
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- data, presets, verify


def _cmd_download(args: argparse.Namespace) -> int:
    from .data import download

    for path in download(args.name, args.data_dir):
        print(f"have {path}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS, get_preset

    if args.name:
        print(get_preset(args.name).to_json())
        return 0
    for name in PRESETS:
        m, t = get_preset(name).model, get_preset(name).train
        print(f"{name:12s} D={m.latent_dim:3d} prior={m.prior:8s} decoder={m.decoder}x{m.decoder_layers} "
              f"k{m.decoder_kernel}  batch {t.batch_size}, {t.epochs} epochs, lr {t.lr:g}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import main as verify_main

    return int(verify_main() or 0)


# ----------------------------------------------------------------------------- entry point


def _check_range(name: str, value: int | None, low: int, high: int = 2**63 - 1) -> None:
    """``--name`` must lie in ``[low, high]`` (``None``: not given)."""
    if value is not None and not low <= value <= high:
        bound = f">= {low}" if value < low else f"<= {high}"
        raise VLAEError(f"invalid --{name.replace('_', '-')}: must be {bound}, got {value}")


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise VLAEError(f"invalid --threads: must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vlae`` command; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command in ("train", "eval", "reproduce"):
            _set_threads(args.threads)
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
        command = getattr(locals().get("args"), "command", None)
        print(f"\ninterrupted; {_CONTINUE.get(command, 'run the same command again')}", file=sys.stderr)
        return 130


#: How each command continues after Ctrl-C (``vlae train``, sweep and ablation print their own line).
_CONTINUE = {
    "eval": "run the same `vlae eval` command again to continue: its finished blocks are kept",
    "train": "continue with `vlae train --resume --run-dir RUN_DIR` if the run folder holds a checkpoint",
    "reproduce": "continue with the same `vlae reproduce` command and --resume if the run folder holds a checkpoint",
}


if __name__ == "__main__":
    sys.exit(main())
