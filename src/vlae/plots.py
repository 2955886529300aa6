"""Figures of a VLAE: training curves, lossy reconstructions, samples (binary
or colour), the grayscale experiment of a gray-context decoder, the
per-dimension KL (as ``C`` maps for a spatial code ``(C, h, w)``), latent traversals and interpolations,
and the decoder's receptive field checked against autograd.

All figures are drawn with matplotlib's object-oriented API on an Agg canvas
(no pyplot, no global backend change, so importing this module in a notebook
is harmless) and written as PNG; every function returns the path it wrote.
Sampling uses :class:`vlae.sampling.FastSampler`, whose images are identical to
the naive sampler's.

Example:
    >>> from vlae.plots import plot_run
    >>> paths = plot_run("runs/mnist-small")        # writes runs/mnist-small/figures/*.png
    >>> plot_receptive_field(MaskedPixelCNN(layers=6), "rf.png")
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from matplotlib.colors import CenteredNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .errors import VLAEError
from .outputs import prepare_output, writing
from .sampling import FastSampler, fast_sample

__all__ = ["plot_training_curves", "plot_reconstructions", "plot_lossy_decompression", "plot_samples",
           "plot_grayscale_experiment", "colour_retention", "plot_kl_heatmap", "plot_latent_traversals",
           "plot_interpolations", "plot_receptive_field",
           "plot_run", "jacobian_support", "receptive_field_mask", "read_metrics"]

_DPI = 120
_PIXELS = ListedColormap(["black", "white"])  # binary images: 0 black, 1 white, as MNIST is usually shown


# ---------------------------------------------------------------------- helpers
def _save(fig: Figure, out) -> Path:
    """Write ``fig`` atomically (format from the suffix, PNG without one); an
    unwritable path is a one-line :class:`VLAEError`."""
    out = Path(out)
    with writing(out) as tmp:
        fig.savefig(tmp, dpi=_DPI, bbox_inches="tight", format=out.suffix[1:].lower() or "png")
    return out


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _tile(images: torch.Tensor, pad: int = 2) -> np.ndarray:
    """``(R, C, H, W)`` (or ``(R, C, H, W, 3)`` in colour) -> one
    ``(R*(H+pad)-pad, C*(W+pad)-pad[, 3])`` array, tiles separated by a grey (0.5) gutter."""
    r, c, h, w = images.shape[:4]
    canvas = np.full((r * (h + pad) - pad, c * (w + pad) - pad, *images.shape[4:]), 0.5, dtype=np.float32)
    for i in range(r):
        for j in range(c):
            canvas[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = images[i, j].cpu().numpy()
    return canvas


def _grid(ax, images: torch.Tensor, row_labels: Iterable[str] | None = None, col_labels: Iterable[str] | None = None,
          pad: int = 2, cmap=_PIXELS) -> None:
    """Show ``(R, C, H, W)`` images (``(R, C, H, W, 3)``: RGB) as a grid on ``ax``,
    ticks at tile centres."""
    r, c, h, w = images.shape[:4]
    ax.imshow(_tile(images, pad), cmap="gray" if cmap is None else cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([i * (h + pad) + h / 2 - 0.5 for i in range(r)])
    ax.set_yticklabels(list(row_labels) if row_labels is not None else [str(i + 1) for i in range(r)])
    ax.set_xticks([j * (w + pad) + w / 2 - 0.5 for j in range(c)])
    ax.set_xticklabels(list(col_labels) if col_labels is not None else [str(j + 1) for j in range(c)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _need_latent(model, what: str) -> None:
    if model.latent_dim == 0:
        raise VLAEError(f"{what} needs a latent code; this model is an unconditional PixelCNN (latent_dim=0)")


def _show(model, x: torch.Tensor) -> torch.Tensor:
    """Images ``(..., C, H, W)`` in observed units -> what ``_grid`` shows, in [0, 1]:
    ``(..., H, W)`` for one channel, ``(..., H, W, 3)`` for RGB."""
    x = x / 255 if model.cfg.observation == "logistic_mixture" else x
    return x[..., 0, :, :] if x.shape[-3] == 1 else x.movedim(-3, -1)


def _images(model, x: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    x = model.check_images(x.float() if x.dtype == torch.uint8 else x)
    return x[:limit] if limit else x


@torch.no_grad()
def _posterior_point(model, x: torch.Tensor) -> torch.Tensor:
    """A deterministic point of q(z|x): the encoder mean pushed through the IAF
    steps with zero noise (the posterior mean when there is no IAF)."""
    mu, log_sigma, h = model.encode(x)
    z, _ = model.posterior.rsample(mu, log_sigma, h, torch.zeros_like(mu))
    return z


@torch.no_grad()
def _kl_per_dim(model, x: torch.Tensor, draws: int = 8, seed: int = 0) -> torch.Tensor:
    """``(B, D)`` per-dimension KL estimate ``log q(z|x) - log p(z)``, averaged
    over ``draws`` posterior samples per image."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    terms = model.terms(x.repeat(draws, 1, 1, 1), generator=g)
    return terms.kl_per_dim.view(draws, x.shape[0], -1).mean(0)


def _fixed_uniforms(model, n: int, seed: int) -> torch.Tensor:
    """One draw of uniforms, repeated ``n`` times: pictures decoded with it differ
    only through ``z``."""
    anchor = next(model.decoder.parameters())
    g = torch.Generator(device=anchor.device).manual_seed(seed)
    u = torch.rand((1, *model.uniforms_shape), generator=g, device=anchor.device, dtype=anchor.dtype)
    return u.expand(n, -1, -1, -1).contiguous()


# ---------------------------------------------------------------------- training curves
def read_metrics(metrics_path, notice: Callable[[str], object] | None = _warn) -> tuple[list[dict], list[dict]]:
    """Training and validation records of a ``metrics.jsonl`` (one JSON object a
    line; validation records carry ``"split": "valid"``).

    Records marked ``"superseded"`` (written after the checkpoint a run was
    resumed from) are left out. Blank lines are ignored; lines that are not a
    JSON object (e.g. the last one, cut by a kill) are skipped and counted in
    one warning through ``notice``. A file that is not UTF-8 text raises
    :class:`VLAEError`.
    """
    train: list[dict] = []
    valid: list[dict] = []
    path = Path(metrics_path)
    if not path.is_file():
        raise VLAEError(f"metrics file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise VLAEError(f"metrics file {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                        f"{error.start}); not a metrics.jsonl written by vlae") from None
    except OSError as error:
        raise VLAEError(f"metrics file {path}: cannot read ({error.strerror or error})") from None
    broken = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            broken.append(number)
            continue
        if rec.get("superseded"):
            continue
        split = rec.get("split", "train")
        (valid if split == "valid" else train if split == "train" else []).append(rec)
    if broken and notice is not None:
        notice(f"warning: {path}: skipped {len(broken)} line(s) that are not JSON objects (line {broken[0]}"
               f"{' and more' if len(broken) > 1 else ''})")
    return train, valid


def _series(records: list[dict], key: str, xs: list[float | None]) -> tuple[list[float], list[float]]:
    pts = [(x, float(r[key])) for x, r in zip(xs, records) if isinstance(r.get(key), (int, float))
           and x is not None and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(values: list[float], span: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, bias-corrected."""
    out, avg, alpha = [], 0.0, 2.0 / (span + 1)
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** (i + 1)))
    return np.asarray(out)


def _valid_steps(train: list[dict], valid: list[dict]) -> list[float | None]:
    """A step for each validation record: its own, else the last training step of its epoch."""
    last: dict[Any, Any] = {}
    for r in train:
        if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("step"), (int, float)):
            last[r["epoch"]] = max(last.get(r["epoch"], r["step"]), r["step"])
    steps = []
    for r in valid:
        if isinstance(r.get("step"), (int, float)):
            steps.append(r["step"])
        elif isinstance(r.get("epoch"), (int, float)):
            earlier = [s for e, s in last.items() if e <= r["epoch"]]
            steps.append(max(earlier) if earlier else None)
        else:
            steps.append(None)
    return steps


def plot_training_curves(metrics_path, out, notice: Callable[[str], object] | None = _warn) -> Path:
    """Loss and negative ELBO (nats per image) and the KL term against the
    optimiser step, with the validation bounds overlaid.

    Validation records may hold ``nelbo`` (or ``elbo``, negated here) and
    importance-weighted bounds under keys starting with ``iw`` (plotted as the
    negative log-likelihood bound, ``-log p(x) <= -IW``).
    """
    train, valid = read_metrics(metrics_path, notice)
    if not train and not valid:
        raise VLAEError(f"metrics file {metrics_path} holds no records")
    steps = [r.get("step", i) for i, r in enumerate(train)]
    vsteps = _valid_steps(train, valid)
    for r in valid:  # normalise the validation keys to negative bounds in nats
        if "nelbo" not in r and isinstance(r.get("elbo"), (int, float)):
            r["nelbo"] = -r["elbo"]
    iw_keys = sorted({k for r in valid for k, v in r.items() if k.lower().startswith("iw")
                      and isinstance(v, (int, float))})
    has_lr = any(isinstance(r.get("lr"), (int, float)) for r in train)

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if has_lr else 2, squeeze=False)[0]
    span = max(1, len(train) // 50)
    ax = axes[0]
    for key, color in (("loss", "tab:gray"), ("nelbo", "tab:blue")):
        xs, ys = _series(train, key, steps)
        if ys:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(ys, span), color=color, label=f"train {'loss' if key == 'loss' else '-ELBO'}")
    xs, ys = _series(valid, "nelbo", vsteps)
    if ys:
        ax.plot(xs, ys, "o-", color="tab:orange", label="valid -ELBO")
    for key, color in zip(iw_keys, ("tab:red", "tab:purple", "tab:brown")):
        vals = [dict(r, **{key: -r[key] if isinstance(r.get(key), (int, float)) and r[key] < 0 else r.get(key)})
                for r in valid]
        xs, ys = _series(vals, key, vsteps)
        if ys:
            ax.plot(xs, ys, "s--", color=color, label=f"valid -log p(x) bound ({key})")
    ax.set(title="Objective", xlabel="optimiser step", ylabel="nats per image")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    ax = axes[1]
    xs, ys = _series(train, "kl", steps)
    if ys:
        ax.plot(xs, ys, color="tab:green", alpha=0.25, linewidth=0.8)
        ax.plot(xs, _smooth(ys, span), color="tab:green", label="train KL")
    xs, ys = _series(valid, "kl", vsteps)
    if ys:
        ax.plot(xs, ys, "o-", color="tab:olive", label="valid KL")
    ax.set(title="KL(q(z|x) || p(z))", xlabel="optimiser step", ylabel="nats per image")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    if has_lr:
        ax = axes[2]
        xs, ys = _series(train, "lr", steps)
        ax.plot(xs, ys, color="tab:cyan")
        ax.set(title="Learning rate", xlabel="optimiser step", ylabel="learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves ({Path(metrics_path).parent.name or Path(metrics_path).name})")
    return _save(fig, out)


# ---------------------------------------------------------------------- images
@torch.no_grad()
def plot_reconstructions(model, x: torch.Tensor, out, n_images: int = 8, seed: int = 0) -> Path:
    """Test images (top row) and one lossy reconstruction each: ``z ~ q(z|x)``,
    then ``x' ~ p(x|z)`` (bottom row)."""
    _need_latent(model, "a reconstruction")
    x = _images(model, x, n_images)
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, 1, generator=g)[0]
    fig = Figure(figsize=(1.1 * x.shape[0] + 1.5, 3.0), layout="constrained")
    ax = fig.subplots()
    _grid(ax, torch.stack([_show(model, x), _show(model, rec)]), ["original x", "x' ~ p(x|z)"])
    ax.set_xlabel("test image")
    ax.set_title("Reconstructions (z ~ q(z|x) once per image)")
    return _save(fig, out)


@torch.no_grad()
def plot_lossy_decompression(model, x: torch.Tensor, out, n: int = 5, n_images: int = 6, seed: int = 0) -> Path:
    """The paper's lossy-compression demonstration: for each test image, one
    ``z ~ q(z|x)`` and ``n`` decodings ``x' ~ p(x|z)``. What stays the same
    across a row is what ``z`` encodes (global shape); what varies is left to
    the autoregressive decoder (local texture)."""
    _need_latent(model, "lossy decompression")
    x = _images(model, x, n_images)
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, n, generator=g)  # (n, B, C, H, W)
    grid = _show(model, torch.cat([x[None], rec])).transpose(0, 1)  # (B, 1 + n, H, W[, 3])
    fig = Figure(figsize=(1.05 * (n + 1) + 1.5, 1.05 * x.shape[0] + 1.0), layout="constrained")
    ax = fig.subplots()
    _grid(ax, grid, [str(i + 1) for i in range(x.shape[0])], ["original"] + [f"x'{i + 1}" for i in range(n)])
    ax.set(xlabel="decodings x' ~ p(x|z), same z", ylabel="test image")
    ax.set_title("Lossy decompression: one z per row")
    return _save(fig, out)


def _chroma(images: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W) -> (..., 3)``: an image's mean colour minus its luma (zero for gray images)."""
    from .pixelcnn import grayscale

    colour = images.float().mean((-2, -1))
    return colour - grayscale(colour, dim=-1)


def _chroma_gaps(decoded: torch.Tensor, x: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``(B,)``: the mean ``|chroma(decoded) - chroma(x)|`` over draws and
    channels (``decoded`` is ``(draws, B, 3, H, W)``), and the same against the
    image ``shift`` places along in ``x`` (``x.roll(shift, 0)``)."""
    ours, target = _chroma(decoded), _chroma(x)
    return (ours - target).abs().mean((0, 2)), (ours - target.roll(shift, 0)).abs().mean((0, 2))


@torch.no_grad()
def colour_retention(model, x: torch.Tensor, draws: int = 2, seed: int = 0) -> dict[str, float]:
    """How much of an image's colour its code keeps, in 0..255 units per channel.

    For each image, ``draws`` decodings ``x' ~ p(x|z)`` from one ``z ~ q(z|x)``
    are compared with the image by their chroma (:func:`_chroma`): ``own`` is
    the mean absolute difference from their own image, ``other`` from the
    image before it in ``x`` (what a code without colour would reach), and
    ``prior`` that of samples with ``z ~ p(z)`` from the images. A code that
    holds the colour has ``own`` well below the other two.
    """
    _need_latent(model, "a colour-retention measurement")
    x = _images(model, x)
    if x.shape[1] != 3 or x.shape[0] < 2:
        raise VLAEError(f"colour retention needs at least 2 RGB images, got shape {tuple(x.shape)}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    sampler = FastSampler(model)
    rec = sampler.reconstruct(x, draws, generator=g)  # (draws, B, 3, H, W)
    prior = sampler.sample(x.shape[0], generator=g)
    own, other = _chroma_gaps(rec, x, shift=1)
    from_prior, _ = _chroma_gaps(prior[None], x, shift=1)
    return {"images": x.shape[0], "draws": draws, "own": own.mean().item(), "other": other.mean().item(),
            "prior": from_prior.mean().item()}


@torch.no_grad()
def plot_grayscale_experiment(model, x: torch.Tensor, out, n: int = 5, n_images: int = 6, seed: int = 0) -> Path:
    """The paper's grayscale experiment (its figure 3(d)): a decoder whose context
    is only the luma ``0.299 R + 0.587 G + 0.114 B`` of the pixels around it must
    get the colour from ``z``. Each row: a test image, the gray context the
    decoder reads, and ``n`` decodings ``x' ~ p(x|z)`` from ONE ``z ~ q(z|x)``.
    If ``z`` holds the colour, the decodings keep the original's colours while
    local texture varies. The numbers, in 0..255 units: ``chroma`` is the mean
    absolute difference between the chroma (mean colour minus its luma) of the
    decodings and of their own image; the title sets its average against the
    same difference measured against another image of the figure (the next
    row's), the level a ``z`` without colour would reach; ``texture`` is the
    mean per-pixel standard deviation across the decodings."""
    from .pixelcnn import grayscale

    _need_latent(model, "the grayscale experiment")
    if not getattr(model.cfg, "gray_context", False):
        raise VLAEError("the grayscale experiment needs a decoder with a gray context (model.gray_context=true, "
                        "e.g. the cifar-gray preset)")
    x = _images(model, x)
    x = x[torch.linspace(0, len(x) - 1, min(n_images, len(x))).round().long()]  # spread: unlike colours per row
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, n, generator=g)  # (n, B, 3, H, W), one z per image
    own, other = _chroma_gaps(rec, x, shift=-1)  # other: against the next row's image
    texture = rec.std(0).mean((1, 2, 3)) if n > 1 else torch.zeros(x.shape[0])
    gray = grayscale(x).expand_as(x)
    grid = _show(model, torch.cat([x[None], gray[None], rec])).transpose(0, 1)  # (B, 2 + n, H, W, 3)
    fig = Figure(figsize=(1.05 * (n + 2) + 2.5, 1.05 * x.shape[0] + 1.3), layout="constrained")
    ax = fig.subplots()
    _grid(ax, grid, [f"chroma {c:.1f}, texture {t:.0f}" for c, t in zip(own.tolist(), texture.tolist())],
          ["original", "gray context"] + [f"x'{i + 1}" for i in range(n)])
    ax.set(xlabel="decodings x' ~ p(x | z, Grayscale(context)), the same z across a row", ylabel="test image")
    ax.set_title("Grayscale experiment: the colour comes from z, the texture from the decoder\n"
                 f"chroma difference of the decodings: {own.mean():.1f} from their own image, "
                 f"{other.mean():.1f} from the next row's (0..255)")
    return _save(fig, out)


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
    x = _show(model, x)
    pad = torch.full((rows * cols - n, *x.shape[1:]), 0.5, dtype=x.dtype, device=x.device)
    grid = torch.cat([x, pad]).view(rows, cols, *x.shape[1:])
    fig = Figure(figsize=(0.9 * cols + 1.0, 0.9 * rows + 1.0), layout="constrained")
    ax = fig.subplots()
    _grid(ax, grid, [""] * rows, [""] * cols)
    prior = f"{model.cfg.prior.upper() if model.cfg.prior == 'af' else 'Gaussian'} prior" if model.latent_dim else ""
    ax.set_title(f"Samples from the model ({prior + ', ' if prior else 'unconditional, '}{model.cfg.decoder} decoder)")
    return _save(fig, out)


@torch.no_grad()
def plot_kl_heatmap(model, x: torch.Tensor, out, n_images: int = 32, draws: int = 8) -> Path:
    """Per-dimension KL ``log q(z_d|x) - log p(z_d)`` (nats), averaged over
    ``draws`` posterior samples: the mean over images per dimension (bars) and
    every image x dimension (heat map), dimensions sorted by mean KL. Dimensions
    near zero are unused by the model."""
    _need_latent(model, "a KL heat map")
    x = _images(model, x, n_images)
    kl = _kl_per_dim(model, x, draws)
    if model.cfg.latent_shape:
        return _kl_maps(model, kl, out, draws)
    order = torch.argsort(kl.mean(0), descending=True)
    kl = kl[:, order].cpu().numpy()
    mean = kl.mean(0)
    d = kl.shape[1]
    fig = Figure(figsize=(max(6.0, 0.18 * d + 2.5), 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.2])
    top.bar(np.arange(d), mean, color="tab:blue", width=0.8)
    top.set(ylabel="mean KL (nats)", title=f"Per-dimension KL, sorted; total {mean.sum():.2f} nats per image "
                                           f"(mean over {x.shape[0]} images, {draws} draws each)")
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
    return _save(fig, out)


def _kl_maps(model, kl: torch.Tensor, out, draws: int) -> Path:
    """The KL heat map of a spatial code ``(C, h, w)``: the mean KL of every
    latent unit as ``C`` maps of ``h x w`` on one colour scale (top), and each
    image's KL per feature map (bottom)."""
    from .spatial_prior import latent_map

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
    fig.suptitle(f"KL over the {'x'.join(map(str, shape))} code: {mean.sum():.2f} nats per image "
                 f"(mean over {kl.shape[0]} images, {draws} draws each)", fontsize=10)
    return _save(fig, out)


@torch.no_grad()
def plot_latent_traversals(model, x: torch.Tensor, out, dims: int = 6, steps: int = 9, span: float = 3.0,
                           seed: int = 0) -> Path:
    """Starting from the posterior point of the first image, set each of the
    ``dims`` highest-KL dimensions (KL averaged over the images in ``x``) to
    values across ``[-span, span]``. Every picture is decoded with the same
    uniforms, so differences are caused by ``z`` alone."""
    _need_latent(model, "a latent traversal")
    x = _images(model, x, 32)
    kl = _kl_per_dim(model, x).mean(0)
    dims = min(dims, model.latent_dim)
    top = torch.argsort(kl, descending=True)[:dims]
    z0 = _posterior_point(model, x[:1])[0]
    values = torch.linspace(-span, span, steps, dtype=z0.dtype, device=z0.device)
    z = z0.repeat(dims * steps, 1).view(dims, steps, -1)
    for r, d in enumerate(top.tolist()):
        z[r, :, d] = values
    imgs = FastSampler(model).decode(z.view(dims * steps, -1), _fixed_uniforms(model, dims * steps, seed))
    fig = Figure(figsize=(1.0 * steps + 2.0, 1.0 * dims + 1.2), layout="constrained")
    ax = fig.subplots()
    imgs = _show(model, imgs)
    _grid(ax, imgs.view(dims, steps, *imgs.shape[1:]),
          [f"z[{d}] ({kl[d]:.1f} nats)" for d in top.tolist()], [f"{v:+.1f}" for v in values.tolist()])
    ax.set(xlabel="value of the latent dimension", ylabel="latent dimension (mean KL)")
    ax.set_title("Latent traversals from the posterior point of one test image")
    return _save(fig, out)


@torch.no_grad()
def plot_interpolations(model, x: torch.Tensor, out, pairs: int = 4, steps: int = 8, seed: int = 0) -> Path:
    """Linear interpolation between the posterior points of image pairs
    ``(x[0], x[1]), (x[2], x[3]), ...``; originals at both ends, every decoding
    with the same uniforms."""
    _need_latent(model, "an interpolation")
    x = _images(model, x)
    pairs = min(pairs, x.shape[0] // 2)
    if pairs < 1:
        raise VLAEError("interpolation needs at least two images")
    z = _posterior_point(model, x[:2 * pairs]).view(pairs, 2, -1)
    t = torch.linspace(0, 1, steps, dtype=z.dtype, device=z.device)[None, :, None]
    zt = (1 - t) * z[:, :1] + t * z[:, 1:]  # (pairs, steps, D)
    imgs = FastSampler(model).decode(zt.reshape(pairs * steps, -1), _fixed_uniforms(model, pairs * steps, seed))
    imgs = _show(model, imgs)
    imgs = imgs.view(pairs, steps, *imgs.shape[1:])
    grid = torch.cat([_show(model, x[0:2 * pairs:2])[:, None], imgs, _show(model, x[1:2 * pairs:2])[:, None]], 1)
    fig = Figure(figsize=(1.0 * (steps + 2) + 1.5, 1.05 * pairs + 1.2), layout="constrained")
    ax = fig.subplots()
    _grid(ax, grid, [str(i + 1) for i in range(pairs)],
          ["start"] + [f"{v:.2f}" for v in t.flatten().tolist()] + ["end"])
    ax.set(xlabel="interpolation weight t: z = (1 - t) z_start + t z_end", ylabel="image pair")
    ax.set_title("Interpolations between posterior points")
    return _save(fig, out)


# ---------------------------------------------------------------------- receptive field
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
    if hasattr(dec, "vertical_layers") and (dec.vertical_layers != dec.layers
                                            or dec.first_rows != dec.kernel_size // 2):  # a paper-style AxB decoder
        return f"{name}, field {field}: {dec.vertical_layers} vertical + {dec.layers} horizontal layers"
    if hasattr(dec, "layers"):
        suffix = f", field {field}" if field else ""
        return f"{name}, {dec.layers} layers, {dec.kernel_size}x{dec.kernel_size} kernels{suffix}"
    return name


def plot_receptive_field(model_or_decoder, out, pixel: tuple[int, int] | None = None,
                         shape: tuple[int, int] | None = None) -> Path:
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
    ax.set_title(f"Receptive field of logit {pixel}: {_describe(dec)}\n"
                 f"Jacobian support {int(support.sum())} pixels {match} the reported {int(reported.sum())}",
                 fontsize=10)
    ax.legend(handles=[Patch(facecolor="#2b6cb0", label="d logit / d x != 0 (autograd)"),
                       Patch(facecolor="white", edgecolor="tab:orange", label="reported receptive field"),
                       Patch(facecolor="#dcebf7", label="conditioning map read"),
                       ax.lines[0]], labels=["d logit / d x != 0 (autograd)", "reported receptive field",
                                             "conditioning map read", "output pixel"],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out)


# ---------------------------------------------------------------------- a whole run
def _test_images(cfg, count: int = 64, seed: int = 0, notice: Callable[[str], object] | None = _warn) -> torch.Tensor:
    from .data import fixed_subset, load_or_fallback

    images = load_or_fallback(cfg.train.dataset, "test", cfg.train.data_dir, notice=notice or (lambda _m: None))
    return fixed_subset(images.observed(torch.Generator().manual_seed(seed)), count).float()


def plot_run(run_dir, images: torch.Tensor | None = None, out_dir=None,
             notice: Callable[[str], object] | None = _warn) -> list[Path]:
    """Every figure of a training run, written to ``run_dir/figures/`` (or
    ``out_dir``): training curves (if ``metrics.jsonl`` exists), samples and the
    receptive field, and for models with a latent code reconstructions, lossy
    decompression, the grayscale experiment (gray-context decoders), the KL heat
    map, latent traversals and interpolations (on
    ``images``, default 64 fixed random test images). ``notice`` receives
    warnings (unreadable metrics lines, the data fallback).

    Raises:
        VLAEError: no run folder; a checkpoint that does not load or holds
            non-finite weights; a figures folder that cannot be written.
    """
    from .checkpoint import load_model  # imported lazily: only plot_run needs checkpoints

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise VLAEError(f"run directory {run_dir} does not exist")
    model, cfg = load_model(run_dir, weights="ema", device="cpu")
    model.eval()
    figures = Path(out_dir) if out_dir is not None else run_dir / "figures"
    prepare_output(figures / "samples.png", "figure")  # fail before the work, not after
    paths: list[Path] = []
    if (run_dir / "metrics.jsonl").is_file():
        paths.append(plot_training_curves(run_dir / "metrics.jsonl", figures / "training_curves.png", notice))
    paths.append(plot_samples(model, 64, figures / "samples.png"))
    paths.append(plot_receptive_field(model, figures / "receptive_field.png"))
    if model.latent_dim > 0:
        x = images if images is not None else _test_images(cfg, notice=notice)
        paths.append(plot_reconstructions(model, x, figures / "reconstructions.png"))
        paths.append(plot_lossy_decompression(model, x, figures / "lossy_decompression.png"))
        if cfg.model.gray_context:
            paths.append(plot_grayscale_experiment(model, x, figures / "grayscale_experiment.png"))
        paths.append(plot_kl_heatmap(model, x, figures / "kl_heatmap.png"))
        paths.append(plot_latent_traversals(model, x, figures / "latent_traversals.png"))
        paths.append(plot_interpolations(model, x, figures / "interpolations.png"))
    return paths
