"""Configuration: dataclasses with defaults in one place, their validation, and
``key=value`` overrides for the command line. The named presets are in
:mod:`vlae.presets` (``PRESETS`` and ``get_preset`` are still importable from
here, for one release).

Example:
    >>> from vlae.presets import get_preset
    >>> cfg = get_preset("mnist-small")
    >>> cfg = apply_overrides(cfg, ["model.latent_dim=16", "train.lr=1e-3"])
    >>> cfg.model.latent_dim, cfg.train.lr
    (16, 0.001)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence, get_args, get_origin, get_type_hints

from .errors import VLAEError

if TYPE_CHECKING:
    from .presets import PRESETS, get_preset

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "PRESETS",
    "get_preset",
    "apply_overrides",
    "config_from_dict",
    "parse_field",
    "field_depths",
    "data_dims",
]

# The values a model option accepts. They live here, not beside the modules that
# implement them, because validation needs them and the configuration imports no
# networks; vlae.observation and vlae.encoder import their lists from here.
PRIORS = ("gaussian", "af")
POSTERIORS = ("gaussian", "iaf")
DECODER_KINDS = ("masked", "gated", "factorized")
OBSERVATIONS = ("bernoulli", "logistic_mixture")
ENCODER_KINDS = ("resnet", "densenet")  # spatial encoder and mirror


def data_dims(image_shape: Sequence[int]) -> int:
    """Data dimensions of one image of ``image_shape`` (C, H, W): the denominator of bits/dim."""
    return math.prod(image_shape)


def parse_field(name: str) -> tuple[int, int]:
    """``"AxB"`` -> ``(A, B)``, the paper's name of a receptive field (section 4.3);
    raises ``ValueError`` on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(name))
    if not m:
        raise ValueError(f"a receptive field is named AxB (e.g. 7x4), got {name!r}")
    return int(m.group(1)), int(m.group(2))


def field_depths(name: str) -> tuple[int, int]:
    """Vertical and horizontal layers ``(B - 1, A - B)`` of the gated decoder whose
    field is the paper's ``AxB`` (see :meth:`vlae.pixelcnn.GatedPixelCNN.from_field`);
    raises ``ValueError`` for a name no such decoder has. Here, not in the decoder,
    because validating ``model.decoder_field`` needs it and the configuration
    imports no networks."""
    a, b = parse_field(name)
    if b < 2 or a not in (2 * b - 1, 2 * b):
        raise ValueError(
            f"receptive field {a}x{b} cannot be built: need B >= 2 and A = 2B-1 or 2B (e.g. 4x2, 5x3, 7x4, 8x4, 9x5)"
        )
    return b - 1, a - b


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
    decoder_field: str = ""  # gated decoder by the paper's receptive field AxB, e.g. "7x4" (sets its depths and kernel)
    gated_blocks_1x1: int = 0  # gated decoder: conditioned 1x1 gated ResNet blocks after the stacks
    gray_context: bool = False  # the decoder reads only the luma of its context (RGB images); likelihood stays RGB
    # observation model p(x | decoder outputs)
    observation: str = "bernoulli"  # "bernoulli" (binary images) or "logistic_mixture" (8-bit, 1 or 3 channels)
    mixture_components: int = 10  # logistics in the mixture
    # spatial latents (the paper's CIFAR-10 model): z is a (C, H/4, W/4) map, flat (C, h, w) at the model boundary
    latent_shape: tuple[int, ...] = ()  # (): flat code; (C, h, w) with C*h*w == latent_dim
    encoder_kind: str = "resnet"  # spatial encoder and its mirror: "resnet" or "densenet"
    stage_channels: tuple[int, ...] = (48, 96, 96)  # spatial encoder/mirror feature maps at full, 1/2, 1/4 resolution
    stage_blocks: tuple[int, ...] = (2, 2, 3)  # ResNet blocks per resolution (densenet: a dense block per pair)
    dense_steps: int = 3  # steps per dense block
    prior_hidden: int = 128  # AF prior over a map: PixelCNN feature maps per hidden layer
    prior_layers: int = 2  # AF prior over a map: PixelCNN hidden layers
    prior_kernel: int = 3  # AF prior over a map: PixelCNN kernel side
    # objective
    free_bits: float = 0.0  # nats per data dimension (0: off)
    free_bits_groups: int = 1  # the KL floor applies to this many groups of latent dimensions

    def validate(self) -> None:
        _check_finite(self, "model")
        c, h, w = self.image_shape
        self._validate_observation()
        _check(
            h % 4 == 0 and w % 4 == 0 and h > 0 and w > 0,
            "model.image_shape",
            f"height and width must be positive multiples of 4, got {h}x{w}",
        )
        _check(self.latent_dim >= 0, "model.latent_dim", f"must be >= 0, got {self.latent_dim}")
        _check(self.prior in PRIORS, "model.prior", f"must be one of {PRIORS}, got {self.prior!r}")
        _check(self.posterior in POSTERIORS, "model.posterior", f"must be one of {POSTERIORS}, got {self.posterior!r}")
        _check(self.decoder in DECODER_KINDS, "model.decoder", f"must be one of {DECODER_KINDS}, got {self.decoder!r}")
        _check(self.decoder_layers >= 1, "model.decoder_layers", f"must be >= 1, got {self.decoder_layers}")
        _check(
            self.decoder_kernel >= 1 and self.decoder_kernel % 2 == 1,
            "model.decoder_kernel",
            f"must be a positive odd number, got {self.decoder_kernel}",
        )
        _check(
            self.decoder != "gated" or self.decoder_kernel >= 3 or bool(self.decoder_field),
            "model.decoder_kernel",
            f"a gated decoder needs a kernel of at least 3 (its vertical stack reads kernel // 2 rows above "
            f"the pixel), got {self.decoder_kernel}; a masked decoder accepts 1 (no pixel context)",
        )
        for name in (
            "encoder_channels",
            "decoder_filters",
            "cond_channels",
            "upsampler_channels",
            "flow_steps",
            "free_bits_groups",
        ):
            _check(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_blocks", "decoder_blocks_1x1", "upsampler_blocks", "iaf_steps"):
            _check(getattr(self, name) >= 0, f"model.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(
            self.made_activation in ("relu", "elu", "tanh", "gelu"),
            "model.made_activation",
            f"must be relu, elu, tanh or gelu, got {self.made_activation!r}",
        )
        _check(self.free_bits >= 0, "model.free_bits", f"must be >= 0, got {self.free_bits}")
        if self.latent_dim > 0:
            _check(
                self.latent_dim % self.free_bits_groups == 0,
                "model.free_bits_groups",
                f"must divide latent_dim={self.latent_dim}, got {self.free_bits_groups}",
            )
            widths = (tuple(self.made_hidden) if self.prior == "af" and not self.latent_shape else ()) + (
                tuple(self.iaf_hidden) if self.posterior == "iaf" else ()
            )
            for width in widths:
                _check(
                    width >= self.latent_dim - 1,
                    "model.made_hidden",
                    f"MADE widths must be >= latent_dim - 1 = {self.latent_dim - 1}, got {width}",
                )
        else:
            _check(
                self.decoder != "factorized",
                "model.decoder",
                "a factorized decoder needs a latent code (latent_dim > 0)",
            )
        self._validate_spatial()

    def _validate_observation(self) -> None:
        c = self.image_shape[0]
        _check(
            self.observation in OBSERVATIONS,
            "model.observation",
            f"must be one of {OBSERVATIONS}, got {self.observation!r}",
        )
        if self.observation == "bernoulli":
            _check(
                c == 1,
                "model.image_shape",
                f"binary (Bernoulli) images have 1 channel, got {c}; "
                "use model.observation=logistic_mixture for 8-bit images",
            )
        else:
            _check(c in (1, 3), "model.image_shape", f"a logistic mixture models 1 or 3 channels, got {c}")
        _check(self.mixture_components >= 1, "model.mixture_components", f"must be >= 1, got {self.mixture_components}")
        _check(self.gated_blocks_1x1 >= 0, "model.gated_blocks_1x1", f"must be >= 0, got {self.gated_blocks_1x1}")
        if self.gray_context:
            _check(c == 3, "model.gray_context", f"a grayscale context needs RGB images, got {c} channel(s)")
            _check(self.decoder != "factorized", "model.gray_context", "a factorized decoder reads no context")
        if self.decoder_field:
            _check(
                self.decoder == "gated",
                "model.decoder_field",
                f"an AxB receptive field needs decoder=gated, got {self.decoder!r}",
            )
            try:
                field_depths(self.decoder_field)
            except ValueError as exc:
                _check(False, "model.decoder_field", str(exc))

    def _validate_spatial(self) -> None:
        shape, (_, h, w) = tuple(self.latent_shape), self.image_shape
        _check(
            self.encoder_kind in ENCODER_KINDS,
            "model.encoder_kind",
            f"must be one of {ENCODER_KINDS}, got {self.encoder_kind!r}",
        )
        _check(
            self.encoder_kind == "resnet" or bool(shape),
            "model.encoder_kind",
            "the densenet encoder needs spatial latents (set model.latent_shape)",
        )
        if not shape:
            return
        _check(
            len(shape) == 3 and min(shape) >= 1,
            "model.latent_shape",
            f"must be empty (flat code) or (C, h, w) of positive sizes, got {shape}",
        )
        _check(
            math.prod(shape) == self.latent_dim,
            "model.latent_shape",
            f"{'x'.join(map(str, shape))} has {math.prod(shape)} dimensions but latent_dim={self.latent_dim}",
        )
        _check(
            (4 * shape[1], 4 * shape[2]) == (h, w),
            "model.latent_shape",
            f"a {shape[1]}x{shape[2]} latent map needs {4 * shape[1]}x{4 * shape[2]} images, got {h}x{w}",
        )
        _check(
            len(self.stage_channels) == 3 and min(self.stage_channels) >= 1,
            "model.stage_channels",
            f"must be 3 positive widths (full, 1/2, 1/4 resolution), got {self.stage_channels}",
        )
        _check(
            len(self.stage_blocks) == 3 and min(self.stage_blocks) >= 0,
            "model.stage_blocks",
            f"must be 3 block counts >= 0 (full, 1/2, 1/4 resolution), got {self.stage_blocks}",
        )
        _check(self.dense_steps >= 1, "model.dense_steps", f"must be >= 1, got {self.dense_steps}")
        _check(
            self.prior_hidden >= shape[0],
            "model.prior_hidden",
            f"must be >= the {shape[0]} latent channels (one channel group each), got {self.prior_hidden}",
        )
        _check(self.prior_layers >= 0, "model.prior_layers", f"must be >= 0, got {self.prior_layers}")
        _check(
            self.prior_kernel >= 1 and self.prior_kernel % 2 == 1,
            "model.prior_kernel",
            f"must be a positive odd number, got {self.prior_kernel}",
        )

    @property
    def data_dims(self) -> int:
        return data_dims(self.image_shape)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; ``vlae train`` turns each field into a flag."""

    dataset: str = "binarized-mnist"
    data_dir: str | None = None  # None: $VLAE_DATA_DIR, then ~/.cache/vlae; a run saves it absolute (train())
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
    cuda_graph: str = "auto"  # "auto" (on for one CUDA process), "on" or "off": replay the step as a CUDA graph
    eval_every: int = 1  # epochs between validation passes
    eval_k: int = 0  # importance samples in the validation bound (0: ELBO only)
    eval_subset: int = 1000  # validation images (0: all)
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_steps: int = 0  # also checkpoint every this many optimiser steps (0: off)
    checkpoint_seconds: float = 600.0  # also checkpoint after this many training seconds without one (0: off)
    keep_last: int = 2
    max_skipped_steps: int = 10  # stop with an error after this many consecutive skipped updates (0: never)
    tensorboard: bool = False
    progress: str = "auto"  # "auto", "on" or "off"

    def validate(self) -> None:
        _check_finite(self, "train")
        _check(
            self.optimizer in ("adamax", "adam"), "train.optimizer", f"must be adamax or adam, got {self.optimizer!r}"
        )
        _check(
            self.lr_decay in ("none", "exponential", "cosine"),
            "train.lr_decay",
            f"must be none, exponential or cosine, got {self.lr_decay!r}",
        )
        _check(
            self.precision in ("auto", "fp32", "bf16"),
            "train.precision",
            f"must be auto, fp32 or bf16, got {self.precision!r}",
        )
        _check(
            self.cuda_graph in ("auto", "on", "off"),
            "train.cuda_graph",
            f"must be auto, on or off, got {self.cuda_graph!r}",
        )
        _check(
            self.progress in ("auto", "on", "off"), "train.progress", f"must be auto, on or off, got {self.progress!r}"
        )
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.polyak < 1, "train.polyak", f"must be in [0, 1), got {self.polyak}")
        _check(self.lr_decay_rate > 0, "train.lr_decay_rate", f"must be > 0, got {self.lr_decay_rate}")
        for name in (
            "epochs",
            "max_steps",
            "lr_warmup_steps",
            "kl_warmup_steps",
            "eval_k",
            "eval_subset",
            "keep_last",
            "grad_clip",
            "time_budget",
            "weight_decay",
            "checkpoint_steps",
            "checkpoint_seconds",
            "max_skipped_steps",
        ):
            _check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(
            self.eval_every >= 1 and self.checkpoint_every >= 1,
            "train.eval_every",
            "eval_every and checkpoint_every must be >= 1",
        )
        _check(
            self.epochs > 0 or self.max_steps > 0 or self.time_budget > 0,
            "train.epochs",
            "nothing to train: set epochs, max_steps or time_budget above 0",
        )


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
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)  # strict JSON


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise VLAEError(f"invalid option {option}: {message}")


def _check_finite(section: Any, prefix: str) -> None:
    """Every float option must be a finite number: ``inf`` or ``nan`` train a broken model silently."""
    for f in fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f"{prefix}.{f.name}", f"must be a finite number, got {value}")


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
    _check(isinstance(data, dict), "config", f"expected a mapping of sections, got {type(data).__name__}")
    kwargs: dict[str, Any] = {"preset": _typed("preset", data.get("preset", ""), str)}
    for name, cls in sections.items():
        _check(isinstance(data.get(name, {}), dict), name, f"expected a mapping, got {data.get(name)!r}")
        raw = dict(data.get(name, {}))
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise VLAEError(f"incompatible configuration: unknown {name} options {sorted(unknown)}")
        hints = get_type_hints(cls)
        for key, value in raw.items():
            raw[key] = _typed(f"{name}.{key}", value, hints[key])
        kwargs[name] = cls(**raw)
    return Config(**kwargs)


def _typed(option: str, value: Any, typ: Any) -> Any:
    """``value`` as the field type ``typ`` (an int for a float, a list for a
    tuple, an integral float for an int), or a one-line error naming ``option``:
    a stored config is checked here, before validation compares its values."""
    args = get_args(typ)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if get_origin(typ) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ok = ok and (... in get_args(typ) or len(value) == len(get_args(typ)))  # tuple[int, int, int]: 3 items
        value = tuple(value) if ok else value
    elif typ is float:
        ok, value = number, float(value) if number else value
    elif typ is int:
        ok = number and float(value).is_integer()
        value = int(value) if ok else value
    else:
        ok = isinstance(value, typ)
    _check(ok, option, f"expected {getattr(typ, '__name__', str(typ))}, got {value!r}")
    return value


def __getattr__(name: str) -> Any:
    """``PRESETS`` and ``get_preset`` from their old home (one release). Looked up
    lazily: :mod:`vlae.presets` imports this module."""
    if name in ("PRESETS", "get_preset"):
        from . import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
