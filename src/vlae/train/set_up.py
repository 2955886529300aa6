"""Setting up a training run: its data, its parts and its state, fresh or from a checkpoint.

Before the first step, :class:`TrainerSetUp` (the part of the
:class:`~vlae.train.loop.Trainer` that runs once) takes these steps in this
order, which fixes the order of every random draw of the run:

1. the checkpoint to resume from, if any (checked against this run's config);
2. the data (:meth:`TrainerSetUp._set_up_data`): seeds every generator from
   ``train.seed``, resolves and checks the images, prepares the run folder,
   fixes the validation images (seed ``seed + 1``) and the batch, and the
   generator of the epochs' permutations (seed ``seed``);
3. the parts (:meth:`TrainerSetUp._set_up_parts`): the model, initialised from
   a seeded batch of the training images (a fresh run: data-dependent
   initialisation) or loaded, its Polyak average, the optimiser and the step
   (:class:`~vlae.train.step.TrainStep`);
4. the state (:meth:`TrainerSetUp._restore`): the posterior noise's seed
   (``seed * 1009 + rank``), then, when resuming, the optimiser, the random
   streams and the counters of the checkpoint, so the run continues exactly.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, weights_mismatch
from ..config import Config
from ..data import check_data_fits, resolve_data
from ..errors import VLAEError
from ..model import VLAE
from ..outputs import write_text
from ..runtime import Runtime
from .interrupt import StopSignals
from .metrics import Metrics
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

__all__ = ["TrainerSetUp", "TrainerState"]


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


class TrainerSetUp:
    """A training run set up before its first step: data, parts and state (see the module's
    docstring); :class:`~vlae.train.loop.Trainer` adds the loop. See :func:`~vlae.train.train`
    for the arguments."""

    last_path: Path | None  # the last checkpoint written or resumed from

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        resume: bool,
        overwrite: bool,
        quiet: bool,
        data: Any,
        callback: Callable[[dict[str, Any]], object] | None,
        log_every: int,
        signals: StopSignals,
    ):
        self.cfg, self.t, self.run_dir, self.signals = cfg, cfg.train, run_dir, signals
        self.callback, self.log_every = callback, log_every
        self.rt = Runtime.create(self.t.device, self.t.precision)
        main = self.rt.main
        self.say = (lambda *a: print(*a, flush=True)) if (main and not quiet) else (lambda *a: None)
        self.warn = (lambda m: print(m, file=sys.stderr, flush=True)) if main else (lambda m: None)
        self.quiet = quiet
        checkpoint, self.last_path = self._resumable() if resume else (None, None)
        self._set_up_data(data, resume, overwrite, checkpoint)
        self._set_up_parts(checkpoint)
        self._restore(checkpoint)

    def _resumable(self) -> tuple[dict[str, Any], Path]:
        last = latest_checkpoint(self.run_dir)
        if last is None:
            started = self.run_dir.is_dir() and any(self.run_dir.iterdir())  # killed before its first checkpoint
            raise VLAEError(
                f"{self.run_dir}: nothing to resume (no ckpt-*.pt in the run folder)"
                + ("; --overwrite starts it afresh" if started else "")
            )
        state = load_checkpoint(last, map_location="cpu")
        require_resumable(state, last)
        check_resumable(state["config"], self.cfg, last)
        return state, last

    def _set_up_data(self, data: Any, resume: bool, overwrite: bool, checkpoint: dict[str, Any] | None) -> None:
        from ..data import dataset_identity, fixed_subset

        t, rt = self.t, self.rt
        seed_everything(t.seed)
        self.train_set, valid_set = resolve_data(self.cfg, data, notice=self.warn)  # stderr even under --quiet
        for images in (self.train_set, valid_set):
            check_data_fits(self.cfg, images)
        if rt.main:  # only now: data the model cannot read leaves nothing behind
            prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite, notice=self.warn)
        self.identity = {"train": dataset_identity(self.train_set), "valid": dataset_identity(valid_set)}
        if checkpoint is not None:
            assert self.last_path is not None  # the checkpoint's own path
            check_same_data(checkpoint.get("data"), self.identity, self.last_path, self.warn)
        valid_images = valid_set.observed(torch.Generator().manual_seed(t.seed + 1))
        self.valid_images = fixed_subset(valid_images, t.eval_subset).to(rt.device)
        self.dynamic = self.train_set.dynamic
        # grey levels of dynamically binarized data stay on the CPU: each epoch draws its binary images there
        self.train_images = self.train_set.images if self.dynamic else self.train_set.images.to(rt.device)
        n_train = len(self.train_set)
        self.per_rank = n_train // rt.world
        if self.per_rank < 1:
            raise VLAEError(f"data: {n_train} training images cannot be shared by {rt.world} processes")
        self.batch = min(t.batch_size, self.per_rank)
        # the images past the last full batch are left out of the epoch (drop_last, the authors' convention):
        # every step has one shape, so one CUDA graph serves the whole run
        self.steps_per_epoch = self.per_rank // self.batch
        self.data_gen = torch.Generator().manual_seed(t.seed)  # epoch permutations and dynamic binarization

    def _set_up_parts(self, checkpoint: dict[str, Any] | None) -> None:
        """Model (initialised from data or loaded), Polyak average, optimiser and the step."""
        t, rt = self.t, self.rt
        model = VLAE(self.cfg.model).to(rt.device)
        if checkpoint is None:
            n = len(self.train_set)
            first = (
                self.train_set.observed(torch.Generator().manual_seed(t.seed)) if self.dynamic else self.train_images
            )
            perm0 = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed))[: self.batch]
            model.initialize(first[perm0.to(first.device)].to(rt.device).float())
        else:
            self._check_weights(model, checkpoint)
            model.load_state_dict(checkpoint["model"])
        net: torch.nn.Module = model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.ema = None
        if t.polyak > 0:
            self.ema = copy.deepcopy(model).requires_grad_(False)
            if checkpoint is not None and checkpoint.get("ema") is not None:
                self.ema.load_state_dict(checkpoint["ema"])
        self.model, self.eval_model = model, (self.ema if self.ema is not None else model)
        self.graphs = self._use_graphs()
        opt_cls = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
        self.capturable = rt.device.type == "cuda"
        # on a GPU the (captured) update reads the learning rate from device memory, a tensor the host fills
        # before each step; on a CPU it is a number, as torch's non-capturable optimisers expect
        self.lr = torch.tensor(t.lr, device=rt.device) if self.capturable else None
        self.optimizer = opt_cls(
            model.parameters(),
            lr=self.lr if self.lr is not None else t.lr,
            weight_decay=t.weight_decay,
            capturable=self.capturable,
        )
        self.lr_factor = lr_lambda(self.cfg, self.steps_per_epoch)
        forward = net
        if t.compile:
            from torch._inductor import config as inductor

            # the eager random draws (inductor's own generator would draw others): --compile changes the
            # numbers by float rounding only, and a seed means the same run with and without it
            inductor.fallback_random = True
            forward = torch.compile(net, dynamic=False)  # every step has one shape: compiled once
        lam = self.cfg.model.free_bits * self.cfg.model.data_dims
        self.step_fn = TrainStep(
            model,
            forward,
            self.optimizer,
            rt,
            (self.batch, *self.cfg.model.image_shape),
            window=self.log_every,
            grad_clip=t.grad_clip,
            hard_free_bits=not t.soft_free_bits,
            soft_target=lam if t.soft_free_bits else 0.0,
            ema=self.ema,
            polyak=t.polyak,
        )

    def _use_graphs(self) -> bool:
        mode, cuda = self.t.cuda_graph, self.rt.device.type == "cuda"
        if mode == "on" and (not cuda or self.rt.distributed):
            raise VLAEError("train.cuda_graph=on needs one CUDA process (DDP steps stay eager); use auto or off")
        return mode == "on" or (mode == "auto" and cuda and not self.rt.distributed)

    def _check_weights(self, model: VLAE, checkpoint: dict[str, Any]) -> None:
        for what in ("model", "ema"):
            problem = checkpoint.get(what) is not None and weights_mismatch(model.state_dict(), checkpoint[what])
            if problem:
                raise VLAEError(
                    f"{self.last_path}: cannot resume: the {what} weights do not match the model: {problem}"
                )
        problem = optimizer_mismatch(checkpoint["optimizer"], list(model.parameters()))
        if problem:
            raise VLAEError(f"{self.last_path}: cannot resume: {problem}")

    def _restore(self, checkpoint: dict[str, Any] | None) -> None:
        """The trainer state, fresh or from ``checkpoint`` (optimiser, random streams, log, best.pt)."""
        t, rt = self.t, self.rt
        self.state = TrainerState()
        self.result: dict[str, float] = {}
        self.result_step = self.checkpoint_step = -1
        seed_everything(t.seed * 1009 + rt.rank)  # posterior noise: different per process, fixed per seed
        self.epoch_gen_state = self.data_gen.get_state()
        if checkpoint is not None:
            self._resume_from(checkpoint)
        self.step_fn.gamma.fill_(self.state.gamma)
        self.step_fn.ema_updates.fill_(self.state.ema_n_averaged)
        if rt.main:
            write_text(self.run_dir / "config.json", self.cfg.to_json() + "\n")
        self.metrics = Metrics(self.run_dir, rt.main, t.tensorboard)

    def _resume_from(self, checkpoint: dict[str, Any]) -> None:
        tr, rng, last = checkpoint["trainer"], checkpoint["rng"], self.last_path
        assert last is not None  # the checkpoint's own path
        if rng["world"] != self.rt.world:
            raise VLAEError(f"{last}: written by {rng['world']} processes, cannot resume exactly with {self.rt.world}")
        try:
            self._load_optimizer(checkpoint["optimizer"])
            self.state = TrainerState.from_checkpoint(tr)
            mine = rng["ranks"][self.rt.rank]
            set_rng_state(mine, self.data_gen)
            self.epoch_gen_state = mine["data_epoch_start"]
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise VLAEError(f"{last}: cannot resume from this checkpoint ({type(error).__name__}: {first})") from None
        self.checkpoint_step = self.state.step
        if isinstance(tr.get("valid"), dict):  # the checkpoint was written right after validating this step
            self.result, self.result_step = dict(tr["valid"]), self.state.step
        if tr.get("threads") is not None and tr["threads"] != self.rt.threads:
            self.warn(
                f"note: {last.name} was written with {tr['threads']} CPU threads, this run uses "
                f"{self.rt.threads}: the result will not be bit-identical to an uninterrupted run (use "
                f"--threads {tr['threads']} for that)"
            )
        if self.rt.main:
            dropped = trim_metrics(self.run_dir / "metrics.jsonl", self.state.step)
            if dropped:
                self.warn(
                    f"dropped {dropped} metrics.jsonl record(s) past step {self.state.step}, written by the "
                    "interrupted session after its last checkpoint; this run writes them again"
                )
            repair_best(self.run_dir, self.state.best_step, self.warn)
            # it described the end of an earlier session; best.pt may move on before this one writes its own
            (self.run_dir / "summary.json").unlink(missing_ok=True)
        self.say(
            f"resuming {self.run_dir} at step {self.state.step} (epoch {self.state.epoch}, "
            f"batch {self.state.batch_in_epoch})"
        )

    def _load_optimizer(self, saved: dict[str, Any]) -> None:
        """Load the optimiser's state, keeping this run's learning-rate tensor and device placement
        (a checkpoint written on a GPU resumes on a CPU and vice versa)."""
        self.optimizer.load_state_dict(saved)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr if self.lr is not None else float(group["lr"])
            group["capturable"] = self.capturable
        for p, entry in self.optimizer.state.items():
            if torch.is_tensor(entry.get("step")):
                entry["step"] = entry["step"].to(p.device if self.capturable else "cpu", torch.float32)
