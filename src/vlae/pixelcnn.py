"""PixelCNN decoders p(x|z) with an exactly known receptive field.

VLAE's cure for posterior collapse is to give the autoregressive decoder a
*small* receptive field: it can then model local texture on its own but must
read global structure from ``z``. Every decoder here therefore reports the
exact set of input offsets an output pixel depends on
(:meth:`receptive_field`), derived from its layers' masks, and a test checks
that report against the support of the autograd Jacobian.

Decoders map ``x: (B, 1, H, W)`` in {0, 1} and a conditioning feature map
``cond: (B, C_c, H, W)`` (or ``None`` for an unconditional PixelCNN) to Bernoulli
logits ``(B, 1, H, W)``. The conditioning map is computed from ``z`` by
:class:`ConditionUpsampler`; the paper concatenates a 28x28x4 such map with the
image, which is the same as adding an unmasked convolution of the map to the
first masked layer, as done here.

Kinds:
    - :class:`MaskedPixelCNN` (``"masked"``): the decoder of the paper's MNIST
      experiments. Masked 3x3 convolutions in ResNet blocks, 1x1-convolution
      ResNet blocks between every other masked layer, ELU. Has the PixelCNN
      blind spot (pixels up and to the right are missed).
    - :class:`GatedPixelCNN` (``"gated"``): vertical and horizontal stacks with
      tanh * sigmoid gates, no blind spot (van den Oord et al., 2016).
    - :class:`FactorizedDecoder` (``"factorized"``): independent Bernoulli
      pixels given ``z`` -- an empty receptive field, the plain-VAE baseline.

Example:
    >>> dec = MaskedPixelCNN(layers=6, kernel_size=3, filters=12, cond_channels=4)
    >>> dec.receptive_field_extent()
    {'up': 6, 'down': 0, 'left': 6, 'right': 6}
    >>> dec(torch.zeros(2, 1, 28, 28), torch.zeros(2, 4, 28, 28)).shape
    torch.Size([2, 1, 28, 28])

References:
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), sections 3-4, appendix.
    van den Oord et al., Conditional Image Generation with PixelCNN Decoders (2016).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Conv2d, ConvTranspose2d, Linear, ResBlock
from .masked_conv import MaskedConv2d, Offsets, dilate, extent, full_offsets, mask_offsets, make_mask

__all__ = ["MaskedPixelCNN", "GatedPixelCNN", "FactorizedDecoder", "ConditionUpsampler", "DECODERS"]

_ORIGIN: Offsets = frozenset({(0, 0)})
_EMPTY: Offsets = frozenset()


class _Decoder(nn.Module):
    """Shared receptive-field reporting."""

    def receptive_field(self) -> Offsets:
        """Offsets ``(dy, dx)`` of the input pixels each output logit depends on
        (away from the image border; at the border, offsets that fall outside
        the image are simply absent)."""
        raise NotImplementedError  # pragma: no cover

    def condition_field(self) -> Offsets:
        """Offsets of the conditioning-map positions each output logit depends on."""
        raise NotImplementedError  # pragma: no cover

    def receptive_field_extent(self) -> dict[str, int]:
        """Rows above and below, columns left and right that the receptive field spans."""
        return extent(self.receptive_field())

    def receptive_field_size(self) -> int:
        """Number of input pixels an interior output pixel depends on."""
        return len(self.receptive_field())

    def window(self) -> dict[str, int]:
        """Bounding box of everything one output reads (pixels and conditioning
        map): a crop this size around a pixel reproduces its logit exactly, which
        is what the fast sampler relies on."""
        return extent(self.receptive_field() | self.condition_field())


class MaskedPixelCNN(_Decoder):
    """The VLAE paper's MNIST decoder: masked convolutions in ResNet blocks.

    Layer 1 is a type-A masked ``k x k`` convolution of the image (plus an
    unmasked ``k x k`` convolution of the conditioning map); layers 2..L are
    residual blocks ``h + conv_B(elu(h))``. After every other masked layer (but
    the last) come ``blocks_1x1`` residual blocks of 1x1 convolutions, which add
    depth without growing the receptive field.

    Args:
        layers: number of masked convolutions ``L`` (the depth that sets the
            receptive field: ``L * (k // 2)`` rows up and columns each way).
        kernel_size: odd ``k``.
        filters: feature maps per layer.
        cond_channels: channels of the conditioning map (0: unconditional).
        blocks_1x1: 1x1 ResNet blocks after every other masked layer.
        tie_weights: share one weight between all type-B masked layers.
        cond_every_layer: also add a 1x1 convolution of the conditioning map to
            every masked layer.
        weight_norm: weight-normalised layers.
    """

    def __init__(self, layers: int = 6, kernel_size: int = 3, filters: int = 12, cond_channels: int = 4,
                 blocks_1x1: int = 4, tie_weights: bool = True, cond_every_layer: bool = False,
                 weight_norm: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder needs at least one masked layer, got {layers}")
        self.layers, self.kernel_size = layers, kernel_size
        self.cond_channels, self.cond_every_layer = cond_channels, cond_every_layer
        self.first = MaskedConv2d(1, filters, kernel_size, "A", weight_norm=weight_norm)
        self.cond_in = Conv2d(cond_channels, filters, kernel_size, weight_norm=weight_norm) if cond_channels else None
        n_b = layers - 1
        if tie_weights and n_b > 0:
            shared = MaskedConv2d(filters, filters, kernel_size, "B", weight_norm=weight_norm)
            self.masked = nn.ModuleList([shared] * n_b)  # the same module, applied n_b times
        else:
            self.masked = nn.ModuleList(
                MaskedConv2d(filters, filters, kernel_size, "B", weight_norm=weight_norm) for _ in range(n_b))
        self.cond_layers = nn.ModuleList(
            Conv2d(cond_channels, filters, 1, weight_norm=weight_norm) for _ in range(n_b)
        ) if (cond_channels and cond_every_layer) else None
        # 1x1 groups after masked layers 2, 4, ... (1-based), never after the last.
        self.groups = nn.ModuleDict({
            str(l): nn.Sequential(*(ResBlock(filters, 1, weight_norm) for _ in range(blocks_1x1)))
            for l in range(2, layers, 2) if blocks_1x1 > 0
        })
        self.out = Conv2d(filters, 1, 1, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.first(2 * x - 1)
        if self.cond_in is not None:
            h = h + self.cond_in(cond)
        for i, conv in enumerate(self.masked):
            h = h + conv(F.elu(h))
            if self.cond_layers is not None:
                h = h + self.cond_layers[i](cond)
            key = str(i + 2)
            if key in self.groups:
                h = self.groups[key](h)
        return self.out(F.elu(h))

    def _propagate(self, field: Offsets, extra: Offsets) -> Offsets:
        b = mask_offsets(make_mask(self.kernel_size, "B"))
        for _ in range(self.layers - 1):
            field = dilate(field, b) | extra
        return field

    def receptive_field(self) -> Offsets:
        return self._propagate(mask_offsets(make_mask(self.kernel_size, "A")), _EMPTY)

    def condition_field(self) -> Offsets:
        if not self.cond_channels:
            return _EMPTY
        return self._propagate(full_offsets(self.kernel_size), _ORIGIN if self.cond_every_layer else _EMPTY)


class GatedPixelCNN(_Decoder):
    """Gated PixelCNN with vertical and horizontal stacks (no blind spot).

    The vertical stack (``k x k`` masks ``V_A`` then ``V_B``) sees every row
    above the output pixel; the horizontal stack (``1 x k`` masks ``A`` then
    ``B``) sees the pixels to its left in the current row and receives the
    vertical stack through a 1x1 convolution. Each layer is gated,
    ``tanh(a) * sigmoid(b)``; the horizontal stack is residual and feeds skip
    connections that are summed into the output network.

    Args:
        layers: number of gated layers ``L``; the receptive field spans
            ``L * (k // 2)`` rows up and columns each way in the rows above.
        kernel_size: odd ``k``.
        filters: feature maps per stack.
        cond_channels: channels of the conditioning map (0: unconditional).
        cond_every_layer: add a 1x1 convolution of the conditioning map to the
            gates of every layer (the first layer always reads it through an
            unmasked ``k x k`` convolution).
        weight_norm: weight-normalised layers.
    """

    def __init__(self, layers: int = 6, kernel_size: int = 3, filters: int = 32, cond_channels: int = 4,
                 cond_every_layer: bool = True, weight_norm: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder needs at least one gated layer, got {layers}")
        self.layers, self.kernel_size = layers, kernel_size
        self.cond_channels, self.cond_every_layer = cond_channels, cond_every_layer
        wn = weight_norm
        self.v_convs = nn.ModuleList()
        self.h_convs = nn.ModuleList()
        self.v_to_h = nn.ModuleList()
        self.h_out = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.conds = nn.ModuleList()
        for l in range(layers):
            c_in = 1 if l == 0 else filters
            self.v_convs.append(MaskedConv2d(c_in, 2 * filters, kernel_size, "V_A" if l == 0 else "V_B", weight_norm=wn))
            self.h_convs.append(MaskedConv2d(c_in, 2 * filters, (1, kernel_size), "A" if l == 0 else "B", weight_norm=wn))
            self.v_to_h.append(Conv2d(2 * filters, 2 * filters, 1, weight_norm=wn))
            self.h_out.append(Conv2d(filters, filters, 1, weight_norm=wn))
            self.skips.append(Conv2d(filters, filters, 1, weight_norm=wn))
            if cond_channels and (l == 0 or cond_every_layer):
                self.conds.append(Conv2d(cond_channels, 4 * filters, kernel_size if l == 0 else 1, weight_norm=wn))
        self.out1 = Conv2d(filters, filters, 1, weight_norm=wn)
        self.out2 = Conv2d(filters, 1, 1, weight_norm=wn)

    @staticmethod
    def _gate(a: torch.Tensor) -> torch.Tensor:
        t, s = a.chunk(2, dim=1)
        return torch.tanh(t) * torch.sigmoid(s)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        v = h = 2 * x - 1
        skip = 0
        for l in range(self.layers):
            v_pre = self.v_convs[l](v)
            h_pre = self.h_convs[l](h) + self.v_to_h[l](v_pre)
            if l < len(self.conds):
                cv, ch = self.conds[l](cond).chunk(2, dim=1)
                v_pre, h_pre = v_pre + cv, h_pre + ch
            v = self._gate(v_pre)
            g = self._gate(h_pre)
            h = self.h_out[l](g) if l == 0 else h + self.h_out[l](g)
            skip = skip + self.skips[l](g)
        return self.out2(F.elu(self.out1(F.elu(skip))))

    def _propagate(self, v: Offsets, h: Offsets, extra: Offsets) -> Offsets:
        vb = mask_offsets(make_mask(self.kernel_size, "V_B"))
        hb = mask_offsets(make_mask((1, self.kernel_size), "B"))
        for _ in range(self.layers - 1):
            v = dilate(v, vb) | extra
            h = dilate(h, hb) | v | extra
        return h

    def receptive_field(self) -> Offsets:
        v = dilate(_ORIGIN, mask_offsets(make_mask(self.kernel_size, "V_A")))
        h = dilate(_ORIGIN, mask_offsets(make_mask((1, self.kernel_size), "A"))) | v
        return self._propagate(v, h, _EMPTY)

    def condition_field(self) -> Offsets:
        if not self.cond_channels:
            return _EMPTY
        first = full_offsets(self.kernel_size)
        return self._propagate(first, first, _ORIGIN if self.cond_every_layer else _EMPTY)


class FactorizedDecoder(_Decoder):
    """Independent Bernoulli pixels given ``z``: logits from the conditioning
    map alone through 1x1 convolutions; ``x`` is ignored (empty receptive field)."""

    def __init__(self, cond_channels: int = 4, filters: int = 32, weight_norm: bool = False):
        super().__init__()
        if cond_channels < 1:
            raise ValueError("a factorized decoder needs a conditioning map (latent_dim > 0)")
        self.hidden = Conv2d(cond_channels, filters, 1, weight_norm=weight_norm)
        self.out = Conv2d(filters, 1, 1, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(F.elu(self.hidden(cond)))

    def receptive_field(self) -> Offsets:
        return _EMPTY

    def condition_field(self) -> Offsets:
        return _ORIGIN


class ConditionUpsampler(nn.Module):
    """ResNet that turns ``z: (B, D)`` into the conditioning map ``(B, C_c, H, W)``.

    ``z`` is projected to a ``H/4 x W/4`` grid and upsampled twice by strided
    transposed convolutions, with residual blocks at ``H/4`` and ``H/2`` (the
    paper's 28x28x4 map for MNIST; full-resolution blocks would dominate the cost).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int] = (1, 28, 28), channels: int = 32,
                 cond_channels: int = 4, blocks: int = 1, weight_norm: bool = False):
        super().__init__()
        _, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be multiples of 4, got {height}x{width}")
        self.grid = (channels, height // 4, width // 4)
        self.proj = Linear(latent_dim, channels * (height // 4) * (width // 4), weight_norm=weight_norm)
        wn = weight_norm
        self.net = nn.Sequential(
            *(ResBlock(channels, 3, wn) for _ in range(blocks)),
            nn.ELU(), ConvTranspose2d(channels, channels, weight_norm=wn),
            *(ResBlock(channels, 3, wn) for _ in range(blocks)),
            nn.ELU(), ConvTranspose2d(channels, channels, weight_norm=wn),
            nn.ELU(), Conv2d(channels, cond_channels, 3, weight_norm=wn),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.proj(z).view(z.shape[0], *self.grid))


DECODERS = {"masked": MaskedPixelCNN, "gated": GatedPixelCNN, "factorized": FactorizedDecoder}
