"""What every figure shares: atomic saving, image grids, the model's images in
[0, 1], and the latent code's deterministic point and per-dimension KL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ...errors import VLAEError
from ...outputs import writing

__all__ = [
    "DPI",
    "PIXELS",
    "save",
    "warn",
    "tile",
    "grid",
    "need_latent",
    "show",
    "model_images",
    "posterior_point",
    "kl_per_dim",
    "fixed_uniforms",
]

DPI = 120
PIXELS = ListedColormap(["black", "white"])  # binary images: 0 black, 1 white, as MNIST is usually shown


def save(fig: Figure, out) -> Path:
    """Write ``fig`` atomically (format from the suffix, PNG without one); an
    unwritable path is a one-line :class:`VLAEError`."""
    out = Path(out)
    with writing(out) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=out.suffix[1:].lower() or "png")
    return out


def warn(message: str) -> None:
    """The default ``notice``: one line on stderr."""
    print(message, file=sys.stderr)


def tile(images: torch.Tensor, pad: int = 2) -> np.ndarray:
    """``(R, C, H, W)`` (or ``(R, C, H, W, 3)`` in colour) -> one
    ``(R*(H+pad)-pad, C*(W+pad)-pad[, 3])`` array, tiles separated by a grey (0.5) gutter."""
    r, c, h, w = images.shape[:4]
    canvas = np.full((r * (h + pad) - pad, c * (w + pad) - pad, *images.shape[4:]), 0.5, dtype=np.float32)
    for i in range(r):
        for j in range(c):
            canvas[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = images[i, j].cpu().numpy()
    return canvas


def grid(
    ax,
    images: torch.Tensor,
    row_labels: Iterable[str] | None = None,
    col_labels: Iterable[str] | None = None,
    pad: int = 2,
    cmap=PIXELS,
) -> None:
    """Show ``(R, C, H, W)`` images (``(R, C, H, W, 3)``: RGB) as a grid on ``ax``,
    ticks at tile centres."""
    r, c, h, w = images.shape[:4]
    ax.imshow(tile(images, pad), cmap="gray" if cmap is None else cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([i * (h + pad) + h / 2 - 0.5 for i in range(r)])
    ax.set_yticklabels(list(row_labels) if row_labels is not None else [str(i + 1) for i in range(r)])
    ax.set_xticks([j * (w + pad) + w / 2 - 0.5 for j in range(c)])
    ax.set_xticklabels(list(col_labels) if col_labels is not None else [str(j + 1) for j in range(c)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def need_latent(model, what: str) -> None:
    """One line for a figure of ``z`` asked of a model without one."""
    if model.latent_dim == 0:
        raise VLAEError(f"{what} needs a latent code; this model is an unconditional PixelCNN (latent_dim=0)")


def show(model, x: torch.Tensor) -> torch.Tensor:
    """Images ``(..., C, H, W)`` in observed units -> what ``grid`` shows, in [0, 1]:
    ``(..., H, W)`` for one channel, ``(..., H, W, 3)`` for RGB."""
    x = x / 255 if model.cfg.observation == "logistic_mixture" else x
    return x[..., 0, :, :] if x.shape[-3] == 1 else x.movedim(-3, -1)


def model_images(model, x: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` (``None``: all) of ``x`` as the model reads them, checked against its image shape."""
    x = model.check_images(x.float() if x.dtype == torch.uint8 else x)
    return x[:limit] if limit else x


@torch.no_grad()
def posterior_point(model, x: torch.Tensor) -> torch.Tensor:
    """A deterministic point of q(z|x): the encoder mean pushed through the IAF
    steps with zero noise (the posterior mean when there is no IAF)."""
    mu, log_sigma, h = model.encode(x)
    z, _ = model.posterior.rsample(mu, log_sigma, h, torch.zeros_like(mu))
    return z


@torch.no_grad()
def kl_per_dim(model, x: torch.Tensor, draws: int = 8, seed: int = 0) -> torch.Tensor:
    """``(B, D)`` per-dimension KL estimate ``log q(z|x) - log p(z)``, averaged
    over ``draws`` posterior samples per image."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    terms = model.terms(x.repeat(draws, 1, 1, 1), generator=g)
    return terms.kl_per_dim.view(draws, x.shape[0], -1).mean(0)


def fixed_uniforms(model, n: int, seed: int) -> torch.Tensor:
    """One draw of uniforms, repeated ``n`` times: pictures decoded with it differ
    only through ``z``."""
    anchor = next(model.decoder.parameters())
    g = torch.Generator(device=anchor.device).manual_seed(seed)
    u = torch.rand((1, *model.uniforms_shape), generator=g, device=anchor.device, dtype=anchor.dtype)
    return u.expand(n, -1, -1, -1).contiguous()
