"""Evaluation: the importance-weighted bound, the ELBO, KL and active units.

The paper's headline number is the test NLL estimated with the IW bound
(Burda et al., 2016) with ``k = 4096`` samples per image:

    -log p(x)  <=  -log (1/k) sum_j  p(x|z_j) p(z_j) / q(z_j|x)

averaged over test images, in nats per image (also in bits per dimension),
with its standard error over images. The ELBO is the average of the same
``k`` log weights (a ``k``-sample estimate of one-sample ELBO), so it costs
nothing extra; so are ``recon`` and ``kl``.

Every image draws its ``k`` samples from its own stream, a generator seeded
by :func:`image_seed` ``(seed, index)``, and the images form fixed blocks
(``batch_size``): the numbers do not depend on how the blocks are spread over
shards, processes or restarts, so a sharded evaluation merged
(:func:`summarize` of all per-image records) equals the unsharded one exactly.
What the ``k`` samples share -- the encoder pass and the decoder's first-layer
convolution of the image -- is computed once per image
(:meth:`vlae.model.VLAE.sample_terms`).

Example:
    >>> from vlae import VLAE, get_preset
    >>> model = VLAE(get_preset("tiny").model)
    >>> x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2)).to(torch.uint8)
    >>> result = evaluate_model(model, x, k=4, batch_size=4)
    >>> result["estimator"], sorted(result)[:3]
    ('IW bound, k=4', ['active_units', 'active_units_threshold', 'bits_per_dim'])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import VLAEError
from .layers import frozen_weights
from .model import VLAE, nats_to_bits_per_dim, samples_per_pass
from .outputs import atomic_write, prepare_output, write_json

if TYPE_CHECKING:
    from .config import Config
    from .data import Images
    from .runtime import Runtime

__all__ = ["evaluate_model", "evaluate_block", "evaluate_checkpoint", "summarize", "image_seed", "parse_shard",
           "shard_blocks", "blocks_of", "result_name", "active_units", "standard_error", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Cov_x(E_q[z_u]) > 0.01
_MEAN_SAMPLES = 32  # posterior samples averaged for E_q[z] when q is not Gaussian (IAF)


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` (sample std with ``N - 1`` over ``sqrt(N)``)."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def active_units(means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, list[float]]:
    """Active units of Burda et al. (2016) from posterior means ``E_q[z|x]`` of shape ``(N, D)``.

    Returns the count of dimensions whose variance across images exceeds
    ``threshold``, and the per-dimension variances.

    >>> means = torch.stack([torch.tensor([1.0, 0.0, 0.05]), torch.tensor([-1.0, 0.0, -0.05])])
    >>> active_units(means)[0]
    1
    """
    if means.shape[0] < 2:
        return 0, [0.0] * means.shape[1]
    var = means.double().var(0, unbiased=True)
    return int((var > threshold).sum()), var.tolist()


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index``'s own random stream: a 63-bit hash of ``(seed, index)``.

    Each image's importance samples come from a generator seeded with this, so
    an image gets the same samples whatever the batch, pass size, shard or
    process that evaluates it: a sharded evaluation equals the unsharded one.

    >>> image_seed(0, 1) == image_seed(0, 1) != image_seed(1, 0)
    True
    """
    digest = hashlib.sha256(f"vlae-iw-stream:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _noise(seed: int, indices: range, rows: int, d: int) -> torch.Tensor:
    """``(rows, B, D)`` standard normals, column ``b`` from image ``indices[b]``'s own
    stream (drawn whole on the CPU, so devices and pass sizes draw alike)."""
    return torch.stack([torch.randn((rows, d), generator=torch.Generator().manual_seed(image_seed(seed, i)))
                        for i in indices], 1)


@torch.no_grad()
def evaluate_block(model: VLAE, x: torch.Tensor, indices: range, k: int, seed: int = 0, chunk: int = 0,
                   step=None) -> dict[str, torch.Tensor]:
    """Per-image results for images ``x (B, C, H, W)`` whose indices in the
    evaluated set are ``indices``: ``nll`` (minus the IW bound), ``elbo`` (mean
    log weight), ``recon`` and ``kl`` (means over the ``k`` samples), all ``(B,)``;
    ``kl_per_dim`` and ``mean`` (``E_q[z|x]``), ``(B, D)``; float64 on the CPU.

    What the ``k`` samples share (encoder, the decoder's first layer on the image)
    is computed once; samples go through in passes of ``chunk`` per image
    (0: :func:`~vlae.model.samples_per_pass`).
    ``step`` replaces ``model.sample_terms`` (e.g. by a compiled version of it).
    """
    x = model.check_images(x)
    b, d = x.shape[0], model.latent_dim
    if d == 0:  # an unconditional PixelCNN: every sample's weight is the exact log-likelihood
        log_px = -model.terms(x).recon.double().cpu()
        empty = torch.zeros(b, 0, dtype=torch.float64)
        return {"index": torch.tensor(list(indices)), "nll": -log_px, "elbo": log_px, "recon": -log_px,
                "kl": torch.zeros(b, dtype=torch.float64), "kl_per_dim": empty, "mean": empty}
    iaf = model.cfg.posterior == "iaf" and model.cfg.iaf_steps > 0
    eps = _noise(seed, indices, k + (_MEAN_SAMPLES if iaf else 0), d).to(x.device, x.dtype)
    shared = model.shared(x)
    size = chunk or samples_per_pass(x)
    lse = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
    sums = {key: torch.zeros(b, dtype=torch.float64, device=x.device) for key in ("log_w", "recon")}
    kl_dims = torch.zeros(b, d, dtype=torch.float64, device=x.device)
    for s in range(0, k, size):
        n = min(size, k - s)
        terms = (step or model.sample_terms)(x, n, eps=eps[s:s + n].flatten(0, 1), shared=shared)
        log_w = -terms.nelbo.double().view(n, b)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
        sums["log_w"] += log_w.sum(0)
        sums["recon"] += terms.recon.double().view(n, b).sum(0)
        kl_dims += terms.kl_per_dim.double().view(n, b, d).sum(0)
    mu, log_sigma, h, _ = shared
    if iaf:  # E_q[z|x] by Monte Carlo, from the image's own stream after its k samples
        mu_, log_sigma_, h_ = (t.repeat(_MEAN_SAMPLES, 1) for t in (mu, log_sigma, h))
        z, _ = model.posterior.rsample(mu_, log_sigma_, h_, eps[k:].flatten(0, 1))
        mean = z.view(_MEAN_SAMPLES, b, d).mean(0)
    else:
        mean = mu
    cpu = lambda t: t.double().cpu()  # noqa: E731
    return {"index": torch.tensor(list(indices)), "nll": cpu(-(lse - math.log(k))), "elbo": cpu(sums["log_w"] / k),
            "recon": cpu(sums["recon"] / k), "kl": cpu(kl_dims.sum(1) / k), "kl_per_dim": cpu(kl_dims / k),
            "mean": cpu(mean)}


def summarize(records: list[dict[str, torch.Tensor]], k: int, dims: int) -> dict[str, Any]:
    """The evaluation's numbers from per-image records (:func:`evaluate_block`) of
    every image ``0..N-1``, in any order: means and standard errors over images,
    KL per dimension and active units. The same records give the same numbers
    however they were split into blocks, shards or processes.

    Raises:
        VLAEError: an image is missing or present twice.
    """
    index = torch.cat([r["index"] for r in records])
    order = torch.argsort(index)
    n = index.numel()
    if not torch.equal(index[order], torch.arange(n)):
        raise VLAEError(f"the partial results do not cover images 0..{n - 1} exactly once")
    cat = {key: torch.cat([r[key] for r in records])[order] for key in records[0] if key != "index"}
    d = cat["mean"].shape[1]
    units, variances = active_units(cat["mean"]) if d > 0 else (0, [])
    nll, elbo = cat["nll"], cat["elbo"]
    return {
        "estimator": f"IW bound, k={k}",
        "k": k,
        "images": n,
        "nll": float(nll.mean()),
        "nll_se": standard_error(nll),
        "bits_per_dim": nats_to_bits_per_dim(float(nll.mean()), dims),
        "elbo": float(elbo.mean()),
        "elbo_se": standard_error(elbo),
        "elbo_bits_per_dim": nats_to_bits_per_dim(-float(elbo.mean()), dims),
        "recon": float(cat["recon"].mean()),
        "kl": float(cat["kl"].mean()),
        "kl_per_dim": cat["kl_per_dim"].mean(0).tolist() if d > 0 else [],
        "active_units": units,
        "active_units_threshold": ACTIVE_THRESHOLD,
        "posterior_mean_variance": variances,
        "latent_dim": d,
    }


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
        raise VLAEError(f"--shard {i}/{n}: {n} shards but only {blocks} block(s) of images; use at most {blocks} "
                        f"shard(s) or a smaller --batch-size")
    return range(i * blocks // n, (i + 1) * blocks // n)


def _run_blocks(model: VLAE, images: torch.Tensor, chosen: list[range], k: int, seed: int, chunk: int,
                progress: bool | None, store: "_BlockStore | None" = None, desc: str = "", compile: bool = False):
    """Records of the ``chosen`` blocks, each loaded from ``store`` if finished
    before, else computed (and saved there). A tqdm bar with ETA counts images."""
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    records, todo = [], []
    for block in chosen:
        done = store.load(block) if store is not None else None
        (records.append(done) if done is not None else todo.append(block))
    finished = sum(len(b) for b in chosen) - sum(len(b) for b in todo)
    bar = tqdm(total=sum(len(b) for b in chosen), initial=finished, unit="img", desc=desc or f"IW bound k={k}",
               disable=not progress, dynamic_ncols=True)
    # Compiled (fused elementwise chains), the same computation: log weights agree to float rounding.
    step = torch.compile(model.sample_terms, dynamic=False) if compile and todo else None
    try:
        for block in todo:
            record = evaluate_block(model, images[block.start:block.stop], block, k, seed, chunk, step)
            if store is not None:
                store.save(block, record)
            records.append(record)
            bar.update(len(block))
    finally:
        bar.close()
    return records


@torch.no_grad()
def evaluate_model(model: VLAE, images: torch.Tensor, k: int = 4096, batch_size: int = 50, chunk: int = 0,
                   progress: bool | None = None, seed: int = 0, compile: bool = False) -> dict[str, Any]:
    """IW bound, ELBO, KL and active units of ``model`` on ``images``.

    Args:
        model: a VLAE (evaluated in eval mode on its own device).
        images: ``(N, C, H, W)`` images of the model's shape, ``uint8`` or float: 0/1 for a
            binary (Bernoulli) model, 0..255 for an 8-bit (logistic mixture) one.
        k: importance samples per image.
        batch_size: images per block (evaluated together).
        chunk: importance samples per image evaluated at once (0: automatic);
            bounds memory for large ``k``, changes no number.
        progress: tqdm bar with ETA (default: when stderr is a terminal).
        seed: seed of the per-image random streams (:func:`image_seed`).
        compile: ``torch.compile`` the per-pass computation (pays for long
            evaluations: the first passes compile, minutes on a CPU).

    Returns:
        dict with ``nll`` (mean of ``-IW bound``, nats per image), ``nll_se``,
        ``bits_per_dim``, ``elbo`` (mean log weight, nats), ``recon``, ``kl``
        (means over the ``k`` samples), ``kl_per_dim`` (list of D), ``active_units``,
        ``estimator``, ``k``, ``images``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise VLAEError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise VLAEError("no images to evaluate")
    if k < 1:
        raise VLAEError(f"k must be >= 1, got {k}")
    if batch_size < 1 or chunk < 0:
        raise VLAEError(f"batch_size must be >= 1 and chunk >= 0, got {batch_size} and {chunk}")
    with _evaluation_mode(model, compile):
        records = _run_blocks(model, images, blocks_of(images.shape[0], batch_size), k, seed, chunk, progress,
                              compile=compile)
    return summarize(records, k, model.dims)


@contextlib.contextmanager
def _evaluation_mode(model: VLAE, compiled: bool = False):
    """Eval mode; channels-last weights on a CPU (oneDNN's own layout: measured
    faster for these small convolutions); every layer's effective weight (weight
    normalisation, autoregressive mask) computed once instead of once per pass.
    All undone afterwards; no number changes beyond float rounding (the same weights, the same ops).

    ``compiled``: leave the layers' own forwards in place. The compiled graph
    computes the effective weights itself (a few small kernels per pass), and
    replacement forwards, new functions on every call, would make every call
    compile again.
    """
    was_training = model.training
    channels_last = next(model.parameters()).device.type == "cpu"
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        with contextlib.nullcontext() if compiled else frozen_weights(model):
            yield
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


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


def result_name(dataset: str, split: str, k: int, images: int | None = None, weights: str = "ema") -> str:
    """File name of an evaluation result: what was measured, on which data.

    ``eval_<dataset>_<split>_k<k>[_n<images>][_raw].json``; ``images`` is given
    only for a subset of the split, and ``_raw`` marks raw (not Polyak-averaged)
    weights.

    >>> result_name("binarized-mnist", "test", 4096)
    'eval_binarized-mnist_test_k4096.json'
    >>> result_name("mnist-embedded", "test", 4, images=50)
    'eval_mnist-embedded_test_k4_n50.json'
    """
    return (f"eval_{dataset}_{split}_k{k}" + (f"_n{images}" if images else "")
            + ("_raw" if weights == "raw" else "") + ".json")


def _same_data(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an existing result measured the data ``new`` identifies: the same
    name, split, image count and pixels (``sha256``), or, for results without a
    checksum, the same source files."""
    if isinstance(old.get("data_identity"), dict):
        before = old["data_identity"]
    else:  # results written before data_identity existed
        before = {"name": old.get("dataset"), "source": old.get("data"), "split": old.get("split"),
                  "images": old.get("images")}
    keys = ["name", "split", "images"] + (["sha256"] if "sha256" in before and "sha256" in new else ["source"])
    return all(before.get(key) == new.get(key) for key in keys)


def _refuse_other_data(target: Path, identity: dict[str, Any]) -> None:
    """Never replace a result of other data (e.g. the real test set's by the fallback's)."""
    if not target.exists():
        return
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or "estimator" not in old:
        raise VLAEError(f"{target} exists and is not a vlae evaluation result; remove it or choose another --out")
    if not _same_data(old, identity):
        before = old.get("data_identity")
        was = (before if isinstance(before, dict) else {}).get("source") or old.get("data") or old.get("dataset")
        raise VLAEError(f"{target} holds a result of other data ({was}); not replacing it with one of "
                        f"{identity['name']} {identity['split']} ({identity['source']}); choose another --out")


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", k: int | None = None, subset: int = 0,
                        data_dir: str | os.PathLike | None = None, seed: int = 0, out: str | os.PathLike | None = None,
                        batch_size: int | None = None, chunk: int = 0, weights: str = "ema", device: str = "auto",
                        progress: bool | None = None, notice=None, shard: str | tuple[int, int] | None = None,
                        merge: bool = False, compile: bool = False) -> dict[str, Any]:
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
    draws its samples from its own stream (:func:`image_seed`), so any split of
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
    from .checkpoint import load_model, resolve_checkpoint
    from .runtime import Runtime

    shard, rank, world = _check_options(subset, chunk, shard, merge)
    file = resolve_checkpoint(path)
    rt = Runtime.create(device, "fp32", join=False)  # the process group only around the evaluation
    model, cfg = load_model(file, weights=weights, device=rt.device)
    k = cfg.eval.k if k is None else k  # the run's own default: 512 for 8-bit presets (as the paper), 4096 binary
    if out is not None:  # before the (possibly long) evaluation
        prepare_output(out, "--out")
    data, images, identity = _choose_images(cfg, split, data_dir, seed, subset, notice)
    plan = _plan(file, weights, images, k, seed, batch_size or cfg.eval.batch_size,
                 Path(out) if out is not None else None, data.name, split, identity)
    if merge:
        records, seconds, shards = _load_partials(plan.target, plan.partial, plan.fingerprint)
    else:
        done = _evaluate_own_blocks(model, rt, images, plan, k, seed, chunk, progress, compile, shard, rank, world)
        if isinstance(done, dict):  # a shard's or a non-main rank's share: no result file
            return done
        records, seconds = done
        shards = world if world > 1 else 1
    result = summarize(records, k, model.dims)
    plan.store.clear(plan.blocks)
    for key in ("nll", "elbo"):
        if not math.isfinite(result[key]):
            raise VLAEError(f"{file}: the {'IW bound' if key == 'nll' else 'ELBO'} came out {result[key]} "
                            f"on {data.name} {split}; nothing written (the model is numerically broken)")
    return _write_result(result, plan, file, cfg, data, split, identity, weights=weights, seed=seed, subset=subset,
                         seconds=seconds, shards=shards, device=next(model.parameters()).device,
                         compiled=None if merge else compile)  # a merge does not know how its shards ran


def _check_options(subset: int, chunk: int, shard: str | tuple[int, int] | None,
                   merge: bool) -> tuple[tuple[int, int] | None, int, int]:
    """The options no file is needed to refuse; ``(shard, rank, world size)``."""
    from .runtime import torchrun_ranks

    if subset < 0:
        raise VLAEError(f"invalid --subset: must be >= 0, got {subset}")
    if chunk < 0:
        raise VLAEError(f"invalid --chunk: must be >= 0 (0: automatic), got {chunk}")
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    if shard is not None and merge:
        raise VLAEError("--shard and --merge exclude each other: run the shards, then merge once")
    rank, world, _ = torchrun_ranks()
    if world > 1 and (shard is not None or merge):
        raise VLAEError("under torchrun the ranks are the shards: drop --shard/--merge")
    return shard, rank, world


def _choose_images(cfg: Config, split: str, data_dir: str | os.PathLike | None, seed: int, subset: int,
                   notice) -> tuple[Images, torch.Tensor, dict[str, Any]]:
    """The split's images as the model observes them (seeded binarization), the
    ``subset`` of them, and their identity; ``(data, images, identity)``."""
    from .data import dataset_identity, fixed_subset, load_or_fallback

    root = data_dir if data_dir is not None else cfg.train.data_dir
    data = load_or_fallback(cfg.train.dataset, split, root, notice=notice)
    identity = dataset_identity(data)
    torch.manual_seed(seed)
    images = data.observed(torch.Generator().manual_seed(seed))
    images = fixed_subset(images, subset)  # a spread-out choice: test files are sorted by class
    if images.shape[0] < len(data):
        identity = {**identity, "images": images.shape[0], "subset_of": len(data)}
    return data, images, identity


@dataclass
class _Plan:
    """Where an evaluation writes, and its blocks: what shards, restarts and merges must agree on."""

    target: Path  # the result file
    block: int  # images per block
    blocks: list[range]
    fingerprint: str  # of the checkpoint, weights, images, k, seed and block size (_fingerprint)
    partial: Path  # the shards' partial results: this name + ".shard-i-of-n.pt"
    store: _BlockStore  # finished blocks, kept until the (partial) result is written


def _plan(file: Path, weights: str, images: torch.Tensor, k: int, seed: int, block: int, out: Path | None,
          dataset: str, split: str, identity: dict[str, Any]) -> _Plan:
    """The result's path (checked writable and not holding other data's result) and the blocks."""
    target = out if out is not None else file.parent / result_name(
        dataset, split, k, images.shape[0] if "subset_of" in identity else None, weights)
    _refuse_other_data(prepare_output(target, "result file"), identity)
    fingerprint = _fingerprint(file, weights, images, k, seed, block)
    # partial results are named by everything that tells evaluations apart (the fingerprint), so that
    # another seed, --batch-size or checkpoint never overwrites a finished shard or block
    partial = target.with_name(f"{target.stem}.seed{seed}-b{block}-{fingerprint[:10]}")
    return _Plan(target, block, blocks_of(images.shape[0], block), fingerprint, partial,
                 _BlockStore(partial.with_name(partial.name + ".parts"), fingerprint))


def _evaluate_own_blocks(model: VLAE, rt: Runtime, images: torch.Tensor, plan: _Plan, k: int, seed: int, chunk: int,
                         progress: bool | None, compile: bool, shard: tuple[int, int] | None, rank: int,
                         world: int) -> tuple[list, float] | dict[str, Any]:
    """The blocks this process owns (a ``--shard``, a torchrun rank's share, or
    all): ``(records of every image, seconds)`` for the result, or, for a shard
    or a rank other than 0, the summary of its share to return instead."""
    t0 = time.perf_counter()
    if world > len(plan.blocks):  # the ranks are the shards, but the user gave no --shard
        raise VLAEError(f"{world} processes but only {len(plan.blocks)} block(s) of images ({images.shape[0]} images, "
                        f"--batch-size {plan.block}): use fewer processes or a smaller --batch-size")
    if shard is not None and (done := _finished_partial(plan.partial, shard, plan.fingerprint)) is not None:
        return done  # this shard finished before: nothing to redo
    own = shard if shard is not None else ((rank, world) if world > 1 else None)
    chosen = [plan.blocks[j] for j in (shard_blocks(len(plan.blocks), own) if own else range(len(plan.blocks)))]
    desc = f"IW bound k={k}" + (f", shard {own[0]}/{own[1]}" if own else "")
    with rt.process_group(), _evaluation_mode(model, compile):
        records = _run_blocks(model, images, chosen, k, seed, chunk, progress if rank == 0 else False,
                              plan.store, desc, compile)
        seconds = time.perf_counter() - t0
        if shard is not None:
            return _write_partial(plan.partial, shard, plan.fingerprint, records, seconds, plan.store, chosen)
        if world > 1:
            records = rt.gather_to_main(records)
            plan.store.clear(chosen)
            if rank != 0:
                return {"partial": True, "rank": rank, "world_size": world, "images": sum(map(len, chosen))}
    return records, seconds


def _write_result(result: dict[str, Any], plan: _Plan, file: Path, cfg: Config, data: Images, split: str,
                  identity: dict[str, Any], *, weights: str, seed: int, subset: int, seconds: float, shards: int,
                  device: torch.device, compiled: bool | None) -> dict[str, Any]:
    """Write the result file: the numbers with what was measured, on which data, and how."""
    result = {"estimator": result.pop("estimator"), "split": split, "dataset": data.name, "data": data.source,
              "data_identity": identity, "data_fallback": bool(getattr(data, "fallback", None))
              or data.name != cfg.train.dataset,
              "requested_dataset": cfg.train.dataset,
              **result, "seconds": seconds, "checkpoint": str(file), "weights": weights, "seed": seed,
              "seed_stream": "per image: torch.Generator seeded with vlae.evaluate.image_seed(seed, index)",
              "block_size": plan.block, "shards": shards, "subset": subset, "device": str(device),
              "compiled": compiled, "config": cfg.to_dict(), "command": " ".join(sys.argv)}
    write_json(plan.target, result, default=str)
    result["path"] = str(plan.target)
    return result


def _fingerprint(file: Path, weights: str, images: torch.Tensor, k: int, seed: int, block: int) -> str:
    """What makes two evaluations' blocks interchangeable: the checkpoint's bytes,
    the weights, the images' bytes, ``k``, the seed and the block size."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    pixels = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return hashlib.sha256(json.dumps({"checkpoint": digest.hexdigest(), "weights": weights, "images": pixels, "k": k,
                                      "seed": seed, "block": block, "stream": 1}).encode()).hexdigest()


def _shard_path(partial: Path, shard: tuple[int, int]) -> Path:
    return partial.with_name(f"{partial.name}.shard-{shard[0]}-of-{shard[1]}.pt")


def _write_partial(partial: Path, shard: tuple[int, int], fingerprint: str, records: list, seconds: float,
                   store: _BlockStore, chosen: list[range]) -> dict[str, Any]:
    """Save one shard's per-image records (atomically) and drop its block files."""
    path = _shard_path(partial, shard)
    saved = {"fingerprint": fingerprint, "shard": list(shard), "records": records, "seconds": seconds}
    atomic_write(path, lambda f: torch.save(saved, f))
    store.clear(chosen)
    nll = torch.cat([r["nll"] for r in records])
    return {"partial": True, "shard": list(shard), "images": nll.numel(), "nll": float(nll.mean()),
            "seconds": seconds, "path": str(path)}


def _finished_partial(partial: Path, shard: tuple[int, int], fingerprint: str) -> dict[str, Any] | None:
    path = _shard_path(partial, shard)
    try:
        part = _read_partial(path)
    except (FileNotFoundError, VLAEError):  # absent, or cut short: evaluate the shard again
        return None
    if part["fingerprint"] != fingerprint:
        return None
    nll = torch.cat([r["nll"] for r in part["records"]])
    return {"partial": True, "shard": list(shard), "images": nll.numel(), "nll": float(nll.mean()),
            "seconds": part["seconds"], "path": str(path), "resumed": True}


def _read_partial(path: Path) -> dict[str, Any]:
    """A shard's partial result, or one :class:`VLAEError` line naming the file and the shard to rerun."""
    m = re.search(r"shard-(\d+)-of-(\d+)\.pt$", path.name)
    again = (f"delete it and rerun that shard (`vlae eval ... --shard {m.group(1)}/{m.group(2)}` with the same "
             "options; its finished blocks are kept)" if m else "delete it")
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - cut short, damaged or foreign: torch raises many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights only load failed" in first.lower():  # never torch's advice to unpickle code
            first = "it holds objects other than tensors and plain containers"
        raise VLAEError(f"{path}: unreadable partial result (cut short or damaged: {first}); {again}") from None
    fields: dict[str, type | tuple[type, ...]] = {"fingerprint": str, "shard": list, "records": list,
                                                   "seconds": (int, float)}
    if not isinstance(part, dict) or any(not isinstance(part.get(k), t) for k, t in fields.items()) or not all(
            isinstance(r, dict) and isinstance(r.get("nll"), torch.Tensor) for r in part["records"]):
        raise VLAEError(f"{path}: not a partial result of `vlae eval --shard`; {again}")
    return part


def _load_partials(target: Path, partial: Path, fingerprint: str) -> tuple[list, float, int]:
    """All partial results of this evaluation (``partial``: its name without the shard):
    records, summed seconds, shard count."""
    found = sorted(partial.parent.glob(f"{partial.name}.shard-*-of-*.pt"))
    if not found:
        others = sorted(target.parent.glob(f"{target.stem}.*shard-*-of-*.pt"))
        if others:
            raise VLAEError(f"the partial results beside {target} ({others[0].name}, ...) are of another evaluation "
                            f"(checkpoint, weights, data, k, seed or --batch-size differ)")
        raise VLAEError(f"nothing to merge: no {partial.name}.shard-I-of-N.pt beside {target}; "
                        f"run `vlae eval ... --shard I/N` for every I first")
    mine = [(p, part) for p in found if (part := _read_partial(p))["fingerprint"] == fingerprint]
    if not mine:
        raise VLAEError(f"the partial results beside {target} ({found[0].name}, ...) are of another evaluation "
                        f"(checkpoint, weights, data, k, seed or --batch-size differ)")
    counts = {part["shard"][1] for _, part in mine}
    if len(counts) > 1:
        raise VLAEError(f"partial results beside {target} split the work differently ({sorted(counts)} shards); "
                        f"remove the stale ones")
    n = counts.pop()
    missing = sorted(set(range(n)) - {part["shard"][0] for _, part in mine})
    if missing:
        raise VLAEError(f"cannot merge: shard(s) {', '.join(f'{i}/{n}' for i in missing)} not finished; "
                        f"run `vlae eval ... --shard I/{n}` for them (finished blocks are kept)")
    return ([r for _, part in mine for r in part["records"]], sum(part["seconds"] for _, part in mine), n)
