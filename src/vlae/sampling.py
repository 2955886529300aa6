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
horizontal stack (see :class:`~vlae.wavefront.GatedEngine`). Decoders of an unknown kind fall
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

from typing import Callable

import torch

from .errors import VLAEError
from .pixelcnn import FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN
from .wavefront import Engine, GatedEngine, MaskedEngine, WindowEngine, wavefront_slope, wavefronts

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
        >>> from vlae.config import get_preset
        >>> from vlae.model import VLAE
        >>> model = VLAE(get_preset("tiny").model).eval()
        >>> sampler = FastSampler(model)
        >>> z, u = model.prior.sample(2), torch.rand(2, *model.uniforms_shape)
        >>> torch.equal(sampler.decode(z, u), model.decode(z, u))  # the naive loop's images, bit for bit
        True
        >>> recon = model.reconstruct(torch.zeros(3, 1, 28, 28), n=4, sampler=sampler.decode)
    """

    def __init__(self, model, method: str = "auto", tol: float | None = None):
        if method not in METHODS:
            raise VLAEError(f"invalid sampling method {method!r}; choose from {', '.join(METHODS)}")
        dec = model.decoder
        if method == "cache" and not isinstance(dec, (MaskedPixelCNN, GatedPixelCNN, FactorizedDecoder)):
            raise VLAEError(f"sampling method 'cache' does not support decoder {type(dec).__name__}; use 'window'")
        self.model, self.method, self.tol = model, method, tol
        self.fallbacks = 0  # pixels re-decided by the naive computation in the last decode

    def _engine_class(self) -> type[Engine]:
        dec, cached = self.model.decoder, self.method in ("auto", "cache")
        if cached and isinstance(dec, MaskedPixelCNN):
            return MaskedEngine
        return GatedEngine if cached and isinstance(dec, GatedPixelCNN) else WindowEngine

    def engine(self, cond: torch.Tensor | None, n: int, height: int, width: int, like: torch.Tensor) -> Engine:
        """A fresh engine (:mod:`vlae.wavefront`) for ``n`` images given their conditioning
        map ``cond`` (:meth:`VLAE.condition`), its canvases like ``like`` (dtype, device)."""
        kind, scale = self._engine_class(), self.model.observation.scale
        args = (self.model.decoder, cond, n, height, width, like, scale)
        return kind(*args, self.model.cfg.image_shape[0]) if kind is WindowEngine else kind(*args)

    def pixel_order(self) -> list[torch.Tensor]:
        """The flat positions ``i * W + j`` drawn at each step, in drawing order (one step
        with every position for the factorized decoder): the order :mod:`vlae.codec` codes in."""
        (_, height, width), dec = self.model.cfg.image_shape, self.model.decoder
        device = next(dec.parameters()).device
        if isinstance(dec, FactorizedDecoder):
            return [torch.arange(height * width, device=device)]
        return list(wavefronts(height, width, self._engine_class().slope_of(dec), 0, device).values())

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
        engine = self.engine(cond, n, height, width, u)
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
    model,
    n: int,
    generator: torch.Generator | None = None,
    naive: bool = False,
    batch: int = SAMPLE_BATCH,
    progress: Callable[[int, int], object] | None = None,
) -> torch.Tensor:
    """``n`` samples as ``uint8 (n, C, H, W)`` on the CPU, drawn ``batch`` at a time one
    after the other from ``generator`` (fast sampler, or ``model.sample`` if ``naive``:
    the two give the same images), so that memory does not grow with ``n``
    (``vlae sample --n 100000000`` would otherwise ask for hundreds of GB at once).
    ``progress(done, n)`` is called after each batch."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got {n} and {batch}")
    draw = model.sample if naive else FastSampler(model).sample
    out = None
    for start in range(0, n, batch):
        x = draw(min(batch, n - start), generator=generator)
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
        out[start : start + x.shape[0]] = x.round().to(torch.uint8).cpu()
        if progress is not None:
            progress(start + x.shape[0], n)
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
