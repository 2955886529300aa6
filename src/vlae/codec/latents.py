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

__all__ = ["Latents", "JACOBIAN_ROWS"]

#: Rows of the proposal's Jacobian per backward pass (see :meth:`Latents._jacobian`).
JACOBIAN_ROWS = 8


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

        Reverse mode, :data:`JACOBIAN_ROWS` rows per backward pass: the batch is repeated that
        many times and replica ``j`` pulls back output ``i + j`` (images are independent rows,
        so each replica's gradient is its images' row ``i + j``). Repeating the batch ``D``
        times for one pass spends the time in the forward pass, ``D`` copies of it: 6x slower
        on a spatial AF prior (``D = 512``); one row per pass spends it in per-pass overhead.
        Forward mode is ~100x slower through MADE; ``torch.func.jacrev`` and
        ``is_grads_batched`` import ``torch._dynamo`` or sympy on first use, up to 1.2 s of
        every fresh ``vlae compress``/``decompress``.
        """
        n, d = eta.shape
        rows = min(JACOBIAN_ROWS, d)
        rep = lambda t: None if t is None else t.detach().repeat(rows, *[1] * (t.dim() - 1))  # noqa: E731
        jac = eta.new_empty(n, d, d)
        with torch.enable_grad():
            e = eta.detach().repeat(rows, 1).requires_grad_(True)
            out = self._noise(rep(mu), rep(log_sigma), rep(h), e).view(rows, n, d)  # replica-major
            for i in range(0, d, rows):
                k = min(rows, d - i)
                # Replica j's output i + j, summed: a scalar's gradient (a tensor of grad_outputs
                # would import sympy: torch 2.13's shape checks).
                pulled = torch.diagonal(out[:k, :, i : i + k], 0, 0, 2).sum()
                (grad,) = torch.autograd.grad(pulled, e, retain_graph=i + k < d)
                jac[:, i : i + k] = grad.view(rows, n, d)[:k].transpose(0, 1)
        return jac

    def proposal(self, x: torch.Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian linearization of q(eps|x) for images ``x (B, C, H, W)``, snapped: mean
        ``(B, D)`` and Cholesky factor ``(B, D, D)``."""
        mu, log_sigma, h = self.model.encode(x)
        eta = torch.zeros_like(mu)
        mean = self._noise(mu, log_sigma, h, eta)
        jac = self._jacobian(mu, log_sigma, h, eta)  # (B, D, D)
        r = torch.linalg.qr(jac.transpose(1, 2), mode="r").R  # J^T = Q R, so J J^T = R^T R (Q is not needed)
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
