"""Old home of the figures, kept for one release: they are now
:mod:`vlae.experiments.plots` (one module per family of figures)."""

from .experiments.plots import (
    colour_retention,
    jacobian_support,
    plot_grayscale_experiment,
    plot_interpolations,
    plot_kl_heatmap,
    plot_latent_traversals,
    plot_lossy_decompression,
    plot_receptive_field,
    plot_reconstructions,
    plot_run,
    plot_samples,
    plot_training_curves,
    read_metrics,
    receptive_field_mask,
)
from .experiments.plots.colour import _chroma  # noqa: F401 - tests/test_plots.py
from .experiments.plots.receptive_field import _default_pixel  # noqa: F401 - tests/test_plots.py
from .experiments.plots.run import _test_images  # noqa: F401 - tools/colour_retention.py imported it here

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
