"""Readers of the file formats the datasets come in.

Each returns the array the file holds, after checking what a truncated or
corrupt file would break (a line's length, a header's dimensions, gzip's CRC),
so that damage is a one-line :class:`~vlae.errors.VLAEError` naming the file,
never wrong images; an absent file is a
:class:`~vlae.data.files.DataNotFoundError`.

- :func:`read_amat`: text, one image a line (binarized MNIST's ``.amat``).
- :func:`read_mat`: MATLAB ``.mat`` files (through scipy).
- :func:`read_idx`: the IDX files of MNIST and Fashion-MNIST, gzipped or not.
- :func:`read_cifar`: CIFAR-10's pickled batches, in the archive or extracted.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VLAEError, one_line, require
from .catalogue import CIFAR_FOLDER, CIFAR_TRAIN, PIXELS
from .files import DataNotFoundError

__all__ = ["read_amat", "read_mat", "read_idx", "read_cifar"]


def read_amat(path: str | os.PathLike) -> np.ndarray:
    """Images ``(N, 784)`` ``uint8`` 0/1 from a text file of one image a line, 784 values 0 or 1."""
    path = Path(path)
    raw = _read_bytes(path)
    # Fast path for the canonical layout "v v ... v\n" (1,568 bytes a line).
    width = 2 * PIXELS
    if raw and len(raw) % width == 0:
        table = np.frombuffer(raw, np.uint8).reshape(-1, width)
        if (
            (table[:, 1:-1:2] == 32).all()
            and (table[:, -1] == 10).all()
            and (table[:, ::2] <= 49).all()
            and (table[:, ::2] >= 48).all()
        ):
            return table[:, ::2] - 48
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        require(
            len(values) == PIXELS,
            f"{path}: line {number} has {len(values)} values, expected {PIXELS} (truncated or corrupt file)",
        )
        row = b"".join(values)
        require(len(row) == PIXELS and not row.strip(b"01"), f"{path}: line {number} has values other than 0 and 1")
        rows.append(row)
    require(bool(rows), f"{path}: no images in file")
    return np.frombuffer(b"".join(rows), np.uint8).reshape(-1, PIXELS) - 48


def read_mat(path: str | os.PathLike, key: str = "X") -> np.ndarray:
    """Array ``key`` of a MATLAB file, as stored (no transposition)."""
    path = Path(path)
    contents = _loadmat(path)
    require(key in contents, f"{path}: no variable {key!r} in MAT file (found {', '.join(_mat_keys(contents))})")
    return np.asarray(contents[key])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The ``uint8`` array of an IDX file (gzip-compressed or plain), shape from its header."""
    path = Path(path)
    raw = _read_bytes(path)
    require(
        len(raw) >= 4 and raw[:3] == b"\x00\x00\x08",
        f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'})",
    )
    header = 4 + 4 * raw[3]
    require(len(raw) >= header, f"{path}: truncated IDX header")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    expected = header + int(np.prod(dims))
    require(
        len(raw) == expected,
        f"{path}: truncated or corrupt IDX file ({len(raw)} bytes, header {dims} implies {expected})",
    )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_cifar(path: str | os.PathLike, batches: tuple[str, ...] = (*CIFAR_TRAIN, "test_batch")) -> np.ndarray:
    """CIFAR-10 images ``(N, 3, 32, 32)`` ``uint8`` of ``batches``, concatenated in that order.

    ``path`` is the ``cifar-10-python.tar.gz`` archive (read without
    extracting; gzip's length and CRC are checked to the end, so truncation or
    corruption anywhere is an error) or an extracted ``cifar-10-batches-py``
    folder. Each batch is a pickled dict whose ``b"data"`` is ``uint8 (n, 3072)``:
    the red, green and blue planes of each image, each row-major 32x32. The
    pickles are read with an unpickler that can build nothing but NumPy arrays.
    """
    path = Path(path)
    raws = _cifar_archive(path, batches) if path.is_file() else {b: _cifar_file(path / b) for b in batches}
    return np.concatenate([_cifar_batch(raws[b], f"{path} ({b})") for b in batches])


def _cifar_file(path: Path) -> bytes:
    """The bytes of one batch of an extracted ``cifar-10-batches-py`` folder."""
    try:
        return path.read_bytes()
    except FileNotFoundError:  # the folder exists, so this is damage, not absence
        raise VLAEError(f"{path}: missing from the extracted CIFAR-10 folder (incomplete extraction?)") from None
    except OSError as error:
        raise VLAEError(f"{path}: cannot read file ({error.strerror})") from None


def _cifar_archive(path: Path, batches: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of each of ``batches``, read in one pass through the archive, to its gzip trailer."""
    wanted = {f"{CIFAR_FOLDER}/{b}": b for b in batches}
    found: dict[str, bytes] = {}
    try:
        with gzip.open(path, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        found[wanted[member.name]] = tar.extractfile(member).read()
            while stream.read(1 << 22):  # to the gzip trailer, whose CRC and length catch damage after the batches
                pass
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent]) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise VLAEError(f"{path}: corrupt or truncated CIFAR-10 archive ({one_line(error)})") from None
    missing = [f"{CIFAR_FOLDER}/{b}" for b in batches if b not in found]
    require(not missing, f"{path}: not the CIFAR-10 python archive: no {', '.join(missing)} in it")
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays, lists and bytes, and nothing executable."""

    def find_class(self, module: str, name: str) -> Any:
        core = getattr(np, "_core", None) or np.core
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores Python 3 bytes
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def _cifar_batch(raw: bytes, what: str) -> np.ndarray:
    """The images ``(n, 3, 32, 32)`` of one pickled batch; ``what`` names it in errors."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # unpickling garbage raises many types; all mean "corrupt"
        raise VLAEError(f"{what}: corrupt CIFAR-10 batch ({type(error).__name__}: {one_line(error)})") from None
    require(isinstance(batch, dict), f"{what}: corrupt CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    require(
        ok,
        f"{what}: expected b'data' of uint8 (n, 3072), got "
        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}",
    )
    labels = batch.get(b"labels", batch.get("labels"))
    require(labels is None or len(labels) == len(data), f"{what}: {len(data)} images but {len(labels or ())} labels")
    return data.reshape(-1, 3, 32, 32)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent]) from None
    except OSError as error:
        raise VLAEError(f"{path}: cannot read file ({error.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise VLAEError(f"{path}: truncated or corrupt gzip file ({error})") from None


def _loadmat(path: Path) -> dict:
    """The variables of a MAT file, by name."""
    from scipy.io import loadmat  # scipy is slow to import and only needed here

    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent])
    try:
        return loadmat(path)
    except Exception as error:  # scipy raises many types on bad input; all mean "corrupt"
        raise VLAEError(f"{path}: corrupt or unreadable MAT file ({type(error).__name__}: {error})") from None


def _mat_keys(contents: dict) -> list[str]:
    """The variables' names, without the ``__header__``-style entries scipy adds."""
    return [k for k in contents if not k.startswith("__")]
