"""From the latent code to the decoder's conditioning maps: ``z (B, D) -> (B, C_c, H, W)``.

The decoder reads ``z`` only through these maps (:mod:`vlae.pixelcnn` adds an unmasked
convolution of them to its masked layers). Two networks, one per kind of code:

- :class:`ConditionUpsampler`, for a flat code (the paper's MNIST model): ``z`` is
  projected to an ``H/4 x W/4`` grid and upsampled twice by stride-2 transposed
  convolutions, with residual blocks at ``H/4`` and ``H/2``;
- :class:`SpatialUpsampler`, for a latent map ``(C_z, H/4, W/4)`` (the paper's CIFAR-10
  model, appendix B): the mirror of :class:`vlae.encoder.SpatialEncoder`, built from
  the same ResNet or DenseNet stages in reverse order.

Example:
    >>> ConditionUpsampler(32, (1, 28, 28), channels=16, cond_channels=4)(torch.zeros(2, 32)).shape
    torch.Size([2, 4, 28, 28])
    >>> SpatialUpsampler((16, 8, 8), (3, 32, 32), 4, stage_channels=(8, 16, 16))(torch.zeros(2, 1024)).shape
    torch.Size([2, 4, 32, 32])

References:
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), section 4 and appendix B.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .encoder import Entry, build_stage, check_spatial_shapes
from .layers import Conv2d, ConvTranspose2d, Linear, ResBlock

__all__ = ["ConditionUpsampler", "SpatialUpsampler"]


class ConditionUpsampler(nn.Module):
    """ResNet that turns ``z: (B, D)`` into the conditioning map ``(B, C_c, H, W)``.

    ``z`` is projected to a ``H/4 x W/4`` grid and upsampled twice by strided
    transposed convolutions, with residual blocks at ``H/4`` and ``H/2`` (the
    paper's 28x28x4 map for MNIST; full-resolution blocks would dominate the cost).
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        channels: int = 32,
        cond_channels: int = 4,
        blocks: int = 1,
        weight_norm: bool = False,
    ):
        super().__init__()
        _, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be multiples of 4, got {height}x{width}")
        self.grid = (channels, height // 4, width // 4)
        self.proj = Linear(latent_dim, channels * (height // 4) * (width // 4), weight_norm=weight_norm)
        wn = weight_norm
        self.net = nn.Sequential(
            *(ResBlock(channels, 3, wn) for _ in range(blocks)),
            nn.ELU(),
            ConvTranspose2d(channels, channels, weight_norm=wn),
            *(ResBlock(channels, 3, wn) for _ in range(blocks)),
            nn.ELU(),
            ConvTranspose2d(channels, channels, weight_norm=wn),
            nn.ELU(),
            Conv2d(channels, cond_channels, 3, weight_norm=wn),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.proj(z).view(z.shape[0], *self.grid))


class SpatialUpsampler(nn.Module):
    """Mirror of :class:`~vlae.encoder.SpatialEncoder`: ``z (B, D)`` -> conditioning maps ``(B, C_c, H, W)``.

    1x1 conv, the 1/4-resolution stage, stride-2 transposed conv, the
    1/2-resolution stage, stride-2 transposed conv, the full-resolution stage,
    3x3 conv to ``cond_channels`` maps (the encoder's layers in reverse).

    Args:
        latent_shape, image_shape, stage_channels, stage_blocks, kind, dense_steps,
        weight_norm: as for :class:`~vlae.encoder.SpatialEncoder` (stages listed from full resolution).
        cond_channels: ``C_c``.
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        image_shape: Sequence[int] = (3, 32, 32),
        cond_channels: int = 4,
        stage_channels: Sequence[int] = (48, 96, 96),
        stage_blocks: Sequence[int] = (2, 2, 3),
        kind: str = "resnet",
        dense_steps: int = 3,
        weight_norm: bool = False,
    ):
        super().__init__()
        latent_shape, _ = check_spatial_shapes(latent_shape, image_shape, stage_channels, stage_blocks, kind)
        wn = weight_norm
        entry: Entry = lambda i, o: Conv2d(i, o, 1, weight_norm=wn)  # noqa: E731
        up: Entry = lambda i, o: nn.Sequential(nn.ELU(), ConvTranspose2d(i, o, weight_norm=wn))  # noqa: E731
        layers: list[nn.Module] = []
        channels = latent_shape[0]
        for k, (width, blocks) in enumerate(zip(reversed(stage_channels), reversed(stage_blocks))):
            stage, channels = build_stage(kind, channels, width, blocks, dense_steps, entry if k == 0 else up, wn)
            layers += stage
        layers += [nn.ELU(), Conv2d(channels, cond_channels, 3, weight_norm=wn)]
        self.net = nn.Sequential(*layers)
        self.latent_shape = latent_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], *self.latent_shape))
