"""Fast exact sampling from the PixelCNN decoder p(x|z).

Naive sampling (:meth:`vlae.model.VLAE.decode`) re-runs the whole decoder on
the full ``H x W`` image for each of the ``H * W`` pixels: ``O((HW)^2)`` work
per image. Two facts make it cheap without changing a single sample:

1. **Locality.** Pixel ``(i, j)``'s parameters read only the pixels and
   conditioning-map positions in the decoder's receptive field, a few rows up
   and a few columns to each side (:meth:`~vlae.pixelcnn.MaskedPixelCNN.window`).
   So a pixel can be drawn as soon as the pixels in its receptive field are
   drawn, not after *every* earlier pixel in raster order. With the time
   ``t(i, j) = s * i + j`` and a slope ``s`` steeper than any up-and-right offset
   of the receptive field (``s = k // 2 + 1`` for a masked PixelCNN), every
   dependency of a pixel has an earlier time: all pixels on one *wavefront*
   ``t = const`` are drawn together, ``s * (H - 1) + W`` steps instead of ``H * W``.
2. **Activation caching** (Ramachandran et al., 2017). Because every masked
   layer only reads positions at or before its output in that order, a layer's
   features at a position never change once computed. Each step therefore
   evaluates every layer only at the new positions, gathering the few kernel
   taps it reads from cached feature maps: the work per pixel is that of *one*
   output position of the network, independent of the image size.

Colour changes nothing in this schedule: a pixel's parameters read no channel
of itself (:mod:`vlae.pixelcnn`), so all its channels are drawn in the same step
by the observation model from its ``U`` uniforms (R, then G given R, then B,
inside :meth:`~vlae.observation.ObservationModel.sample_with_margin`); the cached
canvases hold the decoder's input -- the scaled pixel values, or their luma for
a grayscale-context decoder.

The Gated PixelCNN's vertical stack reads ``k // 2`` columns to the right in its
own row, so its layer ``l`` runs ``(L_v - 1 - l) * (k // 2)`` steps ahead of the
horizontal stack (see :class:`_GatedEngine`). Decoders of an unknown kind fall
back to method ``"window"``: the same wavefront, with the decoder run on crops
the size of :meth:`window` clipped to the image (exact because outside the
clipped crop the decoder sees only what it sees at the image border, and
inside it every dependency is present; zero-*padding* the canvas instead is
not exact, since intermediate layers add biases to the padded margin).

Exactness in floating point: the cached computation adds the same terms as the
full convolution, but possibly in another order, so its parameters can differ
from the naive ones in the last bits. A pixel's value only changes if one of its
uniforms falls within that rounding error of a CDF value at which the draw
changes (for a Bernoulli pixel, its probability), so every pixel whose
uniforms lie within ``tol`` of such a value (the observation model's *margin*)
is re-decided with the naive computation itself (the full decoder on the whole
batch with the image as naive sampling has it at that pixel). Samples are then
bit-identical to :meth:`VLAE.sample` with the same generator; this costs one
full decoder pass per ~``1 / (2 * tol)`` pixels and channel. (It relies on what
the CPU convolutions do and a test checks: an output is bit for bit unaffected
by other images in the batch and by inputs its masked weights ignore. Backends
that transform the input first, such as Winograd or FFT convolutions on some
GPUs, may break it.)

Example:
    >>> from vlae.config import get_preset
    >>> from vlae.model import VLAE
    >>> model = VLAE(get_preset("tiny").model).eval()
    >>> g = torch.Generator().manual_seed(0)
    >>> x = fast_sample(model, 4, generator=g)              # (4, 1, 28, 28) in {0, 1}
    >>> torch.equal(x, model.sample(4, generator=torch.Generator().manual_seed(0)))
    True

References:
    Ramachandran et al., Fast Generation for Convolutional Autoregressive Models (2017).
    Chen et al., Variational Lossy Autoencoder (ICLR 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import VLAEError
from .masked_conv import mask_offsets
from .pixelcnn import FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN, grayscale

__all__ = [
    "FastSampler",
    "fast_sample",
    "sample_in_batches",
    "SAMPLE_BATCH",
    "wavefront_slope",
    "crop_logits",
    "METHODS",
]

METHODS = ("auto", "cache", "window", "naive")

# Rounding differences between the cached and the full computation are ~1e-7 in
# float32 probabilities (~1e-14 in float64); these margins leave a factor of
# ten or more and trigger a naive re-decision for about 1 pixel in 65,000.
# A mixture's margin is relative to its outputs (a draw cannot change unless an
# output moves by more than margin * (1 + |output|), see
# DiscretizedLogisticMixture.sample_with_margin). Measured on a 3x32x32 model with
# the 7x4 gated decoder (64 filters, 2 gated 1x1 blocks): cached and full outputs
# differ by at most 3.2e-6 * (1 + |output|) in float32, so 2^-15 ~ 3.1e-5 leaves
# a factor of ten; it re-decides about 4% of colour pixels (three channels and
# the component each have two nearby decision points).
_DEFAULT_TOL = {
    "bernoulli": {torch.float32: 2.0**-17, torch.float64: 2.0**-40},
    "logistic_mixture": {torch.float32: 2.0**-15, torch.float64: 2.0**-40},
}


# ---------------------------------------------------------------------- schedule
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


def _wavefronts(height: int, width: int, slope: int, shift: int = 0, device=None) -> dict[int, torch.Tensor]:
    """Flat positions ``i * W + j`` grouped by time ``slope * i + j - shift``."""
    t = (slope * torch.arange(height)[:, None] + torch.arange(width)[None, :] - shift).flatten()
    order = torch.argsort(t, stable=True)
    times, counts = torch.unique_consecutive(t[order], return_counts=True)
    return {int(tt): pos.to(device) for tt, pos in zip(times, torch.split(order, counts.tolist()))}


# ---------------------------------------------------------------------- cached convolutions
class _Canvas:
    """A channels-last feature map ``(n, (H + r) * (W + 2r), C)`` with a zero
    margin of ``r`` rows above and ``r`` columns each side, matching the zero
    "same" padding of the decoder's causal convolutions (which never read below)."""

    def __init__(self, n: int, height: int, width: int, channels: int, margin: int, like: torch.Tensor):
        self.r, self.width = margin, width + 2 * margin
        self.data = like.new_zeros(n, (height + margin) * self.width, channels)

    def index(self, pos: torch.Tensor, image_width: int) -> torch.Tensor:
        """Flat image positions -> flat canvas positions."""
        return (pos // image_width + self.r) * self.width + pos % image_width + self.r

    def write(self, cpos: torch.Tensor, values: torch.Tensor) -> None:
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
        # (T * in, out), tap-major to match the gather layout (n, P, T, in). A 1x1 type-A
        # mask has no taps (T = 0): the layer then reads nothing and yields its bias.
        self.weight = torch.cat(
            [w[:, :, dy + kh // 2, dx + kw // 2].T for dy, dx in taps] or [w.new_zeros(0, w.shape[0])]
        )
        self.bias = conv.bias.detach() if conv.bias is not None else None

    def __call__(self, canvas: _Canvas, cpos: torch.Tensor) -> torch.Tensor:
        n = canvas.data.shape[0]
        idx = (cpos[:, None] + self.offsets[None, :]).flatten()
        g = canvas.data.index_select(1, idx).view(n * cpos.numel(), -1)
        out = g @ self.weight if self.bias is None else torch.addmm(self.bias, g, self.weight)
        return out.view(n, cpos.numel(), -1)


class _Pointwise:
    """A 1x1 convolution applied to gathered features ``(n, P, C)``."""

    def __init__(self, conv):
        w = conv.masked_weight().detach()
        if w.shape[-2:] != (1, 1):
            raise ValueError("expected a 1x1 convolution")
        self.weight = w[:, :, 0, 0]
        self.bias = conv.bias.detach() if conv.bias is not None else None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


def _channels_last(full_map: torch.Tensor) -> torch.Tensor:
    """``(n, C, H, W)`` -> ``(n, H * W, C)``, so a set of positions is one gather."""
    return full_map.flatten(2).transpose(1, 2).contiguous()


def _at(flat_map: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor | float:
    """``(n, H * W, C)`` map at flat positions -> ``(n, P, C)`` (0 for no map)."""
    return 0.0 if flat_map is None else flat_map.index_select(1, pos)


def _gate(a: torch.Tensor) -> torch.Tensor:
    t, s = a.chunk(2, dim=-1)
    return torch.tanh(t) * torch.sigmoid(s)


class _Engine:
    """What every engine shares: the canvas of the decoder's input and the
    per-position outputs.

    The protocol (also used by :mod:`vlae.codec`): for each ``(t, layer_positions,
    pos)`` of :meth:`schedule`, call :meth:`advance` with ``layer_positions``, then,
    if ``pos`` is not ``None``, read the decoder's outputs there with
    :meth:`params` ``(n, N, P)`` (or :meth:`logits` ``(n, N)`` for ``P = 1``) and
    hand the drawn pixels back with :meth:`write_pixels`.
    """

    width: int
    x: "_Canvas"

    def __init__(self, dec, scale, n: int, height: int, width: int, margin: int, like: torch.Tensor):
        self.scale, self.gray, self.width, self.device = scale, dec.gray_context, width, like.device
        self.x = _Canvas(n, height, width, 1 if dec.gray_context else dec.in_channels, margin, like)

    def params(self, pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def logits(self, pos: torch.Tensor) -> torch.Tensor:
        """The single output of a binary model at ``pos``: ``(n, N)``."""
        return self.params(pos)[..., 0]

    def advance(self, layer_positions) -> None:  # only the gated engine works ahead
        pass

    @staticmethod
    def slope_of(dec) -> int:
        """The pixels' wavefront slope: the steepest a receptive field ``dec`` allows."""
        return wavefront_slope(dec.receptive_field())

    def write_pixels(self, pos: torch.Tensor, x: torch.Tensor) -> None:
        """Drawn pixels ``x (n, N, C)`` (or ``(n, N)`` for one channel), in observed units."""
        v = self.scale(x if x.dim() == 3 else x[..., None])
        self.x.write(self.x.index(pos, self.width), grayscale(v, dim=-1) if self.gray else v)


class _MaskedEngine(_Engine):
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
        self.cond_in = _channels_last(dec.cond_in(cond)) if dec.cond_in is not None else None
        self.cond_layers = [_channels_last(c(cond)) for c in dec.cond_layers] if dec.cond_layers is not None else None
        self.groups = {int(k): [(_Pointwise(b.conv1), _Pointwise(b.conv2)) for b in g] for k, g in dec.groups.items()}
        self.out = _Pointwise(dec.out)
        self.slope = self.slope_of(dec)

    def schedule(self, height: int, width: int):
        return [(t, [], pos) for t, pos in _wavefronts(height, width, self.slope, 0, self.device).items()]

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
        return self.out(F.elu(h))


class _GatedEngine(_Engine):
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
            self.conds.append((None if cv is None else _channels_last(cv), _channels_last(ch)))
        self.blocks = [
            (
                _Pointwise(b.inner),
                None if (b.cond is None or cond is None) else _channels_last(b.cond(cond)),
                _Pointwise(b.out),
                _Pointwise(b.skip),
            )
            for b in dec.blocks
        ]
        self.v = [_Canvas(n, height, width, filters, margin, like) for _ in range(Lv - 1)]  # inputs of v_convs[1:]
        self.h = [_Canvas(n, height, width, filters, margin, like) for _ in range(L - 1)]  # inputs of h_convs[1:]
        # v_to_h of the vertical pre-activation per horizontal layer, kept until the horizontal stack gets there.
        self.vh = [like.new_zeros(n, height * width, 2 * filters) for _ in range(L)]
        self.slope = self.slope_of(dec)

    @staticmethod
    def slope_of(dec) -> int:
        """The pixels' wavefront slope: also past the vertical stack's ``L_v * c`` columns of lookahead."""
        return max(wavefront_slope(dec.receptive_field()), dec.vertical_layers * (dec.kernel_size // 2) + 1)

    def schedule(self, height: int, width: int):
        fronts = [
            _wavefronts(height, width, self.slope, (self.Lv - 1 - l) * self.c, self.device) for l in range(self.Lv)
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
        return self.out2(F.elu(self.out1(F.elu(skip))))


class _WindowEngine(_Engine):
    """Any decoder with :meth:`window`: runs it on clipped crops around the
    pixels of each wavefront, crops of equal geometry batched together."""

    def __init__(self, dec, cond, n: int, height: int, width: int, like: torch.Tensor, scale, channels: int = 1):
        self.dec, self.cond, self.height, self.width, self.device = dec, cond, height, width, like.device
        self.scale, self.win = scale, dec.window()
        self.canvas = like.new_zeros(n, channels, height, width)  # observed units, as naive sampling has them
        self.slope = self.slope_of(dec)

    def schedule(self, height: int, width: int):
        return [(t, [], pos) for t, pos in _wavefronts(height, width, self.slope, 0, self.device).items()]

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


# ---------------------------------------------------------------------- sampler
class FastSampler:
    """Exact fast sampler for a :class:`~vlae.model.VLAE`'s decoder.

    Args:
        model: the VLAE (any decoder kind and observation model; unconditional
            models too).
        method: ``"auto"`` (cached for masked and gated decoders, one pass for the
            factorized decoder, ``"window"`` for other kinds), ``"cache"``,
            ``"window"``, or ``"naive"`` (the model's own loop, for reference).
        tol: pixels whose uniforms lie within ``tol`` of a CDF value where their
            draw would change are re-decided with the naive computation, making
            samples bit-identical to :meth:`VLAE.decode` (default per observation
            model and dtype, see ``_DEFAULT_TOL``; ``0`` disables the check).

    Example:
        >>> sampler = FastSampler(model)
        >>> x = sampler.decode(z, torch.rand(len(z), *model.uniforms_shape))   # like model.decode(z, u)
        >>> recon = model.reconstruct(images, n=4, sampler=sampler.decode)
    """

    def __init__(self, model, method: str = "auto", tol: float | None = None):
        if method not in METHODS:
            raise VLAEError(f"invalid sampling method {method!r}; choose from {', '.join(METHODS)}")
        dec = model.decoder
        if method == "cache" and not isinstance(dec, (MaskedPixelCNN, GatedPixelCNN, FactorizedDecoder)):
            raise VLAEError(f"sampling method 'cache' does not support decoder {type(dec).__name__}; use 'window'")
        self.model, self.method, self.tol = model, method, tol
        self.fallbacks = 0  # pixels re-decided by the naive computation in the last decode

    def _engine_class(self) -> type[_Engine]:
        dec, cached = self.model.decoder, self.method in ("auto", "cache")
        if cached and isinstance(dec, MaskedPixelCNN):
            return _MaskedEngine
        return _GatedEngine if cached and isinstance(dec, GatedPixelCNN) else _WindowEngine

    def _engine(self, cond, n, height, width, like):
        kind, scale = self._engine_class(), self.model.observation.scale
        args = (self.model.decoder, cond, n, height, width, like, scale)
        return kind(*args, self.model.cfg.image_shape[0]) if kind is _WindowEngine else kind(*args)

    def pixel_order(self) -> list[torch.Tensor]:
        """The flat positions ``i * W + j`` drawn at each step, in drawing order (one step
        with every position for the factorized decoder): the order :mod:`vlae.codec` codes in."""
        (_, height, width), dec = self.model.cfg.image_shape, self.model.decoder
        device = next(dec.parameters()).device
        if isinstance(dec, FactorizedDecoder):
            return [torch.arange(height * width, device=device)]
        return list(_wavefronts(height, width, self._engine_class().slope_of(dec), 0, device).values())

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, u: torch.Tensor, return_probs: bool = False):
        """Draw ``x ~ p(x|z)`` given uniforms ``u (n, U, H, W)``: same contract
        and same result as :meth:`VLAE.decode`.

        Returns:
            ``x (n, C, H, W)`` in observed units (and the per-pixel distribution
            used, :meth:`~vlae.observation.ObservationModel.summary`).
        """
        model, dec, obs = self.model, self.model.decoder, self.model.observation
        if self.method == "naive":
            return model.decode(z, u, return_probs=return_probs)
        if u.dim() != 4 or tuple(u.shape[1:]) != tuple(model.uniforms_shape):
            raise VLAEError(
                f"uniforms must have shape (n, {', '.join(map(str, model.uniforms_shape))}), got {tuple(u.shape)}"
            )
        cond = model.condition(z)  # the same call as naive sampling: identical conditioning map
        self.fallbacks = 0
        n, _, height, width = u.shape
        channels = model.cfg.image_shape[0]
        if isinstance(dec, FactorizedDecoder):
            params = dec(obs.scale(u.new_zeros(n, channels, height, width)), cond)
            x = obs.sample(params, u)
            return (x, obs.summary(params)) if return_probs else x
        tol = self.tol if self.tol is not None else _DEFAULT_TOL.get(obs.name, {}).get(u.dtype, 2.0**-5)
        engine = self._engine(cond, n, height, width, u)
        uf = u.reshape(n, u.shape[1], height * width)
        x = u.new_zeros(n, channels, height * width)
        summary = None
        for _, layer_positions, pos in engine.schedule(height, width):
            engine.advance(layer_positions)
            if pos is None:
                continue
            params = engine.params(pos).transpose(1, 2)  # (n, P, N)
            xs, margin = obs.sample_with_margin(params, uf[:, :, pos])
            s = obs.summary(params)
            if tol > 0:
                close = margin <= tol
                if close.any():  # rare: settle these pixels exactly as naive sampling does
                    self.fallbacks += int(close.sum())
                    self._settle(close, pos, x, cond, u, s, xs, height, width)
            if summary is None:
                summary = s.new_zeros(n, s.shape[1], height * width)
            x[:, :, pos], summary[:, :, pos] = xs, s
            engine.write_pixels(pos, xs.transpose(1, 2))
        assert summary is not None  # every image has a pixel
        x, summary = x.view(n, channels, height, width), summary.view(n, -1, height, width)
        return (x, summary) if return_probs else x

    def _settle(self, close, pos, x, cond, u, s, xs, height: int, width: int) -> None:
        """Overwrite ``s (n, S, N)`` and ``xs (n, C, N)`` where ``close (n, N)`` with the
        naive sampler's own distribution and decision.

        Naive sampling decides pixel ``q`` from the full decoder on the whole
        batch, pixels at or after ``q`` in raster order still zero. One such pass
        serves one pixel per image: each image's row of the canvas is zeroed from
        its own pixel on (an image's outputs do not depend on the other rows, and
        pixels earlier in raster order that are not drawn yet lie outside the
        receptive field, where the weights are exactly zero).
        """
        model, n = self.model, x.shape[0]
        pending = close.clone()
        while pending.any():
            first = pending.float().argmax(1)  # one pending pixel per image
            images = pending.any(1).nonzero().flatten().tolist()
            canvas = x.clone()
            for b in images:
                canvas[b, :, int(pos[first[b]]) :] = 0
            params = model.decoder(model.observation.scale(canvas.view(n, -1, height, width)), cond)
            for b in images:
                k = int(first[b])
                i, j = divmod(int(pos[k]), width)
                p = params[:, :, i : i + 1, j : j + 1]  # the very tensor naive sampling draws from
                xs[b, :, k] = model.observation.sample(p, u[:, :, i : i + 1, j : j + 1])[b, :, 0, 0]
                s[b, :, k] = model.observation.summary(p)[b, :, 0, 0]
                pending[b, k] = False

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, return_probs: bool = False):
        """``n`` images, drawing ``z`` and ``u`` exactly as :meth:`VLAE.sample` does."""
        model = self.model
        anchor = next(model.decoder.parameters())
        z = model.prior.sample(n, generator=generator) if model.latent_dim > 0 else None
        u = torch.rand((n, *model.uniforms_shape), generator=generator, device=anchor.device, dtype=anchor.dtype)
        return self.decode(z, u, return_probs=return_probs)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`VLAE.reconstruct` with this sampler: ``(n, B, C, H, W)``."""
        return self.model.reconstruct(x, n, generator=generator, sampler=self.decode)


def fast_sample(model, n: int, generator: torch.Generator | None = None, return_probs: bool = False):
    """``n`` samples from ``model``, bit-identical to ``model.sample(n, generator=g)``
    for a generator in the same state, at a fraction of the cost."""
    return FastSampler(model).sample(n, generator=generator, return_probs=return_probs)


#: Images :func:`sample_in_batches` draws at once: memory is bounded by this, not by ``n``.
SAMPLE_BATCH = 256


@torch.no_grad()
def sample_in_batches(
    model, n: int, generator: torch.Generator | None = None, naive: bool = False, batch: int = SAMPLE_BATCH
) -> torch.Tensor:
    """``n`` samples as ``uint8 (n, C, H, W)`` on the CPU, drawn ``batch`` at a time one
    after the other from ``generator`` (fast sampler, or ``model.sample`` if ``naive``:
    the two give the same images), so that memory does not grow with ``n``
    (``vlae sample --n 100000000`` would otherwise ask for hundreds of GB at once)."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got {n} and {batch}")
    draw = model.sample if naive else FastSampler(model).sample
    out = None
    for start in range(0, n, batch):
        x = draw(min(batch, n - start), generator=generator)
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
        out[start : start + x.shape[0]] = x.round().to(torch.uint8).cpu()
    return out


def crop_logits(decoder, x: torch.Tensor, cond: torch.Tensor | None, i: int, j: int) -> torch.Tensor:
    """Logit ``(i, j)`` computed from the crop ``rows [i-up, i+down] x cols
    [j-left, j+right]`` (clipped to the image) of ``x`` and ``cond``, with
    ``decoder.window()`` giving the margins: ``(B, P)``. Equals
    ``decoder(x, cond)[:, :, i, j]`` up to rounding (the locality the fast
    sampler relies on)."""
    w = decoder.window()
    height, width = x.shape[-2:]
    r0, r1 = max(0, i - w["up"]), min(height, i + w["down"] + 1)
    c0, c1 = max(0, j - w["left"]), min(width, j + w["right"] + 1)
    crop_cond = None if cond is None else cond[:, :, r0:r1, c0:c1]
    return decoder(x[:, :, r0:r1, c0:c1], crop_cond)[:, :, i - r0, j - c0]
