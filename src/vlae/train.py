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
CPU threads (floating-point reductions are ordered by thread count).

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

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (checkpoint_name, latest_checkpoint, list_checkpoints, load_checkpoint, pick_device,
                         save_checkpoint)
from .config import Config
from .errors import VLAEError
from .model import VLAE, nats_to_bits_per_dim

__all__ = ["train", "validate", "polyak_multi_avg_fn", "soft_free_bits_update", "kl_warmup_weight", "lr_lambda", "resolve_data"]

LOG_EVERY = 20  # optimiser steps between metrics records
PRINT_EVERY = 30.0  # seconds between plain-text progress lines when there is no progress bar
CHECKPOINT_SECONDS = 600.0  # also checkpoint mid-epoch after this many seconds without one
# Fields that may differ between a checkpoint's config and a resumed run's: they say when to stop
# or what to log, not what the optimiser does.
RESUMABLE_CHANGES = {"epochs", "max_steps", "time_budget", "progress", "tensorboard", "eval_every", "eval_k",
                     "eval_subset", "checkpoint_every", "keep_last", "device", "compile", "data_dir"}


# ----------------------------------------------------------------------------- small pieces


def soft_free_bits_update(gamma: float, kl: float, target: float, rate: float = 0.1) -> float:
    """One update of the KL weight of *soft free bits* (Chen et al., 2017, appendix C).

    Instead of the hard floor ``max(lambda, KL)``, the KL term is weighted by
    ``gamma`` (initially 1), adjusted after every step to keep the batch KL
    near the target ``lambda = free_bits * data_dims``: when the KL is below the
    target the weight is lowered by 10% (the optimiser may let the KL grow),
    otherwise it is raised by 10%, never above 1 (the ELBO's own weight).
    This is the rule as described in the paper's appendix (our reading of
    "moved in 10% steps"); ``rate`` is the step size.

    >>> soft_free_bits_update(1.0, kl=2.0, target=7.84)
    0.9
    >>> soft_free_bits_update(0.5, kl=10.0, target=7.84)
    0.55
    """
    if kl < target:
        return gamma * (1 - rate)
    return min(1.0, gamma * (1 + rate))


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


def _as_images(obj: Any, name: str):
    """A :class:`vlae.data.BinaryImages` from a BinaryImages or a uint8 tensor."""
    from .data import BinaryImages

    if isinstance(obj, BinaryImages):
        return obj
    if isinstance(obj, torch.Tensor):
        images = obj if obj.dtype == torch.uint8 else obj.to(torch.uint8)
        return BinaryImages(images.cpu(), name="custom", split=name, dynamic=bool((images > 1).any()),
                            source="data= argument")
    raise VLAEError(f"data: expected BinaryImages or a uint8 tensor for {name}, got {type(obj).__name__}")


def resolve_data(cfg: Config, data: Any = None, notice: Callable[[str], object] = print):
    """Train and valid :class:`~vlae.data.BinaryImages` for a run.

    ``data`` (tests, sweeps) may be ``{"train": ..., "valid": ...}``, a
    ``(train, valid)`` pair, or one tensor used for both; each item a
    BinaryImages or a ``uint8 (N, 1, 28, 28)`` tensor. Otherwise the configured
    dataset is loaded; binarized MNIST is also looked for in the shared data
    folder (``../shared/data``), and ``cfg.train.data_dir`` is set to wherever
    it was found so that evaluation later reads the same files.
    """
    if data is not None:
        if isinstance(data, dict):
            train_set, valid_set = data["train"], data.get("valid", data["train"])
        elif isinstance(data, (tuple, list)):
            train_set, valid_set = data
        else:
            train_set = valid_set = data
        return _as_images(train_set, "train"), _as_images(valid_set, "valid")
    from .data import find_shared_binarized_mnist, load_or_fallback, resolve_data_dir

    t = cfg.train
    if t.data_dir is None and t.dataset == "binarized-mnist":
        shared = find_shared_binarized_mnist()
        default = resolve_data_dir(None)
        if shared is not None and not any((default / d).is_dir() for d in ("binarized-mnist", "binarized_mnist")):
            t.data_dir = str(shared)
    train_set = load_or_fallback(t.dataset, "train", t.data_dir, train_on_valid=t.train_on_valid, notice=notice)
    valid_set = load_or_fallback(t.dataset, "valid", t.data_dir, notice=lambda _m: None)
    return train_set, valid_set


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
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
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


# ----------------------------------------------------------------------------- the loop


def train(cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False, quiet: bool = False, data: Any = None,
          callback: Callable[[dict[str, Any]], object] | None = None, log_every: int = LOG_EVERY) -> dict[str, Any]:
    """Train a VLAE; write config, metrics and checkpoints into ``run_dir``.

    Args:
        cfg: the run's configuration (validated here).
        run_dir: output folder (created).
        resume: continue from the latest checkpoint in ``run_dir``. The model
            and the optimisation settings must match it; when to stop
            (epochs, max_steps, time_budget) and logging may change.
        quiet: no progress bar and no printing.
        data: in-memory data instead of the configured dataset (see :func:`resolve_data`).
        callback: called after every optimiser step with that step's record
            (``step``, ``epoch``, ``loss``, ...); an exception it raises stops
            training (the last checkpoint stays resumable).
        log_every: optimiser steps between ``metrics.jsonl`` records.

    Returns:
        summary: ``steps``, ``epochs``, ``images_per_s``, ``skipped``, ``stopped``
        (why), ``valid`` (final validation of the averaged weights), ``checkpoint``,
        ``best``, ``run_dir``, ``seconds``.
    """
    cfg.validate()
    t = cfg.train
    run_dir = Path(run_dir)

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
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda"
                                         and torch.cuda.is_bf16_supported())
    if use_bf16 and device.type not in ("cuda", "cpu"):
        raise VLAEError(f"invalid option train.precision: bf16 is not supported on {device.type}")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    # -- resume or start -------------------------------------------------------
    state = None
    if resume:
        last = latest_checkpoint(run_dir)
        if last is None:
            raise VLAEError(f"{run_dir}: nothing to resume (no ckpt-*.pt in the run folder)")
        state = load_checkpoint(last, map_location="cpu")
        _check_resumable(state["config"], cfg, last)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # -- data ------------------------------------------------------------------
    _seed_everything(t.seed)
    train_set, valid_set = resolve_data(cfg, data, notice=say if main else (lambda _m: None))
    valid_images = valid_set.binarized(torch.Generator().manual_seed(t.seed + 1))
    from .data import fixed_subset

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
        first = (train_set.binarized(torch.Generator().manual_seed(t.seed)) if dynamic else train_images)
        perm0 = torch.randperm(n_train, generator=torch.Generator().manual_seed(t.seed))[:batch]
        model.initialize(first[perm0.to(first.device)].to(device).float())
    else:
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
            ema.n_averaged.fill_(int(state["trainer"]["ema_n_averaged"]))
    eval_model = ema.module if ema is not None else model
    opt_cls = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    forward = torch.compile(net) if t.compile else net

    # -- trainer state ---------------------------------------------------------
    step, epoch, pos, gamma, skipped, elapsed, best = 0, 0, 0, 1.0, 0, 0.0, math.inf
    _seed_everything(t.seed * 1009 + rank)  # posterior noise: different per process, fixed per seed
    epoch_gen_state = data_gen.get_state()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tr = state["trainer"]
        step, epoch, pos, gamma, skipped, elapsed = (tr["step"], tr["epoch"], tr["batch_in_epoch"], tr["gamma"],
                                                     tr["skipped"], tr["elapsed"])
        best = tr.get("best", math.inf)
        rng = state["rng"]
        if rng["world"] != world:
            raise VLAEError(f"{last}: written by {rng['world']} processes, cannot resume exactly with {world}")
        per_rank_rng = rng["ranks"][rank]
        _set_rng_state(per_rank_rng, data_gen)
        epoch_gen_state = per_rank_rng["data_epoch_start"]
        say(f"resuming {run_dir} at step {step} (epoch {epoch}, batch {pos})")
    if main:
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
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
                   "elapsed": elapsed, "best": best, "reason": reason,
                   "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0}
        path = save_checkpoint(run_dir / checkpoint_name(step), {
            "config": cfg.to_dict(), "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "trainer": trainer, "rng": rng})
        for old in list_checkpoints(run_dir)[:-max(1, t.keep_last)]:
            old.unlink(missing_ok=True)
        return path

    result: dict[str, float] = {}
    result_step = checkpoint_step = -1
    clock = checkpoint_clock = elapsed  # training seconds as every process agrees on them (see the loop)
    last_path: Path | None = None

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
        nonlocal result, result_step, best, last_path
        result, result_step = run_validation(), step
        improved = torch.tensor([float(result["nelbo"] < best)])
        if distributed:  # rank 0 decides, so every rank takes part in the same checkpoints
            improved = improved.to(device)
            dist.broadcast(improved, 0)
        if bool(improved.item()):
            best = result["nelbo"]
        if always or bool(improved.item()):
            last_path = write_checkpoint(reason)
        if bool(improved.item()) and main:
            _copy_best(last_path, run_dir)

    def epoch_data() -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's images and this rank's share of the permutation (uses the data generator)."""
        images = train_set.binarized(data_gen).to(device) if dynamic else train_images
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
        f"({'bf16' if use_bf16 else 'fp32'}{', ' + str(world) + ' processes' if distributed else ''}), "
        f"{n_train:,} images ({train_set.source}), {steps_per_epoch} steps/epoch of {batch}; run dir {run_dir}")

    # -- the loop ------------------------------------------------------------------
    def out_of_time() -> bool:
        return t.time_budget > 0 and clock >= t.time_budget

    def finished() -> bool:
        return (t.epochs > 0 and epoch >= t.epochs) or (t.max_steps > 0 and step >= t.max_steps)

    stopped = "epochs" if t.epochs > 0 and epoch >= t.epochs else None
    acc = torch.zeros(4, dtype=torch.float64)  # loss, recon, kl, grad norm over the logging window
    window_steps, window_images, window_start, last_print = 0, 0, time.perf_counter(), time.perf_counter()
    session_start = time.perf_counter()
    session_images = 0
    net.train()
    try:
        while not finished() and not out_of_time():
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
                # one synchronisation per step: the step's statistics, averaged over processes
                # (with the elapsed time, so that every process takes the same decisions to stop or checkpoint)
                stats = torch.stack([loss.detach().float(), terms.recon.detach().float().mean(),
                                     terms.kl.detach().float().mean(), grad_norm.detach().float()]).double()
                stats = torch.cat([stats.cpu(), torch.tensor([elapsed + time.perf_counter() - tick],
                                                             dtype=torch.float64)])
                if distributed:
                    stats = stats.to(device)
                    dist.all_reduce(stats)
                    stats = stats / world
                loss_v, recon_v, kl_v, gn_v, clock = stats.tolist()
                ok = math.isfinite(loss_v) and math.isfinite(gn_v)
                if ok:
                    optimizer.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    if t.soft_free_bits and lam > 0:
                        gamma = soft_free_bits_update(gamma, kl_v, lam)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    say(f"warning: non-finite loss or gradient at step {step} (loss {loss_v}, grad norm {gn_v}); "
                        f"update skipped ({skipped} so far)")
                scheduler.step()
                step += 1
                pos += 1
                elapsed += time.perf_counter() - tick
                session_images += x.shape[0] * world
                if ok:
                    acc += torch.tensor([loss_v, recon_v, kl_v, gn_v], dtype=torch.float64)
                window_steps += 1
                window_images += x.shape[0] * world
                record = {"step": step, "epoch": epoch, "loss": loss_v, "nelbo": recon_v + kl_v, "recon": recon_v,
                          "kl": kl_v, "kl_weight": kl_weight, "lr": scheduler.get_last_lr()[0], "grad_norm": gn_v,
                          "skipped": skipped, "time": elapsed}
                if bar is not None:
                    bar.update(1)
                    if step % 5 == 0:
                        bar.set_postfix(loss=f"{loss_v:.2f}", kl=f"{kl_v:.2f}",
                                        img_s=f"{window_images / max(1e-9, time.perf_counter() - window_start):.0f}")
                if step % log_every == 0 or not ok:
                    now = time.perf_counter()
                    good = max(1, window_steps - (0 if ok else 1))
                    mean = (acc / good).tolist()
                    record.update({"loss": mean[0], "recon": mean[1], "kl": mean[2], "nelbo": mean[1] + mean[2], "grad_norm": mean[3],
                                   "images_per_s": window_images / max(1e-9, now - window_start)})
                    metrics.log(record)
                    if bar is None and now - last_print >= PRINT_EVERY:
                        say(f"train  step {step:7d}  epoch {epoch:4d}  loss {mean[0]:.2f}  KL {mean[2]:.2f}  "
                            f"{record['images_per_s']:.0f} images/s")
                        last_print = now
                    acc.zero_()
                    window_steps, window_images, window_start = 0, 0, now
                if callback is not None:
                    callback(record)
                if finished() or out_of_time():
                    break
                if clock - checkpoint_clock >= CHECKPOINT_SECONDS and pos < steps_per_epoch:
                    last_path = write_checkpoint("time")  # a long epoch: do not risk losing it all
            if pos >= steps_per_epoch:  # the epoch is complete
                epoch += 1
                pos = 0
                tick = time.perf_counter()
                if epoch % t.eval_every == 0 or finished():
                    validate_and_checkpoint("epoch", always=epoch % t.checkpoint_every == 0)
                elif epoch % t.checkpoint_every == 0:
                    last_path = write_checkpoint("epoch")
                elapsed += time.perf_counter() - tick
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
               "valid": result, "kl_weight_gamma": gamma, "world_size": world, "device": str(device),
               "precision": "bf16" if use_bf16 else "fp32", "data": train_set.source,
               "run_dir": str(run_dir), "checkpoint": str(last_path) if last_path else None,
               "best": str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None}
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"stopped after {step} steps ({stopped}); valid -ELBO {result.get('nelbo', float('nan')):.2f} nats; "
        f"{summary['images_per_s']:.0f} images/s; checkpoint {last_path}")
    return summary


def _copy_best(path: Path | None, run_dir: Path) -> None:
    """``best.pt``: a copy of the checkpoint with the lowest validation bound (atomic)."""
    if path is None:
        return
    import shutil

    tmp = run_dir / ".best.pt.tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, run_dir / "best.pt")


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
