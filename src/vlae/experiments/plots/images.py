"""What the latent code carries, in pictures: reconstructions, lossy
decompression, samples, the per-dimension KL, latent traversals and interpolations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from ...errors import VLAEError
from ...sampling import FastSampler, fast_sample
from . import _canvas as canvas

__all__ = [
    "plot_reconstructions",
    "plot_lossy_decompression",
    "plot_samples",
    "plot_kl_heatmap",
    "plot_latent_traversals",
    "plot_interpolations",
]


@torch.no_grad()
def plot_reconstructions(model, x: torch.Tensor, out, n_images: int = 8, seed: int = 0) -> Path:
    """Test images (top row) and one lossy reconstruction each: ``z ~ q(z|x)``,
    then ``x' ~ p(x|z)`` (bottom row)."""
    canvas.need_latent(model, "a reconstruction")
    x = canvas.model_images(model, x, n_images)
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, 1, generator=g)[0]
    fig = Figure(figsize=(1.1 * x.shape[0] + 1.5, 3.0), layout="constrained")
    ax = fig.subplots()
    canvas.grid(ax, torch.stack([canvas.show(model, x), canvas.show(model, rec)]), ["original x", "x' ~ p(x|z)"])
    ax.set_xlabel("test image")
    ax.set_title("Reconstructions (z ~ q(z|x) once per image)")
    return canvas.save(fig, out)


@torch.no_grad()
def plot_lossy_decompression(model, x: torch.Tensor, out, n: int = 5, n_images: int = 6, seed: int = 0) -> Path:
    """The paper's lossy-compression demonstration: for each test image, one
    ``z ~ q(z|x)`` and ``n`` decodings ``x' ~ p(x|z)``. What stays the same
    across a row is what ``z`` encodes (global shape); what varies is left to
    the autoregressive decoder (local texture)."""
    canvas.need_latent(model, "lossy decompression")
    x = canvas.model_images(model, x, n_images)
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, n, generator=g)  # (n, B, C, H, W)
    grid = canvas.show(model, torch.cat([x[None], rec])).transpose(0, 1)  # (B, 1 + n, H, W[, 3])
    fig = Figure(figsize=(1.05 * (n + 1) + 1.5, 1.05 * x.shape[0] + 1.0), layout="constrained")
    ax = fig.subplots()
    canvas.grid(ax, grid, [str(i + 1) for i in range(x.shape[0])], ["original"] + [f"x'{i + 1}" for i in range(n)])
    ax.set(xlabel="decodings x' ~ p(x|z), same z", ylabel="test image")
    ax.set_title("Lossy decompression: one z per row")
    return canvas.save(fig, out)


@torch.no_grad()
def plot_samples(model, n: int, out, seed: int = 0) -> Path:
    """``n`` samples ``z ~ p(z)``, ``x ~ p(x|z)`` (or ``x ~ p(x)`` for an
    unconditional PixelCNN), on a near-square grid."""
    if n < 1:
        raise VLAEError(f"number of samples must be >= 1, got {n}")
    anchor = next(model.decoder.parameters())
    x = fast_sample(model, n, generator=torch.Generator(device=anchor.device).manual_seed(seed))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    x = canvas.show(model, x)
    pad = torch.full((rows * cols - n, *x.shape[1:]), 0.5, dtype=x.dtype, device=x.device)
    grid = torch.cat([x, pad]).view(rows, cols, *x.shape[1:])
    fig = Figure(figsize=(0.9 * cols + 1.0, 0.9 * rows + 1.0), layout="constrained")
    ax = fig.subplots()
    canvas.grid(ax, grid, [""] * rows, [""] * cols)
    prior = f"{model.cfg.prior.upper() if model.cfg.prior == 'af' else 'Gaussian'} prior" if model.latent_dim else ""
    ax.set_title(f"Samples from the model ({prior + ', ' if prior else 'unconditional, '}{model.cfg.decoder} decoder)")
    return canvas.save(fig, out)


@torch.no_grad()
def plot_kl_heatmap(model, x: torch.Tensor, out, n_images: int = 32, draws: int = 8) -> Path:
    """Per-dimension KL ``log q(z_d|x) - log p(z_d)`` (nats), averaged over
    ``draws`` posterior samples: the mean over images per dimension (bars) and
    every image x dimension (heat map), dimensions sorted by mean KL. Dimensions
    near zero are unused by the model."""
    canvas.need_latent(model, "a KL heat map")
    x = canvas.model_images(model, x, n_images)
    kl = canvas.kl_per_dim(model, x, draws)
    if model.cfg.latent_shape:
        return _kl_maps(model, kl, out, draws)
    order = torch.argsort(kl.mean(0), descending=True)
    kl = kl[:, order].cpu().numpy()
    mean = kl.mean(0)
    d = kl.shape[1]
    fig = Figure(figsize=(max(6.0, 0.18 * d + 2.5), 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.2])
    top.bar(np.arange(d), mean, color="tab:blue", width=0.8)
    top.set(
        ylabel="mean KL (nats)",
        title=f"Per-dimension KL, sorted; total {mean.sum():.2f} nats per image "
        f"(mean over {x.shape[0]} images, {draws} draws each)",
    )
    top.grid(axis="y", alpha=0.3)
    lo, hi = float(kl.min()), float(kl.max())
    if lo < 0 < hi:
        # single-sample estimates can be negative: a diverging map centred on 0 nats
        im = bottom.imshow(kl, aspect="auto", cmap="RdBu_r", norm=CenteredNorm(0.0), interpolation="nearest")
    else:
        im = bottom.imshow(kl, aspect="auto", cmap="viridis", interpolation="nearest")
    bottom.set(xlabel="latent dimension (sorted by mean KL; label = original index)", ylabel="image")
    ticks = np.arange(0, d, max(1, d // 16))
    bottom.set_xticks(ticks, [str(int(order[t])) for t in ticks])
    fig.colorbar(im, ax=bottom, label="KL (nats)")
    return canvas.save(fig, out)


def _kl_maps(model, kl: torch.Tensor, out, draws: int) -> Path:
    """The KL heat map of a spatial code ``(C, h, w)``: the mean KL of every
    latent unit as ``C`` maps of ``h x w`` on one colour scale (top), and each
    image's KL per feature map (bottom)."""
    from ...spatial_prior import latent_map

    shape = tuple(model.cfg.latent_shape)
    maps = latent_map(kl, shape)  # (B, C, h, w)
    mean = maps.mean(0).cpu().numpy()
    per_map = maps.sum((-2, -1)).cpu().numpy()  # (B, C)
    c = shape[0]
    cols = min(c, 8)
    rows = math.ceil(c / cols)
    mosaic: list[Any] = [[f"m{r * cols + j}" if r * cols + j < c else "." for j in range(cols)] for r in range(rows)]
    mosaic.append(["images"] * cols)
    fig = Figure(figsize=(1.4 * cols + 2.0, 1.5 * rows + 4.0), layout="constrained")
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1] * rows + [2.2])
    hi = max(float(mean.max()), 1e-6)
    lo = min(float(mean.min()), 0.0)
    for i in range(c):
        ax = axes[f"m{i}"]
        im = ax.imshow(mean[i], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"map {i}: {mean[i].sum():.1f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=[axes[f"m{i}"] for i in range(c)], label="mean KL (nats)", shrink=0.8)
    ax = axes["images"]
    norm = CenteredNorm(0.0) if per_map.min() < 0 < per_map.max() else None
    heat = ax.imshow(per_map, aspect="auto", cmap="RdBu_r" if norm else "viridis", norm=norm, interpolation="nearest")
    ax.set(xlabel="feature map of z", ylabel="image", xticks=range(c))
    fig.colorbar(heat, ax=ax, label="KL per feature map (nats)")
    fig.suptitle(
        f"KL over the {'x'.join(map(str, shape))} code: {mean.sum():.2f} nats per image "
        f"(mean over {kl.shape[0]} images, {draws} draws each)",
        fontsize=10,
    )
    return canvas.save(fig, out)


@torch.no_grad()
def plot_latent_traversals(
    model, x: torch.Tensor, out, dims: int = 6, steps: int = 9, span: float = 3.0, seed: int = 0
) -> Path:
    """Starting from the posterior point of the first image, set each of the
    ``dims`` highest-KL dimensions (KL averaged over the images in ``x``) to
    values across ``[-span, span]``. Every picture is decoded with the same
    uniforms, so differences are caused by ``z`` alone."""
    canvas.need_latent(model, "a latent traversal")
    x = canvas.model_images(model, x, 32)
    kl = canvas.kl_per_dim(model, x).mean(0)
    dims = min(dims, model.latent_dim)
    top = torch.argsort(kl, descending=True)[:dims]
    z0 = canvas.posterior_point(model, x[:1])[0]
    values = torch.linspace(-span, span, steps, dtype=z0.dtype, device=z0.device)
    z = z0.repeat(dims * steps, 1).view(dims, steps, -1)
    for r, d in enumerate(top.tolist()):
        z[r, :, d] = values
    imgs = FastSampler(model).decode(z.view(dims * steps, -1), canvas.fixed_uniforms(model, dims * steps, seed))
    fig = Figure(figsize=(1.0 * steps + 2.0, 1.0 * dims + 1.2), layout="constrained")
    ax = fig.subplots()
    imgs = canvas.show(model, imgs)
    canvas.grid(
        ax,
        imgs.view(dims, steps, *imgs.shape[1:]),
        [f"z[{d}] ({kl[d]:.1f} nats)" for d in top.tolist()],
        [f"{v:+.1f}" for v in values.tolist()],
    )
    ax.set(xlabel="value of the latent dimension", ylabel="latent dimension (mean KL)")
    ax.set_title("Latent traversals from the posterior point of one test image")
    return canvas.save(fig, out)


@torch.no_grad()
def plot_interpolations(model, x: torch.Tensor, out, pairs: int = 4, steps: int = 8, seed: int = 0) -> Path:
    """Linear interpolation between the posterior points of image pairs
    ``(x[0], x[1]), (x[2], x[3]), ...``; originals at both ends, every decoding
    with the same uniforms."""
    canvas.need_latent(model, "an interpolation")
    x = canvas.model_images(model, x)
    pairs = min(pairs, x.shape[0] // 2)
    if pairs < 1:
        raise VLAEError("interpolation needs at least two images")
    z = canvas.posterior_point(model, x[: 2 * pairs]).view(pairs, 2, -1)
    t = torch.linspace(0, 1, steps, dtype=z.dtype, device=z.device)[None, :, None]
    zt = (1 - t) * z[:, :1] + t * z[:, 1:]  # (pairs, steps, D)
    imgs = FastSampler(model).decode(zt.reshape(pairs * steps, -1), canvas.fixed_uniforms(model, pairs * steps, seed))
    imgs = canvas.show(model, imgs)
    imgs = imgs.view(pairs, steps, *imgs.shape[1:])
    left, right = canvas.show(model, x[0 : 2 * pairs : 2]), canvas.show(model, x[1 : 2 * pairs : 2])
    grid = torch.cat([left[:, None], imgs, right[:, None]], 1)
    fig = Figure(figsize=(1.0 * (steps + 2) + 1.5, 1.05 * pairs + 1.2), layout="constrained")
    ax = fig.subplots()
    canvas.grid(
        ax, grid, [str(i + 1) for i in range(pairs)], ["start"] + [f"{v:.2f}" for v in t.flatten().tolist()] + ["end"]
    )
    ax.set(xlabel="interpolation weight t: z = (1 - t) z_start + t z_end", ylabel="image pair")
    ax.set_title("Interpolations between posterior points")
    return canvas.save(fig, out)
