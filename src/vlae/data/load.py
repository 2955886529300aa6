"""One split of a dataset, read from its files: :func:`load_dataset`, :func:`load_or_fallback`.

:func:`load_dataset` dispatches to one loader per family of files
(:func:`_read_split`); each finds its file (:mod:`vlae.data.files`), checks its
digest, reads it (:mod:`vlae.data.formats`) and makes the split
(:mod:`vlae.data.splits`), returning ``(images, dynamic, source)``: ``uint8``
images ``(N, H, W)`` or ``(N, C, H, W)``, whether they are grey levels to
binarize dynamically, and the path read. :func:`load_dataset` then checks the
count and shape against :mod:`vlae.data.catalogue` for every dataset alike.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import require
from . import catalogue, fetch
from .catalogue import CIFAR_ARCHIVE, CIFAR_FOLDER, CIFAR_TRAIN, DATASETS, EMBEDDED, INFO, PIXELS, SPLITS
from .embedded import load_mnist_embedded, load_photos
from .files import DataNotFoundError, check_digest, find_file, first_existing, not_found, resolve_data_dir, search_dirs
from .formats import read_amat, read_cifar, read_idx, read_mat
from .images import Images
from .splits import binarize_once, cut, digits, zeros_and_ones

__all__ = ["load_dataset", "load_or_fallback"]


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    train_on_valid: bool = False,
) -> Images:
    """One split of a dataset as in-memory ``uint8`` images ``(N, C, H, W)``.

    Args:
        name: one of :data:`~vlae.data.catalogue.DATASETS`.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        data_dir: the ``--data-dir`` option; see :func:`~vlae.data.files.resolve_data_dir`.
        download: fetch missing files with :func:`~vlae.data.fetch.download` first.
        train_on_valid: with ``split="train"``, return train and valid
            concatenated (split ``"train+valid"``), as in the paper's final runs.

    Raises:
        DataNotFoundError: the files are absent.
        VLAEError: unknown name or split; a corrupt, truncated or wrong file.
    """
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    require(split in SPLITS, f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if train_on_valid and split == "train":
        train, valid = (load_dataset(name, s, data_dir, download) for s in ("train", "valid"))
        sources = train.source if train.source == valid.source else f"{train.source}, {valid.source}"
        return Images(
            torch.cat([train.images, valid.images]), name, "train+valid", train.observation, train.dynamic, sources
        )
    root = resolve_data_dir(data_dir)
    try:
        images, dynamic, source = _read_split(name, root, split)
    except DataNotFoundError:
        if not download or name in EMBEDDED:
            raise
        fetch.download(name, root)
        images, dynamic, source = _read_split(name, root, split)
    expected = catalogue.COUNTS[(name, split)]
    require(
        len(images) == expected,
        f"{source}: {len(images)} images for {name} {split}, expected {expected} (truncated or wrong file?)",
    )
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8).copy())
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor
    require(
        tuple(tensor.shape[1:]) == INFO[name].shape,
        f"{source}: images of shape {tuple(tensor.shape[1:])} for {name}, expected {INFO[name].shape}",
    )
    return Images(tensor, name, split, INFO[name].observation, dynamic, source)


def load_or_fallback(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    train_on_valid: bool = False,
    allow_embedded: bool = True,
    notice: Callable[[str], object] | None = None,
) -> Images:
    """:func:`load_dataset`, or its embedded fallback when no data location was named.

    A data location given explicitly (``data_dir``, i.e. ``--data-dir`` or
    ``train.data_dir``, or else ``$VLAE_DATA_DIR``) that does not exist or
    holds no data is an error naming the location (and the variable) and the
    files looked for: it is never replaced by a guess. With no location named
    and the files absent from the default cache, the embedded dataset
    of :data:`~vlae.data.catalogue.INFO` (``mnist-embedded`` for binary datasets, ``photos-embedded``
    for ``cifar10``) is returned, announced through ``notice`` (default: one
    line on stderr) and recorded in the result's ``fallback``. A corrupt or
    truncated file always raises.

    Example:
        >>> test = load_or_fallback("cifar10", "test")  # doctest: +SKIP
        notice: cifar10 not found under ~/.cache/vlae; using photos-embedded ...
        >>> test.name, test.fallback  # doctest: +SKIP
        ('photos-embedded', 'photos-embedded substituted for cifar10: ...')
    """
    try:
        return load_dataset(name, split, data_dir, download, train_on_valid=train_on_valid)
    except DataNotFoundError as error:
        from_env = data_dir is None and bool(os.environ.get("VLAE_DATA_DIR"))
        if data_dir is not None or from_env:  # a location the user named: never replaced by a guess
            if not error.looked_for:
                raise
            raise _named_location_error(name, resolve_data_dir(data_dir), from_env, error) from None
        fallback = INFO[name].fallback
        if not allow_embedded or fallback is None:
            raise
    root = resolve_data_dir(None)
    substitute = load_dataset(fallback, split, train_on_valid=train_on_valid)
    what = f"{fallback} substituted for {name}: no {name} data under {root} and no data location given"
    (notice or _stderr)(
        f"notice: {name} not found under {root}; using {fallback} ({substitute.source}), "
        f"not a benchmark. Pass --data-dir or run `vlae download {name}` for the real data."
    )
    return dataclasses.replace(substitute, fallback=what)


def _named_location_error(name: str, root: Path, from_env: bool, error: DataNotFoundError) -> DataNotFoundError:
    """The error of a data location the user named (``root``, from ``$VLAE_DATA_DIR`` if ``from_env``)
    that lacks ``name``'s files: what is wrong with it, what was looked for where, and the fix."""
    state = "does not exist" if not root.exists() else f"holds no {name} data"
    where = f"$VLAE_DATA_DIR names {root}, which" if from_env else f"the given data location {root}"
    fix = (
        "set VLAE_DATA_DIR to the folder holding it, unset it to use the embedded data, or run "
        f"`vlae download {name}` (which downloads into $VLAE_DATA_DIR)"
        if from_env
        else f"fix the path, or run `vlae download {name} --data-dir {root}`"
    )
    return DataNotFoundError(
        f"{name}: {where} {state} (looked for {', '.join(error.looked_for)} in "
        f"{', '.join(map(str, error.folders))}); an explicit location is never replaced by embedded data: "
        f"{fix}",
        error.looked_for,
        error.folders,
    )


def _stderr(message: str) -> None:
    """The default notice: a line on stderr, flushed so that it lands before a run's first output."""
    print(message, file=sys.stderr, flush=True)


def _read_split(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """``(images, dynamic, source)`` of one split, from the loader of ``name``'s files."""
    files = INFO[name].files
    if files == "binarized-mnist":
        return _load_binarized_mnist(root, split)
    if files in ("mnist", "fashion-mnist"):
        return _load_idx(name, root, split)
    if files == "omniglot":
        return _load_omniglot(root, split)
    if files == "caltech101-silhouettes":
        return _load_caltech(root, split)
    if files == "cifar10":
        return _load_cifar10(root, split)
    if files == "photos-embedded":
        return load_photos(split)
    return load_mnist_embedded(name, split)


def _load_binarized_mnist(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """Static 0/1 digits from ``binarized_mnist_{split}.mat``, else ``.amat``."""
    path = find_file("binarized-mnist", root, [f"binarized_mnist_{split}.mat", f"binarized_mnist_{split}.amat"])
    check_digest("binarized-mnist", path)
    array = read_amat(path) if path.suffix == ".amat" else zeros_and_ones(read_mat(path, "X"), str(path))
    return digits(array, str(path)), False, str(path)


def _load_idx(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """(Fashion-)MNIST from its IDX files: train and valid cut from the training file,
    test from the t10k file, binarized once for the binary (Bernoulli) datasets."""
    stem = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    path = find_file(name, root, [stem + ".gz", stem])
    check_digest(INFO[name].files, path)
    images = read_idx(path)
    require(
        images.ndim == 3 and images.shape[1:] == (28, 28),
        f"{path}: expected images of shape (N, 28, 28), got {images.shape}",
    )
    binary = INFO[name].observation == "bernoulli"
    if split == "test":
        return (binarize_once(images) if binary else images), False, str(path)
    return cut(name, images, split, str(path)), binary, str(path)


def _load_omniglot(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """Omniglot's ``chardata.mat``: grey levels for train and valid, test binarized once."""
    path = find_file("omniglot", root, ["chardata.mat"])
    check_digest("omniglot", path)
    # Images are columns of 784 values in MATLAB (column-major) order, as read
    # by the IWAE code: data.T.reshape(-1, 28, 28).reshape(-1, 784, order="F").
    data = read_mat(path, "testdata" if split == "test" else "data")
    require(data.ndim == 2 and data.shape[0] == PIXELS, f"{path}: expected (784, N) arrays, got {data.shape}")
    require(bool(((data >= 0) & (data <= 1)).all()), f"{path}: grey levels outside [0, 1]")
    grey = np.rint(digits(data.T, str(path), fortran=True) * 255).astype(np.uint8)
    if split == "test":
        return binarize_once(grey), False, str(path)
    return cut("omniglot", grey, split, str(path)), True, str(path)


def _load_caltech(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """Caltech 101 Silhouettes: static 0/1, each split a variable of the one MAT file."""
    path = find_file("caltech101-silhouettes", root, ["caltech101_silhouettes_28_split1.mat"])
    check_digest("caltech101-silhouettes", path)
    key = {"train": "train_data", "valid": "val_data", "test": "test_data"}[split]
    images = digits(zeros_and_ones(read_mat(path, key), f"{path} ({key})"), f"{path} ({key})", fortran=True)
    # Rows are column-major (MATLAB) images. Like the VampPrior loader we also
    # flip 0 and 1, assuming (unchecked here: we had no copy of the file) that
    # the silhouette is stored as 0 on 1, so that the shape is 1 on 0 like the
    # ink of MNIST and Omniglot.
    return 1 - images, False, str(path)


def _load_cifar10(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    """CIFAR-10 from the archive, else from an extracted folder; valid is the last training images."""
    dirs = search_dirs("cifar10", root)
    path = first_existing(dirs, [CIFAR_ARCHIVE])
    if path is not None:
        check_digest("cifar10", path)
    else:  # an extracted archive (torchvision's layout too); no digest is known for the single batches
        path = next((d / CIFAR_FOLDER for d in dirs if (d / CIFAR_FOLDER).is_dir()), None)
        if path is None:
            raise not_found("cifar10", [CIFAR_ARCHIVE, CIFAR_FOLDER + "/"], dirs)
    if split == "test":
        return read_cifar(path, ("test_batch",)), False, str(path)
    return cut("cifar10", read_cifar(path, CIFAR_TRAIN), split, str(path)), False, str(path)
