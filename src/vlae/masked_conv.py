"""Masked convolutions: the mechanism that makes a CNN autoregressive.

A PixelCNN orders the pixels in raster order (row by row, left to right). A
convolution respects that order if the kernel is zero wherever it would read a
pixel that comes at or after the output pixel. Masks, drawn for a 5x5 kernel
(``1`` = weight kept, ``0`` = weight forced to zero; ``c`` marks the centre):

    type A           type B           vertical A       vertical B
    1 1 1 1 1        1 1 1 1 1        1 1 1 1 1        1 1 1 1 1
    1 1 1 1 1        1 1 1 1 1        1 1 1 1 1        1 1 1 1 1
    1 1 c=0 0 0      1 1 c=1 0 0      0 0 0 0 0        1 1 1 1 1
    0 0 0 0 0        0 0 0 0 0        0 0 0 0 0        0 0 0 0 0
    0 0 0 0 0        0 0 0 0 0        0 0 0 0 0        0 0 0 0 0

Type ``A`` excludes the centre and is used on the first layer (an output must
not see its own pixel); type ``B`` includes it and is used afterwards, where the
centre feature already only summarises earlier pixels. The vertical masks are
the Gated PixelCNN's vertical stack (van den Oord et al., 2016): ``V_A`` sees
only rows strictly above, ``V_B`` also its own row of a feature map that itself
only sees rows above, so the stack never looks at the current row of the image.

Receptive fields are tracked as sets of ``(dy, dx)`` offsets relative to the
output pixel; :func:`dilate` composes a layer's offsets with those of its input
(a Minkowski sum), which is how the decoders report their receptive field
exactly.

Example:
    >>> conv = MaskedConv2d(1, 16, 3, mask_type="A")
    >>> conv.mask
    tensor([[1., 1., 1.],
            [1., 0., 0.],
            [0., 0., 0.]])

References:
    van den Oord et al., Pixel Recurrent Neural Networks (2016), section 3.4.
    van den Oord et al., Conditional Image Generation with PixelCNN Decoders (2016).
"""

from __future__ import annotations

from typing import Iterable

import torch

from .layers import Conv2d

__all__ = ["MASK_TYPES", "make_mask", "MaskedConv2d", "Offsets", "mask_offsets", "dilate", "extent"]

MASK_TYPES = ("A", "B", "V_A", "V_B")

Offsets = frozenset  # of (dy, dx) integer pairs


def make_mask(kernel_size: int | tuple[int, int], mask_type: str) -> torch.Tensor:
    """The ``(kh, kw)`` 0/1 mask of a masked convolution.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``; both sides must be odd so the kernel
            has a centre.
        mask_type: ``"A"``, ``"B"``, ``"V_A"`` or ``"V_B"`` (see module docstring).
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"masked convolutions need odd kernel sides, got {(kh, kw)}")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; expected one of {MASK_TYPES}")
    cy, cx = kh // 2, kw // 2
    mask = torch.zeros(kh, kw)
    mask[:cy, :] = 1  # every row above the centre
    if mask_type == "A":
        mask[cy, :cx] = 1
    elif mask_type == "B":
        mask[cy, : cx + 1] = 1
    elif mask_type == "V_B":
        mask[cy, :] = 1
    return mask


class MaskedConv2d(Conv2d):
    """A convolution whose kernel is multiplied by a fixed autoregressive mask.

    ``(B, C_in, H, W) -> (B, C_out, H, W)`` with "same" zero padding.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: ``k`` or ``(kh, kw)``, odd sides (e.g. ``(1, 5)`` for the
            horizontal stack of a Gated PixelCNN).
        mask_type: ``"A"``, ``"B"``, ``"V_A"`` or ``"V_B"``.
        weight_norm: weight normalisation of the masked weight.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: str = "B",
        bias: bool = True,
        weight_norm: bool = False,
    ):
        mask = make_mask(kernel_size, mask_type)
        super().__init__(in_channels, out_channels, tuple(mask.shape), bias=bias, weight_norm=weight_norm, mask=mask)
        self.mask_type = mask_type

    def offsets(self) -> Offsets:
        """The ``(dy, dx)`` input offsets one output pixel reads."""
        return mask_offsets(self.mask)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}"


def mask_offsets(mask: torch.Tensor) -> Offsets:
    """Offsets ``(dy, dx)`` relative to the kernel centre where ``mask`` is non-zero."""
    kh, kw = mask.shape
    return frozenset((int(i) - kh // 2, int(j) - kw // 2) for i, j in torch.nonzero(mask).tolist())


def full_offsets(kernel_size: int | tuple[int, int]) -> Offsets:
    """Offsets of an unmasked ``kernel_size`` convolution."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return frozenset((i - kh // 2, j - kw // 2) for i in range(kh) for j in range(kw))


def dilate(inputs: Iterable[tuple[int, int]], layer: Iterable[tuple[int, int]]) -> Offsets:
    """Receptive field after a layer: ``{a + b : a in inputs, b in layer}``.

    If a feature at offset ``b`` from the output reads pixels at offsets
    ``inputs`` from itself, the output reads ``b + inputs``.
    """
    layer = list(layer)
    return frozenset((a0 + b0, a1 + b1) for a0, a1 in inputs for b0, b1 in layer)


def extent(offsets: Iterable[tuple[int, int]]) -> dict[str, int]:
    """Bounding box of a set of offsets: rows above/below, columns left/right.

    Example:
        >>> extent({(-2, -1), (0, -1), (-1, 3)})
        {'up': 2, 'down': 0, 'left': 1, 'right': 3}
    """
    offsets = list(offsets)
    if not offsets:
        return {"up": 0, "down": 0, "left": 0, "right": 0}
    dys = [o[0] for o in offsets]
    dxs = [o[1] for o in offsets]
    return {"up": max(0, -min(dys)), "down": max(0, max(dys)), "left": max(0, -min(dxs)), "right": max(0, max(dxs))}


__all__ += ["full_offsets"]
