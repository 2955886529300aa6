"""Result files: strict JSON, atomic writes, and output paths that fail in one line.

Every JSON file vlae writes goes through :func:`write_json` (or
:func:`dumps` for one-record-per-line logs), so none ever holds the bare
``NaN`` or ``Infinity`` that Python's :mod:`json` emits by default and that
strict parsers (``jq``, JavaScript, most other languages) reject. A non-finite
number is written as ``null`` and named in a top-level ``"non_finite"`` list,
so a reader sees both that a value is missing and why.

Every file vlae writes is written atomically, to a temporary name beside it
moved into place with :func:`os.replace` (:func:`writing`, :func:`atomic_write`),
so a crash leaves the old file, never half a new one. Output paths are checked
before any work is done (:func:`prepare_output`), and an ``OSError`` while
writing (a full disk, a read-only folder) becomes one line naming the file
(:func:`os_error_message`).

Example:
    >>> import math
    >>> text = dumps({"nll": 80.5, "nll_se": math.nan, "curve": [1.0, math.inf]})
    >>> text
    '{"nll": 80.5, "nll_se": null, "curve": [1.0, null], "non_finite": ["nll_se", "curve[1]"]}'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import VLAEError

__all__ = [
    "strict",
    "dumps",
    "write_json",
    "write_text",
    "prepare_output",
    "file_in_the_way",
    "create_folder",
    "writing",
    "atomic_write",
    "os_error_message",
    "write_error",
]

NON_FINITE_KEY = "non_finite"


def _number(x: Any) -> float | None:
    """A float for numpy and torch scalars (``None`` for anything else)."""
    if isinstance(x, bool) or isinstance(x, (int, str)) or x is None:
        return None
    if isinstance(x, float):
        return float(x)
    item = getattr(x, "item", None)  # numpy / torch 0-d values
    if callable(item) and getattr(x, "ndim", 0) == 0:
        value = item()
        return float(value) if isinstance(value, float) else None
    return None


def strict(obj: Any, where: str = "", found: list[str] | None = None) -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float replaced by ``None``, and the paths
    (``"a.b[2]"``) where that happened. Tuples become lists, numpy/torch
    scalars Python numbers, arrays and tensors lists."""
    found = [] if found is None else found
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k], _ = strict(v, f"{where}.{k}" if where else str(k), found)
        return out, found
    if isinstance(obj, (list, tuple)):
        return [strict(v, f"{where}[{i}]", found)[0] for i, v in enumerate(obj)], found
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:  # arrays and tensors
        return strict(obj.tolist(), where, found)
    x = _number(obj)
    if x is not None:
        if not math.isfinite(x):
            found.append(where or "<value>")
            return None, found
        return x, found
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item(), found
    return obj, found


def dumps(obj: Any, indent: int | None = None, sort_keys: bool = False, default=None) -> str:
    """Strict JSON text of ``obj``: non-finite numbers become ``null`` and a dict
    gains ``"non_finite": [paths]`` naming them (see the module docstring).
    ``default`` converts other objects, as in :func:`json.dumps`."""
    clean, found = strict(obj)
    if found and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = list(clean.get(NON_FINITE_KEY) or []) + found
    return json.dumps(clean, indent=indent, sort_keys=sort_keys, allow_nan=False, default=default)


def os_error_message(path: str | os.PathLike, error: BaseException, what: str = "cannot write") -> str:
    """One line for an ``OSError`` on ``path``: ``"<path>: cannot write (No space left on device)"``.

    ``error`` may also be an exception raised while handling one (torch's
    ``RuntimeError("unexpected pos ...")`` hides a full disk that way); any
    other failure is named by its first line, with the likely cause."""
    cause = error if isinstance(error, OSError) else error.__context__
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = f"write failed: {first}; is the disk full?"
    return f"{path}: {what} ({reason})"


def write_error(path: str | os.PathLike, error: BaseException) -> VLAEError:
    """The :class:`VLAEError` to raise for a failed write of ``path`` (:func:`os_error_message`)."""
    return VLAEError(os_error_message(path, error))


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (``folder`` included) if it is a file: then
    ``folder`` cannot be created, and mkdir's own error would not say why."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def create_folder(folder: Path, action: str, unwritable: str) -> None:
    """Create ``folder`` (and its parents) and check it is writable; a failure is one
    :class:`VLAEError`: ``action`` with the system's reason, or ``unwritable``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VLAEError(os_error_message(folder, error, action)) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VLAEError(unwritable)


def prepare_output(path: str | os.PathLike, what: str = "output file", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check that a file can be written at ``path`` and create its folder.

    Raises :class:`VLAEError` (one line) when ``path`` is a folder, its suffix is
    not one of ``suffixes`` (lower case, with the dot), or its folder cannot be
    created or written (a path under a regular file, under ``/proc``, read-only).
    """
    if str(path).endswith(("/", os.sep)):
        raise VLAEError(f"{what} {path} names a folder; give a file name")
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        got = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise VLAEError(f"{what} {path}: {got}; use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise VLAEError(f"{what} {path} is a folder; give a file name")
    folder = path.parent
    blocking = file_in_the_way(folder)
    if blocking is not None:
        raise VLAEError(f"{what} {path}: {blocking} is a file, not a folder")
    create_folder(folder, "cannot create folder", f"{what} {path}: folder {folder} is not writable")
    try:  # os.access says yes to root everywhere, also under /proc: try a file for real
        with tempfile.TemporaryFile(dir=folder, prefix=".vlae-probe-"):
            pass
    except OSError as error:
        raise VLAEError(os_error_message(folder, error, "cannot write in folder")) from None
    return path


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.<name>.<random>.tmp``, which
    :func:`vlae.checkpoint.remove_temporaries` recognises), moved onto ``path``
    when the block succeeds and deleted when it fails."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:  # not mkstemp: its 0600 mode would stay on the result; this respects the umask
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise write_error(path, error) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """Atomic write of an output file the user named: checks ``path``
    (:func:`prepare_output`), then yields a temporary path in the same folder,
    moved onto ``path`` on success; an ``OSError`` becomes a one-line
    :class:`VLAEError` naming ``path``."""
    with _replacing(prepare_output(path)) as tmp:
        yield tmp


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(file)`` on a binary temporary file beside ``path``, flushed
    to disk, then move it onto ``path`` (creating its folder). For files vlae
    names itself (checkpoints, logs), so no checks of the path beyond the write."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _replacing(path) as tmp, open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as error:  # RuntimeError: torch.save's wrapper of a failed write
        raise write_error(path, error) from None
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically to ``path``; returns the path."""
    with writing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False, default=None
) -> Path:
    """Write ``obj`` as strict JSON (:func:`dumps`) atomically to ``path``."""
    return write_text(path, dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")
