"""Every figure of a training run at once (:func:`plot_run`), as ``vlae train``
and ``vlae plot`` draw them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ...errors import VLAEError
from ...outputs import prepare_output
from . import _canvas as canvas
from .colour import plot_grayscale_experiment
from .curves import plot_training_curves
from .images import (
    plot_interpolations,
    plot_kl_heatmap,
    plot_latent_traversals,
    plot_lossy_decompression,
    plot_reconstructions,
    plot_samples,
)
from .receptive_field import plot_receptive_field

__all__ = ["plot_run"]


def _test_images(
    cfg, count: int = 64, seed: int = 0, notice: Callable[[str], object] | None = canvas.warn
) -> torch.Tensor:
    """``count`` fixed test images of the run's dataset, as its model observes them, as floats."""
    from ...data import fixed_subset, load_or_fallback

    images = load_or_fallback(cfg.train.dataset, "test", cfg.train.data_dir, notice=notice or (lambda _m: None))
    return fixed_subset(images.observed(torch.Generator().manual_seed(seed)), count).float()


def plot_run(
    run_dir, images: torch.Tensor | None = None, out_dir=None, notice: Callable[[str], object] | None = canvas.warn
) -> list[Path]:
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
    from ...checkpoint import load_model  # imported lazily: only plot_run needs checkpoints

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
