"""Writes this folder's files: two small untrained models, a few random images each, and the
images compressed by the release that ran it (format version 3). Kept unchanged from then on:
tests/test_codec.py::test_files_of_an_earlier_release_decode checks that today's code still
decodes them. Run from the repository root: python tests/data/codec_v3/make.py
"""

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlae.codec import compress
from vlae.config import ModelConfig, get_preset
from vlae.model import VLAE

HERE = Path(__file__).parent


def binary() -> ModelConfig:
    """The tiny preset on 12x12 binary images, with the AF prior (MADE flow steps)."""
    cfg = get_preset("tiny").model
    cfg.decoder, cfg.prior, cfg.image_shape = "masked", "af", (1, 12, 12)
    return cfg


def colour() -> ModelConfig:
    """8-bit 3x8x8 images: a spatial 2x2x2 code under the spatial AF prior, a gated decoder."""
    return ModelConfig(
        image_shape=(3, 8, 8), latent_dim=8, latent_shape=(2, 2, 2), stage_channels=(4, 4, 4),
        stage_blocks=(0, 1, 0), prior="af", prior_hidden=8, prior_layers=1, flow_steps=2, decoder="gated",
        decoder_layers=2, decoder_filters=8, cond_channels=2, cond_every_layer=True, free_bits_groups=2,
        observation="logistic_mixture", mixture_components=3,
    )


for name, cfg, images in (
    ("binary", binary(), lambda g: torch.bernoulli(torch.full((6, 1, 12, 12), 0.3), generator=g)),
    ("colour", colour(), lambda g: torch.randint(0, 256, (5, 3, 8, 8), generator=g)),
):
    torch.manual_seed(0)
    model = VLAE(cfg).eval()
    x = images(torch.Generator().manual_seed(1)).to(torch.uint8)
    save_file({**{k: v.contiguous() for k, v in model.state_dict().items()}, "images": x}, HERE / f"{name}.safetensors")
    (HERE / f"{name}.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True) + "\n")
    (HERE / f"{name}.vlae").write_bytes(compress(model, x, batch=4))
