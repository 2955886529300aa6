"""Bits-back coding of one chunk of images on an ANS stack, and what it cost.

:func:`encode_chunk` pops the chunk's latents from the proposal, pushes its pixels
under ``p(x|z)`` and the latents under the prior; :func:`decode_chunk` runs those
steps backwards and pushes the latents back, returning the bits the encoder
popped. The stack (:class:`Coder`) starts with pseudo-random initial words
(:func:`initial_bits`) for the first pops to read, and :func:`next_chunk` sizes
each chunk to the bits it holds. See :mod:`vlae.codec`'s docstring for the method.

References:
    Townsend, Bird and Barber, Practical Lossless Compression with Latent
    Variables using Bits Back Coding (ICLR 2019).
    Bamler, constriction (the Python package): the ANS stack coder, ``perfect=False`` models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .format import PARAMS
from .grid import Grid
from .latents import Latents
from .pixels import channel_probs, walk_pixels

__all__ = ["CodeStats", "Coder", "encode_chunk", "decode_chunk", "next_chunk", "initial_words", "initial_bits"]


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
        return {
            **dataclasses.asdict(self),
            "net_bits": self.net_bits,
            "bits_per_dim": self.bits_per_dim,
            "nats_per_image": self.nats_per_image,
        }


class Coder:
    """The constriction stack (``words``: its initial u32 words, or a file's stream) and
    the model families the codec codes with (every one ``perfect=False``)."""

    def __init__(self, words: np.ndarray, precision: int, seal: bool):
        cs = _cs()
        self.ans = cs.stream.stack.AnsCoder(words, seal=seal)
        self.pixel = cs.stream.model.Bernoulli(perfect=False)  # a binary pixel
        self.channel = cs.stream.model.Categorical(perfect=False)  # an 8-bit channel, 256 symbols
        self.posterior = cs.stream.model.Categorical(perfect=False)
        self.prior = cs.stream.model.Uniform(2**precision)


def _information(symbols: np.ndarray, probs: np.ndarray) -> float:
    """``-sum log2 p(symbol)`` under the unquantized probabilities, in bits."""
    if probs.ndim == 1:
        return float(-np.log2(np.where(symbols == 1, probs, 1 - probs)).sum())
    mass = probs[np.arange(len(symbols)), symbols] / probs.sum(1)
    return float(-np.log2(np.maximum(mass, 2.0**-24)).sum())  # constriction's floor


def encode_chunk(coder: Coder, model, latents: Latents | None, grid: Grid, x: torch.Tensor, stats: dict) -> None:
    """Push images ``x (n, C, H, W)`` onto the stack, bits-back: pop ``z`` under ``Q``, push
    ``x`` under ``p(x|z)``, push ``z`` under ``P``; add the ideal bits to ``stats``."""
    n, channels = x.shape[:2]
    z, bins = None, None
    if latents is not None:
        mean, chol = latents.proposal(x, grid)

        def pop(i: int, probs: np.ndarray) -> np.ndarray:
            k = coder.ans.decode(coder.posterior, probs)
            mass = probs[np.arange(n), k] / probs.sum(1)
            stats["back"] -= np.log2(np.maximum(mass, 2.0**-24)).sum()  # constriction's floor
            return k

        bins = latents.walk(mean, chol, pop)
        z = latents.latent(bins)
    flat = x.reshape(n, channels, -1).cpu()
    steps: list[tuple[int, np.ndarray, np.ndarray]] = []

    def known(step: int, pos: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        values = flat[:, :, pos.cpu()].transpose(1, 2).reshape(-1, channels)  # (n * N, C), as the decoder has them
        steps.append((step, grid(PARAMS, step, params), values.numpy().astype(np.float64)))
        return values

    walk_pixels(model, z, n, known, x)
    # The stack is last in, first out: push the last step's last channel first, so that the
    # decoder pops pixels in decoding order and each pixel's channels R, G, B in turn.
    for step, params, values in reversed(steps):
        for c in reversed(range(channels)):
            probs = channel_probs(model, grid, step, params, values[:, :c])
            symbols = values[:, c].astype(np.int32)
            stats["pixels"] += _information(symbols, probs)
            coder.ans.encode_reverse(symbols, coder.pixel if probs.ndim == 1 else coder.channel, probs)
    if latents is not None and bins is not None:
        coder.ans.encode_reverse(bins.astype(np.int32).ravel(), coder.prior)
        stats["prior"] += bins.size * np.log2(latents.bins)


def decode_chunk(coder: Coder, model, latents: Latents | None, grid: Grid, n: int) -> torch.Tensor:
    """Pop ``n`` images ``(n, C, H, W)`` (float64) off the stack, and push back the bits
    :func:`encode_chunk` popped for their latents."""
    z, bins = None, None
    if latents is not None:
        bins = coder.ans.decode(coder.prior, n * latents.dims).astype(np.int64).reshape(n, -1)
        z = latents.latent(bins)
    x = _decode_pixels(coder, model, grid, z, n)
    if latents is not None and bins is not None:
        _push_back(coder, model, latents, grid, x, bins)
    return x


def _decode_pixels(coder: Coder, model, grid: Grid, z: torch.Tensor | None, n: int) -> torch.Tensor:
    """Pop the pixels of ``n`` images given their latents ``z``: ``(n, C, H, W)`` float64."""
    channels, height, width = model.cfg.image_shape
    flat = torch.zeros(n, channels, height * width, dtype=torch.float64)

    def pop(step: int, pos: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        snapped = grid(PARAMS, step, params)
        values = np.zeros((len(snapped), channels))
        for c in range(channels):
            probs = channel_probs(model, grid, step, snapped, values[:, :c])
            values[:, c] = coder.ans.decode(coder.pixel if probs.ndim == 1 else coder.channel, probs)
        out = torch.from_numpy(values)
        flat[:, :, pos.cpu()] = out.view(n, len(pos), channels).transpose(1, 2)
        return out

    walk_pixels(model, z, n, pop)
    return flat.view(n, channels, height, width)


def _push_back(coder: Coder, model, latents: Latents, grid: Grid, x: torch.Tensor, bins: np.ndarray) -> None:
    """Push the decoded images' bins ``(n, D)`` back under the proposal ``Q(z|x)`` the encoder
    popped them from: the bits-back step, which restores the bits the encoder read."""
    anchor = next(model.parameters())
    mean, chol = latents.proposal(x.to(anchor), grid)
    tables: list[np.ndarray] = []

    def replay(i: int, probs: np.ndarray) -> np.ndarray:
        tables.append(probs)
        return bins[:, i]

    latents.walk(mean, chol, replay)
    # The encoder popped dimension-major (all images' dimension 0 first): push back in that order.
    coder.ans.encode_reverse(bins.T.astype(np.int32).ravel(), coder.posterior, np.concatenate(tables))


def _pop_budget(model, precision: int) -> int:
    """Bits reserved per image for popping its latent: ``D * (precision + 2)``, above
    what a posterior no wider than the prior takes (``D * precision`` at most)."""
    return model.latent_dim * (precision + 2)


def next_chunk(coder: Coder, model, precision: int, left: int, batch: int) -> int:
    """Images in the next chunk: as many as the bits on the stack can pop latents
    for (a chunk pops all its latents before it pushes anything), at most ``batch``."""
    budget = _pop_budget(model, precision)
    return min(left, batch) if budget == 0 else max(1, min(left, batch, coder.ans.num_valid_bits() // budget))


def initial_words(model, precision: int) -> int:
    """How many initial 32-bit words the stack starts with: enough for one image's pops."""
    return 0 if model.latent_dim == 0 else -(-_pop_budget(model, precision) // 32) + 2


def initial_bits(digest: bytes, words: int) -> np.ndarray:
    """The initial words ``(words,)`` uint32, seeded by the images' digest (both sides have it)."""
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 2**32, size=words, dtype=np.uint32)
