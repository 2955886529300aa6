"""The Variational Lossy Autoencoder in one import, for readers of the tutorial.

Everything here lives in the :mod:`vlae` package (one concept per module);
this file only gathers the names. A complete run in ten lines (it trains the
``tiny`` preset for a few steps on the embedded MNIST subset, so it takes
seconds; use ``"mnist-small"`` and more steps for a real model):

    >>> import tempfile, torch
    >>> from implementation import get_preset, train, load_model, evaluate_model, load_dataset
    >>> cfg = get_preset("tiny")
    >>> cfg.train.dataset, cfg.train.max_steps = "mnist-embedded", 10
    >>> run_dir = tempfile.mkdtemp()
    >>> summary = train(cfg, run_dir, quiet=True)                  # writes checkpoints into run_dir
    >>> model, cfg = load_model(run_dir)                           # Polyak-averaged weights
    >>> x = load_dataset("mnist-embedded", "test").images[:16]     # uint8 0/1, (16, 1, 28, 28)
    >>> result = evaluate_model(model, x, k=8, batch_size=16)      # IW bound with 8 samples per image
    >>> result["estimator"], result["nll"] > 0
    ('IW bound, k=8', True)

The pieces, in the paper's vocabulary:

- :class:`MaskedConv2d`, :class:`MaskedPixelCNN`, :class:`GatedPixelCNN`: the
  autoregressive decoder p(x|z) whose *receptive field* is kept small, so it
  models local texture and leaves global structure to z;
- :class:`MADE`, :class:`AFPrior`: the *AF prior* p(z), an autoregressive flow;
- :class:`Encoder`, :class:`IAFPosterior`: q(z|x), diagonal Gaussian or IAF;
- :class:`VLAE`: the model, its ELBO with *free bits*, and the *IW bound*;
- :func:`train`, :func:`evaluate_model`, :func:`load_model`: the tools.
"""

from vlae import (PRESETS, VLAE, AFPrior, AffineAutoregressive, Config, Encoder, EvalConfig, FactorizedDecoder,
                  GatedPixelCNN, GaussianPrior, IAFPosterior, MADE, MaskedConv2d, MaskedPixelCNN, ModelConfig,
                  Terms, TrainConfig, VLAEError, apply_overrides, get_preset, make_mask, nats_to_bits_per_dim)
from vlae.checkpoint import load_checkpoint, load_model
from vlae.data import load_dataset, load_or_fallback
from vlae.evaluate import evaluate_checkpoint, evaluate_model
from vlae.sampling import FastSampler, fast_sample
from vlae.train import train

__all__ = [
    "VLAE", "Terms", "MaskedConv2d", "make_mask", "MaskedPixelCNN", "GatedPixelCNN", "FactorizedDecoder", "MADE",
    "AffineAutoregressive", "AFPrior", "GaussianPrior", "IAFPosterior", "Encoder",
    "Config", "ModelConfig", "TrainConfig", "EvalConfig", "PRESETS", "get_preset", "apply_overrides",
    "train", "evaluate_model", "evaluate_checkpoint", "load_model", "load_checkpoint", "load_dataset",
    "load_or_fallback", "nats_to_bits_per_dim", "VLAEError", "FastSampler", "fast_sample",
]
