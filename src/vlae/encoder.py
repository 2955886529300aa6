"""Encoder q(z|x): a ResNet from the image to a diagonal Gaussian.

``x (B, 1, H, W) -> mu (B, D), log_sigma (B, D), h (B, C)``. Two strided
convolutions take 28x28 to 7x7, with residual blocks (ELU) at 14x14 and 7x7
-- none at full resolution, where they would cost the most;
a linear layer reads off the Gaussian's parameters and, for the IAF posterior,
a context vector ``h``.

Example:
    >>> enc = Encoder(latent_dim=32, channels=16)
    >>> mu, log_sigma, h = enc(torch.zeros(4, 1, 28, 28))
    >>> mu.shape, h.shape
    (torch.Size([4, 32]), torch.Size([4, 0]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Conv2d, Linear, ResBlock

__all__ = ["Encoder"]


class Encoder(nn.Module):
    """ResNet encoder to the parameters of a diagonal Gaussian.

    Args:
        latent_dim: ``D``.
        image_shape: ``(1, H, W)`` with ``H`` and ``W`` multiples of 4.
        channels: feature maps at every resolution.
        blocks: residual blocks per resolution.
        context_dim: size of the context ``h`` handed to IAF steps (0: none).
        weight_norm: weight-normalised layers.
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int] = (1, 28, 28), channels: int = 32,
                 blocks: int = 1, context_dim: int = 0, weight_norm: bool = False):
        super().__init__()
        c, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be multiples of 4, got {height}x{width}")
        wn = weight_norm
        stages: list[nn.Module] = [Conv2d(c, channels, 3, weight_norm=wn)]
        for _ in range(2):
            stages += [nn.ELU(), Conv2d(channels, channels, 3, stride=2, padding=1, weight_norm=wn)]
            stages += [ResBlock(channels, 3, wn) for _ in range(blocks)]
        self.net = nn.Sequential(*stages)
        self.latent_dim, self.context_dim = latent_dim, context_dim
        self.head = Linear(channels * (height // 4) * (width // 4), 2 * latent_dim + context_dim, weight_norm=wn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head(F.elu(self.net(2 * x - 1)).flatten(1))
        mu, log_sigma, h = out.split([self.latent_dim, self.latent_dim, self.context_dim], dim=1)
        return mu, log_sigma, h
