"""From the arrays a file holds to the images of one split.

The loaders share these steps: checking that binary data holds only 0 and 1,
turning rows of 784 values into 28x28 digits, binarizing a split once with
:data:`~vlae.data.catalogue.BINARIZATION_SEED`, and cutting a file that holds
train and valid into the two (:data:`~vlae.data.catalogue.COUNTS` sizes).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import require
from . import catalogue
from .catalogue import BINARIZATION_SEED, PIXELS

__all__ = ["zeros_and_ones", "digits", "binarize_once", "cut"]


def zeros_and_ones(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as ``uint8``, after checking that it holds only 0 and 1."""
    if np.issubdtype(array.dtype, np.integer):  # much faster than comparing with 0 and 1
        binary = array.size == 0 or (array.min() >= 0 and array.max() <= 1)
    else:
        binary = bool(((array == 0) | (array == 1)).all())
    require(binary, f"{what}: values other than 0 and 1")
    return array.astype(np.uint8)


def digits(array: np.ndarray, what: str, *, fortran: bool = False) -> np.ndarray:
    """``(N, 784)`` rows -> ``(N, 28, 28)``; ``fortran``: rows are column-major (MATLAB) images."""
    require(
        array.ndim == 2 and array.shape[1] == PIXELS,
        f"{what}: expected an array of shape (N, {PIXELS}), got {array.shape}",
    )
    images = array.reshape(-1, 28, 28)
    return images.transpose(0, 2, 1) if fortran else images


def binarize_once(grey: np.ndarray) -> np.ndarray:
    """A fixed binarization of grey levels, seeded with :data:`BINARIZATION_SEED`."""
    generator = torch.Generator().manual_seed(BINARIZATION_SEED)
    return torch.bernoulli(torch.from_numpy(np.array(grey)).float() / 255, generator=generator).to(torch.uint8).numpy()


def cut(name: str, images: np.ndarray, split: str, source: str) -> np.ndarray:
    """``train`` (the first images) or ``valid`` (the last ones) of a file holding both."""
    n_train, n_valid = catalogue.COUNTS[(name, "train")], catalogue.COUNTS[(name, "valid")]
    require(
        len(images) == n_train + n_valid,
        f"{source}: {len(images)} training images for {name}, expected {n_train + n_valid} (truncated or wrong file?)",
    )
    return images[n_train:] if split == "valid" else images[:n_train]
