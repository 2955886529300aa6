"""Setting up a training run: its data, its parts and its state, fresh or from a checkpoint.

Before the first step, :class:`~vlae.train.loop.Trainer` calls these functions in this
order, which fixes the order of every random draw of the run:

1. :func:`resumable`: the checkpoint to resume from, if any (checked against this run's config);
2. :func:`set_up_data` (:class:`RunData`): seeds every generator from ``train.seed``,
   resolves and checks the images, prepares the run folder, fixes the validation
   images (seed ``seed + 1``) and the batch, and the generator of the epochs'
   permutations (seed ``seed``);
3. :func:`set_up_parts` (:class:`Parts`): the model, initialised from a seeded batch
   of the training images (a fresh run: data-dependent initialisation) or loaded,
   its Polyak average, the optimiser and the step (:class:`~vlae.train.step.TrainStep`);
4. :func:`restore` (:class:`Start`): the posterior noise's seed (``seed * 1009 + rank``),
   then, when resuming, the optimiser, the random streams and the counters of the
   checkpoint, so the run continues exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, weights_mismatch
from ..config import Config
from ..data import Images, check_data_fits, resolve_data
from ..errors import VLAEError
from ..model import VLAE
from ..runtime import Runtime
from .resume import (
    check_resumable,
    check_same_data,
    optimizer_mismatch,
    require_resumable,
    seed_everything,
    set_rng_state,
)
from .run_dir import prepare_run_dir, repair_best, trim_metrics
from .schedules import lr_lambda
from .step import TrainStep

__all__ = [
    "TrainerState",
    "RunData",
    "Parts",
    "Start",
    "resumable",
    "set_up_data",
    "set_up_parts",
    "restore",
]

Say = Callable[[str], object]


@dataclass
class TrainerState:
    """Where training stands: the ``trainer`` entry of a checkpoint (with ``reason``,
    ``threads`` and ``valid`` added when written)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    gamma: float = 1.0  # soft-free-bits weight of the KL
    skipped: int = 0
    elapsed: float = 0.0  # training seconds, over all sessions
    best: float = math.inf  # best validation -ELBO so far, held by best.pt
    best_step: int | None = None
    in_a_row: int = 0  # consecutive skipped updates
    ema_n_averaged: int = 0

    @classmethod
    def from_checkpoint(cls, trainer: dict[str, Any]) -> "TrainerState":
        state = cls(**{f.name: trainer[f.name] for f in fields(cls) if f.name in trainer})
        state.step, state.epoch, state.batch_in_epoch = int(state.step), int(state.epoch), int(state.batch_in_epoch)
        state.gamma, state.skipped, state.elapsed = float(state.gamma), int(state.skipped), float(state.elapsed)
        state.in_a_row, state.ema_n_averaged = int(state.in_a_row), int(state.ema_n_averaged)
        return state


@dataclass
class RunData:
    """The run's images on their devices and how this process walks through them."""

    train_set: Images
    train_images: torch.Tensor  # on the training device, or on the CPU when dynamically binarized
    dynamic: bool
    valid_images: torch.Tensor  # the fixed validation subset, on the training device
    identity: dict[str, Any]  # recorded in every checkpoint; a resumed run must match it
    per_rank: int  # training images this process sees per epoch
    batch: int
    steps_per_epoch: int
    data_gen: torch.Generator  # epoch permutations and dynamic binarization


@dataclass
class Parts:
    """What the loop trains: the model, its Polyak average, the optimiser and the step."""

    model: VLAE
    ema: VLAE | None
    eval_model: VLAE  # what validation reads: the average when there is one
    optimizer: torch.optim.Optimizer
    lr: torch.Tensor | None  # the learning rate in device memory (a GPU), else None
    capturable: bool
    lr_factor: Callable[[int], float]
    step_fn: TrainStep
    graphs: bool  # replay the step as a CUDA graph


@dataclass
class Start:
    """Where the loop starts: a fresh state, or the one of the checkpoint resumed from."""

    state: TrainerState = field(default_factory=TrainerState)
    result: dict[str, float] = field(default_factory=dict)  # the last validation
    result_step: int = -1  # the step it was taken at
    checkpoint_step: int = -1  # the step of the last checkpoint
    epoch_gen_state: torch.Tensor | None = None  # the data generator at the start of this epoch


def resumable(run_dir: Path, cfg: Config) -> tuple[dict[str, Any], Path]:
    """The latest checkpoint in ``run_dir`` and its path, refused unless this run may resume it."""
    last = latest_checkpoint(run_dir)
    if last is None:
        started = run_dir.is_dir() and any(run_dir.iterdir())  # killed before its first checkpoint
        raise VLAEError(
            f"{run_dir}: nothing to resume (no ckpt-*.pt in the run folder)"
            + ("; --overwrite starts it afresh" if started else "")
        )
    state = load_checkpoint(last, map_location="cpu")
    require_resumable(state, last)
    check_resumable(state["config"], cfg, last)
    return state, last


def set_up_data(
    cfg: Config,
    rt: Runtime,
    data: Any,
    run_dir: Path,
    *,
    resume: bool,
    overwrite: bool,
    checkpoint: dict[str, Any] | None,
    last_path: Path | None,
    warn: Say,
) -> RunData:
    """The run's data (see :func:`~vlae.train.train` for ``data``); prepares the run folder."""
    from ..data import dataset_identity, fixed_subset

    t = cfg.train
    seed_everything(t.seed)
    train_set, valid_set = resolve_data(cfg, data, notice=warn)  # stderr even under --quiet
    for images in (train_set, valid_set):
        check_data_fits(cfg, images)
    if rt.main:  # only now: data the model cannot read leaves nothing behind
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, notice=warn)
    identity = {"train": dataset_identity(train_set), "valid": dataset_identity(valid_set)}
    if checkpoint is not None:
        assert last_path is not None  # the checkpoint's own path
        check_same_data(checkpoint.get("data"), identity, last_path, warn)
    valid_images = fixed_subset(valid_set.observed(torch.Generator().manual_seed(t.seed + 1)), t.eval_subset)
    valid_images = valid_images.to(rt.device)
    dynamic = train_set.dynamic
    # grey levels of dynamically binarized data stay on the CPU: each epoch draws its binary images there
    train_images = train_set.images if dynamic else train_set.images.to(rt.device)
    n_train = len(train_set)
    per_rank = n_train // rt.world
    if per_rank < 1:
        raise VLAEError(f"data: {n_train} training images cannot be shared by {rt.world} processes")
    batch = min(t.batch_size, per_rank)
    return RunData(
        train_set=train_set,
        train_images=train_images,
        dynamic=dynamic,
        valid_images=valid_images,
        identity=identity,
        per_rank=per_rank,
        batch=batch,
        # the images past the last full batch are left out of the epoch (drop_last, the authors' convention):
        # every step has one shape, so one CUDA graph serves the whole run
        steps_per_epoch=per_rank // batch,
        data_gen=torch.Generator().manual_seed(t.seed),
    )


def set_up_parts(
    cfg: Config,
    rt: Runtime,
    data: RunData,
    checkpoint: dict[str, Any] | None,
    last_path: Path | None,
    log_every: int,
) -> Parts:
    """Model (initialised from data or loaded), Polyak average, optimiser and the step."""
    t = cfg.train
    model = VLAE(cfg.model).to(rt.device)
    if checkpoint is None:
        n = len(data.train_set)
        first = data.train_set.observed(torch.Generator().manual_seed(t.seed)) if data.dynamic else data.train_images
        perm0 = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed))[: data.batch]
        model.initialize(first[perm0.to(first.device)].to(rt.device).float())
    else:
        _check_weights(model, checkpoint, last_path)
        model.load_state_dict(checkpoint["model"])
    net: torch.nn.Module = model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    ema = None
    if t.polyak > 0:
        ema = copy.deepcopy(model).requires_grad_(False)
        if checkpoint is not None and checkpoint.get("ema") is not None:
            ema.load_state_dict(checkpoint["ema"])
    graphs = _use_graphs(cfg, rt)
    opt_cls = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
    capturable = rt.device.type == "cuda"
    # on a GPU the (captured) update reads the learning rate from device memory, a tensor the host fills
    # before each step; on a CPU it is a number, as torch's non-capturable optimisers expect
    lr = torch.tensor(t.lr, device=rt.device) if capturable else None
    optimizer = opt_cls(
        model.parameters(), lr=lr if lr is not None else t.lr, weight_decay=t.weight_decay, capturable=capturable
    )
    lr_factor = lr_lambda(cfg, data.steps_per_epoch)
    forward = net
    if t.compile:
        from torch._inductor import config as inductor

        # the eager random draws (inductor's own generator would draw others): --compile changes the
        # numbers by float rounding only, and a seed means the same run with and without it
        inductor.fallback_random = True
        forward = torch.compile(net, dynamic=False)  # every step has one shape: compiled once
    lam = cfg.model.free_bits * cfg.model.data_dims
    step_fn = TrainStep(
        model,
        forward,
        optimizer,
        rt,
        (data.batch, *cfg.model.image_shape),
        window=log_every,
        grad_clip=t.grad_clip,
        hard_free_bits=not t.soft_free_bits,
        soft_target=lam if t.soft_free_bits else 0.0,
        ema=ema,
        polyak=t.polyak,
    )
    eval_model = ema if ema is not None else model
    return Parts(model, ema, eval_model, optimizer, lr, capturable, lr_factor, step_fn, graphs)


def _use_graphs(cfg: Config, rt: Runtime) -> bool:
    mode, cuda = cfg.train.cuda_graph, rt.device.type == "cuda"
    if mode == "on" and not cuda:
        raise VLAEError(f"train.cuda_graph=on needs a CUDA device; this run is on {rt.device}: use auto or off")
    if mode == "on" and rt.distributed:
        raise VLAEError("train.cuda_graph=on needs one CUDA process (DDP steps stay eager); use auto or off")
    return mode == "on" or (mode == "auto" and cuda and not rt.distributed)


def _check_weights(model: VLAE, checkpoint: dict[str, Any], last_path: Path | None) -> None:
    for what in ("model", "ema"):
        problem = checkpoint.get(what) is not None and weights_mismatch(model.state_dict(), checkpoint[what])
        if problem:
            raise VLAEError(f"{last_path}: cannot resume: the {what} weights do not match the model: {problem}")
    problem = optimizer_mismatch(checkpoint["optimizer"], list(model.parameters()))
    if problem:
        raise VLAEError(f"{last_path}: cannot resume: {problem}")


def restore(
    cfg: Config,
    rt: Runtime,
    run_dir: Path,
    data: RunData,
    parts: Parts,
    checkpoint: dict[str, Any] | None,
    last_path: Path | None,
    say: Say,
    warn: Say,
) -> Start:
    """Where the loop starts: fresh, or from ``checkpoint`` (read from ``last_path``): the optimiser,
    the random streams, the counters, and the run folder's log and best.pt brought in line with it."""
    start = Start()
    seed_everything(cfg.train.seed * 1009 + rt.rank)  # posterior noise: different per process, fixed per seed
    start.epoch_gen_state = data.data_gen.get_state()
    if checkpoint is not None:
        assert last_path is not None  # the checkpoint's own path
        _resume_from(checkpoint, last_path, start, rt, data, parts, warn)
        _tidy_run_dir(run_dir, start.state, rt, warn)
        say(
            f"resuming {run_dir} at step {start.state.step} (epoch {start.state.epoch}, "
            f"batch {start.state.batch_in_epoch})"
        )
    parts.step_fn.gamma.fill_(start.state.gamma)
    parts.step_fn.ema_updates.fill_(start.state.ema_n_averaged)
    return start


def _resume_from(
    checkpoint: dict[str, Any], last: Path, start: Start, rt: Runtime, data: RunData, parts: Parts, warn: Say
) -> None:
    tr, rng = checkpoint["trainer"], checkpoint["rng"]
    if rng["world"] != rt.world:
        raise VLAEError(f"{last}: written by {rng['world']} processes, cannot resume exactly with {rt.world}")
    try:
        _load_optimizer(parts, checkpoint["optimizer"])
        start.state = TrainerState.from_checkpoint(tr)
        mine = rng["ranks"][rt.rank]
        set_rng_state(mine, data.data_gen)
        start.epoch_gen_state = mine["data_epoch_start"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VLAEError(f"{last}: cannot resume from this checkpoint ({type(error).__name__}: {first})") from None
    start.checkpoint_step = start.state.step
    if isinstance(tr.get("valid"), dict):  # the checkpoint was written right after validating this step
        start.result, start.result_step = dict(tr["valid"]), start.state.step
    if tr.get("threads") is not None and tr["threads"] != rt.threads:
        warn(
            f"note: {last.name} was written with {tr['threads']} CPU threads, this run uses "
            f"{rt.threads}: the result will not be bit-identical to an uninterrupted run (use "
            f"--threads {tr['threads']} for that)"
        )


def _tidy_run_dir(run_dir: Path, state: TrainerState, rt: Runtime, warn: Say) -> None:
    """The resumed run folder as its checkpoint left it: one log, an up-to-date best.pt, no old summary."""
    if not rt.main:
        return
    dropped = trim_metrics(run_dir / "metrics.jsonl", state.step)
    if dropped:
        warn(
            f"dropped {dropped} metrics.jsonl record(s) past step {state.step}, written by the "
            "interrupted session after its last checkpoint; this run writes them again"
        )
    repair_best(run_dir, state.best_step, warn)
    # it described the end of an earlier session; best.pt may move on before this one writes its own
    (run_dir / "summary.json").unlink(missing_ok=True)


def _load_optimizer(parts: Parts, saved: dict[str, Any]) -> None:
    """Load the optimiser's state, keeping this run's learning-rate tensor and device placement
    (a checkpoint written on a GPU resumes on a CPU and vice versa)."""
    optimizer = parts.optimizer
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        group["lr"] = parts.lr if parts.lr is not None else float(group["lr"])
        group["capturable"] = parts.capturable
    for p, entry in optimizer.state.items():
        if torch.is_tensor(entry.get("step")):
            entry["step"] = entry["step"].to(p.device if parts.capturable else "cpu", torch.float32)
