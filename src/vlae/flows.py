"""Autoregressive flows on the latent code: the AF prior and the IAF posterior.

One affine autoregressive transform, built on MADE, serves both:

    y_d = x_d * exp(s_d(x_<d)) + m_d(x_<d)

is computed in **one pass** (MADE sees all of ``x`` at once) and its Jacobian is
triangular with log-determinant ``sum_d s_d``. Its inverse needs ``D`` passes,
one per variable in order.

- **AF prior** p(z): ``z -> eps`` through the one-pass direction, so
  ``log p(z) = log N(eps; 0, I) + sum log-det`` costs one pass per step;
  sampling runs the ``D``-pass inverse.
- **IAF posterior** q(z|x): ``eps -> z`` through the one-pass direction with the
  encoder's context, so sampling *and* the density of the sample are parallel.

The paper's insight (section "Learned prior with autoregressive flow") is that an AF prior and an IAF posterior give
the same bound, but the prior is cheaper: only the prior has to be evaluated on
a given ``z``, while the encoder stays a simple diagonal Gaussian.

``mean_only=True`` (the paper's choice, for stability) fixes ``s = 0``: volume
preserving, log-det zero. Otherwise ``s = B * tanh(raw / B)`` with ``B = 3``:
a soft bound that keeps ``exp(s)`` in ``(e^-3, e^3)`` and never overflows.

Log-determinants are returned **per dimension**, ``(B, D)``: summing over the
last axis gives ``log|det J|``; the per-dimension terms let the KL be split
into groups for free bits.

Example:
    >>> prior = AFPrior(8, steps=2, hidden=[32, 32])
    >>> z = prior.rsample(5)
    >>> prior.log_prob(z).shape
    torch.Size([5])

References:
    Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow (2016).
    Papamakarios et al., Masked Autoregressive Flow for Density Estimation (2017).
    Chen et al., Variational Lossy Autoencoder (2017), section 3.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .made import MADE

__all__ = ["AffineAutoregressive", "AFPrior", "FlowPrior", "GaussianPrior", "IAFPosterior", "standard_normal_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(eps; 0, 1)``."""
    return -0.5 * (eps.pow(2) + _LOG_2PI)


class AffineAutoregressive(nn.Module):
    """``y = x * exp(s(x)) + m(x)`` with ``(s, m)`` from a MADE.

    Args:
        features: ``D``.
        hidden: MADE hidden widths.
        order: autoregressive order of the MADE (``None``: identity).
        context: size of an optional context vector.
        mean_only: ``s = 0`` (volume preserving).
        activation: MADE activation.
        scale_bound: ``B`` in ``s = B * tanh(raw / B)``.
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int],
        order: Sequence[int] | None = None,
        context: int = 0,
        mean_only: bool = True,
        activation: str = "relu",
        scale_bound: float = 3.0,
    ):
        super().__init__()
        self.mean_only, self.scale_bound, self.features = mean_only, scale_bound, features
        self.made = MADE(
            features, hidden, n_params=1 if mean_only else 2, order=order, context=context, activation=activation
        )

    def _params(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(x, context)
        shift = out[..., 0, :]
        if self.mean_only:
            return torch.zeros_like(shift), shift
        log_scale = self.scale_bound * torch.tanh(out[..., 1, :] / self.scale_bound)
        return log_scale, shift

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``(B, D) -> y (B, D), log|dy/dx| per dimension (B, D)``."""
        log_scale, shift = self._params(x, context)
        return x * log_scale.exp() + shift, log_scale

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``D`` passes: ``y (B, D) -> x (B, D), log|dy/dx| per dimension at x``.

        After pass ``t`` the first ``t`` variables in the order are exact, so
        after ``D`` passes all are.
        """
        x = torch.zeros_like(y)
        for _ in range(self.features):
            log_scale, shift = self._params(x, context)
            x = (y - shift) * torch.exp(-log_scale)
        return x, log_scale


def _alternating_orders(features: int, steps: int) -> list[list[int]]:
    # Reversing the order between steps lets every variable condition on every
    # other one somewhere in the stack.
    forward = list(range(features))
    return [forward if k % 2 == 0 else forward[::-1] for k in range(steps)]


class GaussianPrior(nn.Module):
    """Standard normal prior ``p(z) = N(0, I)`` over ``D`` dimensions."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("_anchor", torch.zeros(()))  # carries device and dtype

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D) -> (B, D)``: terms that sum to ``log p(z)``."""
        return standard_normal_log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D) -> (B,)``."""
        return self.log_prob_per_dim(z).sum(-1)

    def rsample(
        self, n: int, eps: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` samples ``(n, D)``; ``eps`` fixes the base noise."""
        if eps is None:
            eps = torch.randn(
                n, self.features, generator=generator, device=self._anchor.device, dtype=self._anchor.dtype
            )
        return eps

    @torch.no_grad()
    def sample(self, n: int, eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rsample(n, eps, generator)


class FlowPrior(GaussianPrior):
    """A standard normal pushed through ``self.steps`` (autoregressive flow steps,
    each ``forward -> (y, log-det per dim)`` in one pass and a sequential
    ``inverse``); the subclass builds the steps. ``log p(z) = log N(eps) + sum log-det``."""

    steps: nn.ModuleList

    def _check(self, z: torch.Tensor) -> None:
        """Hook: validate a code before the steps read it (no-op here)."""

    def to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass per step: ``z (B, D) -> eps (B, D), log-det per dim (B, D)``."""
        self._check(z)
        logdet = torch.zeros_like(z)
        for step in self.steps:
            z, ld = step(z)
            logdet = logdet + ld
        return z, logdet

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D) -> (B, D)``: terms that sum to ``log p(z)``."""
        eps, logdet = self.to_noise(z)
        return standard_normal_log_prob(eps) + logdet

    def rsample(
        self, n: int, eps: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` samples ``(n, D)`` through the sequential inverse; ``eps (n, D)`` fixes the noise."""
        z = super().rsample(n, eps, generator)
        self._check(z)
        for step in reversed(self.steps):
            z, _ = step.inverse(z)
        return z


class AFPrior(FlowPrior):
    """The VLAE paper's autoregressive-flow prior.

    ``eps = f_K(...f_1(z))`` with each ``f_k`` an :class:`AffineAutoregressive`
    step, order reversed between steps, ``eps ~ N(0, I)``:

        log p(z) = log N(eps; 0, I) + sum_k log|det df_k|

    Args:
        features: ``D``, the latent dimension.
        steps: ``K`` flow steps.
        hidden: MADE hidden widths per step (the paper: three layers of 640).
        mean_only: volume-preserving steps (the paper's choice).
        activation: MADE activation (the paper: ReLU).
    """

    def __init__(
        self,
        features: int,
        steps: int = 4,
        hidden: Sequence[int] = (640, 640, 640),
        mean_only: bool = True,
        activation: str = "relu",
    ):
        super().__init__(features)
        self.steps = nn.ModuleList(
            AffineAutoregressive(features, hidden, order, mean_only=mean_only, activation=activation)
            for order in _alternating_orders(features, steps)
        )


class IAFPosterior(nn.Module):
    """Posterior ``q(z|x)``: the encoder's diagonal Gaussian, optionally
    followed by ``K`` inverse autoregressive flow steps that read the encoder's
    context ``h`` (``K = 0``: the plain diagonal Gaussian).

        z_0 = mu + sigma * eps,    z_k = z_{k-1} * exp(s_k) + m_k,
        log q(z_K|x) = sum log N(eps) - sum log sigma - sum_k sum s_k

    Args:
        features: ``D``.
        steps: ``K`` IAF steps.
        hidden: MADE hidden widths per step.
        context: size of the encoder context ``h`` (used when ``K > 0``).
        mean_only: volume-preserving steps.
        activation: MADE activation.
    """

    def __init__(
        self,
        features: int,
        steps: int = 0,
        hidden: Sequence[int] = (320, 320),
        context: int = 0,
        mean_only: bool = False,
        activation: str = "elu",
    ):
        super().__init__()
        self.features, self.context = features, context
        self.steps = nn.ModuleList(
            AffineAutoregressive(features, hidden, order, context=context, mean_only=mean_only, activation=activation)
            for order in _alternating_orders(features, steps)
        )

    def rsample(
        self, mu: torch.Tensor, log_sigma: torch.Tensor, h: torch.Tensor | None = None, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample and its log-density split per dimension.

        Args:
            mu, log_sigma: ``(B, D)`` from the encoder.
            h: ``(B, C)`` encoder context for the IAF steps.
            eps: ``(B, D)`` base noise (default: fresh standard normal).

        Returns:
            ``z (B, D)`` and ``log q(z|x)`` terms ``(B, D)`` that sum to the density.
        """
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + log_sigma.exp() * eps
        log_q = standard_normal_log_prob(eps) - log_sigma
        for step in self.steps:
            z, ld = step(z, h if self.context else None)
            log_q = log_q - ld
        return z, log_q
