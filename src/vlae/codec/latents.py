"""The latent code, discretized: bins of the prior's noise and the posterior's proposal over them.

Every latent dimension is cut into ``K = 2**precision`` bins of equal mass under
``N(0, 1)``, the prior's base distribution in its noise coordinates ``eps = f(z)``
(the identity for a Gaussian prior); a bin stands for its median. Bits-back pops
the bins from the proposal ``Q``, the Gaussian linearization of ``q(eps|x)``, one
dimension at a time through its Cholesky factor, and pushes them under the prior
at ``precision`` bits each (:mod:`vlae.codec.coder`). See :mod:`vlae.codec`'s
docstring, "Latent discretization" and "The AF prior".

References:
    Townsend, Bird and Barber, Practical Lossless Compression with Latent
    Variables using Bits Back Coding (ICLR 2019): the bins.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import VLAEError
from ..flows import AFPrior
from ..portable import normal_bin_masses, normal_quantile
from ..spatial_prior import SpatialAFPrior
from .format import PROPOSAL
from .grid import Grid

__all__ = ["Latents"]


class Latents:
    """The latent code of ``model`` (float64, :func:`~vlae.codec.models.coding_model`) in
    the prior's noise coordinates, discretized into ``2**precision`` equal-mass bins per
    dimension: ``edges (K + 1,)`` from ``-inf`` to ``inf`` and ``medians (K,)``."""

    def __init__(self, model, precision: int):
        self.model, self.dims, self.bins = model, model.latent_dim, 2**precision
        self.edges = normal_quantile(np.arange(self.bins + 1) / self.bins)  # (K + 1,), from -inf to inf
        self.medians = normal_quantile((np.arange(self.bins) + 0.5) / self.bins)

    def _noise(self, mu, log_sigma, h, eta):
        """Posterior noise ``eta (B, D)`` -> the prior's noise coordinates ``(B, D)``."""
        z, _ = self.model.posterior.rsample(mu, log_sigma, h, eta)
        return self.model.prior.to_noise(z)[0] if isinstance(self.model.prior, (AFPrior, SpatialAFPrior)) else z

    def _jacobian(self, mu, log_sigma, h, eta) -> torch.Tensor:
        """``d eps_b / d eta_b (B, D, D)`` at ``eta (B, D)``, row ``i`` the gradient of output ``i``.

        Reverse mode, all ``D`` vector-Jacobian products in one backward pass: the batch is
        repeated ``D`` times and replica ``i`` pulls back the ``i``-th unit vector (images are
        independent rows, so each replica's gradient is its images' row ``i``). Forward mode
        is ~100x slower through MADE; ``torch.func.jacrev`` computes the same but imports
        ``torch._dynamo`` on first use, 1.2 s of every fresh ``vlae compress``/``decompress``.
        """
        n, d = eta.shape
        rep = lambda t: None if t is None else t.detach().repeat(d, *[1] * (t.dim() - 1))  # noqa: E731
        with torch.enable_grad():
            e = eta.detach().repeat(d, 1).requires_grad_(True)
            out = self._noise(rep(mu), rep(log_sigma), rep(h), e)  # (D * B, D), replica-major
            basis = torch.eye(d, dtype=out.dtype, device=out.device).repeat_interleave(n, 0)
            # A scalar's gradient: a tensor of grad_outputs would import sympy (torch 2.13's shape checks).
            (grad,) = torch.autograd.grad((out * basis).sum(), e)
        return grad.view(d, n, d).transpose(0, 1)

    def proposal(self, x: torch.Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian linearization of q(eps|x) for images ``x (B, C, H, W)``, snapped: mean
        ``(B, D)`` and Cholesky factor ``(B, D, D)``."""
        mu, log_sigma, h = self.model.encode(x)
        eta = torch.zeros_like(mu)
        mean = self._noise(mu, log_sigma, h, eta)
        jac = self._jacobian(mu, log_sigma, h, eta)  # (B, D, D)
        r = torch.linalg.qr(jac.transpose(1, 2)).R  # J^T = Q R, so J J^T = R^T R
        diag = torch.diagonal(r, dim1=1, dim2=2)
        chol = grid(PROPOSAL, 1, r.transpose(1, 2) * diag.sign()[:, None, :])
        if not bool((np.diagonal(chol, axis1=1, axis2=2) > 0).all()):
            raise VLAEError("the posterior is degenerate (zero or non-finite spread); cannot code its latent")
        return grid(PROPOSAL, 0, mean), chol

    def walk(self, mean: np.ndarray, chol: np.ndarray, choose: Callable[[int, np.ndarray], Any]) -> np.ndarray:
        """Visit the dimensions in order: ``choose(i, probs (B, K))`` picks dimension ``i``'s
        bins ``(B,)`` given its conditional bin probabilities; returns all bins ``(B, D)``.
        Portable arithmetic only (:mod:`vlae.portable`); the conditional means accumulate
        ``L_ij eta_j`` in the order ``j = 0, 1, ...`` on every machine."""
        centre = mean.copy()
        chosen = np.empty(mean.shape, dtype=np.int64)
        for i in range(self.dims):
            spread = chol[:, i, i]
            t = (self.edges[None, :] - centre[:, i : i + 1]) / spread[:, None]
            k = np.asarray(choose(i, normal_bin_masses(t)), dtype=np.int64)
            chosen[:, i] = k
            eta = (self.medians[k] - centre[:, i]) / spread
            centre[:, i + 1 :] = centre[:, i + 1 :] + chol[:, i + 1 :, i] * eta[:, None]
        return chosen

    def latent(self, bins: np.ndarray) -> torch.Tensor:
        """Bins ``(B, D)`` -> ``z (B, D)``: the prior's flow inverted at the bin medians."""
        anchor = next(self.model.parameters())
        eps = torch.from_numpy(self.medians[bins]).to(device=anchor.device, dtype=anchor.dtype)
        return self.model.prior.sample(len(bins), eps=eps)
