"""Exact resumption: the random state a checkpoint carries, and the checks that a
checkpoint can be resumed by this run (same model, optimisation and data)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch

from ..config import Config
from ..errors import VLAEError

__all__ = [
    "RESUMABLE_CHANGES",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "require_resumable",
    "check_resumable",
    "check_same_data",
    "optimizer_mismatch",
]

# Fields that may differ between a checkpoint's config and a resumed run's: they say when to stop,
# where to find the (identical, checked) data or what to log, not what the optimiser does. Not
# eval_subset: best.pt is chosen by comparing validation scores, which must be on the same images.
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "time_budget",
    "progress",
    "tensorboard",
    "eval_every",
    "eval_k",
    "checkpoint_every",
    "checkpoint_steps",
    "checkpoint_seconds",
    "keep_last",
    "max_skipped_steps",
    "device",
    "compile",
    "cuda_graph",
    "data_dir",
}


def rng_state(data_gen: torch.Generator, epoch_gen_state: torch.Tensor) -> dict[str, Any]:
    np_state = cast("tuple[Any, ...]", np.random.get_state())  # the legacy form: a tuple
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": _py_state(),
        "data": data_gen.get_state(),
        "data_epoch_start": epoch_gen_state,
    }


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: dict[str, Any], data_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    data_gen.set_state(rng["data"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_same_data(saved: Any, now: dict[str, dict[str, Any]], path: Path, notice: Callable[[str], object]) -> None:
    """Refuse to resume on data other than the checkpoint's (``best.pt`` would compare two datasets' scores)."""
    from ..data import identity_differences

    if not isinstance(saved, dict):
        notice(
            f"warning: {path} does not record its data (written by an older vlae); "
            "cannot check that the run resumes on the same data"
        )
        return
    for split, identity in now.items():
        differences = identity_differences(saved.get(split) or {}, identity)
        if differences:
            raise VLAEError(
                f"{path}: the run was trained on other {split} data than now ({'; '.join(differences)}); "
                "resume with the same --dataset and --data-dir, or start a new run"
            )


def require_resumable(state: dict[str, Any], path: Path) -> None:
    """The entries exact resumption needs, present and well-formed (else one line naming what is missing)."""
    missing = [k for k in ("model", "optimizer", "scheduler", "trainer", "rng") if not isinstance(state.get(k), dict)]
    if missing:
        raise VLAEError(
            f"{path}: cannot resume: the checkpoint has no {', '.join(missing)} "
            f"{'entry' if len(missing) == 1 else 'entries'} (not a training checkpoint?)"
        )
    lacking = [
        k for k in ("step", "epoch", "batch_in_epoch", "gamma", "skipped", "elapsed") if k not in state["trainer"]
    ]
    lacking += [f"rng.{k}" for k in ("world", "ranks") if k not in state["rng"]]
    if lacking:
        raise VLAEError(f"{path}: cannot resume: the checkpoint lacks {', '.join(lacking)}")


def optimizer_mismatch(saved: dict[str, Any], params: list[torch.nn.Parameter]) -> str | None:
    """A saved optimiser state whose tensors do not fit the parameters (torch would fail at the next step)."""
    for index, entry in (saved.get("state") or {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            return f"optimizer state for parameter {index!r}, the model has {len(params)}"
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                return (
                    f"optimizer {key} of parameter {index} has shape {tuple(value.shape)}, "
                    f"expected {tuple(params[index].shape)}"
                )
    return None


def check_resumable(saved: Config, cfg: Config, path: Path) -> None:
    """Refuse to resume with a different model or optimisation."""
    if saved.model != cfg.model:
        diffs = [f"model.{k}" for k, v in vars(cfg.model).items() if getattr(saved.model, k) != v]
        raise VLAEError(f"{path}: cannot resume with a different model configuration ({', '.join(diffs)})")
    diffs = [
        f"train.{k}" for k, v in vars(cfg.train).items() if k not in RESUMABLE_CHANGES and getattr(saved.train, k) != v
    ]
    if diffs:
        raise VLAEError(
            f"{path}: cannot resume with different training options ({', '.join(diffs)}); "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )
