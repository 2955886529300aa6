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

Files are written to a temporary name in the same folder and moved into place
with :func:`os.replace`, so a crash mid-write leaves the previous file intact
and never a truncated one under the final name.

Example:
    >>> model, cfg = load_model("runs/mnist-small-20250101-120000")  # doctest: +SKIP
    >>> model.iw_bound(x, k=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, config_from_dict
from .errors import VLAEError

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "load_model", "latest_checkpoint",
           "list_checkpoints", "resolve_checkpoint", "checkpoint_name", "export_safetensors"]

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

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "vlae_version": __version__,
               "torch_version": str(torch.__version__), **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VLAEError(f"{path}: not a readable vlae checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise VLAEError(f"{path}: not a vlae checkpoint (no format_version/model entries)")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VLAEError(f"{path}: checkpoint format {version} is newer than this vlae understands "
                        f"({FORMAT_VERSION}); upgrade vlae (written by vlae {state.get('vlae_version', '?')})")
    try:
        state["config"] = config_from_dict(state.get("config") or {}).validate()
    except (VLAEError, TypeError) as error:
        raise VLAEError(f"{path}: configuration incompatible with this vlae: {error}") from None
    return state


def _build(cfg: Config, weights: dict[str, torch.Tensor], path: Path, what: str):
    from .model import VLAE

    model = VLAE(cfg.model)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise VLAEError(f"{path}: {what} weights do not match the model its configuration builds: {first}") from None
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
    model = _build(cfg, chosen if chosen is not None else state["model"], file,
                   "ema" if chosen is not None else "raw")
    return model.to(pick_device(str(device))).eval(), cfg


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: cuda if available, else mps, else cpu; otherwise ``torch.device(name)``."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise VLAEError(f"invalid device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise VLAEError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VLAEError(f"device {name!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
