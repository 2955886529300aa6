"""The wavefront schedule and the cached engines that evaluate a PixelCNN decoder on it.

A pixel can be drawn (or decoded) once the pixels its receptive field reads are:
with the time ``t(i, j) = s * i + j`` of a steep enough slope ``s``
(:func:`wavefront_slope`), all pixels of one *wavefront* ``t = const`` go
together. An *engine* evaluates the decoder one wavefront at a time, each layer
only at the new positions, reading the taps of its kernel from cached feature
maps (Ramachandran et al., 2017): :class:`MaskedEngine` and :class:`GatedEngine`
for the two PixelCNNs, :class:`WindowEngine` (the decoder run on crops) for any
other decoder, all with the protocol of :class:`Engine`. :mod:`vlae.sampling`
draws pixels with them and explains why its samples equal naive sampling's;
:mod:`vlae.codec` decodes pixels with them.

References:
    Ramachandran et al., Fast Generation for Convolutional Autoregressive Models (2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masked_conv import mask_offsets
from .pixelcnn import GatedPixelCNN, MaskedPixelCNN, grayscale

__all__ = ["wavefront_slope", "wavefronts", "Engine", "MaskedEngine", "GatedEngine", "WindowEngine"]


def wavefront_slope(offsets) -> int:
    """Smallest integer slope ``s >= 0`` such that every offset ``(dy, dx)`` a pixel
    depends on has an earlier time ``s * dy + dx < 0`` (offsets are causal:
    ``dy < 0``, or ``dy == 0`` and ``dx < 0``).

    Example:
        >>> wavefront_slope({(-1, -1), (-1, 0), (-1, 1), (0, -1)})   # a 3x3 type-A mask
        2
    """
    s = 0
    for dy, dx in offsets:
        if dy > 0 or (dy == 0 and dx >= 0):
            raise ValueError(f"offset {(dy, dx)} is not causal in raster order")
        if dy < 0:
            s = max(s, math.floor(dx / -dy) + 1)
    return s


def _crops(full: torch.Tensor, members: list[tuple[int, int, int]], h: int, w: int) -> torch.Tensor:
    """The ``h x w`` windows of ``full`` at each member's corner ``(r0, c0)``, stacked crop-major."""
    return torch.cat([full[:, :, r0 : r0 + h, c0 : c0 + w] for _, r0, c0 in members])


def wavefronts(height: int, width: int, slope: int, shift: int = 0, device=None) -> dict[int, torch.Tensor]:
    """Flat positions ``i * W + j`` grouped by time ``slope * i + j - shift``."""
    t = (slope * torch.arange(height)[:, None] + torch.arange(width)[None, :] - shift).flatten()
    order = torch.argsort(t, stable=True)
    times, counts = torch.unique_consecutive(t[order], return_counts=True)
    return {int(tt): pos.to(device) for tt, pos in zip(times, torch.split(order, counts.tolist()))}


# ---------------------------------------------------------------------- cached convolutions
# Maps are feature-major, ``(C, positions, n)``: gathered taps are then the ``(C T, P n)``
# operand of one wide product ``W @ g`` as they lie, rows of ``n`` contiguous numbers. In
# float64, the codec's arithmetic, ``g @ W`` with 16-32 outputs runs at half that speed
# (2-core AMD EPYC, MKL's AVX-512 and AVX2 paths); float32 gains from the gathers alone.
class _Canvas:
    """A feature-major map ``(C, (H + r) * (W + 2r), n)`` with a zero margin of ``r``
    rows above and ``r`` columns each side, matching the zero "same" padding of the
    decoder's causal convolutions (which never read below)."""

    def __init__(self, n: int, height: int, width: int, channels: int, margin: int, like: torch.Tensor):
        self.r, self.width = margin, width + 2 * margin
        self.data = like.new_zeros(channels, (height + margin) * self.width, n)

    def index(self, pos: torch.Tensor, image_width: int) -> torch.Tensor:
        """Flat image positions -> flat canvas positions."""
        return (pos // image_width + self.r) * self.width + pos % image_width + self.r

    def write(self, cpos: torch.Tensor, values: torch.Tensor) -> None:
        """``values (C, P, n)`` at canvas positions ``cpos (P,)``."""
        self.data.index_copy_(1, cpos, values)


class _Tap:
    """One convolution evaluated only at chosen positions: gathers the unmasked
    kernel taps from a :class:`_Canvas` and multiplies by the flattened kernel."""

    def __init__(self, conv, canvas_width: int):
        w = conv.masked_weight().detach()  # (out, in, kh, kw), weight norm and mask applied
        kh, kw = w.shape[-2:]
        mask = conv.mask if conv.mask is not None else torch.ones(kh, kw)
        taps = sorted(mask_offsets(mask))
        self.offsets = torch.tensor([dy * canvas_width + dx for dy, dx in taps], dtype=torch.long, device=w.device)
        # (out, in * T), channel-major then tap, to match the gather (in, T, P, n). A 1x1
        # type-A mask has no taps (T = 0): the layer then reads nothing and yields its bias.
        per_tap = [w[:, :, dy + kh // 2, dx + kw // 2] for dy, dx in taps] or [w[:, :0, 0, 0]]
        self.weight, self.bias = torch.stack(per_tap, 2).flatten(1), _column(conv.bias)

    def __call__(self, canvas: _Canvas, cpos: torch.Tensor) -> torch.Tensor:
        """The convolution's outputs at canvas positions ``cpos (P,)``: ``(out, P, n)``."""
        n = canvas.data.shape[-1]
        idx = (self.offsets[:, None] + cpos[None, :]).flatten()
        g = canvas.data.index_select(1, idx).view(-1, cpos.numel() * n)
        return _product(self.weight, self.bias, g).view(-1, cpos.numel(), n)


class _Pointwise:
    """A 1x1 convolution applied to gathered features ``(C, P, n)``."""

    def __init__(self, conv):
        w = conv.masked_weight().detach()
        if w.shape[-2:] != (1, 1):
            raise ValueError("expected a 1x1 convolution")
        self.weight, self.bias = w[:, :, 0, 0], _column(conv.bias)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return _product(self.weight, self.bias, h.reshape(h.shape[0], -1)).view(-1, *h.shape[1:])


def _column(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach()[:, None]


def _product(weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
    """``weight (out, k) @ g (k, m) + bias (out, 1)``."""
    return weight @ g if bias is None else torch.addmm(bias, weight, g)


def _feature_major(full_map: torch.Tensor) -> torch.Tensor:
    """``(n, C, H, W)`` -> ``(C, H * W, n)``, so a set of positions is one gather."""
    return full_map.flatten(2).permute(1, 2, 0).contiguous()


def _at(flat_map: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor | float:
    """``(C, H * W, n)`` map at flat positions -> ``(C, P, n)`` (0 for no map)."""
    return 0.0 if flat_map is None else flat_map.index_select(1, pos)


def _gate(a: torch.Tensor) -> torch.Tensor:
    t, s = a.chunk(2, dim=0)
    return torch.tanh(t) * torch.sigmoid(s)


class Engine:
    """What every engine shares: the canvas of the decoder's input and the
    per-position outputs.

    The protocol (also used by :mod:`vlae.codec`): for each ``(t, layer_positions,
    pos)`` of :meth:`schedule`, call :meth:`advance` with ``layer_positions``, then,
    if ``pos`` is not ``None``, read the decoder's outputs there with
    :meth:`params` ``(n, N, P)`` and hand the drawn pixels back with
    :meth:`write_pixels`.
    """

    width: int
    x: "_Canvas"

    def __init__(self, dec, scale, n: int, height: int, width: int, margin: int, like: torch.Tensor):
        self.scale, self.gray, self.width, self.device = scale, dec.gray_context, width, like.device
        self.x = _Canvas(n, height, width, 1 if dec.gray_context else dec.in_channels, margin, like)

    slope: int
    device: torch.device

    def schedule(self, height: int, width: int) -> list[tuple[int, list, torch.Tensor | None]]:
        """``(t, layer_positions, pos)`` per step: the pixels' wavefronts, no layer working ahead."""
        return [(t, [], pos) for t, pos in wavefronts(height, width, self.slope, 0, self.device).items()]

    def params(self, pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def advance(self, layer_positions) -> None:  # only the gated engine works ahead
        pass

    @staticmethod
    def slope_of(dec) -> int:
        """The pixels' wavefront slope: the steepest a receptive field ``dec`` allows."""
        return wavefront_slope(dec.receptive_field())

    def write_pixels(self, pos: torch.Tensor, x: torch.Tensor) -> None:
        """Drawn pixels ``x (n, N, C)`` (or ``(n, N)`` for one channel), in observed units."""
        v = self.scale(x if x.dim() == 3 else x[..., None])
        v = grayscale(v, dim=-1) if self.gray else v
        self.x.write(self.x.index(pos, self.width), v.permute(2, 1, 0))


class MaskedEngine(Engine):
    """Cached incremental evaluation of a :class:`MaskedPixelCNN`."""

    def __init__(
        self, dec: MaskedPixelCNN, cond: torch.Tensor | None, n: int, height: int, width: int, like: torch.Tensor, scale
    ):
        r = dec.kernel_size // 2
        super().__init__(dec, scale, n, height, width, r, like)
        filters = dec.first.out_channels
        cw = self.x.width
        self.first = _Tap(dec.first, cw)
        self.masked = [_Tap(conv, cw) for conv in dec.masked]
        self.elu = [_Canvas(n, height, width, filters, r, like) for _ in dec.masked]
        # The conditioning map is known in advance: its convolutions run once, full size.
        self.cond_in = _feature_major(dec.cond_in(cond)) if dec.cond_in is not None else None
        self.cond_layers = [_feature_major(c(cond)) for c in dec.cond_layers] if dec.cond_layers is not None else None
        self.groups = {int(k): [(_Pointwise(b.conv1), _Pointwise(b.conv2)) for b in g] for k, g in dec.groups.items()}
        self.out = _Pointwise(dec.out)
        self.slope = self.slope_of(dec)

    def params(self, pos: torch.Tensor) -> torch.Tensor:
        cpos = self.x.index(pos, self.width)
        h = self.first(self.x, cpos) + _at(self.cond_in, pos)
        for i, conv in enumerate(self.masked):
            self.elu[i].write(cpos, F.elu(h))
            h = h + conv(self.elu[i], cpos)
            if self.cond_layers is not None:
                h = h + _at(self.cond_layers[i], pos)
            for c1, c2 in self.groups.get(i + 2, ()):
                h = h + c2(F.elu(c1(F.elu(h))))
        return self.out(F.elu(h)).permute(2, 1, 0)


class GatedEngine(Engine):
    """Cached incremental evaluation of a :class:`GatedPixelCNN`.

    Layer ``l`` of the vertical stack at position ``q`` reads layer ``l - 1`` up
    to ``c = k // 2`` columns to its right in the same row, so it is computed
    ``shift_l = (L_v - 1 - l) * c`` steps before the horizontal stack reaches
    ``q``; it reads image rows above ``q`` only, which are drawn by then because
    the slope exceeds ``L_v * c``. The last vertical layer runs in step with the
    horizontal stack and hands every horizontal layer from its own index on
    (``l >= L_v - 1``) its 1x1 projection.
    """

    def __init__(
        self, dec: GatedPixelCNN, cond: torch.Tensor | None, n: int, height: int, width: int, like: torch.Tensor, scale
    ):
        L, Lv, c = dec.layers, dec.vertical_layers, dec.kernel_size // 2
        margin = max(c, dec.first_rows)  # one geometry for every canvas, so one flat index serves them all
        super().__init__(dec, scale, n, height, width, margin, like)
        self.L, self.Lv, self.c = L, Lv, c
        filters = dec.h_out[0].out_channels
        cw = self.x.width
        self.v_convs = [_Tap(m, cw) for m in dec.v_convs]
        self.h_convs = [_Tap(m, cw) for m in dec.h_convs]
        self.v_to_h = [_Pointwise(m) for m in dec.v_to_h]
        self.h_out = [_Pointwise(m) for m in dec.h_out]
        self.skips = [_Pointwise(m) for m in dec.skips]
        self.out1, self.out2 = _Pointwise(dec.out1), _Pointwise(dec.out2)
        # Per layer: (vertical gate's share or None, horizontal gate's share) of the conditioning.
        self.conds = []
        for l, m in enumerate(dec.conds if cond is not None else []):
            full = m(cond)
            cv, ch = full.chunk(2, dim=1) if l < Lv else (None, full)
            self.conds.append((None if cv is None else _feature_major(cv), _feature_major(ch)))
        self.blocks = [
            (
                _Pointwise(b.inner),
                None if (b.cond is None or cond is None) else _feature_major(b.cond(cond)),
                _Pointwise(b.out),
                _Pointwise(b.skip),
            )
            for b in dec.blocks
        ]
        self.v = [_Canvas(n, height, width, filters, margin, like) for _ in range(Lv - 1)]  # inputs of v_convs[1:]
        self.h = [_Canvas(n, height, width, filters, margin, like) for _ in range(L - 1)]  # inputs of h_convs[1:]
        # v_to_h of the vertical pre-activation per horizontal layer, kept until the horizontal stack gets there.
        self.vh = [like.new_zeros(2 * filters, height * width, n) for _ in range(L)]
        self.slope = self.slope_of(dec)

    @staticmethod
    def slope_of(dec) -> int:
        """The pixels' wavefront slope: also past the vertical stack's ``L_v * c`` columns of lookahead."""
        return max(wavefront_slope(dec.receptive_field()), dec.vertical_layers * (dec.kernel_size // 2) + 1)

    def schedule(self, height: int, width: int):
        fronts = [
            wavefronts(height, width, self.slope, (self.Lv - 1 - l) * self.c, self.device) for l in range(self.Lv)
        ]
        hfront = fronts[-1]
        times = sorted(set().union(*fronts))
        return [(t, [f.get(t) for f in fronts], hfront.get(t)) for t in times]

    def advance(self, layer_positions) -> None:
        """Vertical stack at the positions each layer reaches this step (lower layers first)."""
        for l, pos in enumerate(layer_positions):
            if pos is None:
                continue
            cpos = self.x.index(pos, self.width)
            v_pre = self.v_convs[l](self.x if l == 0 else self.v[l - 1], cpos)
            for m in range(l, self.L) if l == self.Lv - 1 else (l,):
                self.vh[m].index_copy_(1, pos, self.v_to_h[m](v_pre))
            if l < self.Lv - 1:
                if l < len(self.conds):
                    v_pre = v_pre + _at(self.conds[l][0], pos)
                self.v[l].write(cpos, _gate(v_pre))

    def params(self, pos: torch.Tensor) -> torch.Tensor:
        cpos = self.x.index(pos, self.width)
        skip = 0.0
        h = None
        for l in range(self.L):
            h_pre = self.h_convs[l](self.x if l == 0 else self.h[l - 1], cpos) + self.vh[l].index_select(1, pos)
            if l < len(self.conds):
                h_pre = h_pre + _at(self.conds[l][1], pos)
            g = _gate(h_pre)
            h = self.h_out[l](g) if l == 0 else h + self.h_out[l](g)
            if l < self.L - 1:
                self.h[l].write(cpos, h)
            skip = skip + self.skips[l](g)
        for inner, cmap, out, sk in self.blocks:
            g = _gate(inner(F.elu(h)) + _at(cmap, pos))
            h, skip = h + out(g), skip + sk(g)
        return self.out2(F.elu(self.out1(F.elu(skip)))).permute(2, 1, 0)


class WindowEngine(Engine):
    """Any decoder with :meth:`window`: runs it on clipped crops around the
    pixels of each wavefront, crops of equal geometry batched together."""

    def __init__(self, dec, cond, n: int, height: int, width: int, like: torch.Tensor, scale, channels: int = 1):
        self.dec, self.cond, self.height, self.width, self.device = dec, cond, height, width, like.device
        self.scale, self.win = scale, dec.window()
        self.canvas = like.new_zeros(n, channels, height, width)  # observed units, as naive sampling has them
        self.slope = self.slope_of(dec)

    def params(self, pos: torch.Tensor) -> torch.Tensor:
        out = None
        groups: dict[tuple, list[tuple[int, int, int]]] = {}
        for k, p in enumerate(pos.tolist()):
            i, j = divmod(p, self.width)
            r0, c0 = max(0, i - self.win["up"]), max(0, j - self.win["left"])
            r1, c1 = min(self.height, i + self.win["down"] + 1), min(self.width, j + self.win["right"] + 1)
            groups.setdefault((r1 - r0, c1 - c0, i - r0, j - c0), []).append((k, r0, c0))
        n = self.canvas.shape[0]
        for (h, w, ci, cj), members in groups.items():
            xs = _crops(self.canvas, members, h, w)
            cs = None if self.cond is None else _crops(self.cond, members, h, w)
            p = self.dec(self.scale(xs), cs)[:, :, ci, cj].view(len(members), n, -1)  # crop-major
            if out is None:
                out = p.new_empty(n, pos.numel(), p.shape[-1])
            out[:, [k for k, _, _ in members]] = p.transpose(0, 1)
        return out

    def write_pixels(self, pos: torch.Tensor, x: torch.Tensor) -> None:
        x = x if x.dim() == 3 else x[..., None]
        self.canvas.view(*self.canvas.shape[:2], -1)[:, :, pos] = x.transpose(1, 2)
