"""The VLAE on 8-bit images: the observation model used everywhere, nothing
assuming 1x28x28, one-line errors on bad input, and the bounds' identities
(IW with k = 1 is the ELBO; IW is exact when z is ignored) in colour too.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlae.config import ModelConfig, apply_overrides, get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.observation import DiscretizedLogisticMixture

torch.set_num_threads(1)

SHAPE = (3, 8, 12)  # non-square on purpose


def colour_cfg(**overrides) -> ModelConfig:
    base = dict(image_shape=SHAPE, observation="logistic_mixture", mixture_components=4, latent_dim=8,
                made_hidden=(16,), iaf_hidden=(16,), iaf_context=8, encoder_channels=8, encoder_blocks=1,
                upsampler_channels=8, decoder="gated", decoder_field="5x3", decoder_filters=8, flow_steps=2)
    base.update(overrides)
    return ModelConfig(**base)


def make(seed: int = 0, **overrides) -> VLAE:
    torch.manual_seed(seed)
    model = VLAE(colour_cfg(**overrides)).double()
    model.initialize(images(16, seed=100 + seed, shape=model.cfg.image_shape))
    return model


def images(n: int, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).double()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


VARIANTS = [dict(), dict(posterior="iaf", prior="gaussian"), dict(decoder="masked", decoder_field="", decoder_layers=2),
            dict(decoder="factorized", decoder_field=""), dict(gray_context=True, decoder_field="7x4"),
            dict(image_shape=(1, 8, 12))]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_iw_with_one_sample_is_the_elbo(options):
    model = make(**options)
    x = images(4, seed=1, shape=model.cfg.image_shape)
    with torch.no_grad():
        terms = model.terms(x, generator=gen(3))
        assert terms.recon.shape == (4,) and torch.isfinite(terms.nelbo).all()
        torch.testing.assert_close(model.iw_bound(x, 1, generator=gen(3)), -terms.nelbo, rtol=0, atol=1e-10)
    # The reconstruction term is the observation model's log-likelihood of the teacher-forced outputs.
    assert isinstance(model.observation, DiscretizedLogisticMixture)
    outputs = model.decoder(torch.zeros(1, *model.cfg.image_shape, dtype=torch.float64),
                            model.condition(torch.zeros(1, 8, dtype=torch.float64)))
    assert model.observation.param_channels == outputs.shape[1]


def test_iw_is_exact_without_a_latent():
    model = make(latent_dim=0)
    x = images(3, seed=2)
    with torch.no_grad():
        log_px = model.observation.log_prob(model.params(x, None), x)
        for k in (1, 7):
            torch.testing.assert_close(model.iw_bound(x, k), log_px.double(), rtol=0, atol=1e-10)


def test_bits_per_dim_uses_the_data_dimensions():
    model = make()
    assert model.dims == 3 * 8 * 12 == model.cfg.data_dims
    x = images(2, seed=4)
    with torch.no_grad():
        nll = model.terms(x, generator=gen(0)).nelbo
    bpd = nll / (model.dims * math.log(2))
    assert 4 < float(bpd.mean()) < 20  # an untrained model: near the 8 bits/dim of a uniform, not 1x28x28-scaled


def test_sample_decode_reconstruct_shapes_and_values():
    model = make(seed=5)
    x = model.sample(2, generator=gen(1))
    assert x.shape == (2, *SHAPE) and torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255
    model.check_images(x)  # samples are valid observations
    assert model.uniforms_shape == (4, 8, 12)
    assert torch.equal(model.sample(2, generator=gen(1)), x)  # a function of the generator
    rec = model.reconstruct(images(2, seed=6), n=3, generator=gen(2))
    assert rec.shape == (3, 2, *SHAPE)


def test_a_few_steps_lower_the_loss():
    model = make(seed=6).float()
    x = images(16, seed=7).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(25):
        loss, _ = model.loss(x, generator=gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first - 0.05 * abs(first), (first, loss.item())


def test_bf16_autocast_terms_are_fp32():
    model = make(seed=8).float()
    x = images(4, seed=8).float()
    with torch.no_grad():
        ref = model.terms(x, generator=gen(0)).recon
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon = model.terms(x, generator=gen(0)).recon
    assert recon.dtype == torch.float32
    torch.testing.assert_close(recon, ref, rtol=0.05, atol=0.0)


@pytest.mark.parametrize("bad,match", [
    (lambda: images(2)[:, :1], "shape"),
    (lambda: images(2, shape=(3, 8, 8)), "shape"),
    (lambda: images(2).clamp(max=254) + 0.5, "non-integer"),
    (lambda: images(2) + 256, "0..255"),
    (lambda: -images(2) - 1, "0..255"),
])
def test_bad_images_are_one_line_errors(bad, match):
    model = make()
    for fn in (model.check_images, lambda x: model.iw_bound(x, 2), lambda x: model.reconstruct(x)):
        with pytest.raises(VLAEError, match=match) as err:
            fn(bad())
        assert "\n" not in str(err.value)


def test_binary_model_rejects_8bit_images():
    cfg = get_preset("tiny").model
    model = VLAE(cfg)
    with pytest.raises(VLAEError, match="binary"):
        model.check_images(torch.randint(0, 256, (2, 1, 28, 28)).float())


def test_uint8_images_are_accepted():
    model = make()
    x = images(2, seed=9)
    out = model.check_images(x.to(torch.uint8))
    assert out.dtype == torch.float64 and torch.equal(out, x)


@pytest.mark.parametrize("overrides,match", [
    (["model.image_shape=3x8x8"], "model.image_shape"),  # RGB needs the mixture
    (["model.observation=logistic_mixture", "model.image_shape=2x8x8"], "1 or 3"),
    (["model.observation=logistic_mixture", "model.mixture_components=0"], "mixture_components"),
    (["model.decoder_field=7x4"], "decoder=gated"),  # masked decoder
    (["model.decoder=gated", "model.decoder_field=6x2"], "cannot be built"),
    (["model.decoder=gated", "model.decoder_field=big"], "AxB"),
    (["model.gray_context=true"], "RGB"),
    (["model.observation=logistic_mixture", "model.image_shape=3x8x8", "model.gray_context=true",
      "model.decoder=factorized"], "factorized"),
])
def test_config_errors(overrides, match):
    cfg = apply_overrides(get_preset("tiny"), overrides)
    with pytest.raises(VLAEError, match=match) as err:
        cfg.validate()
    assert str(err.value).startswith("invalid option model.") and "\n" not in str(err.value)


def test_colour_config_round_trips_through_overrides():
    cfg = apply_overrides(get_preset("tiny"), ["model.observation=logistic_mixture", "model.image_shape=3x16x16",
                                               "model.decoder=gated", "model.decoder_field=7x4",
                                               "model.gray_context=true", "model.gated_blocks_1x1=2"]).validate()
    model = VLAE(cfg.model)
    assert model.decoder.receptive_field_name() == "7x4" and len(model.decoder.blocks) == 2
    assert model.decoder.gray_context and model.observation.param_channels == 100
