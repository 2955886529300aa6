"""Configuration: presets validate, the paper preset has the paper's numbers,
overrides parse and reject, invalid values name the option, dict round-trips."""

from __future__ import annotations

import json

import pytest

from vlae.config import PRESETS, Config, ModelConfig, apply_overrides, config_from_dict, get_preset
from vlae.errors import VLAEError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate(name):
    cfg = get_preset(name)
    assert cfg.validate() is cfg
    assert cfg.preset == name
    assert get_preset(name) is not cfg and get_preset(name) == cfg  # a fresh copy each time


def test_unknown_preset():
    with pytest.raises(VLAEError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_mnist_paper_matches_the_paper():
    """Chen et al. (2017), appendix: the MNIST model and its training."""
    cfg = get_preset("mnist-paper")
    m, t, e = cfg.model, cfg.train, cfg.eval
    assert m.image_shape == (1, 28, 28)
    assert m.latent_dim == 64
    assert (m.prior, m.flow_steps, m.made_hidden, m.made_activation, m.mean_only) == (
        "af", 4, (640, 640, 640), "relu", True)
    assert m.posterior == "gaussian"
    assert (m.decoder, m.decoder_layers, m.decoder_kernel, m.decoder_filters) == ("masked", 6, 3, 12)
    assert m.decoder_blocks_1x1 == 4 and m.tie_weights and m.weight_norm
    assert m.cond_channels == 4  # the 28x28x4 conditioning map
    assert m.free_bits == 0.01
    assert (t.optimizer, t.lr, t.polyak, t.batch_size, t.epochs) == ("adamax", 2e-3, 0.998, 128, 300)  # the launcher's
    assert e.k == 4096
    # The defaults of ModelConfig are the paper's model.
    assert ModelConfig(free_bits=0.01) == m


@pytest.mark.parametrize("override,path,value", [
    ("model.latent_dim=16", ("model", "latent_dim"), 16),
    ("train.lr=1e-3", ("train", "lr"), 1e-3),
    ("train.lr=1", ("train", "lr"), 1.0),
    ("model.tie_weights=false", ("model", "tie_weights"), False),
    ("model.weight_norm=On", ("model", "weight_norm"), True),
    ("train.compile=1", ("train", "compile"), True),
    ("model.made_hidden=32,32", ("model", "made_hidden"), (32, 32)),
    ("model.made_hidden=64x64x64", ("model", "made_hidden"), (64, 64, 64)),
    ("model.image_shape=1x12x16", ("model", "image_shape"), (1, 12, 16)),
    ("model.prior=gaussian", ("model", "prior"), "gaussian"),
    ("train.data_dir=none", ("train", "data_dir"), None),
    ("train.data_dir=/tmp/x", ("train", "data_dir"), "/tmp/x"),
    (" eval.k = 64 ", ("eval", "k"), 64),
])
def test_apply_overrides_parses(override, path, value):
    cfg = apply_overrides(get_preset("tiny"), [override])
    got = getattr(getattr(cfg, path[0]), path[1])
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("override,match", [
    ("model.nope=1", "no option 'model.nope'"),
    ("nope.latent_dim=1", "no option"),
    ("latent_dim=1", "no option"),
    ("model.latent_dim", "expected section.field=value"),
    ("model.latent_dim=abc", "model.latent_dim"),
    ("model.latent_dim=1.5", "model.latent_dim"),
    ("train.lr=fast", "train.lr"),
    ("model.tie_weights=maybe", "model.tie_weights"),
    ("model.made_hidden=a,b", "model.made_hidden"),
])
def test_apply_overrides_rejects(override, match):
    with pytest.raises(VLAEError, match=match) as info:
        apply_overrides(get_preset("tiny"), [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field,value,option", [
    ("latent_dim", -1, "model.latent_dim"),
    ("decoder_kernel", 4, "model.decoder_kernel"),
    ("decoder_kernel", 0, "model.decoder_kernel"),
    ("prior", "vamp", "model.prior"),
    ("posterior", "flow", "model.posterior"),
    ("decoder", "transformer", "model.decoder"),
    ("made_hidden", (16, 6), "model.made_hidden"),  # tiny: latent_dim 8, so widths must be >= 7
    ("free_bits_groups", 3, "model.free_bits_groups"),
    ("free_bits_groups", 0, "model.free_bits_groups"),
    ("free_bits", -0.1, "model.free_bits"),
    ("decoder_layers", 0, "model.decoder_layers"),
    ("image_shape", (1, 10, 12), "model.image_shape"),
    ("image_shape", (3, 12, 12), "model.image_shape"),
    ("made_activation", "swish", "model.made_activation"),
])
def test_invalid_model_values_name_the_option(field, value, option):
    cfg = get_preset("tiny")
    setattr(cfg.model, field, value)
    with pytest.raises(VLAEError, match=f"invalid option {option}"):
        cfg.validate()


def test_iaf_widths_checked_only_with_iaf_posterior():
    cfg = get_preset("tiny")
    cfg.model.iaf_hidden = (4,)
    cfg.validate()  # gaussian posterior: the IAF widths are unused
    cfg.model.posterior = "iaf"
    with pytest.raises(VLAEError, match="model.made_hidden"):
        cfg.validate()


def test_unconditional_model_config():
    cfg = get_preset("tiny")
    cfg.model.latent_dim = 0
    cfg.model.free_bits_groups = 3  # irrelevant without a latent
    cfg.validate()
    cfg.model.decoder = "factorized"
    with pytest.raises(VLAEError, match="model.decoder"):
        cfg.validate()


@pytest.mark.parametrize("section,field,value", [
    ("train", "optimizer", "sgd"), ("train", "lr", 0.0), ("train", "polyak", 1.0), ("train", "batch_size", 0),
    ("train", "precision", "fp16"), ("eval", "k", 0), ("eval", "batch_size", 0),
])
def test_invalid_train_and_eval_values(section, field, value):
    cfg = get_preset("tiny")
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(VLAEError, match=f"invalid option {section}.{field}"):
        cfg.validate()


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_from_dict_round_trips(name):
    cfg = get_preset(name)
    assert config_from_dict(cfg.to_dict()) == cfg
    # Through JSON tuples become lists; they must come back as tuples.
    back = config_from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert isinstance(back.model.made_hidden, tuple) and isinstance(back.model.image_shape, tuple)


def test_config_from_dict_rejects_unknown_fields():
    data = get_preset("tiny").to_dict()
    data["model"]["attention"] = True
    with pytest.raises(VLAEError, match=r"unknown model options \['attention'\]"):
        config_from_dict(data)
    data = get_preset("tiny").to_dict()
    data["train"]["warp"] = 9
    with pytest.raises(VLAEError, match="unknown train options"):
        config_from_dict(data)


def test_partial_dict_uses_defaults():
    cfg = config_from_dict({"model": {"latent_dim": 16}})
    assert cfg.model.latent_dim == 16 and cfg.train == Config().train
