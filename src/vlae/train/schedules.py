"""The schedules of training: soft free bits (appendix C), KL warm-up, the learning
rate and the Polyak average's warm-up, as functions of the step."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..config import Config

__all__ = ["soft_free_bits_update", "kl_warmup_weight", "lr_lambda", "polyak_multi_avg_fn"]


def soft_free_bits_update(gamma: float, kl: float, target: float, rate: float = 0.1, threshold: float = 0.05) -> float:
    """One update of the KL weight of *soft free bits* (Chen et al., 2017, appendix C).

    Instead of the hard floor ``max(lambda, KL)``, the KL term is weighted by
    ``gamma`` (initially 1, always in ``(0, 1]``), adjusted after every step to keep
    the batch KL at least at the target ``lambda = free_bits * data_dims`` while
    moving the objective as little as possible: when the KL is below the target the
    weight is lowered by ``rate`` (10%), letting information flow into ``z``; when it
    is more than ``threshold`` (the paper: 5%; it found 3-30% all work) above the
    target the weight is raised by 10%, never above 1 (the ELBO's own weight); in
    between it stays.

    >>> soft_free_bits_update(1.0, kl=2.0, target=7.84)
    0.9
    >>> soft_free_bits_update(0.5, kl=10.0, target=7.84)
    0.55
    >>> soft_free_bits_update(0.5, kl=8.0, target=7.84)  # within 5% above the target
    0.5
    """
    if kl < target:
        return gamma * (1 - rate)
    if kl > target * (1 + threshold):
        return min(1.0, gamma * (1 + rate))
    return gamma


def kl_warmup_weight(step: int, warmup_steps: int) -> float:
    """KL weight rising linearly from 0 to 1 over ``warmup_steps`` optimiser steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def lr_lambda(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up, then the configured decay."""
    t = cfg.train
    total = t.max_steps or max(1, t.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / t.lr_warmup_steps) if t.lr_warmup_steps > 0 else 1.0
        if t.lr_decay == "exponential":
            return warm * t.lr_decay_rate ** (step / steps_per_epoch)
        if t.lr_decay == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        return warm

    return factor


def polyak_multi_avg_fn(decay: float) -> Callable:
    """Polyak (exponential moving) averaging of the weights, for ``AveragedModel(multi_avg_fn=...)``.

    Like :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, but the decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average forgets the random initialisation within tens of steps instead of
    ``1 / (1 - decay)`` (500 steps at 0.998): short runs (tests, sweeps under
    a time budget) are evaluated on trained weights, long runs are unaffected.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (MADE degrees) are constants: keep them equal
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update
