"""Image files in and out of the codec: ``.npy`` arrays and folders of PNGs.

:func:`read_images` reads the images ``vlae compress`` codes, binary (0/1) or
8-bit (0..255), checking their layout and values in one-line errors;
:func:`write_images` writes what ``vlae decompress`` decoded, atomically per file;
:func:`check_output` refuses, before any work, to overwrite an output without
``--force``.

Example:
    >>> write_images(np.ones((2, 1, 4, 4), np.uint8), tmp / "x.npy")  # doctest: +SKIP
    >>> read_images(tmp / "x.npy").shape  # doctest: +SKIP
    (2, 1, 4, 4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import VLAEError

__all__ = ["read_images", "write_images", "check_output"]


def read_images(path: str | Path, channels: int = 1, binary: bool = True) -> np.ndarray:
    """Images for a model with ``channels`` channels, binary or 8-bit: ``(N, C, H, W)`` uint8.

    From an ``.npy`` array -- ``(N, H, W)`` (one channel), ``(N, C, H, W)`` or ``(N, H, W, C)``;
    binary: values 0/1 of any numeric or bool dtype; 8-bit: integers 0..255 of an integer
    dtype -- or a folder of PNGs (sorted by name; binary: 0 or 255 grey levels or 1-bit,
    white is 1; 8-bit: any PNG, read as grey ``L`` or ``RGB``).
    """
    path = Path(path)
    kind = "binary" if binary else "8-bit"
    if path.is_dir():
        return _read_pngs(path, channels, binary)
    if path.suffix.lower() != ".npy":
        raise VLAEError(f"{path}: give an .npy array or a folder of PNG images")
    if not path.is_file():
        raise VLAEError(f"{path}: no such file")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise VLAEError(f"{path}: not a readable .npy array ({str(error).splitlines()[0]})") from None
    if a.ndim == 3 and channels == 1:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] != channels and a.shape[3] == channels:
        a = a.transpose(0, 3, 1, 2)  # channels last, as image libraries hold them
    numeric = np.issubdtype(a.dtype, np.number) or a.dtype == bool
    if a.ndim != 4 or a.shape[1] != channels or not numeric or (not binary and not np.issubdtype(a.dtype, np.integer)):
        layout = "(N, H, W), (N, 1, H, W)" if channels == 1 else f"(N, {channels}, H, W) or (N, H, W, {channels})"
        raise VLAEError(
            f"{path}: expected {kind} images {layout}{'' if binary else ' of an integer dtype'}, "
            f"got {a.dtype} {a.shape}"
        )
    if binary and not np.isin(a, (0, 1)).all():
        raise VLAEError(f"{path}: values other than 0 and 1; binarize the images first")
    if not binary and (a.min() < 0 or a.max() > 255):
        raise VLAEError(f"{path}: 8-bit images must hold values 0..255, got [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.uint8)


def _read_pngs(path: Path, channels: int, binary: bool) -> np.ndarray:
    """The PNGs in folder ``path``, sorted by name: ``(N, C, H, W)`` uint8."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise VLAEError(f"{path}: no .png images in this folder")
    arrays: list[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise VLAEError(f"{f}: not a readable PNG ({error})") from None
        if binary and not np.isin(a, (0, 255)).all():
            raise VLAEError(f"{f}: not a binary image (grey levels other than 0 and 255)")
        if arrays and a.shape != arrays[0].shape:
            raise VLAEError(f"{f}: size {a.shape[1]}x{a.shape[0]} differs from {files[0].name}'s")
        arrays.append(a // 255 if binary else a)
    a = np.stack(arrays)
    return np.ascontiguousarray(a[:, None] if channels == 1 else a.transpose(0, 3, 1, 2), dtype=np.uint8)


def _is_folder_output(path: Path) -> bool:
    """Any name but an ``.npy`` file's is a folder of PNGs."""
    return path.suffix.lower() != ".npy"


def check_overwrite(path: Path, force: bool) -> None:
    """Refuse to overwrite without ``--force``; checked before any work."""
    if path.exists() and not force and (not path.is_dir() or any(path.iterdir())):
        raise VLAEError(f"{path} exists; pass --force to overwrite it")


#: Names of one image file: refused as outputs, where a folder of PNGs would take the name.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def check_output(path: Path, force: bool) -> None:
    """:func:`check_overwrite` for decoded images; a file, or an image file's name, is refused
    where a folder of PNGs goes."""
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        raise VLAEError(f"{path}: the images go to a folder of PNGs or an .npy file; name a folder (e.g. decoded/)")
    check_overwrite(path, force)
    if path.exists() and not path.is_dir() and _is_folder_output(path):
        raise VLAEError(f"{path} is a file; a folder output holds PNGs (or name an .npy file)")


def write_images(x: torch.Tensor | np.ndarray, path: str | Path, force: bool = False, binary: bool = True) -> Path:
    """Write ``(N, C, H, W)`` images (0/1 if ``binary``, else 0..255) to an ``.npy`` file
    (uint8) or, for any other name but an image file's, a folder of PNGs ``00000.png, ...``
    (1-bit with white as 1, 8-bit grey, or 8-bit RGB); atomically per file."""
    from ..outputs import writing

    path, a = Path(path), np.asarray(x, dtype=np.uint8)
    check_output(path, force)
    if not _is_folder_output(path):
        with writing(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)
        return path
    from PIL import Image

    width = max(5, len(str(len(a) - 1)))
    for i, img in enumerate(a):
        picture = (img[0].astype(bool) if binary else img[0]) if len(img) == 1 else img.transpose(1, 2, 0)
        with writing(path / f"{i:0{width}d}.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
    return path
