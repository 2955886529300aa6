"""The data of a run: the configured dataset or in-memory images, checked against the model.

Both functions read a :class:`~vlae.config.Config` (``data`` sits above ``config``);
:mod:`vlae.train.data`, their old home, re-exports them for one release.
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import Config
from ..errors import VLAEError
from .catalogue import INFO, WORDS
from .images import as_images
from .load import load_or_fallback

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
        # tensors: the observation of the configured dataset
        observation = INFO[cfg.train.dataset].observation if cfg.train.dataset in INFO else "bernoulli"
        return as_images(train_set, "train", observation), as_images(valid_set, "valid", observation)
    t = cfg.train
    train_set = load_or_fallback(t.dataset, "train", t.data_dir, train_on_valid=t.train_on_valid, notice=notice)
    valid_set = load_or_fallback(t.dataset, "valid", t.data_dir, notice=lambda _m: None)
    return train_set, valid_set


def check_data_fits(cfg: Config, images) -> None:
    """Raise a one-line :class:`VLAEError` unless ``images`` (:class:`~vlae.data.Images`)
    are what the model observes: ``model.image_shape`` and ``model.observation``
    (binary 0/1 for Bernoulli, 8-bit for the logistic mixture), e.g. colour
    photographs given to a binary MNIST model."""
    m = cfg.model
    shape = tuple(images.images.shape[1:])
    if shape != tuple(m.image_shape) or images.observation != m.observation:

        def fmt(s):
            return "x".join(map(str, s))

        raise VLAEError(
            f"data: {images.name} holds {WORDS.get(images.observation, images.observation)} images of "
            f"{fmt(shape)}, but the model observes {WORDS.get(m.observation, m.observation)} images of "
            f"{fmt(m.image_shape)} (model.image_shape, model.observation); use a "
            "preset made for this data (binary: mnist-*, 8-bit colour: cifar-*)"
        )
