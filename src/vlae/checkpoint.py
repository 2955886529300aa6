"""Checkpoints: atomic, versioned, validated on load.

A checkpoint is one ``torch.save`` file holding plain containers of tensors
and numbers (so it loads with ``weights_only=True``, no pickled code):

=================  ==========================================================
``format_version`` :data:`FORMAT_VERSION`; newer files are refused
``vlae_version``    library version that wrote it
``config``          :meth:`vlae.config.Config.to_dict` of the run
``model``           raw weights (``state_dict``)
``ema``             Polyak-averaged weights (``None`` when polyak is off)
``optimizer``       optimiser state; ``scheduler`` the LR schedule's
``trainer``         step, epoch, position in the epoch, soft-free-bits weight, ...
``rng``             every random state the trainer uses, for exact resumption
=================  ==========================================================

Files are written by :func:`vlae.outputs.atomic_write`: to a temporary name in
the same folder, moved into place with :func:`os.replace`, so a crash mid-write
leaves the previous file intact and never a truncated one under the final name;
the temporary files a kill leaves behind are removed by :func:`remove_temporaries`
on the next start. A failed write (a full disk, a read-only folder) is one
:class:`VLAEError` naming the file.

Example:
    >>> model, cfg = load_model("runs/mnist-small-20250101-120000")  # doctest: +SKIP
    >>> model.iw_bound(x, k=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, config_from_dict
from .errors import VLAEError
from .outputs import atomic_write, write_error  # their home is vlae.outputs; still importable from here
from .runtime import pick_device  # its home is vlae.runtime; still importable from here

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "copy_checkpoint",
    "load_checkpoint",
    "load_model",
    "latest_checkpoint",
    "list_checkpoints",
    "resolve_checkpoint",
    "checkpoint_name",
    "export_safetensors",
    "remove_temporaries",
    "weights_mismatch",
    "write_error",
    "atomic_write",
]

FORMAT_VERSION = 1
_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    """File name of the periodic checkpoint after ``step`` optimiser steps."""
    return f"ckpt-{step:09d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Periodic checkpoints in ``run_dir``, oldest (fewest steps) first."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The periodic checkpoint with the most steps in ``run_dir``, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint file from a file or a run folder.

    For a folder: ``best.pt`` (lowest validation bound) when ``prefer="best"``
    and it exists, else the latest periodic checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        best, last = p / "best.pt", latest_checkpoint(p)
        if prefer == "best" and best.is_file():
            return best
        if last is not None:
            return last
        if best.is_file():
            return best
        raise VLAEError(f"{p}: no checkpoint in this run folder (expected best.pt or ckpt-*.pt)")
    if not p.exists():
        raise VLAEError(f"{p}: no such checkpoint file or run folder")
    return p


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    from . import __version__

    payload = {
        "format_version": FORMAT_VERSION,
        "vlae_version": __version__,
        "torch_version": str(torch.__version__),
        **state,
    }
    return atomic_write(Path(path), lambda f: torch.save(payload, f))


def copy_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy ``source`` to ``path`` atomically (``best.pt`` from a ``ckpt-*.pt``)."""
    import shutil

    def copy(f) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    return atomic_write(Path(path), copy)


def remove_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) that a kill mid-write left in ``run_dir``.

    Only call this when no other process writes into ``run_dir``.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def weights_mismatch(expected: dict[str, torch.Tensor], found: Any) -> str | None:
    """What differs between two ``state_dict``s (missing, unexpected and
    differently shaped entries, a few of each), or ``None`` when they match.

    >>> weights_mismatch({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2), "b": torch.zeros(1)})
    'unexpected b; w has shape (3, 2), expected (2, 3)'
    """
    if not isinstance(found, dict):
        return f"expected a dict of tensors, found {type(found).__name__}"
    parts = []

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    def described(value: Any) -> str:
        return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} has {described(found[k])}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and not (isinstance(found[k], torch.Tensor) and found[k].shape == v.shape)
    ]
    if missing:
        parts.append(f"missing {some(missing)}")
    if unexpected:
        parts.append(f"unexpected {some(unexpected)}")
    parts += shapes[:3] + ([f"{len(shapes) - 3} more shapes differ"] if len(shapes) > 3 else [])
    return "; ".join(parts) or None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file.

    Returns the stored dict with ``"config"`` replaced by a validated
    :class:`~vlae.config.Config`.

    Raises:
        VLAEError: naming the file, if it is missing, truncated or corrupt,
            written by a newer format, or its configuration is unknown to this code.
    """
    path = Path(path)
    if not path.is_file():
        raise VLAEError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
    ) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights only load failed" in first.lower():  # torch's advice (weights_only=False) would run its code
            first = "it holds objects other than tensors and plain containers, or random bytes"
        raise VLAEError(f"{path}: not a readable vlae checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise VLAEError(f"{path}: not a vlae checkpoint (no format_version/model entries)")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VLAEError(
            f"{path}: checkpoint format {version} is newer than this vlae understands "
            f"({FORMAT_VERSION}); upgrade vlae (written by vlae {state.get('vlae_version', '?')})"
        )
    try:
        state["config"] = config_from_dict(state.get("config") or {}).validate()
    except (VLAEError, TypeError) as error:
        raise VLAEError(f"{path}: configuration incompatible with this vlae: {error}") from None
    return state


def _build(cfg: Config, weights: dict[str, torch.Tensor], path: Path, what: str):
    from .model import VLAE

    model = VLAE(cfg.model)
    problem = weights_mismatch(model.state_dict(), weights)
    if problem is None:
        try:
            model.load_state_dict(weights)
        except (RuntimeError, KeyError, TypeError) as error:
            problem = str(error).strip().splitlines()[0]
    if problem is not None:
        raise VLAEError(f"{path}: {what} weights do not match the model its configuration builds: {problem}")
    # A diverged run's weights would give NaN results and blank figures without a word.
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise VLAEError(
            f"{path}: the {what} weights hold NaN or infinity in {len(bad)} of {len(weights)} tensors "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run diverged"
        )
    return model


def load_model(path: str | os.PathLike, weights: str = "ema", device: str | torch.device = "cpu"):
    """A trained model from a checkpoint file or a run folder.

    Args:
        path: ``.pt`` checkpoint, or a run folder (``best.pt``, else the latest
            ``ckpt-*.pt``).
        weights: ``"ema"`` (Polyak-averaged, what validation used; falls back
            to raw weights when the run had no averaging) or ``"raw"``.
        device: where to put the model (``"auto"`` picks cuda, mps or cpu).

    Returns:
        ``(model, cfg)`` with the model in eval mode.
    """
    if weights not in ("ema", "raw"):
        raise VLAEError(f"invalid weights {weights!r}: choose ema or raw")
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    cfg = state["config"]
    chosen = state.get("ema") if weights == "ema" else None
    model = _build(cfg, chosen if chosen is not None else state["model"], file, "ema" if chosen is not None else "raw")
    return model.to(pick_device(str(device))).eval(), cfg


def export_safetensors(path: str | os.PathLike, out: str | os.PathLike | None = None, weights: str = "ema") -> Path:
    """Write a checkpoint's weights as ``model.safetensors`` (with the config
    as JSON metadata) for use outside PyTorch pickles."""
    import json

    from safetensors.torch import save_file

    model, cfg = load_model(path, weights=weights)
    file = resolve_checkpoint(path)
    out = Path(out) if out is not None else file.parent / "model.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"config": json.dumps(cfg.to_dict()), "weights": weights})
    return out
