"""Solution of exercise 1 -- Masked convolutions (types A and B).

Task
    Implement ``make_mask(kernel_size, mask_type)`` and the two missing pieces of
    ``MaskedConv2d``: a convolution whose kernel is multiplied by a fixed 0/1
    mask, so that the output at a pixel never reads a pixel that comes at or
    after it in raster order (row by row, left to right).

Paper
    VLAE (Chen et al., ICLR 2017) uses a PixelCNN as its decoder p(x|z) ("Lossy
    code via explicit information placement"; the MNIST architecture is in the
    appendix). The masks are those of PixelRNN/PixelCNN (van den Oord et al.,
    2016, "Pixel Recurrent Neural Networks", section 3.4). In this repository:
    ``paper_notes.md`` section 4 and ``src/vlae/masked_conv.py`` (try not to peek).

Expected time
    30-45 minutes.

Run
    python exercises/exercise_01_masked_conv.py              # check your code
    python exercises/exercise_01_masked_conv.py --solution   # check the reference solution

The masks, for a 3x3 kernel (1 = weight kept, 0 = weight forced to zero; the
centre is the pixel being predicted)::

    type A      type B
    1 1 1       1 1 1
    1 0 0       1 1 0
    0 0 0       0 0 0

Type A is used on the first layer: an output must not see its own pixel. Type B
is used afterwards: there the centre *feature* only summarises earlier pixels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sides(kernel_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(kh, kw)`` from ``k`` or ``(kh, kw)``."""
    if isinstance(kernel_size, int):
        return kernel_size, kernel_size
    return int(kernel_size[0]), int(kernel_size[1])


def make_mask(kernel_size: int | tuple[int, int], mask_type: str) -> torch.Tensor:
    """The ``(kh, kw)`` float tensor of 0/1 masking a ``kh x kw`` kernel.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``; both sides odd, so the kernel has a
            centre at row ``kh // 2``, column ``kw // 2``.
        mask_type: ``"A"`` (centre excluded) or ``"B"`` (centre included).

    Entry ``[i, j]`` is 1 when kernel position ``(i, j)`` lies *before* the
    centre in raster order (any row above the centre; in the centre row, any
    column left of the centre), plus the centre itself for type B.

    Raises:
        ValueError: a side is even or < 1, or ``mask_type`` is not "A" or "B".

    Example:
        >>> make_mask((1, 5), "B")
        tensor([[1., 1., 1., 0., 0.]])
    """
    kh, kw = _sides(kernel_size)
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"masked convolutions need odd kernel sides, got {(kh, kw)}")
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    cy, cx = kh // 2, kw // 2
    mask = torch.zeros(kh, kw)
    mask[:cy, :] = 1.0  # every row above the centre row comes earlier
    mask[cy, :cx] = 1.0  # so do the pixels left of the centre in its row
    if mask_type == "B":
        mask[cy, cx] = 1.0  # type B also reads the centre (a feature of earlier pixels only)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A "same"-padded convolution whose weight is multiplied by a fixed mask.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``. The mask lives in a *buffer* (it
    moves with ``.to(device)``, is saved in ``state_dict()``, and is not trained)
    and is applied in ``forward``: the weight itself is never overwritten, so an
    optimiser step (or weight decay) cannot leak through masked entries.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 mask_type: str = "B", bias: bool = True):
        kh, kw = _sides(kernel_size)
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        self.mask_type = mask_type
        self.register_buffer("mask", make_mask((kh, kw), mask_type))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A new tensor every call: the stored weight keeps its masked entries, and
        # their gradient is zero because they are multiplied by 0.
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)
