"""The importance-weighted bound of a model on images (Burda et al., 2016).

For an image ``x`` and ``k`` samples ``z_j ~ q(z|x)``, with log weights
``log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x)``,

    -log p(x)  <=  nll(x)  =  -( logsumexp_j log w_j - log k ),

and the ELBO estimate is ``elbo(x) = (1/k) sum_j log w_j``; ``recon`` and
``kl`` are the means over the same ``k`` samples, so they cost nothing extra.
The log-sum-exp runs in float64, in passes of ``chunk`` samples per image.

Image ``i`` draws its samples from its own stream, a generator seeded with
:func:`image_seed` ``(seed, i)``: an image gets the same samples whatever the
block, pass size, shard or process that evaluates it. What the ``k`` samples
share, the encoder pass and the decoder's first-layer convolution of the
image, is computed once per image (:meth:`vlae.model.VLAE.sample_terms`).

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
import math
import sys
from typing import TYPE_CHECKING, Any

import torch

from ..errors import VLAEError
from ..layers import frozen_weights
from ..model import VLAE, samples_per_pass
from .shards import blocks_of
from .statistics import summarize

if TYPE_CHECKING:
    from .shards import _BlockStore

__all__ = ["evaluate_model", "evaluate_block", "image_seed"]

_MEAN_SAMPLES = 32  # posterior samples averaged for E_q[z] when q is not Gaussian (IAF)


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
    return torch.stack(
        [torch.randn((rows, d), generator=torch.Generator().manual_seed(image_seed(seed, i))) for i in indices], 1
    )


@torch.no_grad()
def evaluate_block(
    model: VLAE, x: torch.Tensor, indices: range, k: int, seed: int = 0, chunk: int = 0, step=None
) -> dict[str, torch.Tensor]:
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
        return {
            "index": torch.tensor(list(indices)),
            "nll": -log_px,
            "elbo": log_px,
            "recon": -log_px,
            "kl": torch.zeros(b, dtype=torch.float64),
            "kl_per_dim": empty,
            "mean": empty,
        }
    iaf = model.cfg.posterior == "iaf" and model.cfg.iaf_steps > 0
    eps = _noise(seed, indices, k + (_MEAN_SAMPLES if iaf else 0), d).to(x.device, x.dtype)
    shared = model.shared(x)
    size = chunk or samples_per_pass(x)
    lse = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
    sums = {key: torch.zeros(b, dtype=torch.float64, device=x.device) for key in ("log_w", "recon")}
    kl_dims = torch.zeros(b, d, dtype=torch.float64, device=x.device)
    for s in range(0, k, size):
        n = min(size, k - s)
        terms = (step or model.sample_terms)(x, n, eps=eps[s : s + n].flatten(0, 1), shared=shared)
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
    return {
        "index": torch.tensor(list(indices)),
        "nll": cpu(-(lse - math.log(k))),
        "elbo": cpu(sums["log_w"] / k),
        "recon": cpu(sums["recon"] / k),
        "kl": cpu(kl_dims.sum(1) / k),
        "kl_per_dim": cpu(kl_dims / k),
        "mean": cpu(mean),
    }


def _run_blocks(
    model: VLAE,
    images: torch.Tensor,
    chosen: list[range],
    k: int,
    seed: int,
    chunk: int,
    progress: bool | None,
    store: "_BlockStore | None" = None,
    desc: str = "",
    compile: bool = False,
):
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
    bar = tqdm(
        total=sum(len(b) for b in chosen),
        initial=finished,
        unit="img",
        desc=desc or f"IW bound k={k}",
        disable=not progress,
        dynamic_ncols=True,
    )
    # Compiled (fused elementwise chains), the same computation: log weights agree to float rounding.
    step = torch.compile(model.sample_terms, dynamic=False) if compile and todo else None
    try:
        for block in todo:
            record = evaluate_block(model, images[block.start : block.stop], block, k, seed, chunk, step)
            if store is not None:
                store.save(block, record)
            records.append(record)
            bar.update(len(block))
    finally:
        bar.close()
    return records


@torch.no_grad()
def evaluate_model(
    model: VLAE,
    images: torch.Tensor,
    k: int = 4096,
    batch_size: int = 50,
    chunk: int = 0,
    progress: bool | None = None,
    seed: int = 0,
    compile: bool = False,
) -> dict[str, Any]:
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
        records = _run_blocks(
            model, images, blocks_of(images.shape[0], batch_size), k, seed, chunk, progress, compile=compile
        )
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
