"""PixelCNN decoders p(x|z) with an exactly known receptive field.

VLAE's cure for posterior collapse is to give the autoregressive decoder a
*small* receptive field: it can then model local texture on its own but must
read global structure from ``z``. Every decoder here therefore reports the
exact set of input offsets an output pixel depends on
(:meth:`receptive_field`), derived from its layers' masks, and a test checks
that report against the support of the autograd Jacobian.

Decoders map an image ``x: (B, C, H, W)``, already scaled to [-1, 1] by the
observation model (:meth:`vlae.observation.ObservationModel.scale`), and a
conditioning feature map ``cond: (B, C_c, H, W)`` (or ``None`` for an
unconditional PixelCNN) to ``P`` parameters per pixel ``(B, P, H, W)`` (one
Bernoulli logit, or a logistic mixture's 100 numbers). The conditioning map is
computed from ``z`` by :class:`vlae.conditioning.ConditionUpsampler`; the paper concatenates a
28x28x4 such map with the image, which is the same as adding an unmasked
convolution of the map to the first masked layer, as done here.

Colour: the masks are spatial and act on all input channels alike, so pixel
``i``'s parameters depend on *no* channel of pixel ``i`` or of any later pixel;
the dependence of G on R and of B on R and G within a pixel lives in the
observation model (the mixture's linear mean coefficients), as in PixelCNN++.
With ``gray_context=True`` the decoder sees only the luma
``0.299 R + 0.587 G + 0.114 B`` of the pixels around (the paper's
``p(x_i | z, Grayscale(x_WindowAround(i)))``); the likelihood stays full RGB.

Receptive fields in the paper's notation ``AxB`` (section 4.3): a pixel ``x_i``
depends on the block of ``B`` rows immediately above it, ``A`` columns wide, and
on the ``ceil((A-1)/2)`` pixels immediately to its left. Exactly: the field is

    {(dy, dx) : -B <= dy <= -1, -ceil((A-1)/2) <= dx <= floor((A-1)/2)}
      | {(0, dx) : -ceil((A-1)/2) <= dx <= -1}

so the block is centred for odd ``A`` and reaches one column further left than
right for even ``A`` (the paper's 4x2 reads columns j-2..j+1). This is the field
of a PixelCNN++-style pair of stacks whose first vertical layer reads two rows
and three columns above the pixel: ``B - 1`` vertical layers and ``A - B``
horizontal layers, which is the paper's appendix B exactly (4x2: 1 vertical and
2 horizontal layers; 5x3: 2 and 2; 7x4: 3 and 3); see
:meth:`GatedPixelCNN.from_field`. :meth:`_Decoder.receptive_field_name` reads
``AxB`` off the reported field (``None`` when it has another shape, e.g. the
masked PixelCNN's blind spot).

Kinds:
    - :class:`MaskedPixelCNN` (``"masked"``): the decoder of the paper's MNIST
      experiments. Masked 3x3 convolutions in ResNet blocks, 1x1-convolution
      ResNet blocks between every other masked layer, ELU. Has the PixelCNN
      blind spot (pixels up and to the right are missed).
    - :class:`GatedPixelCNN` (``"gated"``): vertical and horizontal stacks with
      tanh * sigmoid gates, no blind spot (van den Oord et al., 2016); with
      separate vertical and horizontal depths it is the paper's CIFAR-10
      decoder of field ``AxB``.
    - :class:`FactorizedDecoder` (``"factorized"``): pixels independent given
      ``z`` -- an empty receptive field, the plain-VAE baseline.

Example:
    >>> dec = MaskedPixelCNN(layers=6, kernel_size=3, filters=12, cond_channels=4)
    >>> dec.receptive_field_extent()
    {'up': 6, 'down': 0, 'left': 6, 'right': 6}
    >>> dec(torch.zeros(2, 1, 28, 28), torch.zeros(2, 4, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    >>> cifar = GatedPixelCNN.from_field("7x4", filters=64, cond_channels=16, in_channels=3, out_channels=100)
    >>> cifar.receptive_field_name(), cifar.vertical_layers, cifar.layers
    ('7x4', 3, 3)

References:
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), sections 3-4, appendix B.
    van den Oord et al., Conditional Image Generation with PixelCNN Decoders (2016).
    Salimans et al., PixelCNN++ (ICLR 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import field_depths, parse_field  # the field's name is configuration; re-exported here
from .layers import Conv2d, ResBlock
from .masked_conv import MaskedConv2d, Offsets, dilate, extent, full_offsets, make_mask, mask_offsets

__all__ = [
    "MaskedPixelCNN",
    "GatedPixelCNN",
    "FactorizedDecoder",
    "DECODERS",
    "GRAY_WEIGHTS",
    "grayscale",
    "parse_field",
    "field_depths",
    "field_offsets",
    "field_name",
]

_ORIGIN: Offsets = frozenset({(0, 0)})
_EMPTY: Offsets = frozenset()

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, the paper's appendix B


def grayscale(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``0.299 R + 0.587 G + 0.114 B`` along ``dim`` (kept, size 1). The weights sum
    to one, so it commutes with the affine scaling to [-1, 1]."""
    r, g, b = x.unbind(dim)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(dim)


def field_offsets(a: int, b: int) -> Offsets:
    """The offsets of the paper's ``AxB`` field (see the module docstring)."""
    left, right = math.ceil((a - 1) / 2), (a - 1) // 2
    above = {(dy, dx) for dy in range(-b, 0) for dx in range(-left, right + 1)}
    return frozenset(above | {(0, dx) for dx in range(-left, 0)})


def field_name(field: Offsets) -> str | None:
    """``"AxB"`` if ``field`` is exactly the paper's ``AxB`` field, else ``None``."""
    if not field:
        return "0x0"
    e = extent(field)
    name = (e["left"] + e["right"] + 1, e["up"])
    return f"{name[0]}x{name[1]}" if field_offsets(*name) == frozenset(field) else None


class _Decoder(nn.Module):
    """Shared receptive-field reporting and the (optionally gray) pixel context."""

    gray_context: bool = False

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """What the masked layers read: the image, or its luma if ``gray_context``."""
        return grayscale(x) if self.gray_context else x

    def receptive_field_name(self) -> str | None:
        """The field in the paper's ``AxB`` notation (module docstring), or ``None``
        when it is not of that shape (the masked PixelCNN's blind spot)."""
        return field_name(self.receptive_field())

    def receptive_field(self) -> Offsets:
        """Offsets ``(dy, dx)`` of the input pixels (all their channels) each
        output pixel's parameters depend on (away from the image border; at the
        border, offsets that fall outside the image are simply absent)."""
        raise NotImplementedError  # pragma: no cover

    def condition_field(self) -> Offsets:
        """Offsets of the conditioning-map positions each output pixel depends on."""
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
        in_channels: image channels ``C``.
        out_channels: parameters per pixel ``P`` (the observation model's).
        gray_context: read only the luma of the pixels (needs ``C = 3``).
    """

    def __init__(
        self,
        layers: int = 6,
        kernel_size: int = 3,
        filters: int = 12,
        cond_channels: int = 4,
        blocks_1x1: int = 4,
        tie_weights: bool = True,
        cond_every_layer: bool = False,
        weight_norm: bool = False,
        in_channels: int = 1,
        out_channels: int = 1,
        gray_context: bool = False,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder needs at least one masked layer, got {layers}")
        self.layers, self.kernel_size = layers, kernel_size
        self.cond_channels, self.cond_every_layer = cond_channels, cond_every_layer
        self.in_channels, self.gray_context = in_channels, _check_gray(gray_context, in_channels)
        self.first = MaskedConv2d(
            1 if gray_context else in_channels, filters, kernel_size, "A", weight_norm=weight_norm
        )
        self.cond_in = Conv2d(cond_channels, filters, kernel_size, weight_norm=weight_norm) if cond_channels else None
        n_b = layers - 1
        if tie_weights and n_b > 0:
            shared = MaskedConv2d(filters, filters, kernel_size, "B", weight_norm=weight_norm)
            self.masked = nn.ModuleList([shared] * n_b)  # the same module, applied n_b times
        else:
            self.masked = nn.ModuleList(
                MaskedConv2d(filters, filters, kernel_size, "B", weight_norm=weight_norm) for _ in range(n_b)
            )
        self.cond_layers = (
            nn.ModuleList(Conv2d(cond_channels, filters, 1, weight_norm=weight_norm) for _ in range(n_b))
            if (cond_channels and cond_every_layer)
            else None
        )
        # 1x1 groups after masked layers 2, 4, ... (1-based), never after the last.
        self.groups = nn.ModuleDict(
            {
                str(l): nn.Sequential(*(ResBlock(filters, 1, weight_norm) for _ in range(blocks_1x1)))
                for l in range(2, layers, 2)
                if blocks_1x1 > 0
            }
        )
        self.out = Conv2d(filters, out_channels, 1, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_image_part(self.image_part(x), cond)

    def image_part(self, x: torch.Tensor) -> torch.Tensor:
        """What depends on the image alone: the first masked layer's convolution of it."""
        return self.first(self._context(x))

    def from_image_part(self, part: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The outputs from :meth:`image_part` of ``B`` images and a conditioning map of
        ``k * B`` (sample-major: ``cond[s * B + b]`` belongs to image ``b``)."""
        h = part
        if self.cond_in is not None:
            h = _add_shared(h, self.cond_in(cond))
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

    The vertical stack (masks ``V_A`` then ``V_B``) sees rows above the output
    pixel only: its first layer reads ``first_rows`` rows above and ``k // 2``
    columns each side, every further layer one ``k x k`` ``V_B`` step more. The
    horizontal stack (``1 x k`` masks ``A`` then ``B``) sees the pixels to the
    left in the current row; its layer ``l`` also receives vertical layer
    ``min(l, L_v - 1)`` (its pre-activation) through a 1x1 convolution. Each
    layer is gated, ``tanh(a) * sigmoid(b)``; the horizontal stack is residual
    and feeds skip connections summed into the output network. ``blocks_1x1``
    gated residual blocks of 1x1 convolutions (conditioned like the layers) can
    follow the stacks: depth and width without a larger field, as the paper's
    "shallow but wide" CIFAR-10 decoder.

    With ``L_v = L_h = L`` and ``first_rows = k // 2`` (the defaults) this is the
    van den Oord et al. (2016) architecture; its field spans ``L * (k // 2)``
    rows up and columns each way. With ``k = 3`` and ``first_rows = 2`` the field
    is the paper's ``AxB`` with ``A = L_h + L_v + 1`` and ``B = L_v + 1`` whenever
    ``L_h`` is ``L_v`` or ``L_v + 1`` (:meth:`from_field`).

    Args:
        layers: number of horizontal-stack layers ``L_h``.
        kernel_size: odd ``k``.
        filters: feature maps per stack.
        cond_channels: channels of the conditioning map (0: unconditional).
        cond_every_layer: add a 1x1 convolution of the conditioning map to the
            gates of every layer (the first layer always reads it through an
            unmasked ``k x k`` convolution).
        weight_norm: weight-normalised layers.
        in_channels: image channels ``C``.
        out_channels: parameters per pixel ``P``.
        vertical_layers: ``L_v`` (``1 <= L_v <= L_h``; default ``L_h``).
        first_rows: rows above the pixel the first vertical layer reads
            (default ``k // 2``).
        blocks_1x1: gated 1x1 residual blocks after the stacks.
        gray_context: read only the luma of the pixels (needs ``C = 3``).
    """

    def __init__(
        self,
        layers: int = 6,
        kernel_size: int = 3,
        filters: int = 32,
        cond_channels: int = 4,
        cond_every_layer: bool = True,
        weight_norm: bool = False,
        in_channels: int = 1,
        out_channels: int = 1,
        vertical_layers: int | None = None,
        first_rows: int | None = None,
        blocks_1x1: int = 0,
        gray_context: bool = False,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder needs at least one gated layer, got {layers}")
        lv = layers if vertical_layers is None else vertical_layers
        if not 1 <= lv <= layers:
            raise ValueError(f"vertical layers must be between 1 and the horizontal layers ({layers}), got {lv}")
        rows = kernel_size // 2 if first_rows is None else first_rows
        if rows < 1:
            raise ValueError(f"the first vertical layer must read at least one row, got {rows}")
        self.layers, self.vertical_layers, self.kernel_size, self.first_rows = layers, lv, kernel_size, rows
        self.cond_channels, self.cond_every_layer = cond_channels, cond_every_layer
        self.in_channels, self.gray_context = in_channels, _check_gray(gray_context, in_channels)
        wn, c_img = weight_norm, 1 if gray_context else in_channels
        self.v_convs = nn.ModuleList()
        self.h_convs = nn.ModuleList()
        self.v_to_h = nn.ModuleList()
        self.h_out = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.conds = nn.ModuleList()
        for l in range(layers):
            c_in = c_img if l == 0 else filters
            if l < lv:
                shape = (2 * rows + 1, kernel_size) if l == 0 else kernel_size
                self.v_convs.append(MaskedConv2d(c_in, 2 * filters, shape, "V_A" if l == 0 else "V_B", weight_norm=wn))
            self.h_convs.append(
                MaskedConv2d(c_in, 2 * filters, (1, kernel_size), "A" if l == 0 else "B", weight_norm=wn)
            )
            self.v_to_h.append(Conv2d(2 * filters, 2 * filters, 1, weight_norm=wn))
            self.h_out.append(Conv2d(filters, filters, 1, weight_norm=wn))
            self.skips.append(Conv2d(filters, filters, 1, weight_norm=wn))
            if cond_channels and (l == 0 or cond_every_layer):
                width = 4 * filters if l < lv else 2 * filters  # vertical and horizontal gates, or horizontal only
                self.conds.append(Conv2d(cond_channels, width, kernel_size if l == 0 else 1, weight_norm=wn))
        self.blocks = nn.ModuleList(_GatedBlock1x1(filters, cond_channels, wn) for _ in range(blocks_1x1))
        self.out1 = Conv2d(filters, filters, 1, weight_norm=wn)
        self.out2 = Conv2d(filters, out_channels, 1, weight_norm=wn)

    @classmethod
    def from_field(cls, field: str, filters: int = 64, cond_channels: int = 4, **kwargs) -> "GatedPixelCNN":
        """The decoder whose receptive field is the paper's ``AxB`` (e.g. ``"7x4"``):
        ``B - 1`` vertical and ``A - B`` horizontal layers of 3-wide kernels, the
        first vertical layer reading 2 rows (needs ``B >= 2`` and ``A`` = ``2B - 1``
        or ``2B``: the other shapes leave the ``ceil((A-1)/2)`` left pixels of the
        definition). Other keyword arguments go to the constructor."""
        vertical, horizontal = field_depths(field)
        return cls(horizontal, 3, filters, cond_channels, vertical_layers=vertical, first_rows=2, **kwargs)

    @staticmethod
    def _gate(a: torch.Tensor) -> torch.Tensor:
        t, s = a.chunk(2, dim=1)
        return torch.tanh(t) * torch.sigmoid(s)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_image_part(self.image_part(x), cond)

    def image_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What depends on the image alone: the first layer's vertical and horizontal
        pre-activations before the conditioning is added."""
        context = self._context(x)
        v_lin = self.v_convs[0](context)
        return v_lin, self.h_convs[0](context) + self.v_to_h[0](v_lin)

    def from_image_part(
        self, part: tuple[torch.Tensor, torch.Tensor], cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The outputs from :meth:`image_part` of ``B`` images and a conditioning map of
        ``k * B`` (sample-major: ``cond[s * B + b]`` belongs to image ``b``)."""
        skip = 0
        # the gated vertical and horizontal stacks, bound by each layer for the next (F821: ruff
        # does not follow a name bound in an earlier iteration)
        v: torch.Tensor
        h: torch.Tensor
        for l in range(self.layers):
            if l == 0:
                v_lin, h_pre = part
                v_pre = v_lin
            else:
                if l < self.vertical_layers:  # later horizontal layers reuse the last vertical layer's
                    v_lin = self.v_convs[l](v)  # noqa: F821
                    v_pre = v_lin
                h_pre = _add_shared(self.h_convs[l](h), self.v_to_h[l](v_lin))  # noqa: F821
            if l < len(self.conds):
                c = self.conds[l](cond)
                if l < self.vertical_layers:
                    cv, c = c.chunk(2, dim=1)
                    v_pre = _add_shared(v_pre, cv)
                h_pre = _add_shared(h_pre, c)
            if l < self.vertical_layers - 1:
                v = self._gate(v_pre)
            g = self._gate(h_pre)
            h = self.h_out[l](g) if l == 0 else h + self.h_out[l](g)  # noqa: F821
            skip = skip + self.skips[l](g)
        for block in self.blocks:
            h, skip = block(h, skip, cond)
        return self.out2(F.elu(self.out1(F.elu(skip))))

    def _propagate(self, v: Offsets, h: Offsets, extra: Offsets) -> Offsets:
        vb = mask_offsets(make_mask(self.kernel_size, "V_B"))
        hb = mask_offsets(make_mask((1, self.kernel_size), "B"))
        vs = [v]
        for _ in range(self.vertical_layers - 1):
            vs.append(dilate(vs[-1], vb) | extra)
        for l in range(1, self.layers):
            h = dilate(h, hb) | vs[min(l, self.vertical_layers - 1)] | extra
        return h

    def receptive_field(self) -> Offsets:
        v = dilate(_ORIGIN, mask_offsets(make_mask((2 * self.first_rows + 1, self.kernel_size), "V_A")))
        h = dilate(_ORIGIN, mask_offsets(make_mask((1, self.kernel_size), "A"))) | v
        return self._propagate(v, h, _EMPTY)

    def condition_field(self) -> Offsets:
        if not self.cond_channels:
            return _EMPTY
        first = full_offsets(self.kernel_size)
        return self._propagate(first, first, _ORIGIN if self.cond_every_layer else _EMPTY) | (
            _ORIGIN if self.blocks else _EMPTY
        )


class _GatedBlock1x1(nn.Module):
    """``h + W gate(U elu(h) + V cond)`` with 1x1 convolutions; the gate also feeds
    the skip sum. Pointwise, so it leaves the receptive field unchanged."""

    def __init__(self, filters: int, cond_channels: int, weight_norm: bool):
        super().__init__()
        self.inner = Conv2d(filters, 2 * filters, 1, weight_norm=weight_norm)
        self.cond = Conv2d(cond_channels, 2 * filters, 1, weight_norm=weight_norm) if cond_channels else None
        self.out = Conv2d(filters, filters, 1, weight_norm=weight_norm)
        self.skip = Conv2d(filters, filters, 1, weight_norm=weight_norm)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor | None):
        a = self.inner(F.elu(h))
        if self.cond is not None:
            a = a + self.cond(cond)
        g = GatedPixelCNN._gate(a)
        return h + self.out(g), skip + self.skip(g)


class FactorizedDecoder(_Decoder):
    """Pixels independent given ``z``: parameters from the conditioning map alone
    through 1x1 convolutions; ``x`` is ignored (empty receptive field)."""

    def __init__(self, cond_channels: int = 4, filters: int = 32, weight_norm: bool = False, out_channels: int = 1):
        super().__init__()
        if cond_channels < 1:
            raise ValueError("a factorized decoder needs a conditioning map (latent_dim > 0)")
        self.hidden = Conv2d(cond_channels, filters, 1, weight_norm=weight_norm)
        self.out = Conv2d(filters, out_channels, 1, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_image_part(None, cond)

    def image_part(self, x: torch.Tensor) -> None:
        """Nothing: this decoder reads no pixels."""
        return None

    def from_image_part(self, part: None, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(F.elu(self.hidden(cond)))

    def receptive_field(self) -> Offsets:
        return _EMPTY

    def condition_field(self) -> Offsets:
        return _ORIGIN


def _add_shared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` where one operand may hold ``B`` images' features shared by the
    other's ``k * B`` (sample-major): the shared one is broadcast over the ``k``
    samples, with the same float additions as adding a ``k``-fold copy."""
    if a.shape[0] == b.shape[0]:
        return a + b
    big, small = (a, b) if a.shape[0] > b.shape[0] else (b, a)
    return (big.view(-1, *small.shape) + small).flatten(0, 1)


def _check_gray(gray_context: bool, in_channels: int) -> bool:
    if gray_context and in_channels != 3:
        raise ValueError(f"a grayscale context needs RGB images (3 channels), got {in_channels}")
    return gray_context


DECODERS = {"masked": MaskedPixelCNN, "gated": GatedPixelCNN, "factorized": FactorizedDecoder}


def __getattr__(name: str):
    # ConditionUpsampler lives in vlae.conditioning; importable from here for one release.
    if name == "ConditionUpsampler":
        from .conditioning import ConditionUpsampler

        return ConditionUpsampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
