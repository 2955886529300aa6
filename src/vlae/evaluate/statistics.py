"""From per-image records to the reported numbers: means, standard errors, active units.

An evaluation's records (:func:`vlae.evaluate.evaluate_block`) hold one row
per image; :func:`summarize` averages them over the ``N`` images in index
order, so the numbers do not depend on how the images were split into blocks,
shards or processes. The standard error of a mean is ``s / sqrt(N)`` with the
sample standard deviation ``s`` (``N - 1``), and a latent dimension ``u`` is
*active* (Burda et al., 2016) when

    Cov_x( E_q[z_u | x] )  >  0.01,

the variance across images of its posterior mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import VLAEError
from ..model import nats_to_bits_per_dim

__all__ = ["summarize", "active_units", "standard_error", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Cov_x(E_q[z_u]) > 0.01


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


def summarize(records: list[dict[str, torch.Tensor]], k: int, dims: int) -> dict[str, Any]:
    """The evaluation's numbers from per-image records (:func:`~vlae.evaluate.evaluate_block`) of
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
