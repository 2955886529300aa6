"""Configuration: dataclasses with defaults in one place, named presets, and
``key=value`` overrides for the command line.

Example:
    >>> cfg = get_preset("mnist-small")
    >>> cfg = apply_overrides(cfg, ["model.latent_dim=16", "train.lr=1e-3"])
    >>> cfg.model.latent_dim, cfg.train.lr
    (16, 0.001)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

from .errors import VLAEError

__all__ = ["ModelConfig", "TrainConfig", "EvalConfig", "Config", "PRESETS", "get_preset", "apply_overrides",
           "config_from_dict"]

PRIORS = ("gaussian", "af")
POSTERIORS = ("gaussian", "iaf")
DECODER_KINDS = ("masked", "gated", "factorized")


@dataclass
class ModelConfig:
    """Architecture. Field names follow the paper's vocabulary."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 64  # D; 0 gives an unconditional PixelCNN (no z at all)
    # encoder q(z|x)
    encoder_channels: int = 64
    encoder_blocks: int = 2
    posterior: str = "gaussian"  # "gaussian" or "iaf"
    iaf_steps: int = 2
    iaf_hidden: tuple[int, ...] = (320, 320)
    iaf_context: int = 64
    # prior p(z)
    prior: str = "af"  # "gaussian" or "af"
    flow_steps: int = 4
    made_hidden: tuple[int, ...] = (640, 640, 640)
    made_activation: str = "relu"
    mean_only: bool = True
    # decoder p(x|z)
    decoder: str = "masked"  # "masked", "gated" or "factorized"
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_filters: int = 12
    decoder_blocks_1x1: int = 4
    tie_weights: bool = True
    cond_channels: int = 4
    cond_every_layer: bool = False
    upsampler_channels: int = 64
    upsampler_blocks: int = 1
    weight_norm: bool = True
    # objective
    free_bits: float = 0.0  # nats per data dimension (0: off)
    free_bits_groups: int = 1  # the KL floor applies to this many groups of latent dimensions

    def validate(self) -> None:
        c, h, w = self.image_shape
        _check(c == 1, "model.image_shape", f"only single-channel binary images are supported, got {c} channels")
        _check(h % 4 == 0 and w % 4 == 0 and h > 0 and w > 0, "model.image_shape",
               f"height and width must be positive multiples of 4, got {h}x{w}")
        _check(self.latent_dim >= 0, "model.latent_dim", f"must be >= 0, got {self.latent_dim}")
        _check(self.prior in PRIORS, "model.prior", f"must be one of {PRIORS}, got {self.prior!r}")
        _check(self.posterior in POSTERIORS, "model.posterior", f"must be one of {POSTERIORS}, got {self.posterior!r}")
        _check(self.decoder in DECODER_KINDS, "model.decoder", f"must be one of {DECODER_KINDS}, got {self.decoder!r}")
        _check(self.decoder_layers >= 1, "model.decoder_layers", f"must be >= 1, got {self.decoder_layers}")
        _check(self.decoder_kernel >= 1 and self.decoder_kernel % 2 == 1, "model.decoder_kernel",
               f"must be a positive odd number, got {self.decoder_kernel}")
        for name in ("encoder_channels", "decoder_filters", "cond_channels", "upsampler_channels", "flow_steps",
                     "free_bits_groups"):
            _check(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_blocks", "decoder_blocks_1x1", "upsampler_blocks", "iaf_steps"):
            _check(getattr(self, name) >= 0, f"model.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.made_activation in ("relu", "elu", "tanh", "gelu"), "model.made_activation",
               f"must be relu, elu, tanh or gelu, got {self.made_activation!r}")
        _check(self.free_bits >= 0, "model.free_bits", f"must be >= 0, got {self.free_bits}")
        if self.latent_dim > 0:
            _check(self.latent_dim % self.free_bits_groups == 0, "model.free_bits_groups",
                   f"must divide latent_dim={self.latent_dim}, got {self.free_bits_groups}")
            widths = (tuple(self.made_hidden) if self.prior == "af" else ()) + (
                tuple(self.iaf_hidden) if self.posterior == "iaf" else ())
            for width in widths:
                _check(width >= self.latent_dim - 1, "model.made_hidden",
                       f"MADE widths must be >= latent_dim - 1 = {self.latent_dim - 1}, got {width}")
        else:
            _check(self.decoder != "factorized", "model.decoder",
                   "a factorized decoder needs a latent code (latent_dim > 0)")

    @property
    def data_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; ``vlae train`` turns each field into a flag."""

    dataset: str = "binarized-mnist"
    data_dir: str | None = None
    train_on_valid: bool = False  # train on train+valid, as the paper does for its final numbers
    batch_size: int = 64
    epochs: int = 100
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    time_budget: float = 0.0  # stop after this many seconds of training (0: no limit)
    optimizer: str = "adamax"  # "adamax" or "adam"
    lr: float = 2e-3
    lr_warmup_steps: int = 0
    lr_decay: str = "none"  # "none", "exponential" or "cosine"
    lr_decay_rate: float = 1.0  # per epoch, for "exponential"
    weight_decay: float = 0.0
    grad_clip: float = 100.0  # max global gradient norm (0: off)
    soft_free_bits: bool = False  # the paper's appendix C: move the KL weight to hold KL near the floor
    kl_warmup_steps: int = 0
    polyak: float = 0.998  # EMA decay of the evaluation weights (0: off)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # "auto", "fp32" or "bf16"
    compile: bool = False
    eval_every: int = 1  # epochs between validation passes
    eval_k: int = 0  # importance samples in the validation bound (0: ELBO only)
    eval_subset: int = 1000  # validation images (0: all)
    checkpoint_every: int = 1  # epochs between checkpoints
    keep_last: int = 2
    tensorboard: bool = False
    progress: str = "auto"  # "auto", "on" or "off"

    def validate(self) -> None:
        _check(self.optimizer in ("adamax", "adam"), "train.optimizer", f"must be adamax or adam, got {self.optimizer!r}")
        _check(self.lr_decay in ("none", "exponential", "cosine"), "train.lr_decay",
               f"must be none, exponential or cosine, got {self.lr_decay!r}")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision",
               f"must be auto, fp32 or bf16, got {self.precision!r}")
        _check(self.progress in ("auto", "on", "off"), "train.progress", f"must be auto, on or off, got {self.progress!r}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.polyak < 1, "train.polyak", f"must be in [0, 1), got {self.polyak}")
        for name in ("epochs", "max_steps", "lr_warmup_steps", "kl_warmup_steps", "eval_k", "eval_subset",
                     "keep_last", "grad_clip", "time_budget"):
            _check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.eval_every >= 1 and self.checkpoint_every >= 1, "train.eval_every",
               "eval_every and checkpoint_every must be >= 1")
        _check(self.epochs > 0 or self.max_steps > 0 or self.time_budget > 0, "train.epochs",
               "nothing to train: set epochs, max_steps or time_budget above 0")


@dataclass
class EvalConfig:
    """Evaluation of the importance-weighted bound."""

    k: int = 4096  # importance samples, as in the paper
    chunk: int = 0  # samples evaluated at once per image (0: choose from memory)
    subset: int = 0  # test images (0: all)
    batch_size: int = 50

    def validate(self) -> None:
        _check(self.k >= 1, "eval.k", f"must be >= 1, got {self.k}")
        _check(self.chunk >= 0 and self.subset >= 0, "eval.chunk", "chunk and subset must be >= 0")
        _check(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class Config:
    """Everything a run needs; saved beside every result."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str = ""

    def validate(self) -> "Config":
        self.model.validate()
        self.train.validate()
        self.eval.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise VLAEError(f"invalid option {option}: {message}")


def _paper() -> Config:
    # Chen et al. (2017), appendix: MNIST experiments.
    return Config(
        model=ModelConfig(free_bits=0.01, encoder_channels=64, encoder_blocks=2, upsampler_channels=64),
        train=TrainConfig(batch_size=100, lr=2e-3, optimizer="adamax", polyak=0.998, epochs=300),
        eval=EvalConfig(k=4096),
        preset="mnist-paper",
    )


def _small() -> Config:
    # CPU-sized: narrower networks and a smaller AF prior; same decoder shape,
    # so its receptive field (6 rows up) and hence the collapse behaviour match.
    return Config(
        model=ModelConfig(latent_dim=32, encoder_channels=32, encoder_blocks=1, upsampler_channels=32,
                          flow_steps=2, made_hidden=(128, 128), decoder_filters=16, decoder_blocks_1x1=1,
                          tie_weights=False, free_bits=0.01),
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
        model=ModelConfig(latent_dim=8, encoder_channels=8, encoder_blocks=1, upsampler_channels=8,
                          flow_steps=2, made_hidden=(16,), decoder_layers=2, decoder_filters=8,
                          decoder_blocks_1x1=1, tie_weights=False, iaf_hidden=(16,), iaf_context=8),
        train=TrainConfig(batch_size=32, epochs=1, polyak=0.9, eval_subset=100),
        eval=EvalConfig(k=16, batch_size=50),
        preset="tiny",
    )


PRESETS = {"mnist-paper": _paper, "mnist-small": _small, "mnist-gated": _gated, "tiny": _tiny}


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise VLAEError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def _parse(value: str, typ: Any, key: str) -> Any:
    origin = get_origin(typ)
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return value
        if origin is tuple:
            items = [v for v in value.replace("x", ",").split(",") if v.strip()]
            return tuple(int(v) for v in items)
        if type(None) in get_args(typ):  # Optional[str]
            return None if value.lower() in ("", "none", "null") else value
    except ValueError:
        pass
    raise VLAEError(f"invalid option {key}: cannot read {value!r} as {getattr(typ, '__name__', typ)}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (e.g. ``model.latent_dim=32``) to ``cfg`` in place."""
    for item in overrides:
        if "=" not in item:
            raise VLAEError(f"invalid override {item!r}: expected section.field=value")
        key, value = item.split("=", 1)
        section, _, name = key.strip().partition(".")
        target = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(target) or name not in {f.name for f in fields(target)}:
            raise VLAEError(f"invalid override {item!r}: no option {key!r}")
        setattr(target, name, _parse(value.strip(), get_type_hints(type(target))[name], key))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. a
    checkpoint), rejecting unknown fields."""
    sections = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
    kwargs: dict[str, Any] = {"preset": data.get("preset", "")}
    for name, cls in sections.items():
        raw = dict(data.get(name, {}))
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise VLAEError(f"incompatible configuration: unknown {name} options {sorted(unknown)}")
        hints = get_type_hints(cls)
        for key, value in raw.items():
            if get_origin(hints[key]) is tuple and value is not None:
                raw[key] = tuple(value)
        kwargs[name] = cls(**raw)
    return Config(**kwargs)
