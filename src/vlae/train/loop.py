"""The training loop: a :class:`Trainer` whose state is one object, read top to bottom.

:meth:`Trainer.run` is the whole loop: every epoch draws its permutation, every
step is :meth:`Trainer.train_step`, every ``log_every`` steps :meth:`Trainer.record`
reads the device's statistics (the loop's only synchronisation), every epoch ends
in :meth:`Trainer.end_epoch` (validation, checkpoint, ``best.pt``), and
:meth:`Trainer.finish` writes the last checkpoint and ``summary.json``. The step
itself is :class:`vlae.train.step.TrainStep`, replayed as a CUDA graph on one GPU.
What runs once before the first step (data, model, optimiser, the state of a
fresh or resumed run) is :mod:`vlae.train.set_up`: :meth:`Trainer.__init__` calls its
steps in order and holds what they build, the run's data (:class:`~vlae.train.set_up.RunData`)
and its parts (:class:`~vlae.train.set_up.Parts`).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import checkpoint_name, copy_checkpoint, list_checkpoints, save_checkpoint
from ..config import Config
from ..errors import VLAEError
from ..outputs import write_error, write_json, write_text
from ..runtime import Runtime
from .interrupt import Interrupted, StopSignals
from .metrics import Metrics
from .resume import rng_state
from .schedules import kl_warmup_weight
from .set_up import TrainerState, restore, resumable, set_up_data, set_up_parts
from .step import ROW, SKIP_REASONS
from .validation import validate

__all__ = ["train", "Trainer", "TrainerState", "validate", "LOG_EVERY"]

LOG_EVERY = 20  # optimiser steps between metrics records (and device reads)
PRINT_EVERY = 30.0  # seconds between plain-text progress lines when there is no progress bar
GRAPH_WARMUP = 3  # eager steps on a side stream before the step is captured as a CUDA graph


class Trainer:
    """One training run in ``run_dir``; see :func:`train` for the arguments."""

    last_path: Path | None  # the last checkpoint written or resumed from

    # this session's counters and clocks (set by _start_session)
    session_steps: int
    stop_signal: int
    clock: float
    host_lr: float
    window_rows: list[list[float]]
    window_images: int
    window_start: float
    last_print: float
    side_stream: Any
    bar: Any

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
        """Set the run up, in the order that fixes its random draws (see :mod:`vlae.train.set_up`)."""
        self.cfg, self.t, self.run_dir, self.signals = cfg, cfg.train, run_dir, signals
        self.callback, self.log_every, self.quiet = callback, log_every, quiet
        self.rt = rt = Runtime.create(self.t.device, self.t.precision)
        self.say = (lambda *a: print(*a, flush=True)) if (rt.main and not quiet) else (lambda *a: None)
        self.warn = (lambda m: print(m, file=sys.stderr, flush=True)) if rt.main else (lambda m: None)
        checkpoint, self.last_path = resumable(run_dir, cfg) if resume else (None, None)
        self.data = set_up_data(
            cfg,
            rt,
            data,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            checkpoint=checkpoint,
            last_path=self.last_path,
            warn=self.warn,
        )
        self.parts = set_up_parts(cfg, rt, self.data, checkpoint, self.last_path, log_every)
        start = restore(cfg, rt, run_dir, self.data, self.parts, checkpoint, self.last_path, self.say, self.warn)
        self.state, self.result, self.result_step = start.state, start.result, start.result_step
        self.checkpoint_step, self.epoch_gen_state = start.checkpoint_step, start.epoch_gen_state
        if rt.main:
            write_text(run_dir / "config.json", cfg.to_json() + "\n")
        self.metrics = Metrics(run_dir, rt.main, self.t.tensorboard)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Train until the epochs, ``max_steps`` or the time budget are done, or a signal stops it."""
        s = self.state
        self._start_session()
        try:
            while not self._finished() and not self._out_of_time() and not self.stop_signal:
                images, perm = self._epoch_data()
                while s.batch_in_epoch < self.data.steps_per_epoch:
                    self.train_step(images, perm)
                    if s.step % self.log_every == 0 or self.parts.step_fn.pending == self.log_every:
                        self.record()
                    if self.callback is not None:
                        self.callback({"step": s.step, "epoch": s.epoch, "lr": self.host_lr, "time": self.clock})
                    if not self.rt.distributed and self.signals.signum:  # processes agree on it in record()
                        self.stop_signal = self.signals.signum
                    if self._finished() or self._out_of_time() or self.stop_signal:
                        break
                    if s.batch_in_epoch < self.data.steps_per_epoch and self._checkpoint_due():
                        self.write_checkpoint("steps" if self._steps_due() else "time")
                if s.batch_in_epoch >= self.data.steps_per_epoch:
                    self.end_epoch()
            return self.finish()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.metrics.close()

    def train_step(self, images: torch.Tensor, perm: torch.Tensor) -> None:
        """One optimiser step on the next batch of this epoch's permutation (no synchronisation)."""
        s, step_fn, b = self.state, self.parts.step_fn, self.data.batch
        step_fn.x.copy_(images[perm[s.batch_in_epoch * b : (s.batch_in_epoch + 1) * b]])
        self._set_host_value(step_fn.kl_warmup, kl_warmup_weight(s.step, self.t.kl_warmup_steps))
        self._set_lr(self.host_lr)  # the learning rate of this step, computed after the last
        if step_fn.graph is None and self.parts.graphs and self.session_steps >= GRAPH_WARMUP:
            step_fn.capture()
            self.say(f"captured the training step as a CUDA graph after {self.session_steps} warm-up steps")
        if step_fn.graph is None and self.parts.graphs:  # warm-up: on a side stream, as capture requires
            side = self.side_stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step_fn()
            torch.cuda.current_stream().wait_stream(side)
        else:
            step_fn()
        s.step += 1
        s.batch_in_epoch += 1
        self.session_steps += 1
        self.window_images += b * self.rt.world
        self.host_lr = self.t.lr * self.parts.lr_factor(s.step)
        if not self.rt.distributed:
            self.clock = self._now()
        if self.bar is not None:
            self.bar.update(1)

    def record(self) -> None:
        """Read the device's statistics of the steps since the last read: log skipped steps (and
        stop if ``max_skipped_steps`` came in a row), and at ``log_every`` steps the window's means."""
        s = self.state
        rows, s.gamma, s.ema_n_averaged = self.parts.step_fn.read()
        first = s.step - len(rows) + 1
        for i, row in enumerate(rows):
            self._account(first + i, dict(zip(ROW, row)))
        self.window_rows += [row for row in rows if row[0] == 0]
        if self.rt.distributed:  # every process takes the same decisions about time and signals
            agreed = self.rt.all_reduce_mean(
                torch.tensor([self._now(), float(self.signals.signum)], dtype=torch.float64)
            ).tolist()
            self.clock = agreed[0]
            if agreed[1] > 0:
                self.stop_signal = self.signals.signum or signal.SIGTERM
        if s.step % self.log_every == 0:
            self._log_window(rows[-1][ROW.index("kl_weight")] if rows else 0.0)

    def _account(self, step: int, row: dict[str, float]) -> None:
        """Count one step's outcome; a skipped step is logged on its own, with no made-up numbers."""
        s, t = self.state, self.t
        if row["code"] == 0:
            s.in_a_row = 0
            return
        reason = SKIP_REASONS[int(row["code"])]
        s.skipped, s.in_a_row = s.skipped + 1, s.in_a_row + 1
        self.metrics.log(
            {
                "step": step,
                "epoch": s.epoch,
                "kl_weight": row["kl_weight"],
                "lr": self.t.lr * self.parts.lr_factor(step),
                "skipped": s.skipped,
                "time": self.clock,
                "skipped_step": reason,
            }
        )
        self.warn(
            f"warning: {reason} at step {step} (loss {row['loss']:.4g}, gradient norm {row['grad_norm']:.4g}); "
            f"update skipped ({s.in_a_row} in a row, {s.skipped} in all)"
        )
        if t.max_skipped_steps > 0 and s.in_a_row >= t.max_skipped_steps:
            raise VLAEError(
                f"training diverged: {s.in_a_row} updates in a row skipped (last: {reason}) at step "
                f"{step}; the last good state is {self.last_path or 'not checkpointed yet'}; lower --lr "
                "or raise train.max_skipped_steps"
            )

    def _log_window(self, kl_weight: float) -> None:
        s, now, good = self.state, time.perf_counter(), self.window_rows
        record = {
            "step": s.step,
            "epoch": s.epoch,
            "kl_weight": kl_weight,
            "lr": self.host_lr,
            "skipped": s.skipped,
            "time": self.clock,
            "steps_averaged": len(good),
            "images_per_s": self.window_images / max(1e-9, now - self.window_start),
        }
        if good:  # means over the window's good steps only, summed in float64 in step order
            sums = [0.0] * 4
            for row in good:
                for j in range(4):
                    sums[j] += row[1 + j]
            loss, recon, kl, grad_norm = (v / len(good) for v in sums)
            record.update({"loss": loss, "nelbo": recon + kl, "recon": recon, "kl": kl, "grad_norm": grad_norm})
        self.metrics.log(record)
        if self.bar is not None and good:
            self.bar.set_postfix(
                loss=f"{record['loss']:.2f}", kl=f"{record['kl']:.2f}", img_s=f"{record['images_per_s']:.0f}"
            )
        if self.bar is None and now - self.last_print >= PRINT_EVERY and good:
            self.say(
                f"train  step {s.step:7d}  epoch {s.epoch:4d}  loss {record['loss']:.2f}  KL "
                f"{record['kl']:.2f}  {record['images_per_s']:.0f} images/s"
            )
            self.last_print = now
        self.window_rows, self.window_images, self.window_start = [], 0, now

    def end_epoch(self) -> None:
        """After an epoch's last step: validate and checkpoint as configured (``best.pt`` on improvement)."""
        s, t = self.state, self.t
        s.epoch += 1
        s.batch_in_epoch = 0
        if s.epoch % t.eval_every == 0 or self._finished():
            self.validate_and_checkpoint("epoch", always=s.epoch % t.checkpoint_every == 0)
        elif s.epoch % t.checkpoint_every == 0:
            self.write_checkpoint("epoch")
        if self._checkpoint_due() and not self._finished() and not self.stop_signal:
            self.write_checkpoint("steps" if self._steps_due() else "time")

    def finish(self) -> dict[str, Any]:
        """The last checkpoint (validated unless a signal stopped the run), ``summary.json``, the summary."""
        s, t = self.state, self.t
        if self.stop_signal:  # resumable as it stands; validating could take long, the scheduler waits for no one
            stopped = signal.Signals(self.stop_signal).name
            if self.checkpoint_step != s.step:
                self.write_checkpoint(stopped)
        else:
            stopped = (
                "time_budget"
                if self._out_of_time() and not self._finished()
                else "max_steps"
                if t.max_steps > 0 and s.step >= t.max_steps
                else "epochs"
            )
            if self.result_step != s.step:  # the final state is always validated and checkpointed
                self.validate_and_checkpoint(stopped, always=True)
            elif self.checkpoint_step != s.step:
                self.write_checkpoint(stopped)
        summary = self._summary(stopped)
        if self.rt.main:
            write_json(self.run_dir / "summary.json", summary)
        if self.stop_signal:
            raise Interrupted(self.stop_signal, self.run_dir, self.last_path, s.step)
        valid_text = f"{self.result['nelbo']:.2f} nats" if self.result_step == s.step else "not run"
        self.say(
            f"stopped after {s.step} steps ({stopped}); valid -ELBO {valid_text}; "
            f"{summary['images_per_s']:.0f} images/s; checkpoint {self.last_path}"
        )
        return summary

    # ------------------------------------------------------------------ validation and checkpoints
    def validate_and_checkpoint(self, reason: str, always: bool) -> None:
        """Validate; checkpoint if ``always`` or the bound improved (then also ``best.pt``)."""
        s, t, rt = self.state, self.t, self.rt
        self.sync()
        self.result = validate(
            self.parts.eval_model, self.data.valid_images, max(t.batch_size, 100), t.eval_k, seed=t.seed + 2
        )
        self.result_step = s.step
        result = self.result
        self.metrics.log({"split": "valid", "step": s.step, "epoch": s.epoch, **result, "time": self.clock})
        iw = f", IW bound (k={t.eval_k}) {result['iw_nll']:.2f}" if t.eval_k else ""
        self.say(
            f"valid  step {s.step:7d}  epoch {s.epoch:4d}  -ELBO {result['nelbo']:.2f} nats "
            f"({result['bits_per_dim']:.4f} bits/dim)  KL {result['kl']:.2f}{iw}"
        )
        improved = torch.tensor([float(result["nelbo"] < s.best)])
        if rt.distributed:  # rank 0 decides, so every rank takes part in the same checkpoints
            import torch.distributed as dist

            improved = improved.to(rt.device)
            dist.broadcast(improved, 0)
        better = bool(improved.item())
        if better:
            s.best, s.best_step = result["nelbo"], s.step
        if always or better:
            self.write_checkpoint(reason)
        if better and rt.main:
            assert self.last_path is not None  # just written
            copy_checkpoint(self.last_path, self.run_dir / "best.pt")  # after the checkpoint: see repair_best

    def write_checkpoint(self, reason: str) -> None:
        """A checkpoint from which the run resumes exactly (collective: every process takes part)."""
        s, rt = self.state, self.rt
        self.sync()
        mine = rng_state(self.data.data_gen, self.epoch_gen_state)
        rng: dict[str, Any] = {"world": 1, "ranks": [mine]}
        if rt.distributed:
            import torch.distributed as dist

            every: list[Any] = [None] * rt.world
            dist.all_gather_object(every, mine)
            rng = {"world": rt.world, "ranks": every}
        self.checkpoint_step, self.checkpoint_clock = s.step, self.clock
        if not rt.main:
            return
        trainer = {
            **asdict(s),
            "elapsed": self.clock,
            "reason": reason,
            "threads": rt.threads,
            "valid": self.result if self.result_step == s.step else None,
        }
        optimizer = self.parts.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # plain numbers: the file loads anywhere
            group["lr"] = self.t.lr * self.parts.lr_factor(s.step)
        self.last_path = save_checkpoint(
            self.run_dir / checkpoint_name(s.step),
            {
                "config": self.cfg.to_dict(),
                "model": self.parts.model.state_dict(),
                "ema": self.parts.ema.state_dict() if self.parts.ema is not None else None,
                "optimizer": optimizer,
                "scheduler": {"last_epoch": s.step},
                "trainer": trainer,
                "rng": rng,
                "data": self.data.identity,
            },
        )
        for old in list_checkpoints(self.run_dir)[: -max(1, self.t.keep_last)]:  # never the new one (see repair_best)
            old.unlink(missing_ok=True)

    def sync(self) -> None:
        """Bring the host's view up to date with the device (skips, gamma, clock) before a decision."""
        if self.parts.step_fn.pending:
            self.record()
        elif self.rt.distributed:
            self.clock = self.rt.all_reduce_mean(torch.tensor([self._now()], dtype=torch.float64)).item()

    # ------------------------------------------------------------------ small pieces
    def _start_session(self) -> None:
        s, t, rt = self.state, self.t, self.rt
        self.session_start = time.perf_counter()
        self.clock = self.checkpoint_clock = s.elapsed  # training seconds as every process agrees on them
        self.session_steps, self.stop_signal, self.elapsed0 = 0, 0, s.elapsed
        self.host_values: dict[int, float] = {}
        self.host_lr = t.lr * self.parts.lr_factor(s.step)
        self.window_rows = []
        self.window_images, self.window_start = 0, time.perf_counter()
        self.last_print = self.window_start
        self.side_stream = torch.cuda.Stream(rt.device) if self.parts.graphs else None
        self.bar = None
        total = t.max_steps or (t.epochs * self.data.steps_per_epoch if t.epochs else None)
        if rt.main and not self.quiet and (t.progress == "on" or (t.progress == "auto" and sys.stderr.isatty())):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=s.step, unit="step", dynamic_ncols=True, desc="train")
        how = [rt.precision] + (["CUDA graph"] if self.parts.graphs else []) + (["compiled"] if t.compile else [])
        how += [f"{rt.world} processes"] if rt.distributed else []
        self.say(
            f"training {sum(p.numel() for p in self.parts.model.parameters()):,} parameters on {rt.device} "
            f"({', '.join(how)}, {rt.threads} CPU threads), {len(self.data.train_set):,} images "
            f"({self.data.train_set.source}), {self.data.steps_per_epoch} steps/epoch of {self.data.batch}; "
            f"run dir {self.run_dir}"
        )
        self.parts.model.train()

    def _epoch_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's images and this rank's share of the permutation (uses the data generator)."""
        rt, s = self.rt, self.state
        if s.batch_in_epoch == 0:
            self.epoch_gen_state = self.data.data_gen.get_state()
        else:  # resuming mid-epoch: rebuild this epoch's permutation from its starting state
            self.data.data_gen.set_state(self.epoch_gen_state)
        images = (
            self.data.train_set.observed(self.data.data_gen).to(rt.device)
            if self.data.dynamic
            else self.data.train_images
        )
        perm = torch.randperm(len(self.data.train_set), generator=self.data.data_gen)
        return images, perm[: self.data.per_rank * rt.world][rt.rank :: rt.world].to(rt.device)

    def _now(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.session_start

    def _set_host_value(self, tensor: torch.Tensor, value: float) -> None:
        """``tensor.fill_(value)`` when the value changed (on a GPU a fill is a kernel launch)."""
        if self.host_values.get(id(tensor)) != value:
            tensor.fill_(value)
            self.host_values[id(tensor)] = value

    def _set_lr(self, value: float) -> None:
        if self.parts.lr is not None:
            self._set_host_value(self.parts.lr, value)
        else:
            for group in self.parts.optimizer.param_groups:
                group["lr"] = value

    def _finished(self) -> bool:
        t, s = self.t, self.state
        return (t.epochs > 0 and s.epoch >= t.epochs) or (t.max_steps > 0 and s.step >= t.max_steps)

    def _out_of_time(self) -> bool:
        return self.t.time_budget > 0 and self.clock >= self.t.time_budget

    def _steps_due(self) -> bool:
        return self.t.checkpoint_steps > 0 and self.state.step % self.t.checkpoint_steps == 0

    def _checkpoint_due(self) -> bool:
        t = self.t
        return self.checkpoint_step != self.state.step and (
            self._steps_due()
            or (t.checkpoint_seconds > 0 and self.clock - self.checkpoint_clock >= t.checkpoint_seconds)
        )

    def _summary(self, stopped: str) -> dict[str, Any]:
        s, rt = self.state, self.rt
        seconds = time.perf_counter() - self.session_start
        s.elapsed = self.clock
        return {
            "steps": s.step,
            "epochs": s.epoch,
            "batch_in_epoch": s.batch_in_epoch,
            "stopped": stopped,
            "skipped": s.skipped,
            "images_per_s": self.session_steps * self.data.batch * rt.world / max(1e-9, seconds),
            "seconds": seconds,
            "train_seconds": self.clock,
            "valid": self.result if self.result_step == s.step else {},
            "kl_weight_gamma": s.gamma,
            "world_size": rt.world,
            "device": str(rt.device),
            "threads": rt.threads,
            "precision": rt.precision,
            "cuda_graph": self.parts.step_fn.graph is not None,
            "compiled": self.t.compile,
            "data": self.data.train_set.source,
            "data_identity": self.data.identity,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.last_path) if self.last_path else None,
            "best": str(self.run_dir / "best.pt") if (self.run_dir / "best.pt").exists() else None,
            "best_step": s.best_step,
            "best_nelbo": s.best if math.isfinite(s.best) else None,
        }


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    data: Any = None,
    callback: Callable[[dict[str, Any]], object] | None = None,
    log_every: int = LOG_EVERY,
) -> dict[str, Any]:
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
        callback: called after every optimiser step with what the host knows of it
            without waiting for the device (``step``, ``epoch``, ``lr``, ``time``);
            an exception it raises stops training (the last checkpoint stays resumable).
            The step's loss and KL are in ``metrics.jsonl``, every ``log_every`` steps.
        log_every: optimiser steps between ``metrics.jsonl`` records, which are also
            the steps at which the host reads the device's statistics.

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
    if log_every < 1:
        raise VLAEError(f"log_every must be >= 1, got {log_every}")
    if cfg.train.data_dir:  # recorded absolute: read from another folder, the run (eval, compress) finds its data
        cfg = replace(cfg, train=replace(cfg.train, data_dir=os.path.abspath(os.path.expanduser(cfg.train.data_dir))))
    run_dir = Path(run_dir)
    with StopSignals(run_dir) as signals:
        try:
            return Trainer(
                cfg,
                run_dir,
                resume=resume,
                overwrite=overwrite,
                quiet=quiet,
                data=data,
                callback=callback,
                log_every=log_every,
                signals=signals,
            ).run()
        except OSError as error:  # a write not already named (tensorboard, a folder that vanished, ...)
            raise write_error(error.filename or run_dir, error) from None
