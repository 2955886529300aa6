"""MADE: a masked feed-forward network whose output ``d`` depends only on the
inputs that come before ``d`` in a chosen order.

Every unit gets a *degree*. Inputs have degrees ``1..D`` given by their position
in the order; a hidden unit of degree ``m`` may read units of degree ``<= m``;
an output of degree ``m`` may read only hidden units of degree ``< m``
(strictly). So output ``d`` is a function of exactly the inputs ranked before
``d``: the first input's outputs are constants (or functions of the context).

Hidden degrees cycle through ``1..D-1``; with every hidden layer at least
``D - 1`` wide each degree is present in each layer, which makes the
connectivity of every output *exactly* the set of its predecessors (no output
loses an input it is allowed to see).

Example:
    >>> made = MADE(4, [8, 8], n_params=2, order=[3, 2, 1, 0])
    >>> made(torch.randn(5, 4)).shape  # (batch, n_params, D)
    torch.Size([5, 2, 4])

References:
    Germain et al., MADE: Masked Autoencoder for Distribution Estimation (2015).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MADE", "MaskedLinear", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` buffer
    of shape ``(out_features, in_features)`` in the forward pass."""

    computes_weight = True  # the masked weight, on every call (see vlae.layers.frozen_weights)

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def frozen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's forward with its masked weight computed once."""
        return functools.partial(F.linear, weight=(self.weight * self.mask).detach(), bias=self.bias)


class MADE(nn.Module):
    """Masked autoencoder ``(B, D) [, context (B, C)] -> (B, n_params, D)``.

    Args:
        features: ``D``, the number of autoregressive variables.
        hidden: widths of the hidden layers (each at least ``D - 1``).
        n_params: parameters produced per variable (e.g. 2 for shift and scale).
        order: the variables in autoregressive order (``order[0]`` comes first);
            default ``0, 1, ..., D-1``.
        context: size of an optional context vector that every hidden unit and
            every output may read (it carries no autoregressive constraint).
        activation: ``"relu"`` (the paper), ``"elu"``, ``"tanh"`` or ``"gelu"``.
        output_scale: initial output weights are multiplied by this, so a flow
            built on MADE starts close to the identity.
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int],
        n_params: int = 1,
        order: Sequence[int] | None = None,
        context: int = 0,
        activation: str = "relu",
        output_scale: float = 0.1,
    ):
        super().__init__()
        if features < 1:
            raise ValueError(f"MADE needs at least one feature, got {features}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        order = list(range(features)) if order is None else [int(i) for i in order]
        if sorted(order) != list(range(features)):
            raise ValueError(f"order must be a permutation of 0..{features - 1}, got {order}")
        for width in hidden:
            if width < features - 1:
                raise ValueError(
                    f"MADE hidden width {width} < features - 1 = {features - 1}: some outputs would "
                    "lose predecessors they are allowed to see"
                )
        self.features, self.n_params, self.context = features, n_params, context
        degrees_in = torch.empty(features, dtype=torch.long)
        degrees_in[torch.tensor(order)] = torch.arange(1, features + 1)
        self.register_buffer("degrees", degrees_in)

        layers: list[nn.Module] = []
        prev = degrees_in
        for width in hidden:
            deg = torch.arange(width) % max(1, features - 1) + 1
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), ACTIVATIONS[activation]()]
            prev = deg
        out_deg = degrees_in.repeat(n_params)  # output unit p * D + d has the degree of variable d
        self.net = nn.Sequential(*layers)
        self.out = MaskedLinear(out_deg[:, None] > prev[None, :])
        self.hidden_context = nn.Linear(context, hidden[0], bias=False) if (context and hidden) else None
        self.out_context = nn.Linear(context, features * n_params, bias=False) if context else None
        with torch.no_grad():
            self.out.weight.mul_(output_scale)
            self.out.bias.mul_(output_scale)
            if self.out_context is not None:
                self.out_context.weight.mul_(output_scale)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is None) != (self.context == 0):
            raise ValueError(
                f"MADE was built with context size {self.context} but got {'no' if context is None else 'a'} context"
            )
        h = x
        layers = list(self.net)
        for i in range(0, len(layers), 2):
            h = layers[i](h)
            if i == 0 and self.hidden_context is not None:
                h = h + self.hidden_context(context)
            h = layers[i + 1](h)
        out = self.out(h)
        if self.out_context is not None:
            out = out + self.out_context(context)
        return out.view(*x.shape[:-1], self.n_params, self.features)

    def connectivity(self) -> torch.Tensor:
        """``(D, D)`` boolean matrix: entry ``[d, k]`` says whether a path of
        non-masked weights leads from input ``k`` to the outputs of variable ``d``."""
        conn = torch.eye(self.features, dtype=torch.long)
        for layer in [m for m in self.net if isinstance(m, MaskedLinear)] + [self.out]:
            conn = (layer.mask.long() @ conn).clamp_max(1)
        return conn.view(self.n_params, self.features, self.features).amax(0).bool()
