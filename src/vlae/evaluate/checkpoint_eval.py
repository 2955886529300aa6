"""Evaluating a checkpoint: what ``vlae eval`` runs, from a checkpoint to a result file.

:func:`evaluate_checkpoint` is a few named steps, read top to bottom:
refuse what no file is needed to refuse (:func:`_check_options`), load the
weights, choose the images as the model observes them (:func:`_choose_images`),
plan the blocks and the files every shard and restart must agree on
(:func:`_plan`), evaluate this process's blocks (:func:`_evaluate_own_blocks`)
or merge the shards' partial results, summarise, and write the result with
what was measured, on which data and how (:func:`_write_result`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import VLAEError
from ..model import VLAE
from ..outputs import prepare_output, write_json
from .bound import _evaluation_mode, _run_blocks
from .result_file import _refuse_other_data, result_name
from .shards import (
    _BlockStore,
    _fingerprint,
    _finished_partial,
    _load_partials,
    _write_partial,
    blocks_of,
    parse_shard,
    shard_blocks,
)
from .statistics import summarize

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Images
    from ..runtime import Runtime

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    path: str | os.PathLike,
    split: str = "test",
    k: int | None = None,
    subset: int = 0,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    chunk: int = 0,
    weights: str = "ema",
    device: str = "auto",
    progress: bool | None = None,
    notice=None,
    shard: str | tuple[int, int] | None = None,
    merge: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or run folder) on a data split and write the result as JSON.

    ``k`` importance samples per image; ``None`` takes the run's ``eval.k`` (512 for
    the 8-bit presets, as the paper's CIFAR-10 numbers; 4096 for binary MNIST).

    The JSON goes to ``out``, by default beside the checkpoint under
    :func:`result_name` (dataset, split, ``k``, subset size, weights). It names
    the estimator and records the checkpoint, the resolved config, the data's
    identity (``data_identity``, :func:`vlae.data.dataset_identity`), whether
    the embedded fallback replaced the configured dataset (``data_fallback``;
    announced through ``notice``, default stderr) and the command line. Strict
    JSON: a non-finite number is written as ``null`` and listed under ``non_finite``.

    Scaling out: the images form fixed blocks of ``batch_size``; every image
    draws its samples from its own stream (:func:`~vlae.evaluate.image_seed`), so any split of
    the blocks gives the numbers of one run. ``shard="i/n"`` evaluates the
    ``i``-th of ``n`` contiguous runs of blocks and writes a partial result
    ``<result>.seed<seed>-b<batch_size>-<fingerprint>.shard-i-of-n.pt`` (named by all that
    distinguishes evaluations, so none overwrites another's); ``merge=True`` (same options otherwise)
    combines all ``n`` partials into the result file. Under ``torchrun`` the
    ranks are the shards and rank 0 writes the result. Finished blocks are kept
    in a folder named as the partial results, ending ``.parts``, until the
    (partial) result is written, so an interrupted evaluation resumes where it stopped.

    Raises:
        VLAEError: invalid options; non-finite weights (see
            :func:`vlae.checkpoint.load_model`) or a non-finite bound; ``out``
            not writable, or holding a result of other data; partials missing
            or of another evaluation.
    """
    options = _Options(
        split=split,
        k=k,
        subset=subset,
        data_dir=data_dir,
        seed=seed,
        out=out,
        batch_size=batch_size,
        chunk=chunk,
        weights=weights,
        device=device,
        progress=progress,
        notice=notice,
        shard=shard,
        merge=merge,
        compile=compile,
    )
    return _evaluate(path, options)


@dataclass(frozen=True)
class _Options:
    """The arguments of :func:`evaluate_checkpoint` after ``path``, as given (``None``: the run's own)."""

    split: str
    k: int | None
    subset: int
    data_dir: str | os.PathLike | None
    seed: int
    out: str | os.PathLike | None
    batch_size: int | None
    chunk: int
    weights: str
    device: str
    progress: bool | None
    notice: Callable[[str], object] | None
    shard: str | tuple[int, int] | None
    merge: bool
    compile: bool


def _evaluate(path: str | os.PathLike, o: _Options) -> dict[str, Any]:
    """The steps of :func:`evaluate_checkpoint`."""
    from ..checkpoint import load_model, resolve_checkpoint
    from ..runtime import Runtime

    shard, rank, world = _check_options(o)
    file = resolve_checkpoint(path)
    rt = Runtime.create(o.device, "fp32", join=False)  # the process group only around the evaluation
    model, cfg = load_model(file, weights=o.weights, device=rt.device)
    k = cfg.eval.k if o.k is None else o.k  # the run's own default: 512 for 8-bit presets (as the paper), 4096 binary
    if o.out is not None:  # before the (possibly long) evaluation
        prepare_output(o.out, "--out")
    data, images, identity = _choose_images(cfg, o)
    plan = _plan(file, o, images, k, o.batch_size or cfg.eval.batch_size, data.name, identity)
    if o.merge:
        records, seconds, shards = _load_partials(plan.target, plan.partial, plan.fingerprint)
    else:
        done = _evaluate_own_blocks(model, rt, images, plan, o, shard, rank, world)
        if isinstance(done, dict):  # a shard's or a non-main rank's share: no result file
            return done
        records, seconds = done
        shards = world if world > 1 else 1
    result = summarize(records, k, model.dims)
    plan.store.clear(plan.blocks)
    for key in ("nll", "elbo"):
        if not math.isfinite(result[key]):
            raise VLAEError(
                f"{file}: the {'IW bound' if key == 'nll' else 'ELBO'} came out {result[key]} "
                f"on {data.name} {o.split}; nothing written (the model is numerically broken)"
            )
    device = next(model.parameters()).device
    return _write_result(result, plan, o, file, cfg, data, identity, seconds=seconds, shards=shards, device=device)


def _check_options(o: _Options) -> tuple[tuple[int, int] | None, int, int]:
    """The options no file is needed to refuse; ``(shard, rank, world size)``."""
    from ..runtime import torchrun_ranks

    if o.subset < 0:
        raise VLAEError(f"invalid --subset: must be >= 0, got {o.subset}")
    if o.chunk < 0:
        raise VLAEError(f"invalid --chunk: must be >= 0 (0: automatic), got {o.chunk}")
    shard = parse_shard(o.shard) if isinstance(o.shard, str) else o.shard
    if shard is not None and o.merge:
        raise VLAEError("--shard and --merge exclude each other: run the shards, then merge once")
    rank, world, _ = torchrun_ranks()
    if world > 1 and (shard is not None or o.merge):
        raise VLAEError("under torchrun the ranks are the shards: drop --shard/--merge")
    return shard, rank, world


def _choose_images(cfg: Config, o: _Options) -> tuple[Images, torch.Tensor, dict[str, Any]]:
    """The split's images as the model observes them (seeded binarization), the
    ``subset`` of them, and their identity; ``(data, images, identity)``."""
    from ..data import dataset_identity, fixed_subset, load_or_fallback

    root = o.data_dir if o.data_dir is not None else cfg.train.data_dir
    data = load_or_fallback(cfg.train.dataset, o.split, root, notice=o.notice)
    identity = dataset_identity(data)
    torch.manual_seed(o.seed)
    images = data.observed(torch.Generator().manual_seed(o.seed))
    images = fixed_subset(images, o.subset)  # a spread-out choice: test files are sorted by class
    if images.shape[0] < len(data):
        identity = {**identity, "images": images.shape[0], "subset_of": len(data)}
    return data, images, identity


@dataclass
class _Plan:
    """Where an evaluation writes, and its blocks: what shards, restarts and merges must agree on."""

    target: Path  # the result file
    k: int  # importance samples per image
    block: int  # images per block
    blocks: list[range]
    fingerprint: str  # of the checkpoint, weights, images, k, seed and block size (shards._fingerprint)
    partial: Path  # the shards' partial results: this name + ".shard-i-of-n.pt"
    store: _BlockStore  # finished blocks, kept until the (partial) result is written


def _plan(
    file: Path, o: _Options, images: torch.Tensor, k: int, block: int, dataset: str, identity: dict[str, Any]
) -> _Plan:
    """The result's path (checked writable and not holding other data's result) and the blocks."""
    subset = images.shape[0] if "subset_of" in identity else None
    target = Path(o.out) if o.out is not None else file.parent / result_name(dataset, o.split, k, subset, o.weights)
    _refuse_other_data(prepare_output(target, "result file"), identity)
    fingerprint = _fingerprint(file, o.weights, images, k, o.seed, block)
    # partial results are named by everything that tells evaluations apart (the fingerprint), so that
    # another seed, --batch-size or checkpoint never overwrites a finished shard or block
    partial = target.with_name(f"{target.stem}.seed{o.seed}-b{block}-{fingerprint[:10]}")
    store = _BlockStore(partial.with_name(partial.name + ".parts"), fingerprint)
    return _Plan(target, k, block, blocks_of(images.shape[0], block), fingerprint, partial, store)


def _evaluate_own_blocks(
    model: VLAE,
    rt: Runtime,
    images: torch.Tensor,
    plan: _Plan,
    o: _Options,
    shard: tuple[int, int] | None,
    rank: int,
    world: int,
) -> tuple[list, float] | dict[str, Any]:
    """The blocks this process owns (a ``--shard``, a torchrun rank's share, or
    all): ``(records of every image, seconds)`` for the result, or, for a shard
    or a rank other than 0, the summary of its share to return instead."""
    t0 = time.perf_counter()
    if world > len(plan.blocks):  # the ranks are the shards, but the user gave no --shard
        raise VLAEError(
            f"{world} processes but only {len(plan.blocks)} block(s) of images ({images.shape[0]} images, "
            f"--batch-size {plan.block}): use fewer processes or a smaller --batch-size"
        )
    if shard is not None and (done := _finished_partial(plan.partial, shard, plan.fingerprint)) is not None:
        return done  # this shard finished before: nothing to redo
    own = shard if shard is not None else ((rank, world) if world > 1 else None)
    chosen = [plan.blocks[j] for j in (shard_blocks(len(plan.blocks), own) if own else range(len(plan.blocks)))]
    desc = f"IW bound k={plan.k}" + (f", shard {own[0]}/{own[1]}" if own else "")
    with rt.process_group(), _evaluation_mode(model, o.compile):
        progress = o.progress if rank == 0 else False  # one bar, the main process's
        records = _run_blocks(model, images, chosen, plan.k, o.seed, o.chunk, progress, plan.store, desc, o.compile)
        seconds = time.perf_counter() - t0
        if shard is not None:
            return _write_partial(plan.partial, shard, plan.fingerprint, records, seconds, plan.store, chosen)
        if world > 1:
            records = rt.gather_to_main(records)
            plan.store.clear(chosen)
            if rank != 0:
                return {"partial": True, "rank": rank, "world_size": world, "images": sum(map(len, chosen))}
    return records, seconds


def _write_result(
    result: dict[str, Any],
    plan: _Plan,
    o: _Options,
    file: Path,
    cfg: Config,
    data: Images,
    identity: dict[str, Any],
    *,
    seconds: float,
    shards: int,
    device: torch.device,
) -> dict[str, Any]:
    """Write the result file: the numbers with what was measured, on which data, and how."""
    result = {
        "estimator": result.pop("estimator"),
        "split": o.split,
        "dataset": data.name,
        "data": data.source,
        "data_identity": identity,
        "data_fallback": bool(getattr(data, "fallback", None)) or data.name != cfg.train.dataset,
        "requested_dataset": cfg.train.dataset,
        **result,
        "seconds": seconds,
        "checkpoint": str(file),
        "weights": o.weights,
        "seed": o.seed,
        "seed_stream": "per image: torch.Generator seeded with vlae.evaluate.image_seed(seed, index)",
        "block_size": plan.block,
        "shards": shards,
        "subset": o.subset,
        "device": str(device),
        "compiled": None if o.merge else o.compile,  # a merge does not know how its shards ran
        "config": cfg.to_dict(),
        "command": " ".join(sys.argv),
    }
    write_json(plan.target, result, default=str)
    result["path"] = str(plan.target)
    return result
