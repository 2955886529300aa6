"""The portable grid: the probability model's float64 numbers, snapped, with near-ties replayed.

Encoder and decoder must code with the same probabilities to the last bit, also
on two machines whose float64 arithmetic differs in the last bits. :class:`Grid`
rounds every number the network hands the coder to the coarse grid of
:func:`vlae.portable.snap`; the encoder records the rare *near-ties* (values the
machines could round apart), the decoder replays them, and both keep a checksum of
everything snapped (see :mod:`vlae.codec`'s docstring, "Exactness on every machine").
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from ..errors import VLAEError
from ..portable import snap
from .format import PROBS, TIE

__all__ = ["Grid", "CorruptFile"]


class CorruptFile(VLAEError):
    """The file contradicts itself (found while decoding)."""


class Grid:
    """Snaps the probability model's float64 numbers to the grid of :func:`vlae.portable.snap`.

    Every call names its *site* (``kind``, ``site``): the same numbers on both sides,
    whatever order they are computed in. The encoder records the near-ties (chunk, site,
    index, direction); the decoder, given them, rounds those values the encoder's way.
    ``checksum`` is the XOR over sites of the CRC-32 of the snapped bytes: equal on both
    sides exactly when every snapped number is.

    Args:
        ties: the file's near-tie records ``(T,)`` (:data:`~vlae.codec.format.TIE`) to
            replay when decoding; ``None`` to record them when encoding.
    """

    def __init__(self, ties: np.ndarray | None = None):
        self.recording = ties is None
        self.recorded: list[np.ndarray] = []
        self.replay: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        for key, group in _group_ties(ties if ties is not None else np.zeros(0, TIE)):
            self.replay[key] = (group["index"].astype(np.int64), (group["flags"] >> 2).astype(np.uint8))
        self.checksum, self.chunk = 0, 0

    def __call__(self, kind: int, site: int, values: torch.Tensor) -> np.ndarray:
        """``values`` (any shape) snapped, as a float64 array of that shape."""
        v = values.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(v).all():
            raise VLAEError("the model computes non-finite probabilities for these images; cannot code them")
        if v.size >= 2**32 or site >= 2**32:
            raise VLAEError("a chunk is too large to code; use a smaller --batch")
        replay = self.replay.get((self.chunk, kind, site))
        if replay is not None and len(replay[0]) and int(replay[0].max()) >= v.size:
            raise CorruptFile("corrupted (a near-tie record points past the numbers of its site)")
        out, near, up = snap(v, replay, relative=kind == PROBS)
        if self.recording and len(near):
            tie = np.zeros(len(near), TIE)
            tie["chunk"], tie["site"], tie["index"], tie["flags"] = self.chunk, site, near, kind | (up << 2)
            self.recorded.append(tie)
        seed = zlib.crc32(struct.pack("<IIB", self.chunk, site, kind))
        self.checksum ^= zlib.crc32(out.data, seed)  # out is contiguous: no copy of a chunk's factors
        return out

    def ties(self) -> np.ndarray:
        """The near-ties recorded so far ``(T,)``, in the order they were met."""
        return np.concatenate(self.recorded) if self.recorded else np.zeros(0, TIE)


def _group_ties(ties: np.ndarray):
    """The records by (chunk, kind, site), the key a snapped call looks them up by."""
    keys = np.stack(
        [ties["chunk"].astype(np.int64), (ties["flags"] & 3).astype(np.int64), ties["site"].astype(np.int64)], 1
    )
    for key in {tuple(k) for k in keys.tolist()}:
        yield key, ties[(keys == key).all(1)]
