"""The AF prior over a spatial latent code: autoregressive flow steps whose
parameters come from a small PixelCNN over the latent map.

The paper's CIFAR-10 code is 16 feature maps of 8x8. Its prior is a factorized
Gaussian pushed through 6 autoregressive-flow steps, each parameterised by a
PixelCNN with 2 hidden layers of 128 feature maps, the order reversed between
steps (Chen et al., 2017, appendix B). Each step maps a code ``x`` to

    y = x * exp(s(x)) + m(x)          (mean-only: s = 0, volume preserving)

in **one pass**, with ``m`` and ``s`` at variable ``d`` functions of the
variables before ``d`` only; ``log|dy/dx| = sum s``. ``z -> eps`` runs the
one-pass direction, so ``log p(z) = log N(eps; 0, I) + sum log-det``; sampling
runs the sequential inverse.

**Order.** Variables are ordered position-major: raster order over the ``h x w``
positions and, within a position, channel ``0, 1, ..., C-1``. The networks
enforce it with *channel-autoregressive* masks, as in the IAF paper's
ResNet-VAE and the PixelCNN's RGB masks: every kernel tap at an earlier position
reads all channels, the centre tap reads only earlier channel *groups* (strictly
on the first layer, non-strictly afterwards; each hidden unit belongs to one of
``C`` groups). So variable ``(c, i)`` sees every channel of every earlier
position it can reach and channels ``< c`` of its own position -- each step is
strictly triangular in the full ``D``-variable order, and channels of one
position are modelled jointly instead of independently. (Ordering by position
only, with all channels of a position depending on earlier positions only, is
also triangular but leaves a position's channels independent given the past in
every step.) Reversing the order -- every other step -- flips the map over all of
``(C, h, w)``: raster order reversed and channels reversed.

**Layout.** At the model boundary ``z`` is flat ``(B, D)``, ``D = C*h*w``,
row-major ``(C, h, w)``; :func:`latent_map` turns any ``(..., D)`` tensor (a
code, per-dimension KL) into ``(..., C, h, w)``.

Example:
    >>> prior = SpatialAFPrior((2, 3, 3), steps=2, hidden=8, layers=1)
    >>> z = prior.rsample(4)
    >>> z.shape, prior.log_prob(z).shape
    (torch.Size([4, 18]), torch.Size([4]))

References:
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), section 3 and appendix B.
    Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow (2016).
    van den Oord et al., Pixel Recurrent Neural Networks (2016), section 3.4 (channel masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import VLAEError
from .flows import FlowPrior
from .layers import Conv2d
from .masked_conv import make_mask

__all__ = ["latent_map", "ChannelMaskedConv2d", "LatentPixelCNN", "PixelCNNAutoregressive", "SpatialAFPrior"]


def latent_map(values: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """View ``(..., D)`` per-dimension values as ``(..., C, h, w)``.

    Example:
        >>> latent_map(torch.arange(18.), (2, 3, 3))[1, 0]
        tensor([ 9., 10., 11.])
    """
    shape = tuple(int(s) for s in latent_shape)
    if values.shape[-1] != math.prod(shape):
        raise VLAEError(f"cannot view {values.shape[-1]} latent dimensions as a {'x'.join(map(str, shape))} map")
    return values.reshape(*values.shape[:-1], *shape)


def _groups(units: int, groups: int) -> torch.Tensor:
    # Contiguous, equal-as-possible blocks: unit k belongs to group k * G // units.
    return torch.arange(units) * groups // units


class ChannelMaskedConv2d(Conv2d):
    """A masked convolution autoregressive over positions *and* channel groups.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``, "same" zero padding. Taps at
    earlier positions (the type-``A`` spatial mask of
    :func:`vlae.masked_conv.make_mask`) read every input channel; the centre tap
    connects input unit ``i`` to output unit ``o`` only if
    ``in_groups[i] < out_groups[o]`` (``strict``) or ``<=`` (not strict).

    Args:
        in_groups, out_groups: group of every input / output channel.
        kernel_size: odd side ``k``.
        strict: the first layer of a network (an output must not see its own variable).
    """

    mask: torch.Tensor

    def __init__(
        self,
        in_groups: torch.Tensor,
        out_groups: torch.Tensor,
        kernel_size: int = 3,
        strict: bool = False,
        weight_norm: bool = False,
    ):
        spatial = make_mask(kernel_size, "A")
        super().__init__(len(in_groups), len(out_groups), kernel_size, weight_norm=weight_norm, mask=spatial)
        centre = out_groups[:, None] > in_groups[None, :] if strict else out_groups[:, None] >= in_groups[None, :]
        mask = spatial.expand(len(out_groups), len(in_groups), kernel_size, kernel_size).clone()
        mask[:, :, kernel_size // 2, kernel_size // 2] = centre.to(mask.dtype)
        self.mask = mask.to(self.weight.dtype)  # replaces the spatial-only buffer
        self.strict = strict

    def connectivity(self, height: int, width: int) -> torch.Tensor:
        """``(C_out*h*w, C_in*h*w)`` bool: which input unit each output unit reads
        on an ``h x w`` map, both flattened row-major ``(C, h, w)``."""
        k = self.mask.shape[-1]
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[None, :] - ys[:, None] + k // 2  # [p, q]: tap reading q from output p
        dx = xs[None, :] - xs[:, None] + k // 2
        inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
        taps = self.mask[:, :, dy.clamp(0, k - 1), dx.clamp(0, k - 1)] != 0  # (o, i, p, q)
        taps = taps & inside
        o, i, p, _ = taps.shape
        return taps.permute(0, 2, 1, 3).reshape(o * p, i * p)


class LatentPixelCNN(nn.Module):
    """PixelCNN over a latent map: ``(B, C, h, w) -> (B, n_params, C, h, w)``.

    ``layers`` hidden layers of ``hidden`` feature maps (ELU), channel-
    autoregressive masks throughout; output ``[:, k, c]`` at a position depends
    only on variables before ``(c, position)`` in position-major order. The
    output layer is initialised small so each step starts near the identity.

    Args:
        channels: ``C``.
        hidden: feature maps per hidden layer (at least ``C``, so every channel
            group has units).
        layers: hidden layers (the paper: 2).
        kernel_size: odd kernel side.
        n_params: outputs per variable (1: shift; 2: shift and log-scale).
        weight_norm: weight-normalised hidden layers (data-dependent init).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 128,
        layers: int = 2,
        kernel_size: int = 3,
        n_params: int = 1,
        weight_norm: bool = False,
    ):
        super().__init__()
        if hidden < channels:
            raise ValueError(f"hidden={hidden} must be >= channels={channels}")
        groups_in, groups_hid = torch.arange(channels), _groups(hidden, channels)
        groups_out = torch.arange(channels).repeat(n_params)
        widths = [groups_in] + [groups_hid] * layers + [groups_out]
        self.convs = nn.ModuleList(
            ChannelMaskedConv2d(
                widths[k], widths[k + 1], kernel_size, strict=k == 0, weight_norm=weight_norm and k < layers
            )
            for k in range(layers + 1)
        )
        with torch.no_grad():
            self.convs[-1].weight.mul_(0.1)
            self.convs[-1].bias.zero_()
        self.channels, self.n_params = channels, n_params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k, conv in enumerate(self.convs):
            h = conv(F.elu(h) if k > 0 else h)
        return h.view(x.shape[0], self.n_params, *x.shape[1:])

    def connectivity(self, height: int, width: int) -> torch.Tensor:
        """``(D, D)`` bool, ``D = C*h*w`` (row-major ``(C, h, w)``): entry
        ``[d, e]`` is true iff some output for variable ``d`` depends on input
        ``e``, derived from the masks (cost ``O((hidden*h*w)^2)``: small maps)."""
        reach = self.convs[0].connectivity(height, width).double()
        for conv in self.convs[1:]:
            reach = (conv.connectivity(height, width).double() @ reach).clamp_max(1)
        d = self.channels * height * width
        return reach.view(self.n_params, d, d).amax(0) > 0


class PixelCNNAutoregressive(nn.Module):
    """One AF step on a flat code ``(B, D)``: ``y = x * exp(s(x)) + m(x)``.

    Args:
        latent_shape: ``(C, h, w)``.
        hidden, layers, kernel_size, weight_norm: of the :class:`LatentPixelCNN`.
        reverse: use the reversed order (flip ``(C, h, w)`` around the network).
        mean_only: ``s = 0`` (the paper's choice).
        scale_bound: ``B`` in ``s = B * tanh(raw / B)``.
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        hidden: int = 128,
        layers: int = 2,
        kernel_size: int = 3,
        reverse: bool = False,
        mean_only: bool = True,
        scale_bound: float = 3.0,
        weight_norm: bool = False,
    ):
        super().__init__()
        c, h, w = (int(s) for s in latent_shape)
        self.latent_shape = (c, h, w)
        self.features = math.prod(self.latent_shape)
        self.reverse, self.mean_only, self.scale_bound = reverse, mean_only, scale_bound
        self.net = LatentPixelCNN(self.latent_shape[0], hidden, layers, kernel_size, 1 if mean_only else 2, weight_norm)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = (-3, -2, -1)
        m = latent_map(x, self.latent_shape)
        out = self.net(m.flip(dims) if self.reverse else m)
        out = (out.flip(dims) if self.reverse else out).flatten(2)
        shift = out[:, 0]
        if self.mean_only:
            return torch.zeros_like(shift), shift
        return self.scale_bound * torch.tanh(out[:, 1] / self.scale_bound), shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``x (B, D) -> y (B, D), log|dy/dx| per dimension (B, D)``."""
        log_scale, shift = self._params(x)
        return x * log_scale.exp() + shift, log_scale

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequential: ``y (B, D) -> x (B, D), log|dy/dx| per dimension at x``.

        Fixed-point passes ``x <- (y - m(x)) * exp(-s(x))``: after pass ``t`` the
        first ``t`` variables in the order are exact, so ``D`` passes suffice; a
        pass that changes nothing has reached the fixed point (the next pass would
        compute the same thing), so the loop stops there -- usually far sooner,
        since a variable waits only for its longest chain of dependencies.
        """
        x = torch.zeros_like(y)
        log_scale = torch.zeros_like(y)
        for _ in range(self.features):
            log_scale, shift = self._params(x)
            x_new = (y - shift) * torch.exp(-log_scale)
            if torch.equal(x_new, x):
                break
            x = x_new
        return x, log_scale

    def connectivity(self) -> torch.Tensor:
        """``(D, D)`` bool: ``[d, e]`` iff ``m_d`` or ``s_d`` depends on ``x_e`` (flat
        ``(C, h, w)`` indices). Strictly lower triangular in this step's order."""
        _, h, w = self.latent_shape
        reach = self.net.connectivity(h, w)
        # Flipping all of (C, h, w) reverses the flat index.
        return reach.flip(0, 1) if self.reverse else reach

    def order(self) -> torch.Tensor:
        """Flat ``(C, h, w)`` indices in this step's autoregressive order
        (position-major, channels within a position)."""
        c, h, w = self.latent_shape
        forward = torch.arange(self.features).view(c, h * w).t().flatten()
        return forward.flip(0) if self.reverse else forward


class SpatialAFPrior(FlowPrior):
    """The AF prior over a ``(C, h, w)`` latent map (flat ``(B, D)`` outside).

    ``eps = f_K(...f_1(z))`` with :class:`PixelCNNAutoregressive` steps, the
    order reversed in every other step, ``eps ~ N(0, I)``:

        log p(z) = log N(eps; 0, I) + sum_k log|det df_k/dz|

    Args:
        latent_shape: ``(C, h, w)`` (the paper: ``(16, 8, 8)``).
        steps: flow steps (the paper: 6).
        hidden: feature maps per PixelCNN hidden layer (the paper: 128).
        layers: PixelCNN hidden layers (the paper: 2).
        kernel_size: PixelCNN kernel side.
        mean_only: volume-preserving steps (the paper's choice).
        weight_norm: weight-normalised hidden layers.
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        steps: int = 6,
        hidden: int = 128,
        layers: int = 2,
        kernel_size: int = 3,
        mean_only: bool = True,
        weight_norm: bool = False,
    ):
        c, h, w = (int(s) for s in latent_shape)
        latent_shape = (c, h, w)
        super().__init__(math.prod(latent_shape))
        self.latent_shape = latent_shape
        self.steps = nn.ModuleList(
            PixelCNNAutoregressive(
                latent_shape,
                hidden,
                layers,
                kernel_size,
                reverse=k % 2 == 1,
                mean_only=mean_only,
                weight_norm=weight_norm,
            )
            for k in range(steps)
        )

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.features:
            raise VLAEError(f"latent codes must have shape (B, {self.features}), got {tuple(z.shape)}")
