"""The decoder's receptive field, drawn and checked against autograd: the
pixels an output depends on by construction and by the Jacobian."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ...errors import VLAEError
from . import _canvas as canvas

__all__ = ["plot_receptive_field", "jacobian_support", "receptive_field_mask"]


def _decoder_of(model_or_decoder):
    dec = getattr(model_or_decoder, "decoder", model_or_decoder)
    if not hasattr(dec, "receptive_field"):
        raise VLAEError(f"{type(model_or_decoder).__name__} is neither a VLAE nor a PixelCNN decoder")
    return dec


def _default_pixel(dec, shape: tuple[int, int]) -> tuple[int, int]:
    """An output pixel whose whole window lies inside the image, if there is one
    (the centre otherwise)."""
    h, w = shape
    win = dec.window()
    i = min(max(h // 2, win["up"]), max(h - 1 - win["down"], 0))
    j = min(max(w // 2, win["left"]), max(w - 1 - win["right"], 0))
    return i, j


def receptive_field_mask(decoder, pixel: tuple[int, int], shape: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """``(H, W)`` bool: the input pixels the decoder *reports* that ``pixel`` reads."""
    dec = _decoder_of(decoder)
    mask = torch.zeros(shape, dtype=torch.bool)
    for dy, dx in dec.receptive_field():
        i, j = pixel[0] + dy, pixel[1] + dx
        if 0 <= i < shape[0] and 0 <= j < shape[1]:
            mask[i, j] = True
    return mask


def jacobian_support(decoder, pixel: tuple[int, int], shape: tuple[int, int] = (28, 28), seed: int = 0) -> torch.Tensor:
    """``(H, W)`` bool: input pixels with a non-zero derivative of logit ``pixel``
    (autograd, float64, on a copy of the decoder with a random binary input and
    conditioning map): the receptive field the network *really* has."""
    import copy

    dec = copy.deepcopy(_decoder_of(decoder)).double().eval()
    g = torch.Generator().manual_seed(seed)
    c_in = getattr(dec, "in_channels", 1)  # colour decoders read every channel of the pixels in their field
    x = torch.bernoulli(torch.full((1, c_in, *shape), 0.5, dtype=torch.float64), generator=g).requires_grad_(True)
    channels = getattr(dec, "cond_channels", None)
    if channels is None:  # e.g. the factorized decoder: its first 1x1 convolution reads the map
        channels = next(m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    cond = torch.randn(1, channels, *shape, generator=g, dtype=torch.float64) if channels else None
    (grad,) = torch.autograd.grad(dec(x, cond)[0, 0, pixel[0], pixel[1]], x, allow_unused=True)
    if grad is None:  # e.g. a factorized decoder: the logit ignores x
        return torch.zeros(shape, dtype=torch.bool)
    return (grad[0] != 0).any(0)


def _describe(dec) -> str:
    name = type(dec).__name__
    field = dec.receptive_field_name() if hasattr(dec, "receptive_field_name") else None
    if hasattr(dec, "vertical_layers") and (
        dec.vertical_layers != dec.layers or dec.first_rows != dec.kernel_size // 2
    ):  # a paper-style AxB decoder
        return f"{name}, field {field}: {dec.vertical_layers} vertical + {dec.layers} horizontal layers"
    if hasattr(dec, "layers"):
        suffix = f", field {field}" if field else ""
        return f"{name}, {dec.layers} layers, {dec.kernel_size}x{dec.kernel_size} kernels{suffix}"
    return name


def plot_receptive_field(
    model_or_decoder, out, pixel: tuple[int, int] | None = None, shape: tuple[int, int] | None = None
) -> Path:
    """Draw the input pixels one output logit depends on: the support of the
    autograd Jacobian (filled) over the receptive field the decoder reports
    (outlined), the conditioning-map positions it reads (light), and the output
    pixel itself (red cross). ``pixel`` defaults to an interior pixel."""
    dec = _decoder_of(model_or_decoder)
    if shape is None:
        cfg = getattr(model_or_decoder, "cfg", None)
        shape = (cfg.image_shape[1], cfg.image_shape[2]) if cfg is not None else (28, 28)
    pixel = (pixel[0], pixel[1]) if pixel is not None else _default_pixel(dec, shape)
    if not (0 <= pixel[0] < shape[0] and 0 <= pixel[1] < shape[1]):
        raise VLAEError(f"pixel {pixel} lies outside the {shape[0]}x{shape[1]} image")
    support = jacobian_support(dec, pixel, shape)
    reported = receptive_field_mask(dec, pixel, shape)
    cond = torch.zeros(shape, dtype=torch.bool)
    for dy, dx in dec.condition_field():
        i, j = pixel[0] + dy, pixel[1] + dx
        if 0 <= i < shape[0] and 0 <= j < shape[1]:
            cond[i, j] = True

    layer = np.zeros(shape)
    layer[cond.numpy()] = 1
    layer[support.numpy()] = 2
    fig = Figure(figsize=(6.2 * shape[1] / max(shape) + 1.6, 6.2 * shape[0] / max(shape) + 0.8), layout="constrained")
    ax = fig.subplots()
    ax.imshow(layer, cmap=ListedColormap(["white", "#dcebf7", "#2b6cb0"]), vmin=0, vmax=2, interpolation="nearest")
    for i, j in reported.nonzero().tolist():
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:orange", linewidth=1.6))
    ax.plot(pixel[1], pixel[0], marker="x", color="red", markersize=9, markeredgewidth=2.5)
    ax.set_xticks(np.arange(-0.5, shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, shape[0], 1), minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="column (pixels)", ylabel="row (pixels)")
    match = "matches" if torch.equal(support, reported) else "DIFFERS FROM"
    ax.set_title(
        f"Receptive field of logit {pixel}: {_describe(dec)}\n"
        f"Jacobian support {int(support.sum())} pixels {match} the reported {int(reported.sum())}",
        fontsize=10,
    )
    ax.legend(
        handles=[
            Patch(facecolor="#2b6cb0", label="d logit / d x != 0 (autograd)"),
            Patch(facecolor="white", edgecolor="tab:orange", label="reported receptive field"),
            Patch(facecolor="#dcebf7", label="conditioning map read"),
            ax.lines[0],
        ],
        labels=["d logit / d x != 0 (autograd)", "reported receptive field", "conditioning map read", "output pixel"],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    return canvas.save(fig, out)
