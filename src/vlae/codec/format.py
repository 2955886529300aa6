"""The compressed file's layout: header, near-tie records, chunk sizes, stream and CRC.

The fields are tabulated in :mod:`vlae.codec`'s docstring. :func:`pack` writes a
file from a :class:`Header` and the stream; :func:`read_header`, :func:`read_ties`
and :func:`read_stream` read it back, refusing a foreign, older, newer, truncated or
corrupted file with a one-line :class:`~vlae.errors.VLAEError`. Two 16-byte
identities go into the header: the model's (:func:`model_identity`) and the
images' (:func:`digest`).

Example:
    >>> head = read_header(data)  # doctest: +SKIP
    >>> head.count, head.image_shape, head.precision  # doctest: +SKIP
    (5, (1, 28, 28), 8)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VLAEError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "PRECISIONS",
    "HEADER",
    "CRC",
    "TIE",
    "PROPOSAL",
    "PARAMS",
    "PROBS",
    "OBSERVATION_CODES",
    "Header",
    "pack",
    "read_header",
    "read_ties",
    "read_stream",
    "model_identity",
    "IDENTITY_OPTIONS",
    "digest",
]

MAGIC = b"\x89VLAEbb\n"
# 3: 8-bit conditionals as products of CDF tails (vlae.observation's channel_probs); a version 2
# file with binary pixels codes with the same numbers and is read as well
FORMAT_VERSION = 3
PRECISIONS = range(4, 17)  # K = 16 .. 65,536 bins per latent dimension
HEADER = struct.Struct("<8sH16sB3HIHBI16sIIII")
CRC = struct.Struct("<I")
# model.observation -> its code in the header: written into files, so never renumbered (a new
# observation model gets a new code; tests check every name of config.OBSERVATIONS has one)
OBSERVATION_CODES = {"bernoulli": 0, "logistic_mixture": 1}
PROPOSAL, PARAMS, PROBS = 0, 1, 2  # what a snapped value is: latent proposal, decoder output, 8-bit conditional
TIE = np.dtype([("chunk", "<u4"), ("site", "<u4"), ("index", "<u4"), ("flags", "u1")])  # flags: kind | up << 2


@dataclass(frozen=True)
class Header:
    """The fixed fields of a compressed file (see :mod:`vlae.codec`'s docstring)."""

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


def pack(head: Header, ties: np.ndarray, stream: np.ndarray) -> bytes:
    """The file: ``head`` (its ``chunks`` in encoding order), the near-tie records
    ``(T,)`` of dtype :data:`TIE`, the ANS stack ``(W,)`` as little-endian u32, and the
    CRC-32 of all of it."""
    body = (
        HEADER.pack(
            MAGIC,
            head.version,
            head.model_id,
            head.observation,
            *head.image_shape,
            head.count,
            head.batch,
            head.precision,
            head.initial_words,
            head.digest,
            head.n_chunks,
            head.words,
            head.n_ties,
            head.checksum,
        )
        + np.asarray(head.chunks, dtype="<u2").tobytes()
        + ties.tobytes()
        + stream.tobytes()
    )
    return body + CRC.pack(zlib.crc32(body))


def read_header(data: bytes, name: str = "input") -> Header:
    """Parse and check a compressed file's header, length and CRC; one-line
    :class:`VLAEError` for a foreign, older, newer, truncated or corrupted file."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise VLAEError(f"{name}: not a vlae compressed file (bad magic bytes)")
    if len(data) >= len(MAGIC) + 2:
        version = struct.unpack_from("<H", data, len(MAGIC))[0]
        if version > FORMAT_VERSION:
            raise VLAEError(f"{name}: format version {version} is newer than this vlae reads ({FORMAT_VERSION})")
        if version < 2:
            raise VLAEError(
                f"{name}: format version {version} (before portable decoding; it decodes only where it "
                f"was written, with the vlae of then) is no longer read; this vlae reads version "
                f"{FORMAT_VERSION}: recompress the images"
            )
    if len(data) < HEADER.size + CRC.size:
        raise VLAEError(f"{name}: truncated ({len(data)} bytes, shorter than the header)")
    fields = HEADER.unpack_from(data)
    head = Header(fields[1], fields[2], fields[3], tuple(fields[4:7]), *fields[7:])
    if head.version == 2 and head.observation != OBSERVATION_CODES["bernoulli"]:
        raise VLAEError(
            f"{name}: format version 2 with 8-bit pixels (their conditionals were differences of "
            f"CDFs, which machines disagree on beyond the near-tie margin; version 3 codes them "
            f"as products) is no longer read: decompress it with the vlae that wrote it, or "
            f"recompress the images"
        )
    size = HEADER.size + 2 * head.n_chunks + TIE.itemsize * head.n_ties + 4 * head.words + CRC.size
    if len(data) != size:
        what = "truncated" if len(data) < size else "corrupted (trailing bytes)"
        raise VLAEError(f"{name}: {what}: {len(data)} bytes, the header announces {size}")
    if CRC.unpack_from(data, size - CRC.size)[0] != zlib.crc32(data[: size - CRC.size]):
        raise VLAEError(f"{name}: corrupted (CRC-32 mismatch)")
    chunks = tuple(int(m) for m in np.frombuffer(data, "<u2", count=head.n_chunks, offset=HEADER.size))
    if (
        head.precision not in PRECISIONS
        or head.count < 1
        or sum(chunks) != head.count
        or not all(1 <= m <= head.batch for m in chunks)
    ):
        raise VLAEError(
            f"{name}: corrupted header (version {head.version}, precision {head.precision}, "
            f"{head.count} images in {head.n_chunks} chunks)"
        )
    return dataclasses.replace(head, chunks=chunks)


def read_ties(data: bytes, head: Header, name: str) -> np.ndarray:
    """The near-tie records ``(T,)`` of dtype :data:`TIE` of a file ``head`` has checked."""
    ties = np.frombuffer(data, TIE, count=head.n_ties, offset=HEADER.size + 2 * head.n_chunks)
    if head.n_ties and (
        int(ties["chunk"].max()) >= head.n_chunks
        or int((ties["flags"] & 3).max()) > PROBS
        or int(ties["flags"].max()) >= 8
    ):
        raise VLAEError(f"{name}: corrupted header (a near-tie record names no chunk or site)")
    return ties


def read_stream(data: bytes, head: Header) -> np.ndarray:
    """The ANS stack ``(W,)`` uint32 of a file ``head`` has checked."""
    offset = HEADER.size + 2 * head.n_chunks + TIE.itemsize * head.n_ties
    return np.frombuffer(data, dtype="<u4", count=head.words, offset=offset).astype(np.uint32)


#: The model options of file format 3, every one hashed into a model's identity. An option
#: added since is hashed only where it differs from its default: a model saved before it
#: existed keeps the identity its files carry. (Its default must keep the earlier behaviour,
#: as it must for those models' checkpoints to load; a ``default_factory`` is always hashed.)
#: Never add an option to this set: that changes the identity of every model, and strands its files.
IDENTITY_OPTIONS = frozenset(
    (
        "cond_channels cond_every_layer decoder decoder_blocks_1x1 decoder_field decoder_filters "
        "decoder_kernel decoder_layers dense_steps encoder_blocks encoder_channels encoder_kind "
        "flow_steps free_bits free_bits_groups gated_blocks_1x1 gray_context iaf_context iaf_hidden "
        "iaf_steps image_shape latent_dim latent_shape made_activation made_hidden mean_only "
        "mixture_components observation posterior prior prior_hidden prior_kernel prior_layers "
        "stage_blocks stage_channels tie_weights upsampler_blocks upsampler_channels weight_norm"
    ).split()
)


def model_identity(model) -> bytes:
    """16 bytes naming a model: SHA-256 of its options (:data:`IDENTITY_OPTIONS`) and every
    weight (name, dtype, shape and bytes). Decompressing needs the very model that compressed;
    ``tests/data/codec_v3`` holds files that every later release must still decode."""
    defaults = {f.name: f.default for f in dataclasses.fields(model.cfg)}
    options = {
        name: value
        for name, value in dataclasses.asdict(model.cfg).items()
        if name in IDENTITY_OPTIONS or value != defaults[name]
    }
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def digest(x: torch.Tensor, binary: bool) -> bytes:
    """16 bytes naming the images ``(N, C, H, W)``: SHA-256 of their bytes (bit-packed for
    binary images)."""
    a = x.to(torch.uint8).cpu().numpy().reshape(len(x), -1)
    return hashlib.sha256((np.packbits(a, axis=1) if binary else a).tobytes()).digest()[:16]
