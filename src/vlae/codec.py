"""Bits-back lossless compression with a trained VLAE: the bound as a file size.

The paper's section 2 reads the negative ELBO as the length of a *bits-back*
code (Hinton and van Camp, 1993; Frey and Hinton, 1997). This module makes that
code real, with asymmetric numeral systems on a stack (BB-ANS, Townsend et al.,
2019) from the ``constriction`` package (:class:`constriction.stream.stack.AnsCoder`,
every model ``perfect=False``).

Bits-back, one image ``x`` at a time, on one stack of bits:

1. **pop** a latent ``z`` from the discretized posterior ``Q(z|x)``: decoding
   with ``Q`` *reads* about ``-log2 Q(z|x)`` bits off the stack (the bits of
   earlier images, or the initial bits);
2. **push** ``x`` under ``p(x|z)``, pixel by pixel: ``-log2 p(x|z)`` bits;
3. **push** ``z`` under the discretized prior ``P(z)``: ``-log2 P(z)`` bits.

The stack grows by ``-log2 p(x|z) - log2 P(z) + log2 Q(z|x)`` bits, whose
expectation over ``z ~ Q`` is the negative ELBO. Decoding runs the steps
backwards: pop ``z`` under ``P``, pop ``x`` under ``p(x|z)``, recompute
``Q(z|x)`` from the decoded ``x`` and push ``z`` back under it, which returns the
bits step 1 read, exactly. Images are coded in *chunks* (one network pass
serves a chunk; decoding visits the chunks in reverse order). A chunk pops all
its latents before it pushes anything, and each pop takes up to
``D * precision`` bits while an image leaves only its net cost (~130 bits for
an MNIST digit at 90 nats) on the stack, so the encoder sizes each chunk to the bits the stack
holds (at most ``batch``) and the file lists the sizes. (Popping from an
exhausted stack would still round-trip, but it reads zeros: a poor ``z``.)

**Initial bits.** The first pop needs bits to read: the stack starts with
``initial_words`` pseudo-random 32-bit words (seeded by the images' digest), a
fixed overhead of about ``D * (precision + 2)`` bits, stated separately and
amortized over the images. The decoder regenerates them and checks that
exactly they remain after the last image: a free integrity check.

**Latent discretization** (as BB-ANS). Every latent dimension is cut into
``K = 2**precision`` bins of equal mass under the prior's base distribution
``N(0, 1)`` (its CDF as :mod:`vlae.portable` computes it, to 1.2e-7); a bin is
represented by its median. Pushing a bin under the prior then costs exactly
``precision`` bits per dimension, and the posterior's mass in a bin is a
difference of two normal CDFs. ``precision`` (default 8) trades
discretization error (the bins near 0 are ``~1 / (0.4 K)`` wide, 0.01 at 8 bits,
below any posterior standard deviation that matters) against time: each popped or
pushed dimension evaluates the ``K`` bins (those within 9 standard deviations).
Measured on 500 binarized-MNIST test digits (mnist-small, 5 minutes of training):
+0.06% of the -ELBO at 8 bits, +0.01% at 12, with 8 bits 1.4x (compress) and
1.8x (decompress) faster; on 200 Fashion-MNIST images (fashion-small) +0.04% and
+0.07%.

**The AF prior: coding in the flow's noise coordinates.** With more than one
flow step in alternating orders, ``p(z)`` is not a product of univariate
conditionals in one order, so ``z`` cannot be pushed under it directly. The
code therefore lives in the prior's noise coordinates ``eps = f(z)``, where
``p(eps) = N(0, I)`` *factorizes*: the bins above are bins of ``eps``, the prior
push is the uniform ``precision`` bits per dimension, and the decoder is fed
``z = f^-1(eps_hat)`` (the flow's exact inverse of the bin medians). Since
``log p(z) - log q(z|x) = log N(eps) - log q_eps(eps|x)`` for any bijection
``f`` (the log-determinants cancel; mean-only steps have none), the ELBO is the
same in either coordinate system; only the posterior must be re-expressed:
``q_eps`` is ``q(z|x)`` pushed through ``f``, which is not factorized either.
We pop from its **Gaussian linearization** ``Q = N(f(g(0)), J J^T)``, where
``g(eta) = mu + sigma * eta`` (followed by the IAF steps for an IAF posterior) maps
the posterior's standard noise to ``z`` and ``J`` is the Jacobian of
``f(g(eta))`` at ``eta = 0``. ``Q`` is coded dimension by dimension through its
Cholesky factor (``J J^T = L L^T``): dimension ``i`` given the bins chosen
for ``j < i`` is ``N(m_i + sum_j L_ij eta_j, L_ii^2)``. Bits-back is exact for any
proposal both sides compute identically; a proposal other than the true
posterior only changes the *length*: the code costs the ELBO of ``Q``
instead of ``q``. For a Gaussian prior and a Gaussian posterior ``J = diag(sigma)``
and ``Q`` *is* the posterior (the textbook case). For the AF prior the price
is how far ``f`` bends across the posterior's width; ``bench/compress.py``
measures it. On all 10,000 binarized-MNIST test digits (mnist-small, 15 and
30 minutes of training on a shared CPU) the code came within +0.17% of the
-ELBO with the Gaussian prior and +0.29% with the AF prior (both within two
standard errors of the -ELBO estimate), and precisions 6 to 16 cost the same
to 0.1 nats. (Local bits-back coding, Ho et al. 2019, would track the Jacobian
per bin instead; the linearization costs one reverse-mode Jacobian per chunk
and no extra initial bits.)

**Pixels.** A binary pixel is one Bernoulli symbol. An 8-bit pixel is coded
channel by channel, R, then G, then B, each a 256-symbol categorical: the exact
conditionals of the PixelCNN++ mixture, ``p(R)`` from the mixture's R marginal
and ``p(G | R)``, ``p(B | R, G)`` from the mixture with each component's weight
re-weighted by its likelihood of the channels already coded (and its G and B
means shifted by them), the bins from the observation model's own CDF
differences (:meth:`~vlae.likelihood.DiscretizedLogisticMixture.channel_probs`),
so the three conditionals multiply to ``p(x|z)`` exactly. On 1,000 8x8 patches
of the embedded photographs, with a tiny spatial-latent model trained for 300
steps (about 100 s), the code took 777.39 nats per patch against a -ELBO of
777.37 with the AF prior, and 773.37 against 773.39 with the Gaussian prior.

**Exactness on every machine.** One wrong probability bit corrupts everything
decoded after it, so the encoder and the decoder must compute *the same numbers*,
also when the decoder runs on another machine: another thread count, AVX2
instead of AVX-512 or the plain ``default`` kernels (``ATEN_CPU_CAPABILITY``),
a GPU. Those agree only to the last bits (reduction orders, FMA, vector widths,
transcendental libraries), and a float32 model's probabilities differ there. The
method (:mod:`vlae.portable`):

1. The probability model runs in **float64** (a float64 copy of the weights, on
   ``device``): machines then disagree by a few ulps, ~1e-16 relative.
2. Every number the network hands the coder -- the decoder's outputs per pixel,
   the proposal's mean and Cholesky factor, the 8-bit conditionals of
   :meth:`~vlae.likelihood.DiscretizedLogisticMixture.channel_probs` -- is
   **snapped** to a coarse grid: 16 significant bits (steps of ``2**-16`` below
   1 for network outputs; relative for probabilities). Two machines snap a value
   differently only if it lies within their disagreement of a rounding boundary.
3. The encoder knows where that can happen: a value within ``2**-24`` grid steps
   of a boundary (``2**-40 max(1, |v|)``, thousands of float64 ulps) is a
   **near-tie**, and the file records which way it rounded (13 bytes each); the
   decoder rounds those the same way. Expected near-ties: ``2**-23`` per value,
   e.g. about two for all 10,000 binarized-MNIST test images with a 32-dimensional
   code (18 million snapped values), a few hundred for 10,000 8-bit Fashion-MNIST images.
4. After snapping, only IEEE-754 operations that are correctly rounded on every
   machine are used, in a fixed order: the Bernoulli's ``sigmoid``, the latent
   bins' normal CDF and its inverse (:mod:`vlae.portable`: a polynomial ``exp``
   and a 1.2e-7-accurate ``erfc``; the bins are equal-mass under that CDF), the
   conditional means of the proposal; constriction's quantization is integer
   and float arithmetic on these same inputs.

Hence decoding is exact on any machine whose float64 results differ from the
writer's by less than the margin, ``2**-40 max(1, |v|)`` = 9.1e-13 (relative
``2**-40`` for the 8-bit conditionals), with certainty: a value the machines
could round apart is a recorded near-tie, not a matter of chance. Measured
(fashion-small, 100 Fashion-MNIST images, float64): between AVX-512 with 1
thread and ``default`` with 1 or AVX2 with 2 threads, 83% of the decoder's
outputs differ, by at most 8.0e-15 ``max(1, |v|)``, and the conditionals
computed from identical inputs by at most 2.1e-15 relative: the margin is more
than 100 times the disagreement. The margin is an assumption on the hardware,
not a probability; violating it is *detected*: the file
carries a CRC-32 of everything snapped (per site, order-free), checked after
decoding, and since the file's own CRC-32 vouches for its bytes, any failure to
decode an intact file is reported as what it is ("this file was written on a
machine whose arithmetic differs ..."), never as corruption and never as wrong
images with exit status 0 (a wrong image passes both the snapped-value CRC and
the images' SHA-256 digest with probability below ``2**-32``). The cost: one
float64 network, and the near-ties (bytes) -- the grid itself changes a
probability by at most ``2**-17`` relative, a loss of ~1e-10 bits per symbol.
Tests compress and decompress in subprocesses under ``--threads`` 1 and 2,
``ATEN_CPU_CAPABILITY`` avx512/avx2/default and two chunk layouts (without the
grid those files fail to decode: the float64 numbers do differ), and on CUDA.

Files of format version 1 (float32 probabilities, decodable only on the machine
that wrote them) are refused with a one-line message naming the version.

File format (all integers little-endian):

=========  =======  ==========================================================
bytes      type     field
=========  =======  ==========================================================
0-7        8 bytes  magic ``\\x89VLAEbb\\n``
8-9        u16      format version (:data:`FORMAT_VERSION`)
10-25      16 B     model identity: SHA-256 of its config and weights (:func:`model_identity`)
26         u8       observation model (0: Bernoulli, binary pixels; 1: logistic mixture, 8-bit)
27-32      3 x u16  image shape ``C, H, W``
33-36      u32      number of images
37-38      u16      largest chunk ``batch``
39         u8       latent precision (bits per dimension)
40-43      u32      initial words (32-bit)
44-59      16 B     SHA-256 of the images (bit-packed if binary; seeds the initial words)
60-63      u32      ``M``, number of chunks
64-67      u32      ``W``, number of 32-bit words in the stream
68-71      u32      ``T``, number of near-ties
72-75      u32      checksum of the snapped numbers (XOR over sites of CRC-32s)
76-...     M x u16  images per chunk, in encoding order
...        T x 13 B near-ties: chunk u32, site u32, index u32, kind | direction << 2 u8
...        W x u32  the ANS stack (``AnsCoder.get_compressed()``)
last 4     u32      CRC-32 of everything before it
=========  =======  ==========================================================

Example:
    >>> from vlae.config import get_preset
    >>> from vlae.model import VLAE
    >>> model = VLAE(get_preset("tiny").model).eval()
    >>> x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.2))
    >>> data = compress(model, x)
    >>> torch.equal(decompress(model, data), x.to(torch.uint8))
    True

References:
    Townsend, Bird and Barber, Practical Lossless Compression with Latent
    Variables using Bits Back Coding (ICLR 2019).
    Ho, Lohn and Abbeel, Compression with Flows via Local Bits-Back Coding (2019).
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), section 2.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import VLAEError
from .flows import AFPrior, GaussianPrior
from .pixelcnn import FactorizedDecoder
from .portable import normal_bin_masses, normal_quantile, sigmoid, snap
from .spatial_prior import SpatialAFPrior

__all__ = ["compress", "decompress", "read_header", "Header", "CodeStats", "model_identity", "MAGIC",
           "FORMAT_VERSION", "DEFAULT_PRECISION", "DEFAULT_BATCH", "read_images", "write_images"]

MAGIC = b"\x89VLAEbb\n"
FORMAT_VERSION = 2
DEFAULT_PRECISION = 8
DEFAULT_BATCH = 100
PRECISIONS = range(4, 17)  # K = 16 .. 65,536 bins per latent dimension
_HEADER = struct.Struct("<8sH16sB3HIHBI16sIIII")
_CRC = struct.Struct("<I")
_PROBS_BLOCK = 64  # pixels per call of channel_probs (8-bit models)
_OBSERVATIONS = {"bernoulli": 0, "logistic_mixture": 1}  # observation model -> code in the header


# ---------------------------------------------------------------------- model interface
def model_identity(model) -> bytes:
    """16 bytes naming a model: SHA-256 of its config and every weight (name, dtype,
    shape and bytes). Decompressing needs the very model that compressed."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def _observation(model) -> str:
    """The model's observation model, if the codec can code its pixels."""
    obs = getattr(model, "obs", None)
    name = "bernoulli" if obs is None else str(getattr(obs, "name", type(obs).__name__))
    channels = model.cfg.image_shape[0]
    if name not in _OBSERVATIONS or (name == "bernoulli" and channels != 1) or channels not in (1, 3):
        raise VLAEError(f"vlae compress supports binary (1 channel) and 8-bit (1 or 3 channel) images; this model "
                        f"has a {name} observation model on {channels}-channel images")
    return name


def _binary(model) -> bool:
    return _observation(model) == "bernoulli"


def _check_model(model) -> None:
    _observation(model)
    prior = getattr(model, "prior", None)
    if model.latent_dim > 0 and not (type(prior) is GaussianPrior or isinstance(prior, (AFPrior, SpatialAFPrior))):
        raise VLAEError(f"the codec supports Gaussian and AF priors, not {type(prior).__name__}")


def _coding_model(model, device: str | torch.device | None):
    """The probability model both sides evaluate: a float64 copy of ``model`` on ``device``
    (default: the model's), so that machines disagree only in the last float64 bits."""
    try:
        device = torch.device(device) if device is not None else next(model.parameters()).device
    except RuntimeError:
        raise VLAEError(f"invalid --device {device!r}; e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VLAEError("--device cuda: no CUDA device is available")
    return copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()


# ---------------------------------------------------------------------- the portable grid
_PROPOSAL, _PARAMS, _PROBS = 0, 1, 2  # what a snapped value is: latent proposal, decoder output, 8-bit conditional
_TIE = np.dtype([("chunk", "<u4"), ("site", "<u4"), ("index", "<u4"), ("flags", "u1")])  # flags: kind | up << 2


class _CorruptFile(VLAEError):
    """The file contradicts itself (found while decoding)."""


class _Grid:
    """Snaps the probability model's float64 numbers to the grid of :func:`vlae.portable.snap`.

    Every call names its *site* (``kind``, ``site``): the same numbers on both sides,
    whatever order they are computed in. The encoder records the near-ties (chunk, site,
    index, direction); the decoder, given them, rounds those values the encoder's way.
    ``checksum`` is the XOR over sites of the CRC-32 of the snapped bytes: equal on both
    sides exactly when every snapped number is.
    """

    def __init__(self, ties: np.ndarray | None = None):
        self.recording = ties is None
        self.recorded: list[np.ndarray] = []
        self.replay: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        for key, group in _group_ties(ties if ties is not None else np.zeros(0, _TIE)):
            self.replay[key] = (group["index"].astype(np.int64), (group["flags"] >> 2).astype(np.uint8))
        self.checksum, self.chunk = 0, 0

    def __call__(self, kind: int, site: int, values: torch.Tensor) -> np.ndarray:
        v = values.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(v).all():
            raise VLAEError("the model computes non-finite probabilities for these images; cannot code them")
        if v.size >= 2 ** 32 or site >= 2 ** 32:
            raise VLAEError("a chunk is too large to code; use a smaller --batch")
        replay = self.replay.get((self.chunk, kind, site))
        if replay is not None and len(replay[0]) and int(replay[0].max()) >= v.size:
            raise _CorruptFile("corrupted (a near-tie record points past the numbers of its site)")
        out, near, up = snap(v, replay, relative=kind == _PROBS)
        if self.recording and len(near):
            tie = np.zeros(len(near), _TIE)
            tie["chunk"], tie["site"], tie["index"], tie["flags"] = self.chunk, site, near, kind | (up << 2)
            self.recorded.append(tie)
        seed = zlib.crc32(struct.pack("<IIB", self.chunk, site, kind))
        self.checksum ^= zlib.crc32(np.ascontiguousarray(out).tobytes(), seed)
        return out

    def ties(self) -> np.ndarray:
        return np.concatenate(self.recorded) if self.recorded else np.zeros(0, _TIE)


def _group_ties(ties: np.ndarray):
    keys = np.stack([ties["chunk"].astype(np.int64), (ties["flags"] & 3).astype(np.int64),
                     ties["site"].astype(np.int64)], 1)
    for key in {tuple(k) for k in keys.tolist()}:
        yield key, ties[(keys == key).all(1)]


class _Latents:
    """The latent code in the prior's noise coordinates, discretized into ``2**precision``
    equal-mass bins per dimension (see the module docstring)."""

    def __init__(self, model, precision: int):
        self.model, self.dims, self.bins = model, model.latent_dim, 2 ** precision
        self.edges = normal_quantile(np.arange(self.bins + 1) / self.bins)  # (K + 1,), from -inf to inf
        self.medians = normal_quantile((np.arange(self.bins) + 0.5) / self.bins)

    def _noise(self, mu, log_sigma, h, eta):
        """Posterior noise ``eta (B, D)`` -> the prior's noise coordinates ``(B, D)``."""
        z, _ = self.model.posterior.rsample(mu, log_sigma, h, eta)
        return self.model.prior.to_noise(z)[0] if isinstance(self.model.prior, (AFPrior, SpatialAFPrior)) else z

    def proposal(self, x: torch.Tensor, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian linearization of q(eps|x), snapped: mean ``(B, D)`` and Cholesky factor
        ``(B, D, D)``."""
        mu, log_sigma, h = self.model.encode(x)
        eta = torch.zeros_like(mu)
        mean = self._noise(mu, log_sigma, h, eta)
        # Images are independent, so the Jacobian of the batch sum holds every image's rows.
        # Reverse mode: D vector-Jacobian products (forward mode is ~100x slower through MADE here).
        jac = torch.func.jacrev(lambda e: self._noise(mu, log_sigma, h, e).sum(0))(eta)  # (D, B, D)
        r = torch.linalg.qr(jac.permute(1, 2, 0)).R  # J^T = Q R, so J J^T = R^T R
        diag = torch.diagonal(r, dim1=1, dim2=2)
        chol = grid(_PROPOSAL, 1, r.transpose(1, 2) * diag.sign()[:, None, :])
        if not bool((np.diagonal(chol, axis1=1, axis2=2) > 0).all()):
            raise VLAEError("the posterior is degenerate (zero or non-finite spread); cannot code its latent")
        return grid(_PROPOSAL, 0, mean), chol

    def walk(self, mean: np.ndarray, chol: np.ndarray, choose: Callable[[int, np.ndarray], Any]) -> np.ndarray:
        """Visit the dimensions in order: ``choose(i, probs (B, K))`` picks dimension ``i``'s
        bins ``(B,)`` given its conditional bin probabilities; returns all bins ``(B, D)``.
        Portable arithmetic only (:mod:`vlae.portable`); the conditional means accumulate
        ``L_ij eta_j`` in the order ``j = 0, 1, ...`` on every machine."""
        centre = mean.copy()
        chosen = np.empty(mean.shape, dtype=np.int64)
        for i in range(self.dims):
            spread = chol[:, i, i]
            t = (self.edges[None, :] - centre[:, i:i + 1]) / spread[:, None]
            k = np.asarray(choose(i, normal_bin_masses(t)), dtype=np.int64)
            chosen[:, i] = k
            eta = (self.medians[k] - centre[:, i]) / spread
            centre[:, i + 1:] = centre[:, i + 1:] + chol[:, i + 1:, i] * eta[:, None]
        return chosen

    def latent(self, bins: np.ndarray) -> torch.Tensor:
        """Bins ``(B, D)`` -> ``z (B, D)``: the prior's flow inverted at the bin medians."""
        anchor = next(self.model.parameters())
        eps = torch.from_numpy(self.medians[bins]).to(device=anchor.device, dtype=anchor.dtype)
        return self.model.prior.sample(len(bins), eps=eps)


def _walk_pixels(model, z: torch.Tensor | None, n: int,
                 decide: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Run the decoder position by position in decoding order: ``decide(step, pos, params)``
    gets the step's index, its flat positions ``(N,)`` and the decoder's outputs there
    ``(n * N, P)`` (image-major), and returns the pixel values ``(n * N, C)`` the decoder
    reads from then on. One network position per pixel for the whole chunk (the fast
    sampler's cached engine); the factorized decoder needs one pass."""
    from .sampling import FastSampler

    dec = model.decoder
    channels, height, width = model.cfg.image_shape
    cond = model.condition(z)
    like = next(dec.parameters()).new_zeros(n, channels, height, width)
    if isinstance(dec, FactorizedDecoder):
        params = dec(model.obs.scale(like), cond).flatten(2).transpose(1, 2)  # (n, HW, P)
        decide(0, torch.arange(height * width, device=like.device), params.reshape(n * height * width, -1))
        return
    engine = FastSampler(model)._engine(cond, n, height, width, like)
    step = 0
    for _, layer_positions, pos in engine.schedule(height, width):
        engine.advance(layer_positions)
        if pos is None:
            continue
        params = engine.params(pos)  # (n, N, P)
        values = decide(step, pos, params.reshape(-1, params.shape[-1]))
        engine.write_pixels(pos, values.to(like).view(n, len(pos), channels))
        step += 1


def _channel_probs(model, grid: _Grid, step: int, params: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The coding distribution of the pixels' next channel ``c = previous.shape[1]`` given
    their snapped decoder outputs ``(m, P)`` and earlier channels ``(m, c)``: ``p(x = 1) (m,)``
    for a binary pixel (:func:`vlae.portable.sigmoid`), snapped 256-bin probabilities
    ``(m, 256)`` for an 8-bit channel (R, then G given R, then B given R and G:
    :meth:`~vlae.likelihood.DiscretizedLogisticMixture.channel_probs` in float64)."""
    if _binary(model):
        return sigmoid(params[:, 0])
    c = previous.shape[1]
    # In blocks of pixels: the (block, K, 255) intermediates stay in the cache, 2-3x faster than one pass
    # over a chunk's (n * N) pixels. Both sides cut a step's pixels the same way (the grid absorbs the
    # last-bit differences of any other cut, as it absorbs another machine's).
    blocks = zip(torch.from_numpy(params).split(_PROBS_BLOCK), torch.from_numpy(previous).double().split(_PROBS_BLOCK))
    probs = torch.cat([model.obs.channel_probs(p, q) for p, q in blocks])
    return grid(_PROBS, step * model.cfg.image_shape[0] + c, probs)


def _information(symbols: np.ndarray, probs: np.ndarray) -> float:
    """``-sum log2 p(symbol)`` under the unquantized probabilities, in bits."""
    if probs.ndim == 1:
        return float(-np.log2(np.where(symbols == 1, probs, 1 - probs)).sum())
    mass = probs[np.arange(len(symbols)), symbols] / probs.sum(1)
    return float(-np.log2(np.maximum(mass, 2.0 ** -24)).sum())  # constriction's floor


# ---------------------------------------------------------------------- bits-back chunks
def _cs():
    import constriction

    return constriction


@dataclass
class CodeStats:
    """What a compression cost, in bits. ``ideal_*`` are information contents
    under the unquantized probabilities; the stream is what ANS wrote."""

    images: int
    dims: int  # data dimensions per image
    file_bytes: int
    stream_bits: int  # the ANS stack in the file, initial bits included
    initial_bits: int  # the initial words (and constriction's seal word)
    ideal_pixel_bits: float  # sum of -log2 p(x|z)
    ideal_prior_bits: float  # sum of -log2 P(z)
    ideal_bits_back: float  # sum of -log2 Q(z|x): read off the stack
    seconds: float
    ties: int = 0  # near-ties recorded for portable decoding (13 bytes each in the file)

    @property
    def net_bits(self) -> int:
        """Stream bits net of the initial bits: what the images cost."""
        return self.stream_bits - self.initial_bits

    @property
    def bits_per_dim(self) -> float:
        return self.net_bits / (self.images * self.dims)

    @property
    def nats_per_image(self) -> float:
        return self.net_bits * float(np.log(2)) / self.images

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "net_bits": self.net_bits, "bits_per_dim": self.bits_per_dim,
                "nats_per_image": self.nats_per_image}


class _Coder:
    """The constriction stack and the three model families the codec uses."""

    def __init__(self, words: np.ndarray, precision: int, seal: bool):
        cs = _cs()
        self.ans = cs.stream.stack.AnsCoder(words, seal=seal)
        self.pixel = cs.stream.model.Bernoulli(perfect=False)  # a binary pixel
        self.channel = cs.stream.model.Categorical(perfect=False)  # an 8-bit channel, 256 symbols
        self.posterior = cs.stream.model.Categorical(perfect=False)
        self.prior = cs.stream.model.Uniform(2 ** precision)


def _encode_chunk(coder: _Coder, model, latents: _Latents | None, grid: _Grid, x: torch.Tensor, stats: dict) -> None:
    n, channels = x.shape[:2]
    z, bins = None, None
    if latents is not None:
        mean, chol = latents.proposal(x, grid)

        def pop(i: int, probs: np.ndarray) -> np.ndarray:
            k = coder.ans.decode(coder.posterior, probs)
            mass = probs[np.arange(n), k] / probs.sum(1)
            stats["back"] -= np.log2(np.maximum(mass, 2.0 ** -24)).sum()  # constriction's floor
            return k

        bins = latents.walk(mean, chol, pop)
        z = latents.latent(bins)
    flat = x.reshape(n, channels, -1).cpu()
    steps: list[tuple[int, np.ndarray, np.ndarray]] = []

    def known(step: int, pos: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        values = flat[:, :, pos.cpu()].transpose(1, 2).reshape(-1, channels)  # (n * N, C), as the decoder has them
        steps.append((step, grid(_PARAMS, step, params), values.numpy().astype(np.float64)))
        return values

    _walk_pixels(model, z, n, known)
    # The stack is last in, first out: push the last step's last channel first, so that the
    # decoder pops pixels in decoding order and each pixel's channels R, G, B in turn.
    for step, params, values in reversed(steps):
        for c in reversed(range(channels)):
            probs = _channel_probs(model, grid, step, params, values[:, :c])
            symbols = values[:, c].astype(np.int32)
            stats["pixels"] += _information(symbols, probs)
            coder.ans.encode_reverse(symbols, coder.pixel if probs.ndim == 1 else coder.channel, probs)
    if bins is not None:
        coder.ans.encode_reverse(bins.astype(np.int32).ravel(), coder.prior)
        stats["prior"] += bins.size * np.log2(latents.bins)


def _decode_chunk(coder: _Coder, model, latents: _Latents | None, grid: _Grid, n: int) -> torch.Tensor:
    channels, height, width = model.cfg.image_shape
    z, bins = None, None
    if latents is not None:
        bins = coder.ans.decode(coder.prior, n * latents.dims).astype(np.int64).reshape(n, -1)
        z = latents.latent(bins)
    flat = torch.zeros(n, channels, height * width, dtype=torch.float64)

    def pop(step: int, pos: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        snapped = grid(_PARAMS, step, params)
        values = np.zeros((len(snapped), channels))
        for c in range(channels):
            probs = _channel_probs(model, grid, step, snapped, values[:, :c])
            values[:, c] = coder.ans.decode(coder.pixel if probs.ndim == 1 else coder.channel, probs)
        out = torch.from_numpy(values)
        flat[:, :, pos.cpu()] = out.view(n, len(pos), channels).transpose(1, 2)
        return out

    _walk_pixels(model, z, n, pop)
    x = flat.view(n, channels, height, width)
    if latents is not None:
        anchor = next(model.parameters())
        mean, chol = latents.proposal(x.to(anchor), grid)
        tables: list[np.ndarray] = []
        latents.walk(mean, chol, lambda i, probs: (tables.append(probs), bins[:, i])[1])
        # The encoder popped dimension-major (all images' dimension 0 first): push back in that order.
        coder.ans.encode_reverse(bins.T.astype(np.int32).ravel(), coder.posterior, np.concatenate(tables))
    return x


def _pop_budget(model, precision: int) -> int:
    """Bits reserved per image for popping its latent: ``D * (precision + 2)``, above
    what a posterior no wider than the prior takes (``D * precision`` at most)."""
    return model.latent_dim * (precision + 2)


def _next_chunk(coder: _Coder, model, precision: int, left: int, batch: int) -> int:
    """Images in the next chunk: as many as the bits on the stack can pop latents
    for (a chunk pops all its latents before it pushes anything), at most ``batch``."""
    budget = _pop_budget(model, precision)
    return min(left, batch) if budget == 0 else max(1, min(left, batch, coder.ans.num_valid_bits() // budget))


def _initial_words(model, precision: int) -> int:
    return 0 if model.latent_dim == 0 else -(-_pop_budget(model, precision) // 32) + 2


def _initial_bits(digest: bytes, words: int) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 2 ** 32, size=words, dtype=np.uint32)


def _digest(x: torch.Tensor, binary: bool) -> bytes:
    """16 bytes naming the images: SHA-256 of their bytes (bit-packed for binary images)."""
    a = x.to(torch.uint8).cpu().numpy().reshape(len(x), -1)
    return hashlib.sha256((np.packbits(a, axis=1) if binary else a).tobytes()).digest()[:16]


# ---------------------------------------------------------------------- public API
@torch.no_grad()
def compress(model, images, *, precision: int = DEFAULT_PRECISION, batch: int = DEFAULT_BATCH,
             device: str | torch.device | None = None, progress: Callable[[int, int], object] | None = None,
             return_stats: bool = False):
    """Losslessly compress binary or 8-bit images with ``model`` (bits-back ANS).

    Args:
        model: a :class:`~vlae.model.VLAE` (its weights are copied to float64 for coding).
        images: ``(N, C, H, W)`` tensor or array of the model's shape, ``N >= 1``: 0/1 for a
            binary (Bernoulli) model, integers 0..255 for an 8-bit (logistic mixture) one.
        precision: latent bins per dimension, as bits (4..16).
        batch: most images per chunk (coded in lockstep: one network position per pixel
            position for the whole chunk).
        device: where the network runs (default: the model's device); the entropy coder
            runs on the CPU. The file decodes on any device and CPU.
        progress: called with ``(images done, N)`` after each chunk.
        return_stats: also return a :class:`CodeStats`.

    Returns:
        The file's bytes (and the stats).
    """
    _check_model(model)
    if precision not in PRECISIONS:
        raise VLAEError(f"invalid latent precision {precision}: must be in [{PRECISIONS[0]}, {PRECISIONS[-1]}] bits")
    if not 1 <= batch <= 65535:
        raise VLAEError(f"invalid batch {batch}: must be in [1, 65535]")
    x = model.check_images(torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images))
    if len(x) == 0:
        raise VLAEError("no images to compress")
    if len(x) >= 2 ** 32:
        raise VLAEError(f"too many images for one file: {len(x)}")
    start = time.perf_counter()
    identity, binary = model_identity(model), _binary(model)
    coding = _coding_model(model, device)
    x = x.to(next(coding.parameters()))
    digest, latents = _digest(x, binary), (_Latents(coding, precision) if model.latent_dim > 0 else None)
    words = _initial_words(model, precision)
    coder, grid = _Coder(_initial_bits(digest, words), precision, seal=True), _Grid()
    initial = coder.ans.num_bits()
    stats = {"pixels": 0.0, "prior": 0.0, "back": 0.0}
    chunks: list[int] = []
    while sum(chunks) < len(x):
        a = sum(chunks)
        chunks.append(_next_chunk(coder, model, precision, len(x) - a, batch))
        grid.chunk = len(chunks) - 1
        _encode_chunk(coder, coding, latents, grid, x[a:a + chunks[-1]], stats)
        if progress is not None:
            progress(a + chunks[-1], len(x))
    payload = coder.ans.get_compressed().astype("<u4")
    ties = grid.ties()
    c, h, w = model.cfg.image_shape
    body = (_HEADER.pack(MAGIC, FORMAT_VERSION, identity, _OBSERVATIONS[_observation(model)], c, h, w,
                         len(x), batch, precision, words, digest, len(chunks), len(payload), len(ties),
                         grid.checksum)
            + np.asarray(chunks, dtype="<u2").tobytes() + ties.tobytes() + payload.tobytes())
    data = body + _CRC.pack(zlib.crc32(body))
    if not return_stats:
        return data
    return data, CodeStats(images=len(x), dims=c * h * w, file_bytes=len(data), stream_bits=32 * len(payload),
                           initial_bits=initial, ideal_pixel_bits=float(stats["pixels"]),
                           ideal_prior_bits=float(stats["prior"]), ideal_bits_back=float(stats["back"]),
                           seconds=time.perf_counter() - start, ties=len(ties))


@dataclass(frozen=True)
class Header:
    """The fixed fields of a compressed file (see the module docstring)."""

    version: int
    model_id: bytes
    observation: int
    image_shape: tuple[int, int, int]
    count: int
    batch: int
    precision: int
    initial_words: int
    digest: bytes
    n_chunks: int
    words: int
    n_ties: int
    checksum: int
    chunks: tuple[int, ...] = ()


def read_header(data: bytes, name: str = "input") -> Header:
    """Parse and check a compressed file's header, length and CRC; one-line
    :class:`VLAEError` for a foreign, older, newer, truncated or corrupted file."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise VLAEError(f"{name}: not a vlae compressed file (bad magic bytes)")
    if len(data) >= len(MAGIC) + 2:
        version = struct.unpack_from("<H", data, len(MAGIC))[0]
        if version > FORMAT_VERSION:
            raise VLAEError(f"{name}: format version {version} is newer than this vlae reads ({FORMAT_VERSION})")
        if version < FORMAT_VERSION:
            raise VLAEError(f"{name}: format version {version} (before portable decoding; it decodes only where it "
                            f"was written, with the vlae of then) is no longer read; this vlae reads version "
                            f"{FORMAT_VERSION}: recompress the images")
    if len(data) < _HEADER.size + _CRC.size:
        raise VLAEError(f"{name}: truncated ({len(data)} bytes, shorter than the header)")
    fields = _HEADER.unpack_from(data)
    head = Header(fields[1], fields[2], fields[3], tuple(fields[4:7]), *fields[7:])
    size = _HEADER.size + 2 * head.n_chunks + _TIE.itemsize * head.n_ties + 4 * head.words + _CRC.size
    if len(data) != size:
        what = "truncated" if len(data) < size else "corrupted (trailing bytes)"
        raise VLAEError(f"{name}: {what}: {len(data)} bytes, the header announces {size}")
    if _CRC.unpack_from(data, size - _CRC.size)[0] != zlib.crc32(data[:size - _CRC.size]):
        raise VLAEError(f"{name}: corrupted (CRC-32 mismatch)")
    chunks = tuple(int(m) for m in np.frombuffer(data, "<u2", count=head.n_chunks, offset=_HEADER.size))
    if (head.precision not in PRECISIONS or head.count < 1 or sum(chunks) != head.count
            or not all(1 <= m <= head.batch for m in chunks)):
        raise VLAEError(f"{name}: corrupted header (version {head.version}, precision {head.precision}, "
                        f"{head.count} images in {head.n_chunks} chunks)")
    return dataclasses.replace(head, chunks=chunks)


def _read_ties(data: bytes, head: Header, name: str) -> np.ndarray:
    ties = np.frombuffer(data, _TIE, count=head.n_ties, offset=_HEADER.size + 2 * head.n_chunks)
    if head.n_ties and (int(ties["chunk"].max()) >= head.n_chunks or int((ties["flags"] & 3).max()) > _PROBS
                        or int(ties["flags"].max()) >= 8):
        raise VLAEError(f"{name}: corrupted header (a near-tie record names no chunk or site)")
    return ties


@torch.no_grad()
def decompress(model, data: bytes, *, name: str = "input", device: str | torch.device | None = None,
               progress: Callable[[int, int], object] | None = None) -> torch.Tensor:
    """Invert :func:`compress`: ``(N, C, H, W)`` uint8 images (0/1, or 0..255 for an 8-bit
    model), on the CPU, whatever machine or ``device`` (network) wrote the file.

    Raises :class:`VLAEError` when ``data`` is not a vlae file, is truncated or
    corrupted, was made by another model, or (its CRC intact) decodes differently on
    this machine's arithmetic: nothing partial is ever returned.
    """
    _check_model(model)
    head = read_header(data, name)
    if head.model_id != model_identity(model):
        raise VLAEError(f"{name}: compressed with another model (identity {head.model_id.hex()}, this model is "
                        f"{model_identity(model).hex()}); decompress with the model that compressed it")
    if head.observation != _OBSERVATIONS[_observation(model)] or head.image_shape != tuple(model.cfg.image_shape):
        raise VLAEError(f"{name}: images {head.image_shape} with observation code {head.observation} do not fit "
                        "this model")
    expected_words = _initial_words(model, head.precision)
    if head.initial_words != expected_words:
        raise VLAEError(f"{name}: corrupted header ({head.initial_words} initial words, expected {expected_words})")
    grid = _Grid(_read_ties(data, head, name))
    offset = _HEADER.size + 2 * head.n_chunks + _TIE.itemsize * head.n_ties
    payload = np.frombuffer(data, dtype="<u4", count=head.words, offset=offset)
    coding = _coding_model(model, device)
    coder = _Coder(payload.astype(np.uint32), head.precision, seal=False)
    latents = _Latents(coding, head.precision) if model.latent_dim > 0 else None
    out: list[torch.Tensor] = []
    # The CRC-32 has vouched for the bytes, so a failure from here on is a disagreement
    # between this machine's arithmetic and the writer's beyond the grid's margin.
    differs = (f"{name}: this file was written on a machine whose arithmetic differs from this one's beyond the "
               f"codec's rounding margin")
    try:
        for index in reversed(range(head.n_chunks)):
            grid.chunk = index
            out.append(_decode_chunk(coder, coding, latents, grid, head.chunks[index]))
            if progress is not None:
                progress(sum(len(t) for t in out), head.count)
        rest = coder.ans.get_compressed(unseal=True)  # the encoder sealed its initial words
    except _CorruptFile as error:
        raise VLAEError(f"{name}: {error}") from None
    except (ValueError, RuntimeError, AssertionError, OverflowError) as error:  # constriction on diverged data
        raise VLAEError(f"{differs} ({str(error).splitlines()[0] if str(error) else 'decode failed'}); decompress "
                        "it where it was written") from None
    x = torch.cat(out[::-1]).to(torch.uint8)
    if grid.checksum != head.checksum:
        raise VLAEError(f"{differs} (checksum of the snapped probabilities {grid.checksum:08x}, the writer's "
                        f"{head.checksum:08x}); decompress it where it was written")
    intact = np.array_equal(rest, _initial_bits(head.digest, expected_words))
    if not intact or _digest(x, _binary(model)) != head.digest:
        raise VLAEError(f"{name}: decoded images fail the integrity check although the probabilities agree (a "
                        "corrupted file whose CRC-32 still matches, or a different constriction)")
    return x


# ---------------------------------------------------------------------- image files and the CLI
def read_images(path: str | Path, channels: int = 1, binary: bool = True) -> np.ndarray:
    """Images for a model with ``channels`` channels, binary or 8-bit: ``(N, C, H, W)`` uint8.

    From an ``.npy`` array -- ``(N, H, W)`` (one channel), ``(N, C, H, W)`` or ``(N, H, W, C)``;
    binary: values 0/1 of any numeric or bool dtype; 8-bit: integers 0..255 of an integer
    dtype -- or a folder of PNGs (sorted by name; binary: 0 or 255 grey levels or 1-bit,
    white is 1; 8-bit: any PNG, read as grey ``L`` or ``RGB``).
    """
    path = Path(path)
    kind = "binary" if binary else "8-bit"
    if path.is_dir():
        return _read_pngs(path, channels, binary)
    if path.suffix.lower() != ".npy":
        raise VLAEError(f"{path}: give an .npy array or a folder of PNG images")
    if not path.is_file():
        raise VLAEError(f"{path}: no such file")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise VLAEError(f"{path}: not a readable .npy array ({str(error).splitlines()[0]})") from None
    if a.ndim == 3 and channels == 1:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] != channels and a.shape[3] == channels:
        a = a.transpose(0, 3, 1, 2)  # channels last, as image libraries hold them
    numeric = np.issubdtype(a.dtype, np.number) or a.dtype == bool
    if a.ndim != 4 or a.shape[1] != channels or not numeric or (not binary and not np.issubdtype(a.dtype, np.integer)):
        layout = "(N, H, W), (N, 1, H, W)" if channels == 1 else f"(N, {channels}, H, W) or (N, H, W, {channels})"
        raise VLAEError(f"{path}: expected {kind} images {layout}{'' if binary else ' of an integer dtype'}, "
                        f"got {a.dtype} {a.shape}")
    if binary and not np.isin(a, (0, 1)).all():
        raise VLAEError(f"{path}: values other than 0 and 1; binarize the images first")
    if not binary and (a.min() < 0 or a.max() > 255):
        raise VLAEError(f"{path}: 8-bit images must hold values 0..255, got [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.uint8)


def _read_pngs(path: Path, channels: int, binary: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise VLAEError(f"{path}: no .png images in this folder")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise VLAEError(f"{f}: not a readable PNG ({error})") from None
        if binary and not np.isin(a, (0, 255)).all():
            raise VLAEError(f"{f}: not a binary image (grey levels other than 0 and 255)")
        if arrays and a.shape != arrays[0].shape:
            raise VLAEError(f"{f}: size {a.shape[1]}x{a.shape[0]} differs from {files[0].name}'s")
        arrays.append(a // 255 if binary else a)
    a = np.stack(arrays)
    return np.ascontiguousarray(a[:, None] if channels == 1 else a.transpose(0, 3, 1, 2), dtype=np.uint8)


def _is_folder_output(path: Path) -> bool:
    return path.suffix.lower() != ".npy"


def _check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite without ``--force``; checked before any work."""
    if path.exists() and not force and (not path.is_dir() or any(path.iterdir())):
        raise VLAEError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and not path.is_dir() and _is_folder_output(path):
        raise VLAEError(f"{path} is a file; a folder output holds PNGs (or name an .npy file)")


def write_images(x: torch.Tensor | np.ndarray, path: str | Path, force: bool = False, binary: bool = True) -> Path:
    """Write ``(N, C, H, W)`` images (0/1 if ``binary``, else 0..255) to an ``.npy`` file
    (uint8) or, for any other name, a folder of PNGs ``00000.png, ...`` (1-bit with white
    as 1, 8-bit grey, or 8-bit RGB); atomically per file."""
    from .outputs import writing

    path, a = Path(path), np.asarray(x, dtype=np.uint8)
    _check_output(path, force)
    if not _is_folder_output(path):
        with writing(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)
        return path
    from PIL import Image

    width = max(5, len(str(len(a) - 1)))
    for i, img in enumerate(a):
        picture = (img[0].astype(bool) if binary else img[0]) if len(img) == 1 else img.transpose(1, 2, 0)
        with writing(path / f"{i:0{width}d}.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
    return path
