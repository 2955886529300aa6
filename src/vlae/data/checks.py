"""The data of a run: the configured dataset or in-memory images, checked against the model.

Here rather than in :mod:`vlae.data` because both functions read a :class:`~vlae.config.Config`,
and ``config`` and ``data`` are independent siblings of the foundation layer; the
conversion of in-memory tensors, :func:`vlae.data.as_images`, needs no configuration
and lives there.
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import Config
from ..data import INFO, as_images, load_or_fallback
from ..errors import VLAEError

__all__ = ["resolve_data", "check_data_fits"]


def resolve_data(cfg: Config, data: Any = None, notice: Callable[[str], object] | None = None):
    """Train and valid :class:`~vlae.data.Images` for a run.

    ``data`` (tests, sweeps) may be ``{"train": ..., "valid": ...}``, a
    ``(train, valid)`` pair, or one tensor used for both; each item a
    :class:`~vlae.data.Images` or a ``uint8 (N, C, H, W)`` tensor. Otherwise the configured
    dataset is loaded from ``cfg.train.data_dir``, else ``$VLAE_DATA_DIR``, else
    the cache (:func:`vlae.data.load_or_fallback`): a named location without
    the data is an error; with none named, an embedded fallback is announced
    through ``notice`` (default: stderr) and recorded in the returned sets' ``fallback``.
    """
    if data is not None:
        if isinstance(data, dict):
            train_set, valid_set = data["train"], data.get("valid", data["train"])
        elif isinstance(data, (tuple, list)):
            train_set, valid_set = data
        else:
            train_set = valid_set = data
        kind = INFO[cfg.train.dataset].kind if cfg.train.dataset in INFO else "binary"  # tensors: the config's kind
        return as_images(train_set, "train", kind), as_images(valid_set, "valid", kind)
    t = cfg.train
    train_set = load_or_fallback(t.dataset, "train", t.data_dir, train_on_valid=t.train_on_valid, notice=notice)
    valid_set = load_or_fallback(t.dataset, "valid", t.data_dir, notice=lambda _m: None)
    return train_set, valid_set


def check_data_fits(cfg: Config, images) -> None:
    """Raise a one-line :class:`VLAEError` unless ``images`` (:class:`~vlae.data.Images`)
    are what the model observes: ``model.image_shape`` and the observation model's
    kind (binary 0/1 for Bernoulli, 8-bit for the logistic mixture), e.g. colour
    photographs given to a binary MNIST model."""
    m = cfg.model
    kind = "8bit" if m.observation == "logistic_mixture" else "binary"
    shape = tuple(images.images.shape[1:])
    if shape != tuple(m.image_shape) or images.kind != kind:
        def fmt(s):
            return "x".join(map(str, s))
        name = {"8bit": "8-bit"}
        raise VLAEError(f"data: {images.name} holds {name.get(images.kind, images.kind)} images of {fmt(shape)}, but "
                        f"the model observes {name.get(kind, kind)} images of {fmt(m.image_shape)} "
                        "(model.image_shape, model.observation); use a "
                        "preset made for this data (binary: mnist-*, 8-bit colour: cifar-*)")
