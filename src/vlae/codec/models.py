"""The models the codec codes with: which it supports, and the float64 copy both sides evaluate.

The codec codes binary pixels under a Bernoulli observation model (one channel)
and 8-bit pixels under the discretized logistic mixture (one or three channels),
with a Gaussian, AF or spatial AF prior. Encoder and decoder evaluate a float64
copy of the model (:func:`coding_model`), so that two machines disagree only in
the last float64 bits, which the grid (:mod:`vlae.codec.grid`) absorbs.
"""

from __future__ import annotations

import copy

import torch

from ..errors import VLAEError
from ..flows import AFPrior, GaussianPrior
from ..runtime import keep_cpu_heap
from ..spatial_prior import SpatialAFPrior
from .format import OBSERVATION_CODES

__all__ = ["observation", "is_binary", "check_model", "coding_device", "coding_model"]


def observation(model) -> str:
    """The model's observation model (a key of :data:`~vlae.codec.format.OBSERVATION_CODES`),
    if the codec can code its pixels; else a one-line :class:`VLAEError`."""
    obs = getattr(model, "observation", None)
    name = "bernoulli" if obs is None else str(getattr(obs, "name", type(obs).__name__))
    channels = model.cfg.image_shape[0]
    if name not in OBSERVATION_CODES or (name == "bernoulli" and channels != 1) or channels not in (1, 3):
        raise VLAEError(
            f"vlae compress supports binary (1 channel) and 8-bit (1 or 3 channel) images; this model "
            f"has a {name} observation model on {channels}-channel images"
        )
    return name


def is_binary(model) -> bool:
    """Whether the model's pixels are binary (Bernoulli) rather than 8-bit."""
    return observation(model) == "bernoulli"


def check_model(model) -> None:
    """Refuse, in one line, a model whose pixels or prior the codec cannot code."""
    observation(model)
    prior = getattr(model, "prior", None)
    if model.latent_dim > 0 and not (type(prior) is GaussianPrior or isinstance(prior, (AFPrior, SpatialAFPrior))):
        raise VLAEError(f"the codec supports Gaussian and AF priors, not {type(prior).__name__}")


def coding_device(model, device: str | torch.device | None) -> torch.device:
    """Where the coding model runs: ``device``, by default the model's; a one-line
    :class:`VLAEError` for a name that is no device or a CUDA device that is absent."""
    try:
        where = torch.device(device) if device is not None else next(model.parameters()).device
    except RuntimeError:
        raise VLAEError(f"invalid --device {device!r}; e.g. cpu or cuda") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise VLAEError("--device cuda: no CUDA device is available")
    return where


def coding_model(model, device: str | torch.device | None):
    """The probability model both sides evaluate: a float64 copy of ``model`` on ``device``
    (:func:`coding_device`), so that machines disagree only in the last float64 bits."""
    where = coding_device(model, device)
    # Each chunk frees and reallocates the same buffers on the CPU (the coder's side, and the
    # network's there): kept by malloc, they are not page-faulted back in chunk after chunk.
    keep_cpu_heap()
    return copy.deepcopy(model).to(device=where, dtype=torch.float64).eval()
