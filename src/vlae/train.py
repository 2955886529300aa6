"""Training loop: one function, readable top to bottom.

:func:`train` maximises the ELBO (with free bits and KL warm-up if configured)
with Adamax or Adam, keeps Polyak-averaged weights for evaluation, validates,
logs to ``metrics.jsonl`` (and TensorBoard), and writes checkpoints from which
``resume=True`` continues *exactly*: the same final weights as a run that was
never interrupted.

Data live on the training device as one ``uint8`` tensor; every epoch draws a
seeded permutation (and, for dynamically binarized data, fresh binary images)
from one ``torch.Generator``, and batches are slices of that permutation.

Exact resumption needs the same hardware, library versions and number of
CPU threads (floating-point reductions are ordered by thread count); the
checkpoint records the thread count and a resumed run says when it differs.

Nothing is lost or mixed silently:

- a run folder holds one run: a non-empty folder is refused unless the run
  resumes it (``resume=True``) or replaces it (``overwrite=True``);
- a checkpoint records the identity of its data
  (:func:`vlae.data.dataset_identity`: name, split, size, SHA-256 of the
  images), and resuming on other data is refused;
- on resume, ``metrics.jsonl`` records past the checkpoint's step (written by
  the interrupted session) are dropped, so the log is one history, and a
  ``best.pt`` that a kill left behind its checkpoint is brought up to date;
- an update that leaves a non-finite loss, gradient or weight is undone and
  logged as skipped (with no made-up numbers); ``max_skipped_steps``
  consecutive ones stop the run with an error;
- SIGINT and SIGTERM (a scheduler's preemption) finish the current step,
  write a resumable checkpoint and raise :class:`Interrupted`; checkpoints are
  also written every ``checkpoint_steps`` steps and ``checkpoint_seconds`` seconds.

Distributed training: launch with ``torchrun --nproc_per_node N -m vlae train
...``; each process takes every N-th index of the epoch's permutation,
``batch_size`` is per process, gradients are averaged by
DistributedDataParallel, and only rank 0 writes files.

Example:
    >>> from vlae.config import get_preset
    >>> cfg = get_preset("tiny"); cfg.train.max_steps = 20
    >>> summary = train(cfg, "runs/tiny")  # doctest: +SKIP
    >>> summary["steps"]  # doctest: +SKIP
    20
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (atomic_write, checkpoint_name, copy_checkpoint, latest_checkpoint, list_checkpoints,
                         load_checkpoint, pick_device, remove_temporaries, save_checkpoint, weights_mismatch,
                         write_error)
from .config import Config
from .errors import VLAEError
from .model import VLAE, nats_to_bits_per_dim
from .outputs import dumps, write_json, write_text

__all__ = ["train", "validate", "polyak_multi_avg_fn", "soft_free_bits_update", "kl_warmup_weight", "lr_lambda",
           "resolve_data", "prepare_run_dir", "Interrupted"]

LOG_EVERY = 20  # optimiser steps between metrics records
PRINT_EVERY = 30.0  # seconds between plain-text progress lines when there is no progress bar
# Fields that may differ between a checkpoint's config and a resumed run's: they say when to stop,
# where to find the (identical, checked) data or what to log, not what the optimiser does. Not
# eval_subset: best.pt is chosen by comparing validation scores, which must be on the same images.
RESUMABLE_CHANGES = {"epochs", "max_steps", "time_budget", "progress", "tensorboard", "eval_every", "eval_k",
                     "checkpoint_every", "checkpoint_steps", "checkpoint_seconds", "keep_last",
                     "max_skipped_steps", "device", "compile", "data_dir"}
# What --overwrite may delete: the files a run writes (anything else in the folder is refused).
_RUN_FILE = re.compile(r"^(.*\.(json|jsonl|pt|png|pdf|tmp|safetensors|log)|figures|tb|ERROR)$")


# ----------------------------------------------------------------------------- small pieces


def soft_free_bits_update(gamma: float, kl: float, target: float, rate: float = 0.1, threshold: float = 0.05
                          ) -> float:
    """One update of the KL weight of *soft free bits* (Chen et al., 2017, appendix C).

    Instead of the hard floor ``max(lambda, KL)``, the KL term is weighted by
    ``gamma`` (initially 1, always in ``(0, 1]``), adjusted after every step to keep
    the batch KL at least at the target ``lambda = free_bits * data_dims`` while
    moving the objective as little as possible: when the KL is below the target the
    weight is lowered by ``rate`` (10%), letting information flow into ``z``; when it
    is more than ``threshold`` (the paper: 5%; it found 3-30% all work) above the
    target the weight is raised by 10%, never above 1 (the ELBO's own weight); in
    between it stays.

    >>> soft_free_bits_update(1.0, kl=2.0, target=7.84)
    0.9
    >>> soft_free_bits_update(0.5, kl=10.0, target=7.84)
    0.55
    >>> soft_free_bits_update(0.5, kl=8.0, target=7.84)  # within 5% above the target
    0.5
    """
    if kl < target:
        return gamma * (1 - rate)
    if kl > target * (1 + threshold):
        return min(1.0, gamma * (1 + rate))
    return gamma


def kl_warmup_weight(step: int, warmup_steps: int) -> float:
    """KL weight rising linearly from 0 to 1 over ``warmup_steps`` optimiser steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def lr_lambda(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up, then the configured decay."""
    t = cfg.train
    total = t.max_steps or max(1, t.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / t.lr_warmup_steps) if t.lr_warmup_steps > 0 else 1.0
        if t.lr_decay == "exponential":
            return warm * t.lr_decay_rate ** (step / steps_per_epoch)
        if t.lr_decay == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        return warm

    return factor


def polyak_multi_avg_fn(decay: float) -> Callable:
    """Polyak (exponential moving) averaging of the weights, for ``AveragedModel(multi_avg_fn=...)``.

    Like :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, but the decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average forgets the random initialisation within tens of steps instead of
    ``1 / (1 - decay)`` (500 steps at 0.998): short runs (tests, sweeps under
    a time budget) are evaluated on trained weights, long runs are unaffected.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (MADE degrees) are constants: keep them equal
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


def _as_images(obj: Any, name: str, kind: str = "binary"):
    """A :class:`vlae.data.Images` from an Images or a ``uint8 (N, C, H, W)`` tensor of ``kind`` data
    (binary: dynamically binarized when it holds grey levels; 8bit: used as is)."""
    from .data import Images

    if isinstance(obj, Images):
        return obj
    if isinstance(obj, torch.Tensor):
        images = (obj if obj.dtype == torch.uint8 else obj.to(torch.uint8)).cpu()
        dynamic = kind == "binary" and bool((images > 1).any())
        return Images(images, name="custom", split=name, kind=kind, dynamic=dynamic, source="data= argument")
    raise VLAEError(f"data: expected vlae.data.Images or a uint8 tensor for {name}, got {type(obj).__name__}")


def resolve_data(cfg: Config, data: Any = None, notice: Callable[[str], object] | None = None):
    """Train and valid :class:`~vlae.data.Images` for a run.

    ``data`` (tests, sweeps) may be ``{"train": ..., "valid": ...}``, a
    ``(train, valid)`` pair, or one tensor used for both; each item a
    :class:`~vlae.data.Images` or a ``uint8 (N, C, H, W)`` tensor. Otherwise the configured
    dataset is loaded from ``cfg.train.data_dir``, else ``$VLAE_DATA_DIR``, else
    the cache (:func:`vlae.data.load_or_fallback`): a named location without
    the data is an error; with none named, an embedded fallback is announced
    through ``notice`` (default: stderr) and recorded in the returned sets' ``fallback``.
    """
    if data is not None:
        if isinstance(data, dict):
            train_set, valid_set = data["train"], data.get("valid", data["train"])
        elif isinstance(data, (tuple, list)):
            train_set, valid_set = data
        else:
            train_set = valid_set = data
        from .data import INFO

        kind = INFO[cfg.train.dataset].kind if cfg.train.dataset in INFO else "binary"  # tensors: the config's kind
        return _as_images(train_set, "train", kind), _as_images(valid_set, "valid", kind)
    from .data import load_or_fallback

    t = cfg.train
    train_set = load_or_fallback(t.dataset, "train", t.data_dir, train_on_valid=t.train_on_valid, notice=notice)
    valid_set = load_or_fallback(t.dataset, "valid", t.data_dir, notice=lambda _m: None)
    return train_set, valid_set


def check_data_fits(cfg: Config, images) -> None:
    """Raise a one-line :class:`VLAEError` unless ``images`` (:class:`~vlae.data.Images`)
    are what the model observes: ``model.image_shape`` and the observation model's
    kind (binary 0/1 for Bernoulli, 8-bit for the logistic mixture), e.g. colour
    photographs given to a binary MNIST model."""
    m = cfg.model
    kind = "8bit" if m.observation == "logistic_mixture" else "binary"
    shape = tuple(images.images.shape[1:])
    if shape != tuple(m.image_shape) or images.kind != kind:
        def fmt(s):
            return "x".join(map(str, s))
        name = {"8bit": "8-bit"}
        raise VLAEError(f"data: {images.name} holds {name.get(images.kind, images.kind)} images of {fmt(shape)}, but "
                        f"the model observes {name.get(kind, kind)} images of {fmt(m.image_shape)} (model.image_shape, model.observation); use a "
                        "preset made for this data (binary: mnist-*, 8-bit colour: cifar-*)")


def _rng_state(data_gen: torch.Generator, epoch_gen_state: torch.Tensor) -> dict[str, Any]:
    np_state = np.random.get_state()
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


def _set_rng_state(rng: dict[str, Any], data_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    data_gen.set_state(rng["data"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Metrics:
    """Appends JSON records to ``metrics.jsonl`` (and TensorBoard); rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.writer = enabled, None
        self.path = run_dir / "metrics.jsonl"
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise VLAEError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(dumps(record) + "\n")
        except OSError as error:
            raise write_error(self.path, error) from None
        if self.writer is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def validate(model: VLAE, images: torch.Tensor, batch_size: int, k: int = 0, seed: int = 0) -> dict[str, float]:
    """Single-sample ELBO (and IW bound with ``k`` samples) on ``images``, nats per image.

    Uses its own generator, so it never disturbs the training random stream.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    nelbo = recon = kl = iw = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(dev).float()
        terms = model.terms(x, generator=gen)
        nelbo += float(terms.nelbo.double().sum())
        recon += float(terms.recon.double().sum())
        kl += float(terms.kl.double().sum())
        if k > 0:
            iw += float(-model.iw_bound(x, k, generator=gen).sum())
    model.train(was_training)
    n, dims = images.shape[0], model.cfg.data_dims
    out = {"nelbo": nelbo / n, "elbo": -nelbo / n, "recon": recon / n, "kl": kl / n,
           "bits_per_dim": nats_to_bits_per_dim(nelbo / n, dims), "images": n}
    if k > 0:
        out.update({"iw_nll": iw / n, "iw_k": k, "iw_bits_per_dim": nats_to_bits_per_dim(iw / n, dims)})
    return out


# ----------------------------------------------------------------------------- run folder, data, resumption


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; ``checkpoint`` (if not ``None``) resumes it.

    A :class:`KeyboardInterrupt`, so code that already handles Ctrl-C handles
    it too; the command line exits with ``exit_status`` (130 or 143).
    """

    def __init__(self, signum: int, run_dir: Path, checkpoint: Path | None, step: int | None):
        self.signum, self.run_dir, self.checkpoint, self.step = signum, run_dir, checkpoint, step
        name = signal.Signals(signum).name
        where = f" at step {step}" if step is not None else ""
        saved = (f"wrote {checkpoint}" if checkpoint is not None else
                 "no checkpoint written in this session")
        super().__init__(f"{name}{where}: {saved}; continue with `vlae train --resume --run-dir {run_dir}`")

    def __reduce__(self):  # picklable (process pools send exceptions back to the parent)
        return type(self), (self.signum, self.run_dir, self.checkpoint, self.step)

    @property
    def exit_status(self) -> int:
        """128 + the signal number, the shell's convention (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _StopSignals:
    """Turns the first SIGINT or SIGTERM into a request (``signum``) to stop after the
    current step; a second one interrupts at once. Only in the main thread (elsewhere
    Python cannot install handlers, and the signals keep their usual meaning)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.signum, self.previous = run_dir, 0, {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise Interrupted(signum, self.run_dir, None, None)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _some(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                    notice: Callable[[str], object] = print) -> Path:
    """Check and create the run folder; one run per folder.

    A folder that holds anything is refused unless ``resume`` (continue the
    run in it; orphaned ``.*.tmp`` files of killed writes are removed) or
    ``overwrite`` (delete the previous run first; refused if the folder holds
    files a run does not write). A folder that cannot be created or written
    is one :class:`VLAEError`.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise VLAEError("train: --resume and --overwrite exclude each other (continue the run, or replace it)")
    for parent in [run_dir, *run_dir.parents]:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise VLAEError(f"{run_dir}: cannot create the run folder: {parent} is a file, not a folder")
            break
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if entries and not resume:
        if not overwrite:
            raise VLAEError(f"{run_dir}: the run folder is not empty ({_some(entries)}); pass --resume to continue "
                            f"its run, --overwrite to replace it, or choose another --run-dir")
        foreign = [name for name in entries if not _RUN_FILE.match(name)]
        if foreign:
            raise VLAEError(f"{run_dir}: --overwrite deletes only what a run writes, and the folder also holds "
                            f"{_some(foreign)}; move those away or choose another --run-dir")
        for path in run_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        notice(f"--overwrite: deleted the previous run in {run_dir} ({_some(entries)})")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VLAEError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise VLAEError(f"{run_dir}: the run folder is not writable")
    if resume:
        removed = remove_temporaries(run_dir)
        if removed:
            notice(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
                   f"{_some([p.name for p in removed])}")
    return run_dir


def _check_same_data(saved: Any, now: dict[str, dict[str, Any]], path: Path,
                     notice: Callable[[str], object]) -> None:
    """Refuse to resume on data other than the checkpoint's (``best.pt`` would compare two datasets' scores)."""
    from .data import identity_differences

    if not isinstance(saved, dict):
        notice(f"warning: {path} does not record its data (written by an older vlae); "
               "cannot check that the run resumes on the same data")
        return
    for split, identity in now.items():
        differences = identity_differences(saved.get(split) or {}, identity)
        if differences:
            raise VLAEError(f"{path}: the run was trained on other {split} data than now ({'; '.join(differences)}); "
                            "resume with the same --dataset and --data-dir, or start a new run")


def _require_resumable(state: dict[str, Any], path: Path) -> None:
    """The entries exact resumption needs, present and well-formed (else one line naming what is missing)."""
    missing = [k for k in ("model", "optimizer", "scheduler", "trainer", "rng") if not isinstance(state.get(k), dict)]
    if missing:
        raise VLAEError(f"{path}: cannot resume: the checkpoint has no {', '.join(missing)} "
                        f"{'entry' if len(missing) == 1 else 'entries'} (not a training checkpoint?)")
    lacking = [k for k in ("step", "epoch", "batch_in_epoch", "gamma", "skipped", "elapsed")
               if k not in state["trainer"]]
    lacking += [f"rng.{k}" for k in ("world", "ranks") if k not in state["rng"]]
    if lacking:
        raise VLAEError(f"{path}: cannot resume: the checkpoint lacks {', '.join(lacking)}")


def _optimizer_mismatch(saved: dict[str, Any], params: list[torch.nn.Parameter]) -> str | None:
    """A saved optimiser state whose tensors do not fit the parameters (torch would fail at the next step)."""
    for index, entry in (saved.get("state") or {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            return f"optimizer state for parameter {index!r}, the model has {len(params)}"
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                return (f"optimizer {key} of parameter {index} has shape {tuple(value.shape)}, "
                        f"expected {tuple(params[index].shape)}")
    return None


def _trim_metrics(path: Path, step: int) -> int:
    """Drop the records past ``step`` (and broken lines) from ``metrics.jsonl``; how many were dropped.

    They were written after the checkpoint being resumed, by a session that
    did not reach its next checkpoint; the resumed run writes them again.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # half a line (killed mid-write) or not text
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))
    return dropped


def _repair_best(run_dir: Path, best_step: Any, notice: Callable[[str], object]) -> None:
    """Bring ``best.pt`` up to date with the checkpoint that says it is best.

    The checkpoint of an improved step is written before ``best.pt`` is copied
    from it, so a kill (or a full disk) in between leaves ``best.pt`` one best
    behind; that checkpoint is then the latest one, and still on disk.
    """
    if not isinstance(best_step, int):
        return
    source, target = run_dir / checkpoint_name(best_step), run_dir / "best.pt"
    if source.is_file() and not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        copy_checkpoint(source, target)
        notice(f"updated {target} from {source.name}: the previous session stopped before copying it")


class _Rollback:
    """Undo an optimiser step that left non-finite weights: parameters and optimiser state
    are copied before every step (into buffers allocated once) and copied back on failure."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer, self.saved, self.had_state = params, optimizer, None, False

    def _live(self) -> list[torch.Tensor]:
        state = [v for p in self.params for v in self.optimizer.state.get(p, {}).values()
                 if isinstance(v, torch.Tensor)]
        return [p.detach() for p in self.params] + state

    @torch.no_grad()
    def save(self) -> None:
        live = self._live()
        if self.saved is None or len(self.saved) != len(live):
            self.saved = [t.clone() for t in live]
        else:
            torch._foreach_copy_(self.saved, live)
        self.had_state = len(live) > len(self.params)

    @torch.no_grad()
    def restore(self) -> None:
        if not self.had_state:  # the first step created the state: forget it, the next step starts afresh
            self.optimizer.state.clear()
        live = self._live()
        torch._foreach_copy_(live, self.saved[:len(live)])

    @torch.no_grad()
    def weights_finite(self) -> bool:
        """One synchronisation: the norm of a tensor is finite only if all its entries are."""
        return bool(torch.stack(torch._foreach_norm([p.detach() for p in self.params])).isfinite().all())


# ----------------------------------------------------------------------------- the loop


def train(cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, data: Any = None, callback: Callable[[dict[str, Any]], object] | None = None,
          log_every: int = LOG_EVERY) -> dict[str, Any]:
    """Train a VLAE; write config, metrics and checkpoints into ``run_dir``.

    Args:
        cfg: the run's configuration (validated here).
        run_dir: output folder (created); must be empty unless ``resume`` or ``overwrite``.
        resume: continue from the latest checkpoint in ``run_dir``. The model,
            the optimisation settings and the data must match it; when to stop
            (epochs, max_steps, time_budget), checkpointing and logging may change.
        overwrite: delete the run already in ``run_dir`` first.
        quiet: no progress bar and no progress messages (warnings still go to stderr).
        data: in-memory data instead of the configured dataset (see :func:`resolve_data`).
        callback: called after every optimiser step with that step's record
            (``step``, ``epoch``, ``loss``, ...; a skipped step's record has
            ``skipped_step`` and no numbers); an exception it raises stops
            training (the last checkpoint stays resumable).
        log_every: optimiser steps between ``metrics.jsonl`` records.

    Returns:
        summary: ``steps``, ``epochs``, ``images_per_s``, ``skipped``, ``stopped``
        (why), ``valid`` (final validation of the averaged weights), ``checkpoint``,
        ``best`` (with ``best_step``, ``best_nelbo``), ``run_dir``, ``seconds``, ``threads``.

    Raises:
        VLAEError: bad options, a non-empty run folder, a checkpoint of another
            run or data, a file that cannot be written, or ``max_skipped_steps``
            consecutive non-finite updates.
        Interrupted: SIGINT or SIGTERM; a resumable checkpoint was written first.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    with _StopSignals(run_dir) as signals:
        try:
            return _train(cfg, run_dir, resume, overwrite, quiet, data, callback, log_every, signals)
        except OSError as error:  # a write not already named (tensorboard, a folder that vanished, ...)
            raise write_error(error.filename or run_dir, error) from None


def _train(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, quiet: bool, data: Any,
           callback: Callable[[dict[str, Any]], object] | None, log_every: int,
           signals: _StopSignals) -> dict[str, Any]:
    t = cfg.train

    # -- processes and device ------------------------------------------------
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(t.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    say = (lambda *a: None) if (quiet or not main) else (lambda *a: print(*a, flush=True))
    warn = (lambda m: print(m, file=sys.stderr, flush=True)) if main else (lambda m: None)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda"
                                         and torch.cuda.is_bf16_supported())
    if use_bf16 and device.type not in ("cuda", "cpu"):
        raise VLAEError(f"invalid option train.precision: bf16 is not supported on {device.type}")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    threads = torch.get_num_threads()

    # -- resume or start -------------------------------------------------------
    state = last = None
    if resume:
        last = latest_checkpoint(run_dir)
        if last is None:
            started = run_dir.is_dir() and any(run_dir.iterdir())  # killed before its first checkpoint
            raise VLAEError(f"{run_dir}: nothing to resume (no ckpt-*.pt in the run folder)"
                            + ("; --overwrite starts it afresh" if started else ""))
        state = load_checkpoint(last, map_location="cpu")
        _require_resumable(state, last)
        _check_resumable(state["config"], cfg, last)

    # -- data ------------------------------------------------------------------
    _seed_everything(t.seed)
    train_set, valid_set = resolve_data(cfg, data, notice=warn)  # stderr even under --quiet
    for images in (train_set, valid_set):
        check_data_fits(cfg, images)
    if main:  # only now: data the model cannot read leaves nothing behind
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, notice=warn)
    from .data import dataset_identity, fixed_subset

    identity = {"train": dataset_identity(train_set), "valid": dataset_identity(valid_set)}
    if state is not None:
        _check_same_data(state.get("data"), identity, last, warn)
    valid_images = valid_set.observed(torch.Generator().manual_seed(t.seed + 1))
    valid_images = fixed_subset(valid_images, t.eval_subset)
    valid_images = valid_images.to(device)
    dynamic = train_set.dynamic
    train_images = train_set.images.to(device) if not dynamic else train_set.images  # grey levels stay on CPU
    n_train = len(train_set)
    per_rank = n_train // world
    if per_rank < 1:
        raise VLAEError(f"data: {n_train} training images cannot be shared by {world} processes")
    batch = min(t.batch_size, per_rank)
    steps_per_epoch = per_rank // batch
    data_gen = torch.Generator().manual_seed(t.seed)  # epoch permutations and dynamic binarization

    # -- model, data-dependent init, averaging, optimiser -----------------------
    model = VLAE(cfg.model).to(device)
    if state is None:
        first = (train_set.observed(torch.Generator().manual_seed(t.seed)) if dynamic else train_images)
        perm0 = torch.randperm(n_train, generator=torch.Generator().manual_seed(t.seed))[:batch]
        model.initialize(first[perm0.to(first.device)].to(device).float())
    else:
        for what in ("model", "ema"):
            problem = state.get(what) is not None and weights_mismatch(model.state_dict(), state[what])
            if problem:
                raise VLAEError(f"{last}: cannot resume: the {what} weights do not match the model: {problem}")
        problem = _optimizer_mismatch(state["optimizer"], list(model.parameters()))
        if problem:
            raise VLAEError(f"{last}: cannot resume: {problem}")
        model.load_state_dict(state["model"])
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = None
    if t.polyak > 0:
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(model, multi_avg_fn=polyak_multi_avg_fn(t.polyak), use_buffers=True)
        if state is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.fill_(int(state["trainer"].get("ema_n_averaged", 0)))
    eval_model = ema.module if ema is not None else model
    opt_cls = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    forward = torch.compile(net) if t.compile else net
    rollback = _Rollback(list(model.parameters()), optimizer)

    # -- trainer state ---------------------------------------------------------
    step, epoch, pos, gamma, skipped, elapsed, best = 0, 0, 0, 1.0, 0, 0.0, math.inf
    best_step, in_a_row = None, 0  # the step best.pt holds; consecutive skipped updates
    result: dict[str, float] = {}
    result_step = checkpoint_step = -1
    _seed_everything(t.seed * 1009 + rank)  # posterior noise: different per process, fixed per seed
    epoch_gen_state = data_gen.get_state()
    if state is not None:
        tr, rng = state["trainer"], state["rng"]
        if rng["world"] != world:
            raise VLAEError(f"{last}: written by {rng['world']} processes, cannot resume exactly with {world}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, epoch, pos, gamma, skipped, elapsed = (int(tr["step"]), int(tr["epoch"]), int(tr["batch_in_epoch"]),
                                                         float(tr["gamma"]), int(tr["skipped"]), float(tr["elapsed"]))
            per_rank_rng = rng["ranks"][rank]
            _set_rng_state(per_rank_rng, data_gen)
            epoch_gen_state = per_rank_rng["data_epoch_start"]
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise VLAEError(f"{last}: cannot resume from this checkpoint ({type(error).__name__}: {first})") from None
        best, best_step, in_a_row = tr.get("best", math.inf), tr.get("best_step"), int(tr.get("in_a_row", 0))
        checkpoint_step = step
        if isinstance(tr.get("valid"), dict):  # the checkpoint was written right after validating this step
            result, result_step = dict(tr["valid"]), step
        if tr.get("threads") is not None and tr["threads"] != threads:
            warn(f"note: {last.name} was written with {tr['threads']} CPU threads, this run uses {threads}: "
                 "the result will not be bit-identical to an uninterrupted run (use --threads "
                 f"{tr['threads']} for that)")
        if main:
            dropped = _trim_metrics(run_dir / "metrics.jsonl", step)
            if dropped:
                warn(f"dropped {dropped} metrics.jsonl record(s) past step {step}, written by the interrupted "
                     "session after its last checkpoint; this run writes them again")
            _repair_best(run_dir, best_step, warn)
            # it described the end of an earlier session; best.pt may move on before this one writes its own
            (run_dir / "summary.json").unlink(missing_ok=True)
        say(f"resuming {run_dir} at step {step} (epoch {epoch}, batch {pos})")
    if main:
        write_text(run_dir / "config.json", cfg.to_json() + "\n")
    metrics = _Metrics(run_dir, main, t.tensorboard)
    lam = cfg.model.free_bits * cfg.model.data_dims
    hard_free_bits = not t.soft_free_bits

    # -- helpers that close over the state above -------------------------------
    def gather_rng() -> dict[str, Any]:
        mine = _rng_state(data_gen, epoch_gen_state)
        if not distributed:
            return {"world": 1, "ranks": [mine]}
        every = [None] * world
        dist.all_gather_object(every, mine)
        return {"world": world, "ranks": every}

    def write_checkpoint(reason: str) -> Path | None:
        nonlocal checkpoint_step, checkpoint_clock
        rng = gather_rng()  # collective: every rank takes part
        checkpoint_step, checkpoint_clock = step, clock
        if not main:
            return None
        trainer = {"step": step, "epoch": epoch, "batch_in_epoch": pos, "gamma": gamma, "skipped": skipped,
                   "elapsed": elapsed, "best": best, "best_step": best_step, "reason": reason,
                   "in_a_row": in_a_row, "threads": threads, "valid": result if result_step == step else None,
                   "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0}
        path = save_checkpoint(run_dir / checkpoint_name(step), {
            "config": cfg.to_dict(), "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "trainer": trainer, "rng": rng, "data": identity})
        for old in list_checkpoints(run_dir)[:-max(1, t.keep_last)]:  # never the new one (see _repair_best)
            old.unlink(missing_ok=True)
        return path

    clock = checkpoint_clock = elapsed  # training seconds as every process agrees on them (see the loop)
    last_path: Path | None = last

    def run_validation() -> dict[str, float]:
        result = validate(eval_model, valid_images, max(t.batch_size, 100), t.eval_k, seed=t.seed + 2)
        record = {"split": "valid", "step": step, "epoch": epoch, **result, "time": elapsed}
        metrics.log(record)
        iw = f", IW bound (k={t.eval_k}) {result['iw_nll']:.2f}" if t.eval_k else ""
        say(f"valid  step {step:7d}  epoch {epoch:4d}  -ELBO {result['nelbo']:.2f} nats "
            f"({result['bits_per_dim']:.4f} bits/dim)  KL {result['kl']:.2f}{iw}")
        return result

    def validate_and_checkpoint(reason: str, always: bool) -> None:
        """Validate; checkpoint if ``always`` or the bound improved (then also ``best.pt``)."""
        nonlocal result, result_step, best, best_step, last_path
        result, result_step = run_validation(), step
        improved = torch.tensor([float(result["nelbo"] < best)])
        if distributed:  # rank 0 decides, so every rank takes part in the same checkpoints
            improved = improved.to(device)
            dist.broadcast(improved, 0)
        if bool(improved.item()):
            best, best_step = result["nelbo"], step
        if always or bool(improved.item()):
            last_path = write_checkpoint(reason)
        if bool(improved.item()) and main:
            copy_checkpoint(last_path, run_dir / "best.pt")  # after the checkpoint: see _repair_best

    def checkpoint_due() -> bool:
        return checkpoint_step != step and (
            (t.checkpoint_steps > 0 and step % t.checkpoint_steps == 0)
            or (t.checkpoint_seconds > 0 and clock - checkpoint_clock >= t.checkpoint_seconds))

    def epoch_data() -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's images and this rank's share of the permutation (uses the data generator)."""
        images = train_set.observed(data_gen).to(device) if dynamic else train_images
        perm = torch.randperm(n_train, generator=data_gen)[:per_rank * world][rank::world]
        return images, perm.to(device)

    # -- progress ----------------------------------------------------------------
    total_steps = t.max_steps or (t.epochs * steps_per_epoch if t.epochs else None)
    show_bar = main and not quiet and (t.progress == "on" or (t.progress == "auto" and sys.stderr.isatty()))
    bar = None
    if show_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, desc="train")
    say(f"training {sum(p.numel() for p in model.parameters()):,} parameters on {device} "
        f"({'bf16' if use_bf16 else 'fp32'}{', ' + str(world) + ' processes' if distributed else ''}, "
        f"{threads} CPU threads), {n_train:,} images ({train_set.source}), {steps_per_epoch} steps/epoch of "
        f"{batch}; run dir {run_dir}")

    # -- the loop ------------------------------------------------------------------
    def out_of_time() -> bool:
        return t.time_budget > 0 and clock >= t.time_budget

    def finished() -> bool:
        return (t.epochs > 0 and epoch >= t.epochs) or (t.max_steps > 0 and step >= t.max_steps)

    stopped = "epochs" if t.epochs > 0 and epoch >= t.epochs else None
    stop_signal = 0  # SIGINT or SIGTERM received by any process, agreed on in the step's all_reduce
    acc = torch.zeros(4, dtype=torch.float64)  # loss, recon, kl, grad norm over the logging window's good steps
    window_steps, window_good, window_images = 0, 0, 0
    window_start = last_print = time.perf_counter()
    session_start = time.perf_counter()
    session_images = 0
    net.train()
    try:
        while not finished() and not out_of_time() and not stop_signal:
            if pos == 0:
                epoch_gen_state = data_gen.get_state()
            else:  # resuming mid-epoch: rebuild this epoch's permutation from its starting state
                data_gen.set_state(epoch_gen_state)
            images, perm = epoch_data()
            while pos < steps_per_epoch:
                tick = time.perf_counter()
                x = images[perm[pos * batch:(pos + 1) * batch]].float()
                kl_weight = kl_warmup_weight(step, t.kl_warmup_steps) * gamma
                with autocast():
                    terms = forward(x)
                    loss = terms.recon.mean() + kl_weight * model.kl_penalty(terms, free_bits=hard_free_bits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
                # one synchronisation per step: the step's statistics, averaged over processes (with the
                # elapsed time and any stop signal, so that every process takes the same decisions)
                stats = torch.stack([loss.detach().float(), terms.recon.detach().float().mean(),
                                     terms.kl.detach().float().mean(), grad_norm.detach().float()]).double()
                stats = torch.cat([stats.cpu(), torch.tensor([elapsed + time.perf_counter() - tick,
                                                              float(signals.signum)], dtype=torch.float64)])
                if distributed:
                    stats = stats.to(device)
                    dist.all_reduce(stats)
                    stats = stats / world
                loss_v, recon_v, kl_v, gn_v, clock, signal_v = stats.tolist()
                reason = ("non-finite loss" if not math.isfinite(loss_v) else
                          "non-finite gradient" if not math.isfinite(gn_v) else None)
                if reason is None:
                    rollback.save()
                    optimizer.step()
                    if rollback.weights_finite():
                        if ema is not None:
                            ema.update_parameters(model)
                        if t.soft_free_bits and lam > 0:
                            gamma = soft_free_bits_update(gamma, kl_v, lam)
                    else:
                        rollback.restore()
                        reason = "non-finite weights after the update (undone)"
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                pos += 1
                elapsed += time.perf_counter() - tick
                session_images += x.shape[0] * world
                window_steps += 1
                window_images += x.shape[0] * world
                if signal_v > 0:
                    stop_signal = signals.signum or signal.SIGTERM
                record = {"step": step, "epoch": epoch, "kl_weight": kl_weight, "lr": scheduler.get_last_lr()[0],
                          "skipped": skipped, "time": elapsed}
                if reason is None:
                    in_a_row = 0
                    acc += torch.tensor([loss_v, recon_v, kl_v, gn_v], dtype=torch.float64)
                    window_good += 1
                    record.update({"loss": loss_v, "nelbo": recon_v + kl_v, "recon": recon_v, "kl": kl_v,
                                   "grad_norm": gn_v})
                else:  # logged as skipped, with no numbers: a skipped step has no loss to plot
                    skipped, in_a_row = skipped + 1, in_a_row + 1
                    record.update({"skipped": skipped, "skipped_step": reason})
                    metrics.log(record)
                    warn(f"warning: {reason} at step {step} (loss {loss_v:.4g}, gradient norm {gn_v:.4g}); update "
                         f"skipped ({in_a_row} in a row, {skipped} in all)")
                if bar is not None:
                    bar.update(1)
                    if step % 5 == 0 and reason is None:
                        bar.set_postfix(loss=f"{loss_v:.2f}", kl=f"{kl_v:.2f}",
                                        img_s=f"{window_images / max(1e-9, time.perf_counter() - window_start):.0f}")
                if step % log_every == 0:
                    now = time.perf_counter()
                    summary_record = {"step": step, "epoch": epoch, "kl_weight": kl_weight, "lr": record["lr"],
                                      "skipped": skipped, "time": elapsed, "steps_averaged": window_good,
                                      "images_per_s": window_images / max(1e-9, now - window_start)}
                    if window_good:  # means over the window's good steps only
                        mean = (acc / window_good).tolist()
                        summary_record.update({"loss": mean[0], "nelbo": mean[1] + mean[2], "recon": mean[1],
                                               "kl": mean[2], "grad_norm": mean[3]})
                    metrics.log(summary_record)
                    if bar is None and now - last_print >= PRINT_EVERY and window_good:
                        say(f"train  step {step:7d}  epoch {epoch:4d}  loss {summary_record['loss']:.2f}  KL "
                            f"{summary_record['kl']:.2f}  {summary_record['images_per_s']:.0f} images/s")
                        last_print = now
                    acc.zero_()
                    window_steps, window_good, window_images, window_start = 0, 0, 0, now
                if callback is not None:
                    callback(record)
                if t.max_skipped_steps > 0 and in_a_row >= t.max_skipped_steps:
                    raise VLAEError(
                        f"training diverged: {in_a_row} updates in a row skipped (last: {reason}) at step {step}; "
                        f"the last good state is {last_path or 'not checkpointed yet'}; lower --lr or raise "
                        "train.max_skipped_steps")
                if not distributed and signals.signum:  # one process: no need to wait for the next all_reduce
                    stop_signal = signals.signum
                if finished() or out_of_time() or stop_signal:
                    break
                if pos < steps_per_epoch and checkpoint_due():
                    last_path = write_checkpoint("steps" if t.checkpoint_steps and step % t.checkpoint_steps == 0
                                                 else "time")
            if pos >= steps_per_epoch:  # the epoch is complete
                epoch += 1
                pos = 0
                tick = time.perf_counter()
                if epoch % t.eval_every == 0 or finished():
                    validate_and_checkpoint("epoch", always=epoch % t.checkpoint_every == 0)
                elif epoch % t.checkpoint_every == 0:
                    last_path = write_checkpoint("epoch")
                elapsed += time.perf_counter() - tick
                if checkpoint_due() and not finished() and not stop_signal:
                    last_path = write_checkpoint("steps" if t.checkpoint_steps and step % t.checkpoint_steps == 0
                                                 else "time")
        if stop_signal:  # resumable as it stands; validating could take long, the scheduler waits for no one
            stopped = signal.Signals(stop_signal).name
            if checkpoint_step != step:
                last_path = write_checkpoint(stopped)
        else:
            stopped = ("time_budget" if out_of_time() and not finished() else
                       "max_steps" if t.max_steps > 0 and step >= t.max_steps else "epochs")
            # the final state is always validated and checkpointed (unless the epoch end just did both)
            if result_step != step:
                validate_and_checkpoint(stopped, always=True)
            elif checkpoint_step != step:
                last_path = write_checkpoint(stopped)
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    seconds = time.perf_counter() - session_start
    summary = {"steps": step, "epochs": epoch, "batch_in_epoch": pos, "stopped": stopped, "skipped": skipped,
               "images_per_s": session_images / max(1e-9, seconds), "seconds": seconds, "train_seconds": elapsed,
               "valid": result if result_step == step else {}, "kl_weight_gamma": gamma, "world_size": world,
               "device": str(device), "threads": threads, "precision": "bf16" if use_bf16 else "fp32",
               "data": train_set.source, "data_identity": identity, "run_dir": str(run_dir),
               "checkpoint": str(last_path) if last_path else None,
               "best": str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
               "best_step": best_step, "best_nelbo": best if math.isfinite(best) else None}
    if main:
        write_json(run_dir / "summary.json", summary)
    if stop_signal:
        raise Interrupted(stop_signal, run_dir, last_path, step)
    valid_text = f"{result['nelbo']:.2f} nats" if result_step == step else "not run"
    say(f"stopped after {step} steps ({stopped}); valid -ELBO {valid_text}; "
        f"{summary['images_per_s']:.0f} images/s; checkpoint {last_path}")
    return summary


def _check_resumable(saved: Config, cfg: Config, path: Path) -> None:
    """Refuse to resume with a different model or optimisation."""
    if saved.model != cfg.model:
        diffs = [f"model.{k}" for k, v in vars(cfg.model).items() if getattr(saved.model, k) != v]
        raise VLAEError(f"{path}: cannot resume with a different model configuration ({', '.join(diffs)})")
    diffs = [f"train.{k}" for k, v in vars(cfg.train).items()
             if k not in RESUMABLE_CHANGES and getattr(saved.train, k) != v]
    if diffs:
        raise VLAEError(f"{path}: cannot resume with different training options ({', '.join(diffs)}); "
                        f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")
