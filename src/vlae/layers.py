"""Weight-normalised layers and the small ResNet blocks the networks share.

Weight normalisation (Salimans & Kingma, 2016) writes a weight as
``w = g * v / ||v||`` per output unit; with *data-dependent initialisation* the
first batch sets ``g`` and the bias so that every unit starts with zero mean and
unit variance. The VLAE paper trains all its networks this way.

Such a layer computes its effective weight on every call; :func:`frozen_weights`
computes it once for an evaluation of fixed weights. In float64 on the CPU without
gradients (the codec's arithmetic), the convolutions run as :func:`conv2d` and
:func:`conv_transpose2d`: cache-blocked unfold-and-multiply, faster than PyTorch's own.

Example:
    >>> conv = Conv2d(1, 8, 3, weight_norm=True)
    >>> data_dependent_init(conv, torch.randn(16, 1, 28, 28))
    >>> conv(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 8, 28, 28])
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Conv2d",
    "ConvTranspose2d",
    "Linear",
    "ResBlock",
    "data_dependent_init",
    "frozen_weights",
    "conv2d",
    "conv_transpose2d",
]


class _WeightNorm:
    """Mixin: optional weight normalisation with data-dependent initialisation.

    The class using it owns ``weight`` (the direction ``v``) and ``bias``; the
    mixin adds the gain ``g`` and computes the effective weight.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    _ddi_pending: bool = False
    # Standard deviation the data-dependent init gives the outputs. Below 1 for the
    # last layer of a residual branch (so a stack of blocks does not double the
    # variance per block) and for heads whose outputs enter exponentials (log sigma).
    init_scale: float = 1.0

    def _init_weight_norm(self, weight_norm: bool, out_dim: int) -> None:
        self.weight_norm = weight_norm
        if weight_norm:
            self.g = nn.Parameter(torch.ones(out_dim))

    def _norm_dims(self) -> tuple[int, ...]:
        raise NotImplementedError  # pragma: no cover - defined by each layer

    def _out_shape(self, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def _effective_weight(self, v: torch.Tensor) -> torch.Tensor:
        if not self.weight_norm:
            return v
        if self._fan_in() == 1:
            # A one-entry direction v / ||v|| is sign(v): its gradient is zero but for rounding,
            # which Adam's normalised steps would turn into a random walk of v that can cross
            # zero and flip the unit. It gets no gradient at all (the same numbers forward).
            v = v.detach()
        norm = v.pow(2).sum(self._norm_dims(), keepdim=True).clamp_min(1e-12).sqrt()
        return self._out_shape(self.g) * v / norm

    def _fan_in(self) -> int:
        """Entries of the direction per output unit that the layer uses: input channels times
        the spatial mask's ones (a lower bound where a subclass masks channels too)."""
        per_out = self.weight.numel() // self.g.numel()
        ones = getattr(self, "_mask_ones", None)
        return per_out if ones is None else per_out // (self.weight.shape[-2] * self.weight.shape[-1]) * ones

    def _reset_for_init(self) -> None:
        # The first batch's statistics are taken of the plain direction v/||v||: the
        # scale computed from them is only right when g = 1 and b = 0.
        with torch.no_grad():
            self.g.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def _data_dependent_init(self, out: torch.Tensor) -> torch.Tensor:
        # Called on the first batch with g = 1 and b = 0: rescale so every
        # unit starts N(0, 1) over the batch, then return the corrected output.
        dims = [d for d in range(out.dim()) if d != 1]
        mean = out.mean(dims)
        std = out.std(dims).clamp_min(1e-6)
        scale = self.init_scale / std
        with torch.no_grad():
            self.g.copy_(scale)
            if self.bias is not None:
                self.bias.copy_(-mean * scale)
        self._ddi_pending = False
        shape = [1, -1] + [1] * (out.dim() - 2)
        return (out - mean.view(shape)) * scale.view(shape)


class Linear(nn.Linear, _WeightNorm):
    """``nn.Linear`` with optional weight normalisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_norm: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self._init_weight_norm(weight_norm, out_features)

    def _norm_dims(self) -> tuple[int, ...]:
        return (1,)

    def _out_shape(self, g: torch.Tensor) -> torch.Tensor:
        return g[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ddi_pending:
            self._reset_for_init()
            return self._data_dependent_init(F.linear(x, self._effective_weight(self.weight), self.bias))
        return F.linear(x, self._effective_weight(self.weight), self.bias)

    @property
    def computes_weight(self) -> bool:
        """Whether :meth:`forward` computes the effective weight on every call."""
        return self.weight_norm

    def frozen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's forward with its effective weight computed once (see :func:`frozen_weights`)."""
        return functools.partial(F.linear, weight=self._effective_weight(self.weight).detach(), bias=self.bias)


class Conv2d(nn.Conv2d, _WeightNorm):
    """``nn.Conv2d`` with "same" padding for odd kernels, optional weight
    normalisation and an optional fixed spatial ``mask`` multiplying the weight.

    The mask is a buffer used in the forward pass; the weight itself is never
    overwritten, so an optimiser step cannot leak through masked entries.

    Args:
        mask: ``(kh, kw)`` tensor of 0/1, or ``None`` for an ordinary convolution.
    """

    mask: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        weight_norm: bool = False,
        mask: torch.Tensor | None = None,
    ):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if padding is None:
            padding = (kh // 2, kw // 2)
        super().__init__(in_channels, out_channels, (kh, kw), stride=stride, padding=padding, bias=bias)
        self._init_weight_norm(weight_norm, out_channels)
        if mask is not None:
            if tuple(mask.shape) != (kh, kw):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match kernel {(kh, kw)}")
            self.register_buffer("mask", mask.to(self.weight.dtype).clone())
            self._mask_ones = int(mask.count_nonzero())  # counted once: no host sync per call
        else:
            self.mask = None
        self._crop = _kernel_crop(mask, self.padding) if mask is not None and self.stride == (1, 1) else None

    def _norm_dims(self) -> tuple[int, ...]:
        return (1, 2, 3)

    def _out_shape(self, g: torch.Tensor) -> torch.Tensor:
        return g[:, None, None, None]

    def masked_weight(self) -> torch.Tensor:
        """The weight the convolution really uses: ``g * (v*mask)/||v*mask||``."""
        v = self.weight if self.mask is None else self.weight * self.mask
        return self._effective_weight(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ddi_pending:
            self._reset_for_init()
            out = F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding)
            return self._data_dependent_init(out)
        return self._convolve(x, self._cropped(self.masked_weight()))

    @property
    def computes_weight(self) -> bool:
        """Whether :meth:`forward` computes the effective weight on every call."""
        return self.weight_norm or self.mask is not None

    def frozen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's forward with its effective weight (weight norm, mask,
        crop) computed once, for evaluation of fixed weights."""
        weight = self.masked_weight().detach()
        layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else None
        weight = self._cropped(weight)
        weight = weight.contiguous(memory_format=layout) if layout is not None else weight.contiguous()
        return functools.partial(self._convolve, weight=weight)

    def _cropped(self, weight: torch.Tensor) -> torch.Tensor:
        if self._crop is None:
            return weight
        r0, r1, c0, c1 = self._crop[0]
        return weight[:, :, r0:r1, c0:c1]

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Rows and columns the mask zeroes at the kernel's edges are skipped (_kernel_crop).
        if self._crop is None:
            return conv2d(x, weight, self.bias, self.stride, self.padding)
        _, padding, residual = self._crop
        if any(residual):
            x = F.pad(x, residual)
        return conv2d(x, weight, self.bias, 1, padding)


#: Bytes of unfolded input per matrix product in :func:`conv2d`: a few images' worth, so the
#: block stays in a 2-4 MiB L2 cache (measured on a 2-core Xeon: 8 MiB and below alike, 32 slower).
_UNFOLD_BYTES = 4 << 20


def _unfolds(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`conv2d` unfolds: float64 on the CPU, no gradient wanted (training
    keeps PyTorch's kernels and their backward passes)."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return x.dtype == torch.float64 and x.device.type == "cpu" and not grad


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """``F.conv2d`` (no dilation, one group), computed as unfold-and-multiply for float64
    on the CPU when no gradient is wanted: the codec's arithmetic (:mod:`vlae.codec`).

    PyTorch's float64 CPU convolution unfolds one image at a time into a small matrix
    product; here the input goes channels-last once, a cache-sized block of images is
    unfolded by a strided view, and one batched product ``(O, k_h k_w C) x (k_h k_w C, H W)``
    per image writes the output in place. The weight is the left factor: with few output
    channels ``O`` the transposed product ``(H W, k_h k_w C) x (k_h k_w C, O)`` runs at a
    third to a half of the speed (measured on a 2-core AMD EPYC, 16-32 channels at 28x28).
    The numbers are the same up to the order of the sums.

    Shapes: ``x (N, C, H, W)``, ``weight (O, C, k_h, k_w)`` -> ``(N, O, H_out, W_out)``.
    """
    if not _unfolds(x, weight, bias) or isinstance(padding, str):
        return F.conv2d(x, weight, bias, stride, padding)
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    xl = x.new_zeros(n, height + 2 * ph, width + 2 * pw, c)  # channels-last, zero margins
    xl[:, ph : ph + height, pw : pw + width] = x.permute(0, 2, 3, 1)
    ho, wo = (xl.shape[1] - kh) // sh + 1, (xl.shape[2] - kw) // sw + 1
    taps = kh * kw * c
    wt = weight.permute(0, 2, 3, 1).reshape(out_channels, taps)  # tap-major columns, as the unfolding
    out = x.new_empty(n, out_channels, ho, wo)
    s0, s1, s2, s3 = xl.stride()
    per = max(1, _UNFOLD_BYTES // (ho * wo * taps * 8))
    for i in range(0, n, per):
        block = xl[i : i + per]
        m = len(block)
        cols = block.as_strided((m, ho, wo, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3)).reshape(m, ho * wo, taps)
        dest, left = out[i : i + m].view(m, out_channels, ho * wo), wt.expand(m, out_channels, taps)
        if bias is None:
            torch.bmm(left, cols.transpose(1, 2), out=dest)
        else:
            torch.baddbmm(bias[None, :, None].expand(m, out_channels, ho * wo), left, cols.transpose(1, 2), out=dest)
    return out


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding):
    """``F.conv_transpose2d`` (one group) as :func:`conv2d` does it: for float64 on the CPU,
    a transposed convolution that scales the image by its stride ``s`` (``k - 2p = s``) is
    ``s^2`` ordinary convolutions, one per output phase ``(a, b)``, run as one convolution
    with ``s^2 O`` outputs and interleaved (``F.pixel_shuffle``).

    Output ``(s i + a, s j + b)`` reads input ``(i + d, j + e)`` through the kernel tap
    ``(a + p - s d, b + p - s e)`` where that lies in the kernel; the phases' offsets
    ``d, e`` span the combined kernel, zero elsewhere (exact zeros: same numbers up to the
    order of the sums). Shapes: ``x (N, C, H, W)``, ``weight (C, O, k, k)`` -> ``(N, O, sH, sW)``.
    """
    c, out_channels, k, kw = weight.shape
    (s, sw), (p, pw) = _pair(stride), _pair(padding)
    if not _unfolds(x, weight, bias) or (k, s, p) != (kw, sw, pw) or k - 2 * p != s:
        return F.conv_transpose2d(x, weight, bias, stride, padding)
    r = max((k - 1 - p) // s, (s - 1 + p) // s)  # offsets -r..r: a (2r + 1)^2 kernel, symmetric padding r
    combined = weight.new_zeros(out_channels, s, s, c, 2 * r + 1, 2 * r + 1)
    for a in range(s):
        for d in range(-r, r + 1):
            ky = a + p - s * d
            if not 0 <= ky < k:
                continue
            for b in range(s):
                for e in range(-r, r + 1):
                    kx = b + p - s * e
                    if 0 <= kx < k:
                        combined[:, a, b, :, d + r, e + r] = weight[:, :, ky, kx].T
    bias = None if bias is None else bias.repeat_interleave(s * s)
    y = conv2d(x, combined.reshape(out_channels * s * s, c, 2 * r + 1, 2 * r + 1), bias, 1, r)
    return F.pixel_shuffle(y, s)


def _kernel_crop(mask: torch.Tensor, padding: tuple[int, int]):
    """The part of a masked kernel worth computing, or None for all of it.

    An autoregressive mask zeroes whole rows (those below the centre; the centre
    row too for ``V_A``) and whole columns (right of the centre in a ``1 x k``
    horizontal kernel). Those taps add exact zeros, yet cost as much as any
    other: a masked 3x3 kernel is a third zeros, a 7x7 one nearly half. The
    convolution with the kernel cropped to the mask's bounding box, and the
    input padded so that every output reads the same input pixels, gives the
    same numbers up to the order of the sums: measured on a CPU, 1.2-1.6x faster
    for 16-64 channels, about even for the narrowest (8) layers. Returns ``((r0, r1, c0, c1), padding, residual)``:
    the kernel's kept rows ``r0:r1`` and columns ``c0:c1``, the symmetric
    padding the convolution takes, and the rest as an ``F.pad`` tuple
    ``(left, right, top, bottom)`` (negative entries crop the input).
    """
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0 or (len(rows), len(cols)) == tuple(mask.shape):
        return None  # an all-zero mask (kernel 1, type A) keeps its plain path
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    ph, pw = padding
    # output (i, j) reads input (i - ph + r, j - pw + c) for kept kernel rows r and columns c
    left, right, top, bottom = pw - c0, c1 - 1 - pw, ph - r0, r1 - 1 - ph
    sym_h, sym_w = max(0, min(top, bottom)), max(0, min(left, right))
    return (r0, r1, c0, c1), (sym_h, sym_w), (left - sym_w, right - sym_w, top - sym_h, bottom - sym_h)


class ConvTranspose2d(nn.ConvTranspose2d, _WeightNorm):
    """``nn.ConvTranspose2d`` (stride-2 upsampling by default) with optional
    weight normalisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 1,
        weight_norm: bool = False,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self._init_weight_norm(weight_norm, out_channels)

    def _norm_dims(self) -> tuple[int, ...]:
        return (0, 2, 3)  # weight is (in, out, kh, kw)

    def _out_shape(self, g: torch.Tensor) -> torch.Tensor:
        return g[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ddi_pending:
            self._reset_for_init()
            out = F.conv_transpose2d(x, self._effective_weight(self.weight), self.bias, self.stride, self.padding)
            return self._data_dependent_init(out)
        return conv_transpose2d(x, self._effective_weight(self.weight), self.bias, self.stride, self.padding)

    @property
    def computes_weight(self) -> bool:
        """Whether :meth:`forward` computes the effective weight on every call."""
        return self.weight_norm

    def frozen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's forward with its effective weight computed once (see :func:`frozen_weights`)."""
        return functools.partial(
            conv_transpose2d,
            weight=self._effective_weight(self.weight).detach(),
            bias=self.bias,
            stride=self.stride,
            padding=self.padding,
        )


class ResBlock(nn.Module):
    """Pre-activation residual block ``x + conv(elu(conv(elu(x))))`` with
    "same" padding: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, kernel_size: int = 3, weight_norm: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.conv1 = Conv2d(channels, channels, kernel_size, weight_norm=weight_norm)
        self.conv2 = Conv2d(channels, channels, kernel_size, weight_norm=weight_norm)
        self.conv2.init_scale = init_scale  # the residual branch's share of the output at initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


@torch.no_grad()
def data_dependent_init(module: nn.Module, *inputs, **kwargs) -> None:
    """Initialise every weight-normalised layer in ``module`` from one batch.

    Runs ``module(*inputs, **kwargs)`` once; each weight-normalised layer sets
    its gain and bias so its outputs on this batch have zero mean and unit
    variance per channel (Salimans & Kingma, 2016, section 3).
    """
    layers = [m for m in module.modules() if isinstance(m, _WeightNorm) and m.weight_norm]
    for m in layers:
        m._ddi_pending = True
    try:
        module(*inputs, **kwargs)
    finally:
        for m in layers:
            m._ddi_pending = False


@contextlib.contextmanager
def frozen_weights(module: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, every layer of ``module`` whose forward computes its
    effective weight on each call (weight normalisation, an autoregressive mask:
    ``computes_weight``) uses that weight computed once, as its own forward computes
    it, by its ``frozen_forward()``. Yields those layers; their own forwards return
    on exit. The outputs are the layers' own up to float rounding (the same weights
    and operations; a masked kernel's cropped weight, made contiguous, may take
    another convolution kernel). The weights must not change inside the block:
    evaluation only.

    Example:
        >>> conv = Conv2d(1, 4, 3, weight_norm=True, mask=torch.tensor([[1., 1, 1], [1, 0, 0], [0, 0, 0]]))
        >>> x = torch.randn(2, 1, 8, 8)
        >>> with torch.no_grad(), frozen_weights(conv) as layers:
        ...     y = conv(x)
        >>> len(layers), torch.allclose(y, conv(x), rtol=0, atol=1e-6)
        (1, True)
    """
    layers = [m for m in module.modules() if getattr(m, "computes_weight", False)]
    for m in layers:
        m.forward = m.frozen_forward()
    try:
        yield layers
    finally:
        for m in layers:
            del m.forward  # back to the class's forward, which recomputes the weight
