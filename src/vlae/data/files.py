"""Where a dataset's files lie, and whether they are intact.

Files are looked for under a data directory (:func:`resolve_data_dir`), in
``<dir>/<files>/`` first, then in the other layouts of :func:`search_dirs`;
an absent file is a :class:`DataNotFoundError` naming what was looked for
where, and a present one is checked against the known digests of
:data:`~vlae.data.catalogue.DIGESTS` (:func:`check_digest`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import VLAEError
from . import catalogue
from .catalogue import INFO, SPLITS

__all__ = [
    "DataNotFoundError",
    "default_data_dir",
    "resolve_data_dir",
    "find_binarized_mnist",
    "search_dirs",
    "first_existing",
    "not_found",
    "find_file",
    "check_digest",
    "file_digests",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
_DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(VLAEError):
    """The data files are absent (as opposed to present but corrupt).

    Attributes:
        looked_for: the file names looked for.
        folders: the folders looked in.
    """

    def __init__(self, message: str, looked_for: list[str] | None = None, folders: list[Path] | None = None):
        super().__init__(message)
        self.looked_for = looked_for or []
        self.folders = folders or []


def default_data_dir() -> Path:
    """``$VLAE_DATA_DIR``, else ``$XDG_CACHE_HOME/vlae``, else ``~/.cache/vlae``."""
    if os.environ.get("VLAE_DATA_DIR"):
        return Path(os.environ["VLAE_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "vlae"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` (the ``--data-dir`` option) if given, else :func:`default_data_dir`."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def find_binarized_mnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding all three binarized-MNIST splits (``.mat`` or ``.amat``)
    under ``data_dir`` (default: :func:`default_data_dir`), or None.

    Looks only where :func:`~vlae.data.load.load_dataset` would read them: the library guesses
    no other location (tests point ``$VLAE_DATA_DIR`` at their data themselves).
    """
    dirs = search_dirs(INFO["binarized-mnist"].files, resolve_data_dir(data_dir))
    for folder in dirs:
        if all(first_existing([folder], [f"binarized_mnist_{s}.mat", f"binarized_mnist_{s}.amat"]) for s in SPLITS):
            return folder
    return None


def search_dirs(files: str, root: Path) -> list[Path]:
    """Folders that may hold the files of ``files``, most specific first."""
    dirs = [root / files, root / files.replace("-", "_")]
    if files == "mnist":
        dirs.append(root / "MNIST" / "raw")  # torchvision's layout
    elif files == "fashion-mnist":
        dirs += [root / "FashionMNIST" / "raw", _DEBIAN_FASHION_MNIST]
    else:
        dirs.append(root)  # MNIST and Fashion-MNIST share file names, so only they need their own folder
    return list(dict.fromkeys(dirs))


def first_existing(dirs: list[Path], names: list[str]) -> Path | None:
    """The first file found, trying every name in the first folder before the next folder."""
    return next((d / n for d in dirs for n in names if (d / n).is_file()), None)


def not_found(name: str, names: list[str], dirs: list[Path]) -> DataNotFoundError:
    """The error of ``name``'s absent files, naming the files, the folders and the two fixes."""
    return DataNotFoundError(
        f"{name}: none of {', '.join(names)} found in {', '.join(map(str, dirs))} "
        f"(pass --data-dir or run `vlae download {name}`)",
        names,
        dirs,
    )


def find_file(name: str, root: Path, names: list[str]) -> Path:
    """The first of ``names`` in ``name``'s search folders; :class:`DataNotFoundError` if none."""
    dirs = search_dirs(INFO[name].files, root)
    path = first_existing(dirs, names)
    if path is None:
        raise not_found(name, names, dirs)
    return path


#: (path, size, mtime) of files whose digest matched, so a large archive is hashed once per process.
_VERIFIED: set[tuple[str, int, int]] = set()


def check_digest(files: str, path: Path) -> None:
    """Check ``path`` against the known digests of ``(files, path.name)``, if any.

    Raises:
        VLAEError: no known digest matches (naming the file, both digests and the fix).
    """
    expected = catalogue.DIGESTS.get((files, path.name))
    if not expected:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    actual = file_digests(path, expected)
    if not set(expected) & set(actual):
        raise VLAEError(
            f"{path}: checksum mismatch (expected {' or '.join(expected)}, got {', '.join(actual)}); "
            f"the file is corrupt or not the {files} release; delete it and run `vlae download {files}`"
        )
    _VERIFIED.add(key)


def file_digests(path: Path, like: tuple[str, ...]) -> list[str]:
    """``algorithm:hex`` digests of the file for each algorithm named in ``like``."""
    hashes = {a: hashlib.new(a) for a in dict.fromkeys(d.split(":", 1)[0] for d in like)}
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            for h in hashes.values():
                h.update(chunk)
    return [f"{a}:{h.hexdigest()}" for a, h in hashes.items()]
