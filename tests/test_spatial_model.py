"""Spatial latents inside the VLAE: the configuration chooses the spatial
encoder, the PixelCNN AF prior and the mirror network; the bound's terms keep
the flat ``(B, D)`` interface; bad configurations fail with one line.
"""

from __future__ import annotations

import pytest
import torch

from vlae.config import ModelConfig, apply_overrides, get_preset
from vlae.encoder import SpatialEncoder, SpatialUpsampler
from vlae.errors import VLAEError
from vlae.flows import AFPrior, GaussianPrior
from vlae.model import VLAE
from vlae.spatial_prior import SpatialAFPrior, latent_map

torch.set_num_threads(1)


def _cfg(**kw) -> ModelConfig:
    base = dict(image_shape=(1, 16, 16), latent_dim=32, latent_shape=(2, 4, 4), stage_channels=(4, 8, 8),
                stage_blocks=(1, 0, 1), prior_hidden=8, prior_layers=1, flow_steps=2, decoder="gated",
                decoder_layers=2, decoder_filters=8, cond_channels=2, cond_every_layer=True, free_bits_groups=2)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kind", ["resnet", "densenet"])
def test_vlae_with_spatial_latents(kind):
    torch.manual_seed(0)
    model = VLAE(_cfg(encoder_kind=kind))
    assert isinstance(model.encoder, SpatialEncoder) and isinstance(model.upsampler, SpatialUpsampler)
    assert isinstance(model.prior, SpatialAFPrior) and len(model.prior.steps) == 2
    x = torch.bernoulli(torch.full((6, 1, 16, 16), 0.3))
    model.initialize(x)
    loss, terms = model.loss(x)
    assert terms.kl_per_dim.shape == (6, 32) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.prior.parameters() if p.requires_grad)
    assert latent_map(terms.kl_per_dim.mean(0), (2, 4, 4)).shape == (2, 4, 4)  # the KL heat map
    assert model.iw_bound(x[:2], k=3).shape == (2,)
    z = model.prior.sample(2, generator=torch.Generator().manual_seed(1))
    assert model.condition(z).shape == (2, 2, 16, 16)


def test_gaussian_prior_and_flat_latents_keep_their_networks():
    assert isinstance(VLAE(_cfg(prior="gaussian")).prior, GaussianPrior)
    flat = get_preset("tiny").model
    assert isinstance(VLAE(flat).prior, AFPrior) and not isinstance(VLAE(flat).encoder, SpatialEncoder)


def test_overrides_parse_a_latent_shape():
    cfg = apply_overrides(get_preset("tiny"), ["model.latent_shape=2x7x7", "model.latent_dim=98"])
    assert cfg.model.latent_shape == (2, 7, 7)
    cfg.model.validate()


@pytest.mark.parametrize("changes,message", [
    (dict(latent_dim=30), "2x4x4 has 32 dimensions but latent_dim=30"),
    (dict(latent_shape=(2, 4, 4, 1)), "must be empty .* or \\(C, h, w\\)"),
    (dict(latent_shape=(2, 0, 4), latent_dim=0), "positive sizes"),
    (dict(latent_shape=(2, 8, 8), latent_dim=128), "8x8 latent map needs 32x32 images, got 16x16"),
    (dict(stage_channels=(4, 8)), "model.stage_channels"),
    (dict(stage_blocks=(1, -1, 1)), "model.stage_blocks"),
    (dict(prior_hidden=1), "model.prior_hidden: must be >= the 2 latent channels"),
    (dict(prior_kernel=4), "model.prior_kernel"),
    (dict(prior_layers=-1), "model.prior_layers"),
    (dict(dense_steps=0), "model.dense_steps"),
    (dict(encoder_kind="vgg"), "model.encoder_kind"),
    (dict(encoder_kind="densenet", latent_shape=(), latent_dim=32), "densenet encoder needs spatial latents"),
])
def test_bad_spatial_configs_are_one_line(changes, message):
    with pytest.raises(VLAEError, match=message) as err:
        _cfg(**changes).validate()
    assert "\n" not in str(err.value)


def test_spatial_prior_skips_the_made_width_check():
    _cfg(latent_shape=(4, 4, 4), latent_dim=64, made_hidden=(8,)).validate()  # MADE unused: no width rule


def test_spatial_config_round_trips_through_json():
    import json

    from vlae.config import Config, config_from_dict

    cfg = Config(model=_cfg(encoder_kind="densenet"))
    back = config_from_dict(json.loads(cfg.to_json()))
    assert back.model == cfg.model and back.model.latent_shape == (2, 4, 4)
