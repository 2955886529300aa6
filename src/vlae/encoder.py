"""Encoder q(z|x) and, for spatial latents, its mirror from z to the decoder's
conditioning maps.

Flat latents (the paper's MNIST model), :class:`Encoder`:
``x (B, C, H, W) -> mu (B, D), log_sigma (B, D), h (B, C_h)``. Two strided
convolutions take ``HxW`` to ``H/4 x W/4``, with residual blocks (ELU) at
``H/2`` and ``H/4`` -- none at full resolution, where they would cost the most;
a linear layer reads off the Gaussian's parameters and, for the IAF posterior,
a context vector ``h``.

Spatial latents (the paper's CIFAR-10 model, appendix B), :class:`SpatialEncoder`:
a ``(C_z, H/4, W/4)`` code read off by a 1x1 convolution,

    stem conv -> 2 ResNet blocks -> stride-2 conv -> 2 ResNet blocks
              -> stride-2 conv -> 3 ResNet blocks -> 1x1 conv

with 48 channels at full resolution and 96 below (``stage_channels``,
``stage_blocks``); ELU, weight normalisation with data-dependent init.
Its mirror from ``z`` to the conditioning maps, :class:`vlae.conditioning.SpatialUpsampler`,
is built from the same stages (:func:`build_stage`).
``mu`` and ``log_sigma`` leave flat, ``(B, D)`` row-major ``(C_z, h, w)``
(:func:`vlae.spatial_prior.latent_map` views them as maps again).

The DenseNet variant (``kind="densenet"``) replaces each pair of ResNet blocks
(rounded up) with a dense block of ``dense_steps`` steps (ELU, 3x3 conv,
concatenate). A block starts from ``g = ceil(width / (steps + 1))`` channels
made by the convolution before it (stem, strided, transposed or 1x1) and ends
with ``(steps + 1) * g >= width`` concatenated maps: at least as many as the
ResNet stage, as the paper describes.

The spatial networks receive images already scaled to ``[-1, 1]`` by the model.

Example:
    >>> enc = Encoder(latent_dim=32, channels=16)
    >>> mu, log_sigma, h = enc(torch.zeros(4, 1, 28, 28))
    >>> mu.shape, h.shape
    (torch.Size([4, 32]), torch.Size([4, 0]))
    >>> enc = SpatialEncoder((16, 8, 8), (3, 32, 32), stage_channels=(8, 16, 16), stage_blocks=(1, 1, 1))
    >>> enc(torch.zeros(2, 3, 32, 32))[0].shape
    torch.Size([2, 1024])
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ENCODER_KINDS
from .layers import Conv2d, Linear, ResBlock

__all__ = ["Encoder", "SpatialEncoder", "DenseBlock", "ENCODER_KINDS"]

# Output scales of the data-dependent init in the spatial networks. With unit-variance
# residual branches, seven blocks multiply the variance by 2^7, and a single Adamax
# step (every weight moves by lr) then shifts log sigma by several units: the KL of a
# paper-sized model reached 1e10 nats after one step. Small residual branches and a
# small head keep the first steps stable (as in the IAF and PixelCNN++ code bases).
RESIDUAL_INIT = 0.1
HEAD_INIT = 0.1


class Encoder(nn.Module):
    """ResNet encoder to the parameters of a diagonal Gaussian.

    Args:
        latent_dim: ``D``.
        image_shape: ``(C, H, W)`` with ``H`` and ``W`` multiples of 4.
        channels: feature maps at every resolution.
        blocks: residual blocks per resolution.
        context_dim: size of the context ``h`` handed to IAF steps (0: none).
        weight_norm: weight-normalised layers.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        channels: int = 32,
        blocks: int = 1,
        context_dim: int = 0,
        weight_norm: bool = False,
    ):
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
        out = self.head(F.elu(self.net(x)).flatten(1))  # x arrives scaled to [-1, 1] by the model
        mu, log_sigma, h = out.split([self.latent_dim, self.latent_dim, self.context_dim], dim=1)
        return mu, log_sigma, h


class DenseBlock(nn.Module):
    """``steps`` times: ``h <- concat(h, conv3x3(elu(h)))``.

    ``(B, C, H, W) -> (B, C + steps * growth, H, W)``.
    """

    def __init__(self, channels: int, growth: int, steps: int = 3, weight_norm: bool = False):
        super().__init__()
        self.convs = nn.ModuleList(
            Conv2d(channels + k * growth, growth, 3, weight_norm=weight_norm) for k in range(steps)
        )
        self.out_channels = channels + steps * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(F.elu(x))], dim=1)
        return x


Entry = Callable[[int, int], nn.Module]  # (in_channels, out_channels) -> the layer that opens a stage


def build_stage(
    kind: str, in_channels: int, width: int, blocks: int, dense_steps: int, entry: Entry, weight_norm: bool
) -> tuple[list[nn.Module], int]:
    """One resolution of the spatial networks (:class:`SpatialEncoder` and its mirror
    :class:`vlae.conditioning.SpatialUpsampler`): the entry layer, then ResNet blocks or
    dense blocks. Returns the layers and their output channels."""
    wn = weight_norm
    if kind == "resnet" or blocks == 0:
        return [entry(in_channels, width)] + [ResBlock(width, 3, wn, RESIDUAL_INIT) for _ in range(blocks)], width
    growth = -(-width // (dense_steps + 1))
    layers: list[nn.Module] = []
    channels = in_channels
    for k in range(-(-blocks // 2)):  # one dense block per pair of ResNet blocks
        layers.append(
            entry(channels, growth) if k == 0 else nn.Sequential(nn.ELU(), Conv2d(channels, growth, 1, weight_norm=wn))
        )
        block = DenseBlock(growth, growth, dense_steps, wn)
        layers.append(block)
        channels = block.out_channels
    return layers, channels


def check_spatial_shapes(
    latent_shape: Sequence[int],
    image_shape: Sequence[int],
    stage_channels: Sequence[int],
    stage_blocks: Sequence[int],
    kind: str,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(latent_shape, image_shape)`` as int triples, or a ``ValueError`` naming what does not fit."""
    latent_shape, image_shape = tuple(int(s) for s in latent_shape), tuple(int(s) for s in image_shape)
    if len(latent_shape) != 3 or len(image_shape) != 3:
        raise ValueError(f"latent and image shapes must be (C, H, W), got {latent_shape} and {image_shape}")
    if image_shape[1:] != (4 * latent_shape[1], 4 * latent_shape[2]):
        raise ValueError(
            f"a {latent_shape[1]}x{latent_shape[2]} latent map needs "
            f"{4 * latent_shape[1]}x{4 * latent_shape[2]} images, got {image_shape[1]}x{image_shape[2]}"
        )
    if len(stage_channels) != 3 or len(stage_blocks) != 3:
        raise ValueError("stage_channels and stage_blocks need one entry per resolution (full, 1/2, 1/4)")
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {ENCODER_KINDS}")
    return latent_shape, image_shape


class SpatialEncoder(nn.Module):
    """The paper's CIFAR-10 encoder: ``x (B, C, H, W)`` in ``[-1, 1]`` ->
    ``mu (B, D), log_sigma (B, D), h (B, context_dim)``, ``D = C_z * H/4 * W/4``.

    Args:
        latent_shape: ``(C_z, H/4, W/4)``.
        image_shape: ``(C, H, W)``.
        stage_channels: feature maps at full, 1/2 and 1/4 resolution (the paper: 48, 96, 96).
        stage_blocks: ResNet blocks at each resolution (the paper: 2, 2, 3).
        kind: ``"resnet"`` or ``"densenet"``.
        dense_steps: steps per dense block (the paper: 3).
        context_dim: size of the context ``h`` for IAF steps (0: none), read
            from the last feature maps by a linear layer.
        weight_norm: weight-normalised layers (the paper: yes, data-dependent init).
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        image_shape: Sequence[int] = (3, 32, 32),
        stage_channels: Sequence[int] = (48, 96, 96),
        stage_blocks: Sequence[int] = (2, 2, 3),
        kind: str = "resnet",
        dense_steps: int = 3,
        context_dim: int = 0,
        weight_norm: bool = False,
    ):
        super().__init__()
        latent_shape, image_shape = check_spatial_shapes(latent_shape, image_shape, stage_channels, stage_blocks, kind)
        wn = weight_norm
        stem: Entry = lambda i, o: Conv2d(i, o, 3, weight_norm=wn)  # noqa: E731
        down: Entry = lambda i, o: nn.Sequential(  # noqa: E731
            nn.ELU(), Conv2d(i, o, 3, stride=2, padding=1, weight_norm=wn)
        )
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for k, (width, blocks) in enumerate(zip(stage_channels, stage_blocks)):
            stage, channels = build_stage(kind, channels, width, blocks, dense_steps, stem if k == 0 else down, wn)
            layers += stage
        self.net = nn.Sequential(*layers)
        self.head = Conv2d(channels, 2 * latent_shape[0], 1, weight_norm=wn)
        self.head.init_scale = HEAD_INIT  # q(z|x) starts near N(0, I): a small initial KL
        self.context = (
            Linear(channels * latent_shape[1] * latent_shape[2], context_dim, weight_norm=wn) if context_dim else None
        )
        self.latent_shape, self.context_dim = latent_shape, context_dim
        self.latent_dim = math.prod(latent_shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = F.elu(self.net(x))
        mu, log_sigma = self.head(features).chunk(2, dim=1)
        h = self.context(features.flatten(1)) if self.context is not None else x.new_zeros(x.shape[0], 0)
        return mu.flatten(1), log_sigma.flatten(1), h


def __getattr__(name: str):
    # SpatialUpsampler lives in vlae.conditioning; importable from here for one release.
    if name == "SpatialUpsampler":
        from .conditioning import SpatialUpsampler

        return SpatialUpsampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
