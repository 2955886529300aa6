"""Figures of a VLAE: training curves, lossy reconstructions, samples (binary
or colour), the grayscale experiment of a gray-context decoder, the
per-dimension KL (as ``C`` maps for a spatial code ``(C, h, w)``), latent traversals and interpolations,
and the decoder's receptive field checked against autograd.

All figures are drawn with matplotlib's object-oriented API on an Agg canvas
(no pyplot, no global backend change, so importing this package in a notebook
is harmless) and written as PNG; every function returns the path it wrote.
Sampling uses :class:`vlae.sampling.FastSampler`, whose images are identical to
the naive sampler's.

One module per family: :mod:`.curves`, :mod:`.images`, :mod:`.colour`,
:mod:`.receptive_field`, and :mod:`.run` for all of a run's figures at once.

Example:
    >>> from vlae.experiments.plots import plot_run
    >>> paths = plot_run("runs/mnist-small")        # doctest: +SKIP
    >>> plot_receptive_field(MaskedPixelCNN(layers=6), "rf.png")  # doctest: +SKIP

``plot_run`` writes ``runs/mnist-small/figures/*.png`` (a trained run's folder).
"""

from .colour import colour_retention, plot_grayscale_experiment
from .curves import plot_training_curves, read_metrics
from .images import (
    plot_interpolations,
    plot_kl_heatmap,
    plot_latent_traversals,
    plot_lossy_decompression,
    plot_reconstructions,
    plot_samples,
)
from .receptive_field import jacobian_support, plot_receptive_field, receptive_field_mask
from .run import plot_run

__all__ = [
    "plot_training_curves",
    "plot_reconstructions",
    "plot_lossy_decompression",
    "plot_samples",
    "plot_grayscale_experiment",
    "colour_retention",
    "plot_kl_heatmap",
    "plot_latent_traversals",
    "plot_interpolations",
    "plot_receptive_field",
    "plot_run",
    "jacobian_support",
    "receptive_field_mask",
    "read_metrics",
]
