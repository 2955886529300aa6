"""Solution of exercise 4 -- MADE and the autoregressive-flow (AF) prior.

Task
    VLAE's prior p(z) is an autoregressive flow: ``eps = f(z)`` with
    ``eps ~ N(0, I)``, each step an affine map whose shift and scale for variable
    ``d`` are computed by a MADE from the variables before ``d``. You implement:

    1. ``made_degrees(features, hidden, order)``: the degree of every input and
       hidden unit.
    2. ``made_masks(degrees)``: the 0/1 connectivity masks of the hidden layers
       (a unit reads units of degree ``<=`` its own) and of the output layer
       (strictly ``<``).
    3. ``AffineAutoregressive.forward`` (one pass, with its log-determinant) and
       ``.inverse`` (``D`` passes).
    4. ``AFPrior``: steps whose order is reversed from one step to the next,
       ``to_noise``, ``log_prob`` and ``sample``.

    ``MADE`` itself (the network that uses your masks) is given.

Paper
    VLAE (Chen et al., ICLR 2017), "Learned prior with autoregressive flow": an
    AF prior with a diagonal-Gaussian posterior gives the same bound as an IAF
    posterior, at a lower cost. MADE: Germain et al. (2015), "MADE: Masked
    Autoencoder for Distribution Estimation", section 4. In this repository:
    ``paper_notes.md`` section 3, ``src/vlae/made.py``, ``src/vlae/flows.py``.

    The paper's AF steps are *mean-only*: ``s = 0``, ``y = x + m(x)``, a
    volume-preserving map whose log-determinant is zero (chosen for stability).
    This exercise builds the general scale-and-shift step (as in IAF and MAF),
    so that the log-determinant is there to get right; the library offers both
    (``vlae.flows.AFPrior(..., mean_only=True)``, the default, as in the paper).

Prerequisites
    The change-of-variables formula, ``log p(z) = log N(f(z); 0, I) + log|det df/dz|``.

Expected time
    45-60 minutes.

Run
    python exercises/exercise_04_flow_prior.py              # check your code
    python exercises/exercise_04_flow_prior.py --solution   # check the reference solution
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from vlae.made import MaskedLinear  # nn.Linear whose weight is multiplied by a fixed (out, in) 0/1 mask


def made_degrees(features: int, hidden: Sequence[int], order: Sequence[int]) -> list[torch.Tensor]:
    """Degrees of MADE's units: ``[inputs (D,), hidden layer 1 (H_1,), ...]`` (long tensors).

    - Input ``d`` gets degree ``1 + (its position in order)``: ``order[0]`` comes
      first and has degree 1. (Careful: variable ``order[i]`` has degree
      ``i + 1``, which is not the same as variable ``i`` having ``order[i] + 1``.)
    - Hidden units get degrees in ``1 .. D-1``, and every layer must contain
      each of these values (cycle through them). A unit of degree ``D`` would be
      useless (no output may read it); one of degree 0 would read nothing.

    Example:
        >>> made_degrees(3, [4], [2, 0, 1])
        [tensor([2, 3, 1]), tensor([1, 2, 1, 2])]
    """
    inputs = torch.empty(features, dtype=torch.long)
    inputs[torch.as_tensor(list(order), dtype=torch.long)] = torch.arange(1, features + 1)
    cycle = max(1, features - 1)  # D = 1: no hidden unit may feed an output anyway
    return [inputs] + [torch.arange(width) % cycle + 1 for width in hidden]


def made_masks(degrees: list[torch.Tensor]) -> list[torch.Tensor]:
    """Masks ``(out, in)`` of float 0/1 for every hidden layer and the output layer.

    Args:
        degrees: ``[inputs (D,), hidden 1, ..., hidden L]`` as from :func:`made_degrees`.

    Returns:
        ``L + 1`` masks. Hidden layer ``l``: ``mask[k, j] = 1`` when unit ``k``
        (degree ``m_k``) may read unit ``j`` of the layer below (degree ``m_j``),
        i.e. ``m_k >= m_j``. Output layer (one output per variable, ``(D, H_L)``):
        output ``d`` may read hidden unit ``j`` only when ``degree(d) > m_j``
        (strictly), so it never sees its own variable.
    """
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((degrees[0][:, None] > degrees[-1][None, :]).float())  # strict: output d never sees x_d
    return masks


class MADE(nn.Module):
    """``(B, D) -> (B, n_params, D)``: output ``[:, p, d]`` depends only on the
    variables before ``d`` in ``order``. (Given: uses your degrees and masks.)"""

    def __init__(self, features: int, hidden: Sequence[int], order: Sequence[int], n_params: int = 2,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features, self.n_params = features, n_params
        masks = made_masks(made_degrees(features, hidden, order))
        layers: list[nn.Module] = []
        for mask in masks[:-1]:
            layers += [MaskedLinear(mask), activation()]
        self.net = nn.Sequential(*layers)
        self.out = MaskedLinear(masks[-1].repeat(n_params, 1))  # n_params outputs per variable
        with torch.no_grad():  # start near the identity map
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x)).view(x.shape[0], self.n_params, self.features)


class AffineAutoregressive(nn.Module):
    """One flow step ``y = x * exp(s(x)) + m(x)``, where ``s_d`` and ``m_d`` depend
    only on the variables before ``d`` in ``order``.

    The Jacobian ``dy/dx`` is triangular (in the order) with diagonal ``exp(s)``,
    so ``log|det dy/dx| = sum_d s_d``.
    """

    def __init__(self, features: int, hidden: Sequence[int], order: Sequence[int],
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features, self.order = features, list(order)
        self.made = MADE(features, hidden, self.order, n_params=2, activation=activation)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_scale s, shift m)``, each ``(B, D)``; ``s`` is soft-bounded to (-3, 3)."""
        out = self.made(x)
        return 3.0 * torch.tanh(out[:, 0] / 3.0), out[:, 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``x (B, D) -> y (B, D), log|det dy/dx| (B,)``."""
        log_scale, shift = self.params(x)
        return x * log_scale.exp() + shift, log_scale.sum(-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B, D) -> x (B, D)`` with ``forward(x)[0] == y``.

        ``s`` and ``m`` depend on ``x``, which is unknown: start from any ``x``
        (zeros); after one pass the first variable in the order is exact, after
        two the first two, ... after ``D`` passes all of them.
        """
        x = torch.zeros_like(y)
        for _ in range(self.features):
            log_scale, shift = self.params(x)
            x = (y - shift) * torch.exp(-log_scale)
        return x


class AFPrior(nn.Module):
    """Autoregressive-flow prior: ``eps = f_K(... f_1(z))``, ``eps ~ N(0, I)``.

    Step ``k`` is an :class:`AffineAutoregressive` with order ``0, 1, ..., D-1``
    for even ``k`` and the reverse for odd ``k`` (each step conditions on what
    the previous one could not).

    Example:
        >>> prior = AFPrior(4, steps=2, hidden=[8])
        >>> z = prior.sample(5)
        >>> prior.log_prob(z).shape
        torch.Size([5])
    """

    def __init__(self, features: int, steps: int = 2, hidden: Sequence[int] = (32, 32),
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features = features
        forward = list(range(features))
        orders = [forward if k % 2 == 0 else forward[::-1] for k in range(steps)]
        self.steps = nn.ModuleList(AffineAutoregressive(features, hidden, order, activation) for order in orders)

    def to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, D) -> eps (B, D), log|det d eps / dz| (B,)``: every step's forward, in turn."""
        logdet = z.new_zeros(z.shape[0])
        for step in self.steps:
            z, step_logdet = step(z)
            logdet = logdet + step_logdet
        return z, logdet

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)``, ``(B, D) -> (B,)``, by the change of variables."""
        eps, logdet = self.to_noise(z)
        return (-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1) + logdet

    def sample(self, n: int, eps: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``n`` samples ``(n, D)``: ``eps ~ N(0, I)`` (or the given ``eps``) mapped back
        through the steps' inverses."""
        if eps is None:
            anchor = next(self.parameters())
            eps = torch.randn(n, self.features, generator=generator, dtype=anchor.dtype)
        z = eps
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
