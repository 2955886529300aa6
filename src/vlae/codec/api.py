"""Images to a bits-back file and back: :func:`compress` and :func:`decompress`.

Both sides build the same coding model (float64), latent bins, grid and stack,
and visit the chunks in opposite orders (:mod:`vlae.codec.coder`); the file is
laid out by :mod:`vlae.codec.format`. The method, its exactness across machines
and measured code lengths are in :mod:`vlae.codec`'s docstring.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from ..errors import VLAEError
from .coder import Coder, CodeStats, decode_chunk, encode_chunk, initial_bits, initial_words, next_chunk
from .format import (
    FORMAT_VERSION,
    OBSERVATION_CODES,
    PRECISIONS,
    Header,
    digest,
    model_identity,
    pack,
    read_header,
    read_stream,
    read_ties,
)
from .grid import CorruptFile, Grid
from .latents import Latents
from .models import check_model, coding_model, is_binary, observation

__all__ = [
    "compress",
    "decompress",
    "default_batch",
    "cache_bytes",
    "DEFAULT_PRECISION",
    "BATCH_RANGE",
    "CHUNK_CACHE_BYTES",
]

DEFAULT_PRECISION = 8
#: The default chunk keeps the decoder's cached activations within this, in ``BATCH_RANGE`` images.
CHUNK_CACHE_BYTES = 64 << 20
BATCH_RANGE = (100, 500)


def _held_bytes(obj, seen: set[int]) -> int:
    """Bytes of the tensors an engine holds in its canvases and maps, each counted once (its layers,
    callables, hold weights only: the same for every batch)."""
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(v, seen) for v in obj)
    if isinstance(obj, dict):
        return sum(_held_bytes(v, seen) for v in obj.values())
    if hasattr(obj, "__dict__") and not callable(obj):  # engines and canvases; not modules or layers' taps
        return sum(_held_bytes(v, seen) for v in vars(obj).values())
    return 0


@torch.no_grad()
def cache_bytes(model) -> int:
    """Bytes the fast sampler's cached engine (:mod:`vlae.wavefront`) holds per image for
    ``model``'s decoder: its canvases and conditioning maps, in the model's dtype (an engine
    of two images less one of one image; the weights are held once, whatever the batch).

    Example:
        >>> from vlae.config import get_preset
        >>> from vlae.model import VLAE
        >>> cache_bytes(VLAE(get_preset("tiny").model))  # float32: (29 x 30) x (1 + 8) canvas, 28 x 28 x 8 map
        56408
    """
    from ..sampling import FastSampler

    sampler, (channels, height, width) = FastSampler(model), model.cfg.image_shape
    held = []
    for n in (1, 2):
        z = model.prior.sample(n) if model.latent_dim > 0 else None
        like = next(model.decoder.parameters()).new_zeros(n, channels, height, width)
        held.append(_held_bytes(sampler.engine(model.condition(z), n, height, width, like), set()))
    return held[1] - held[0]


def default_batch(model) -> int:
    """Images per chunk by default: as many as keep the float64 decoder's cached activations
    (:func:`cache_bytes`) within :data:`CHUNK_CACHE_BYTES`, clamped to
    :data:`BATCH_RANGE`. A small decoder's step costs per-operation overhead that bigger
    chunks spread (``tiny``, 0.11 MiB per image, gets 500: its decompression measured 1.33x
    faster than at 100); a larger one's costs arithmetic (``mnist-small``, 0.63 MiB, gets
    100: 7% slower at 370), and its caches grow with the chunk. A function of the model's
    shapes alone, so every machine picks the same chunks."""
    check_model(model)
    itemsize = next(model.parameters()).element_size()
    per_image = cache_bytes(model) // itemsize * 8  # in float64, as the codec runs it
    low, high = BATCH_RANGE
    return int(min(high, max(low, CHUNK_CACHE_BYTES // max(1, per_image))))


@torch.no_grad()
def compress(
    model,
    images,
    *,
    precision: int = DEFAULT_PRECISION,
    batch: int | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], object] | None = None,
    return_stats: bool = False,
):
    """Losslessly compress binary or 8-bit images with ``model`` (bits-back ANS).

    Args:
        model: a :class:`~vlae.model.VLAE` (its weights are copied to float64 for coding).
        images: ``(N, C, H, W)`` tensor or array of the model's shape, ``N >= 1``: 0/1 for a
            binary (Bernoulli) model, integers 0..255 for an 8-bit (logistic mixture) one.
        precision: latent bins per dimension, as bits (4..16).
        batch: most images per chunk (coded in lockstep: one network position per pixel
            position for the whole chunk); default :func:`default_batch`.
        device: where the network runs (default: the model's device); the entropy coder
            runs on the CPU. The file decodes on any device and CPU.
        progress: called with ``(images done, N)`` after each chunk.
        return_stats: also return a :class:`~vlae.codec.coder.CodeStats`.

    Returns:
        The file's bytes (and the stats).
    """
    x = _checked_images(model, images, precision, batch)
    start = time.perf_counter()
    batch = default_batch(model) if batch is None else batch
    identity, binary = model_identity(model), is_binary(model)
    coding = coding_model(model, device)
    x = x.to(next(coding.parameters()))
    named, latents = digest(x, binary), (Latents(coding, precision) if model.latent_dim > 0 else None)
    words = initial_words(model, precision)
    coder, grid = Coder(initial_bits(named, words), precision, seal=True), Grid()
    initial = coder.ans.num_bits()
    stats = {"pixels": 0.0, "prior": 0.0, "back": 0.0}
    chunks: list[int] = []
    while sum(chunks) < len(x):
        a = sum(chunks)
        chunks.append(next_chunk(coder, model, precision, len(x) - a, batch))
        grid.chunk = len(chunks) - 1
        encode_chunk(coder, coding, latents, grid, x[a : a + chunks[-1]], stats)
        if progress is not None:
            progress(a + chunks[-1], len(x))
    payload = coder.ans.get_compressed().astype("<u4")
    ties = grid.ties()
    head = Header(
        FORMAT_VERSION,
        identity,
        OBSERVATION_CODES[observation(model)],
        tuple(model.cfg.image_shape),
        len(x),
        batch,
        precision,
        words,
        named,
        len(chunks),
        len(payload),
        len(ties),
        grid.checksum,
        tuple(chunks),
    )
    data = pack(head, ties, payload)
    if not return_stats:
        return data
    c, h, w = model.cfg.image_shape
    return data, CodeStats(
        images=len(x),
        dims=c * h * w,
        file_bytes=len(data),
        stream_bits=32 * len(payload),
        initial_bits=initial,
        ideal_pixel_bits=float(stats["pixels"]),
        ideal_prior_bits=float(stats["prior"]),
        ideal_bits_back=float(stats["back"]),
        seconds=time.perf_counter() - start,
        ties=len(ties),
    )


def _checked_images(model, images, precision: int, batch: int | None) -> torch.Tensor:
    """The images ``(N, C, H, W)`` as a tensor, once the model and the options are checked."""
    check_model(model)
    if precision not in PRECISIONS:
        raise VLAEError(f"invalid latent precision {precision}: must be in [{PRECISIONS[0]}, {PRECISIONS[-1]}] bits")
    if batch is not None and not 1 <= batch <= 65535:
        raise VLAEError(f"invalid batch {batch}: must be in [1, 65535]")
    x = model.check_images(torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images))
    if len(x) == 0:
        raise VLAEError("no images to compress")
    if len(x) >= 2**32:
        raise VLAEError(f"too many images for one file: {len(x)}")
    return x


def _checked_header(model, data: bytes, name: str) -> Header:
    """The file's header, once it is known to be a file of this very model."""
    head = read_header(data, name)
    if head.model_id != model_identity(model):
        raise VLAEError(
            f"{name}: compressed with another model (identity {head.model_id.hex()}, this model is "
            f"{model_identity(model).hex()}); decompress with the model that compressed it"
        )
    if head.observation != OBSERVATION_CODES[observation(model)] or head.image_shape != tuple(model.cfg.image_shape):
        raise VLAEError(
            f"{name}: images {head.image_shape} with observation code {head.observation} do not fit this model"
        )
    expected_words = initial_words(model, head.precision)
    if head.initial_words != expected_words:
        raise VLAEError(f"{name}: corrupted header ({head.initial_words} initial words, expected {expected_words})")
    return head


@torch.no_grad()
def decompress(
    model,
    data: bytes,
    *,
    name: str = "input",
    device: str | torch.device | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> torch.Tensor:
    """Invert :func:`compress`: ``(N, C, H, W)`` uint8 images (0/1, or 0..255 for an 8-bit
    model), on the CPU, whatever machine or ``device`` (network) wrote the file.

    Raises :class:`VLAEError` when ``data`` is not a vlae file, is truncated or
    corrupted, was made by another model, or (its CRC intact) decodes differently on
    this machine's arithmetic: nothing partial is ever returned.
    """
    check_model(model)
    head = _checked_header(model, data, name)
    grid = Grid(read_ties(data, head, name))
    coding = coding_model(model, device)
    coder = Coder(read_stream(data, head), head.precision, seal=False)
    latents = Latents(coding, head.precision) if model.latent_dim > 0 else None
    out: list[torch.Tensor] = []
    # The CRC-32 has vouched for the bytes, so a failure from here on is a disagreement
    # between this machine's arithmetic and the writer's beyond the grid's margin.
    differs = (
        f"{name}: this file was written on a machine whose arithmetic differs from this one's beyond the "
        f"codec's rounding margin"
    )
    try:
        for index in reversed(range(head.n_chunks)):
            grid.chunk = index
            out.append(decode_chunk(coder, coding, latents, grid, head.chunks[index]))
            if progress is not None:
                progress(sum(len(t) for t in out), head.count)
        rest = coder.ans.get_compressed(unseal=True)  # the encoder sealed its initial words
    except CorruptFile as error:
        raise VLAEError(f"{name}: {error}") from None
    except (ValueError, RuntimeError, AssertionError, OverflowError) as error:  # constriction on diverged data
        raise VLAEError(
            f"{differs} ({str(error).splitlines()[0] if str(error) else 'decode failed'}); decompress "
            "it where it was written"
        ) from None
    x = torch.cat(out[::-1]).to(torch.uint8)
    if grid.checksum != head.checksum:
        raise VLAEError(
            f"{differs} (checksum of the snapped probabilities {grid.checksum:08x}, the writer's "
            f"{head.checksum:08x}); decompress it where it was written"
        )
    intact = np.array_equal(rest, initial_bits(head.digest, head.initial_words))
    if not intact or digest(x, is_binary(model)) != head.digest:
        raise VLAEError(
            f"{name}: decoded images fail the integrity check although the probabilities agree (a "
            "corrupted file whose CRC-32 still matches, or a different constriction)"
        )
    return x
