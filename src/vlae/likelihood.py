"""Bernoulli likelihood on binary pixels.

The decoder outputs logits ``l``; ``p(x_i = 1) = sigmoid(l_i)`` and

    log p(x|z) = sum_i x_i * log sigmoid(l_i) + (1 - x_i) * log sigmoid(-l_i)

computed stably by ``binary_cross_entropy_with_logits``. Sampling compares a
uniform number with the probability, so a sample is a deterministic function
of the logits and the uniforms: the fast and naive samplers agree bit for bit
when fed the same uniforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bernoulli_log_prob", "bernoulli_from_uniform"]


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x)`` summed over all but the batch axis: ``(B, ...) -> (B,)``, in nats.

    Computed in at least float32: under bf16 autocast a bf16 sum of 784 terms
    would lose about half a nat per image.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return -nll.flatten(1).sum(1)


def bernoulli_from_uniform(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x = 1[u < sigmoid(logits)]`` as a float tensor of 0/1: a Bernoulli
    sample when ``u ~ U(0, 1)``."""
    return (u < torch.sigmoid(logits)).to(logits.dtype)
