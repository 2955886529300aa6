"""Splitting an evaluation: fixed blocks of images, shards of blocks, and their files.

The ``N`` images form fixed blocks ``[j * b, (j + 1) * b)`` of ``b =
batch_size`` images (:func:`blocks_of`); shard ``i`` of ``n`` evaluates the
contiguous run of blocks ``[i * B // n, (i + 1) * B // n)`` of the ``B``
blocks (:func:`shard_blocks`). Since every image draws its samples from its
own stream (:func:`vlae.evaluate.image_seed`), any split gives the numbers of
one run. What is finished is kept on disk, each file tagged with the
evaluation's fingerprint (:func:`_fingerprint`: checkpoint, weights, images,
``k``, seed, block size), so nothing of another evaluation is ever mixed in:

- :class:`_BlockStore`: finished blocks (``<partial>.parts/block-*.pt``), so an
  interrupted evaluation resumes;
- ``<partial>.shard-i-of-n.pt``: a shard's per-image records
  (:func:`_write_partial`), reused when the shard is run again
  (:func:`_finished_partial`) and combined by ``--merge`` (:func:`_load_partials`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import VLAEError
from ..outputs import atomic_write

__all__ = ["blocks_of", "parse_shard", "shard_blocks"]


def blocks_of(n: int, block: int) -> list[range]:
    """Image indices of the fixed blocks ``[j * block, (j + 1) * block)`` of ``n`` images."""
    return [range(s, min(s + block, n)) for s in range(0, n, block)]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; one-line :class:`VLAEError` otherwise.

    >>> parse_shard("1/4")
    (1, 4)
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise VLAEError(f"invalid --shard {spec!r}: give i/n with 0 <= i < n, e.g. 0/4 (the first of four parts)")
    return int(m.group(1)), int(m.group(2))


def shard_blocks(blocks: int, shard: tuple[int, int]) -> range:
    """The blocks shard ``i`` of ``n`` evaluates: a contiguous run, sizes differing by at most one."""
    i, n = shard
    if n > blocks:
        raise VLAEError(
            f"--shard {i}/{n}: {n} shards but only {blocks} block(s) of images; use at most {blocks} "
            f"shard(s) or a smaller --batch-size"
        )
    return range(i * blocks // n, (i + 1) * blocks // n)


class _BlockStore:
    """Finished blocks of one evaluation in a folder, so an interrupted
    evaluation resumes: ``block-<first image>-<end>.pt`` files, each tagged with
    the evaluation's fingerprint (checkpoint, weights, images, k, seed, blocks)."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint

    def _path(self, block: range) -> Path:
        return self.folder / f"block-{block.start:07d}-{block.stop:07d}.pt"

    def load(self, block: range) -> dict[str, torch.Tensor] | None:
        path = self._path(block)
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a file cut short by the interruption: evaluate the block again
            return None
        return saved["record"] if saved.get("fingerprint") == self.fingerprint else None

    def save(self, block: range, record: dict[str, torch.Tensor]) -> None:
        saved = {"fingerprint": self.fingerprint, "record": record}
        atomic_write(self._path(block), lambda f: torch.save(saved, f))  # a block file is whole or absent

    def clear(self, blocks: list[range]) -> None:
        for block in blocks:
            self._path(block).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only once empty (other shards may still be working)


def _fingerprint(file: Path, weights: str, images: torch.Tensor, k: int, seed: int, block: int) -> str:
    """What makes two evaluations' blocks interchangeable: the checkpoint's bytes,
    the weights, the images' bytes, ``k``, the seed and the block size."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    pixels = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return hashlib.sha256(
        json.dumps(
            {
                "checkpoint": digest.hexdigest(),
                "weights": weights,
                "images": pixels,
                "k": k,
                "seed": seed,
                "block": block,
                "stream": 1,
            }
        ).encode()
    ).hexdigest()


def _shard_path(partial: Path, shard: tuple[int, int]) -> Path:
    return partial.with_name(f"{partial.name}.shard-{shard[0]}-of-{shard[1]}.pt")


def _write_partial(
    partial: Path,
    shard: tuple[int, int],
    fingerprint: str,
    records: list,
    seconds: float,
    store: _BlockStore,
    chosen: list[range],
) -> dict[str, Any]:
    """Save one shard's per-image records (atomically) and drop its block files."""
    path = _shard_path(partial, shard)
    saved = {"fingerprint": fingerprint, "shard": list(shard), "records": records, "seconds": seconds}
    atomic_write(path, lambda f: torch.save(saved, f))
    store.clear(chosen)
    nll = torch.cat([r["nll"] for r in records])
    return {
        "partial": True,
        "shard": list(shard),
        "images": nll.numel(),
        "nll": float(nll.mean()),
        "seconds": seconds,
        "path": str(path),
    }


def _finished_partial(partial: Path, shard: tuple[int, int], fingerprint: str) -> dict[str, Any] | None:
    path = _shard_path(partial, shard)
    try:
        part = _read_partial(path)
    except (FileNotFoundError, VLAEError):  # absent, or cut short: evaluate the shard again
        return None
    if part["fingerprint"] != fingerprint:
        return None
    nll = torch.cat([r["nll"] for r in part["records"]])
    return {
        "partial": True,
        "shard": list(shard),
        "images": nll.numel(),
        "nll": float(nll.mean()),
        "seconds": part["seconds"],
        "path": str(path),
        "resumed": True,
    }


def _read_partial(path: Path) -> dict[str, Any]:
    """A shard's partial result, or one :class:`VLAEError` line naming the file and the shard to rerun."""
    m = re.search(r"shard-(\d+)-of-(\d+)\.pt$", path.name)
    again = (
        f"delete it and rerun that shard (`vlae eval ... --shard {m.group(1)}/{m.group(2)}` with the same "
        "options; its finished blocks are kept)"
        if m
        else "delete it"
    )
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - cut short, damaged or foreign: torch raises many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights only load failed" in first.lower():  # never torch's advice to unpickle code
            first = "it holds objects other than tensors and plain containers"
        raise VLAEError(f"{path}: unreadable partial result (cut short or damaged: {first}); {again}") from None
    fields: dict[str, type | tuple[type, ...]] = {
        "fingerprint": str,
        "shard": list,
        "records": list,
        "seconds": (int, float),
    }
    if (
        not isinstance(part, dict)
        or any(not isinstance(part.get(k), t) for k, t in fields.items())
        or not all(isinstance(r, dict) and isinstance(r.get("nll"), torch.Tensor) for r in part["records"])
    ):
        raise VLAEError(f"{path}: not a partial result of `vlae eval --shard`; {again}")
    return part


def _load_partials(target: Path, partial: Path, fingerprint: str) -> tuple[list, float, int]:
    """All partial results of this evaluation (``partial``: its name without the shard):
    records, summed seconds, shard count."""
    found = sorted(partial.parent.glob(f"{partial.name}.shard-*-of-*.pt"))
    if not found:
        others = sorted(target.parent.glob(f"{target.stem}.*shard-*-of-*.pt"))
        if others:
            raise VLAEError(
                f"the partial results beside {target} ({others[0].name}, ...) are of another evaluation "
                f"(checkpoint, weights, data, k, seed or --batch-size differ)"
            )
        raise VLAEError(
            f"nothing to merge: no {partial.name}.shard-I-of-N.pt beside {target}; "
            f"run `vlae eval ... --shard I/N` for every I first"
        )
    mine = [(p, part) for p in found if (part := _read_partial(p))["fingerprint"] == fingerprint]
    if not mine:
        raise VLAEError(
            f"the partial results beside {target} ({found[0].name}, ...) are of another evaluation "
            f"(checkpoint, weights, data, k, seed or --batch-size differ)"
        )
    counts = {part["shard"][1] for _, part in mine}
    if len(counts) > 1:
        raise VLAEError(
            f"partial results beside {target} split the work differently ({sorted(counts)} shards); "
            f"remove the stale ones"
        )
    n = counts.pop()
    missing = sorted(set(range(n)) - {part["shard"][0] for _, part in mine})
    if missing:
        raise VLAEError(
            f"cannot merge: shard(s) {', '.join(f'{i}/{n}' for i in missing)} not finished; "
            f"run `vlae eval ... --shard I/{n}` for them (finished blocks are kept)"
        )
    return ([r for _, part in mine for r in part["records"]], sum(part["seconds"] for _, part in mine), n)
