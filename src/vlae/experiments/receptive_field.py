"""The receptive-field columns of the sweep's tables: how much of the causal
context a decoder sees (:func:`context_coverage`) and the record of a decoder's
field (:func:`receptive_field_record`)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["context_coverage", "receptive_field_record"]


def context_coverage(field: Iterable[tuple[int, int]], height: int = 28, width: int = 28) -> float:
    """Fraction of the causal context a decoder sees, averaged over the image.

    Pixel ``(i, j)`` (raster order) could condition on the ``i * width + j``
    pixels before it; its receptive field, clipped to the image, covers some of
    them. The mean ratio over all pixels but the first is 1.0 for a decoder
    that sees every preceding pixel (a "whole-image" PixelCNN) and small for a
    local one. Unlike the raw size it saturates at the image's size, which makes
    grids with different kernels comparable.
    """
    import numpy as np

    counts = np.zeros((height, width))
    for dy, dx in field:
        rows = slice(max(0, -dy), max(0, min(height, height - dy)))  # pixels i with 0 <= i + dy < height
        cols = slice(max(0, -dx), max(0, min(width, width - dx)))
        counts[rows, cols] += 1
    preceding = np.arange(height * width, dtype=float).reshape(height, width)
    return float((counts.ravel()[1:] / preceding.ravel()[1:]).mean())


def receptive_field_record(decoder: Any, image_shape: Sequence[int] = (1, 28, 28)) -> dict[str, Any]:
    """Receptive-field columns of a decoder (any :mod:`vlae.pixelcnn` decoder).

    ``rf_size`` is :meth:`receptive_field_size` (pixels an interior output
    depends on, unclipped), ``rf_up``/``rf_left``/``rf_right`` its extent and
    ``rf_coverage`` the fraction of the causal context it covers
    (:func:`context_coverage`), ``rf_name`` the field in the paper's ``AxB``
    notation (``None`` for fields of another shape, e.g. a masked PixelCNN's).

    Example:
        >>> from vlae.pixelcnn import MaskedPixelCNN
        >>> receptive_field_record(MaskedPixelCNN(layers=2))["rf_size"]
        11
    """
    ext = decoder.receptive_field_extent()
    return {
        "rf_size": int(decoder.receptive_field_size()),
        "rf_up": ext["up"],
        "rf_left": ext["left"],
        "rf_right": ext["right"],
        "rf_name": getattr(decoder, "receptive_field_name", lambda: None)(),
        "rf_coverage": round(context_coverage(decoder.receptive_field(), *image_shape[1:]), 4),
    }
