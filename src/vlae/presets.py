"""Named presets: the paper's configurations and CPU-sized ones, each a fresh
:class:`~vlae.config.Config` built by a function of no arguments.

The schema (fields, defaults, validation, overrides) lives in
:mod:`vlae.config`; this table only chooses values. A preset's comment says
where its numbers come from (the paper, the authors' launcher) or what it is
sized for.

Example:
    >>> cfg = get_preset("mnist-small")
    >>> cfg.model.latent_dim, cfg.train.batch_size
    (32, 64)
"""

from __future__ import annotations

from typing import Callable

from .config import Config, EvalConfig, ModelConfig, TrainConfig
from .errors import VLAEError

__all__ = ["PRESETS", "get_preset"]


def _paper() -> Config:
    # Chen et al. (2017), appendix: MNIST experiments; batch 128, Adamax 2e-3, Polyak 0.998 and 300 epochs
    # as in the authors' launcher for the final MNIST runs (vlae_final.py).
    return Config(
        model=ModelConfig(free_bits=0.01, encoder_channels=64, encoder_blocks=2, upsampler_channels=64),
        train=TrainConfig(batch_size=128, lr=2e-3, optimizer="adamax", polyak=0.998, epochs=300),
        eval=EvalConfig(k=4096),
        preset="mnist-paper",
    )


def _small() -> Config:
    # CPU-sized: narrower networks and a smaller AF prior; same decoder shape,
    # so its receptive field (6 rows up) and hence the collapse behaviour match.
    return Config(
        model=ModelConfig(
            latent_dim=32,
            encoder_channels=32,
            encoder_blocks=1,
            upsampler_channels=32,
            flow_steps=2,
            made_hidden=(128, 128),
            decoder_filters=16,
            decoder_blocks_1x1=1,
            tie_weights=False,
            free_bits=0.01,
        ),
        train=TrainConfig(batch_size=64, lr=2e-3, epochs=20, polyak=0.998),
        eval=EvalConfig(k=1024),
        preset="mnist-small",
    )


def _gated() -> Config:
    cfg = _small()
    cfg.model.decoder, cfg.model.decoder_filters, cfg.model.cond_every_layer = "gated", 24, True
    cfg.model.decoder_layers = 4
    cfg.preset = "mnist-gated"
    return cfg


def _tiny() -> Config:
    # For tests and smoke runs: seconds, not minutes.
    return Config(
        model=ModelConfig(
            latent_dim=8,
            encoder_channels=8,
            encoder_blocks=1,
            upsampler_channels=8,
            flow_steps=2,
            made_hidden=(16,),
            decoder_layers=2,
            decoder_filters=8,
            decoder_blocks_1x1=1,
            tie_weights=False,
            iaf_hidden=(16,),
            iaf_context=8,
        ),
        train=TrainConfig(batch_size=32, epochs=1, polyak=0.9, eval_subset=100),
        eval=EvalConfig(k=16, batch_size=50),
        preset="tiny",
    )


def _cifar_paper() -> Config:
    # Chen et al. (2017), appendix B: the ResNet VLAE on CIFAR-10 with the 7x4 field
    # (the DenseNet variant, 2.95 bits/dim, is cifar-paper-dense). The decoder is a
    # conditional gated PixelCNN, four gated 1x1 blocks of 64 maps after the stacks
    # ("shallow but very wide"), conditioned on z at every layer; the KL is held near
    # its floor by soft free bits (appendix C), the floor within the authors' range.
    return Config(
        model=ModelConfig(
            image_shape=(3, 32, 32),
            latent_dim=1024,
            latent_shape=(16, 8, 8),
            posterior="gaussian",
            prior="af",
            flow_steps=6,
            prior_hidden=128,
            prior_layers=2,
            encoder_kind="resnet",
            stage_channels=(48, 96, 96),
            stage_blocks=(2, 2, 3),
            decoder="gated",
            decoder_field="7x4",
            decoder_filters=64,
            gated_blocks_1x1=4,
            cond_every_layer=True,
            cond_channels=16,
            observation="logistic_mixture",
            mixture_components=10,
            free_bits=0.04,
            free_bits_groups=16,
        ),
        train=TrainConfig(
            dataset="cifar10",
            batch_size=32,
            lr=2e-3,
            optimizer="adamax",
            polyak=0.999,
            epochs=300,
            soft_free_bits=True,
            eval_subset=500,
        ),
        eval=EvalConfig(k=512, batch_size=10),
        preset="cifar-paper",
    )


def _cifar_paper_dense() -> Config:
    cfg = _cifar_paper()
    cfg.model.encoder_kind = "densenet"
    cfg.preset = "cifar-paper-dense"
    return cfg


def _cifar_gray() -> Config:
    # Figure 3(d): the same model, but the decoder's context is the luma of the
    # pixels around it, so z must carry the colour. The likelihood stays RGB.
    cfg = _cifar_paper()
    cfg.model.gray_context = True
    cfg.preset = "cifar-gray"
    return cfg


def _cifar_small() -> Config:
    # CPU-sized: an 8x8x8 code, narrow encoder and mirror, a 2-step AF prior and
    # the paper's smallest field (4x2), so that z carries the global structure
    # and trains in minutes on a laptop CPU.
    return Config(
        model=ModelConfig(
            image_shape=(3, 32, 32),
            latent_dim=512,
            latent_shape=(8, 8, 8),
            posterior="gaussian",
            prior="af",
            flow_steps=2,
            prior_hidden=32,
            prior_layers=1,
            encoder_kind="resnet",
            stage_channels=(16, 32, 32),
            stage_blocks=(0, 1, 1),
            decoder="gated",
            decoder_field="4x2",
            decoder_filters=32,
            gated_blocks_1x1=1,
            cond_every_layer=True,
            cond_channels=8,
            observation="logistic_mixture",
            mixture_components=5,
            free_bits=0.02,
            free_bits_groups=8,
        ),
        train=TrainConfig(
            dataset="cifar10",
            batch_size=32,
            lr=2e-3,
            optimizer="adamax",
            polyak=0.998,
            epochs=20,
            soft_free_bits=True,
            eval_subset=200,
        ),
        eval=EvalConfig(k=512, batch_size=10),
        preset="cifar-small",
    )


def _fashion_small() -> Config:
    # CPU-sized 8-bit VLAE for Fashion-MNIST's grey levels: mnist-small's flat 32-dimensional
    # code and AF prior (cheap to code: 32 latent dimensions per image), a 5-component
    # logistic mixture, and a gated decoder with the paper's smallest field (4x2), so
    # texture is local and the code carries the garment's shape.
    return Config(
        model=ModelConfig(
            latent_dim=32,
            encoder_channels=32,
            encoder_blocks=1,
            upsampler_channels=32,
            flow_steps=2,
            made_hidden=(128, 128),
            decoder="gated",
            decoder_field="4x2",
            decoder_filters=32,
            gated_blocks_1x1=1,
            cond_every_layer=True,
            observation="logistic_mixture",
            mixture_components=5,
            free_bits=0.01,
        ),
        train=TrainConfig(
            dataset="fashion-mnist-8bit",
            batch_size=32,
            lr=2e-3,
            optimizer="adamax",
            polyak=0.998,
            epochs=10,
            eval_subset=200,
        ),
        eval=EvalConfig(k=512, batch_size=10),
        preset="fashion-small",
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "mnist-paper": _paper,
    "mnist-small": _small,
    "mnist-gated": _gated,
    "tiny": _tiny,
    "cifar-paper": _cifar_paper,
    "cifar-paper-dense": _cifar_paper_dense,
    "cifar-gray": _cifar_gray,
    "cifar-small": _cifar_small,
    "fashion-small": _fashion_small,
}


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise VLAEError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
