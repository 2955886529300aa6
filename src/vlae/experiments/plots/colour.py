"""The grayscale experiment (the paper's figure 3(d)): how much colour ``z``
carries when the decoder sees only the luma of its context."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from ...errors import VLAEError
from ...sampling import FastSampler
from . import _canvas as canvas

__all__ = ["colour_retention", "plot_grayscale_experiment"]


def _chroma(images: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W) -> (..., 3)``: an image's mean colour minus its luma (zero for gray images)."""
    from ...pixelcnn import grayscale

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
    canvas.need_latent(model, "a colour-retention measurement")
    x = canvas.model_images(model, x)
    if x.shape[1] != 3 or x.shape[0] < 2:
        raise VLAEError(f"colour retention needs at least 2 RGB images, got shape {tuple(x.shape)}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    sampler = FastSampler(model)
    rec = sampler.reconstruct(x, draws, generator=g)  # (draws, B, 3, H, W)
    prior = sampler.sample(x.shape[0], generator=g)
    own, other = _chroma_gaps(rec, x, shift=1)
    from_prior, _ = _chroma_gaps(prior[None], x, shift=1)
    return {
        "images": x.shape[0],
        "draws": draws,
        "own": own.mean().item(),
        "other": other.mean().item(),
        "prior": from_prior.mean().item(),
    }


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
    from ...pixelcnn import grayscale

    canvas.need_latent(model, "the grayscale experiment")
    if not getattr(model.cfg, "gray_context", False):
        raise VLAEError(
            "the grayscale experiment needs a decoder with a gray context (model.gray_context=true, "
            "e.g. the cifar-gray preset)"
        )
    x = canvas.model_images(model, x)
    x = x[torch.linspace(0, len(x) - 1, min(n_images, len(x))).round().long()]  # spread: unlike colours per row
    g = torch.Generator(device=x.device).manual_seed(seed)
    rec = FastSampler(model).reconstruct(x, n, generator=g)  # (n, B, 3, H, W), one z per image
    own, other = _chroma_gaps(rec, x, shift=-1)  # other: against the next row's image
    texture = rec.std(0).mean((1, 2, 3)) if n > 1 else torch.zeros(x.shape[0])
    gray = grayscale(x).expand_as(x)
    grid = canvas.show(model, torch.cat([x[None], gray[None], rec])).transpose(0, 1)  # (B, 2 + n, H, W, 3)
    fig = Figure(figsize=(1.05 * (n + 2) + 2.5, 1.05 * x.shape[0] + 1.3), layout="constrained")
    ax = fig.subplots()
    canvas.grid(
        ax,
        grid,
        [f"chroma {c:.1f}, texture {t:.0f}" for c, t in zip(own.tolist(), texture.tolist())],
        ["original", "gray context"] + [f"x'{i + 1}" for i in range(n)],
    )
    ax.set(xlabel="decodings x' ~ p(x | z, Grayscale(context)), the same z across a row", ylabel="test image")
    ax.set_title(
        "Grayscale experiment: the colour comes from z, the texture from the decoder\n"
        f"chroma difference of the decodings: {own.mean():.1f} from their own image, "
        f"{other.mean():.1f} from the next row's (0..255)"
    )
    return canvas.save(fig, out)
