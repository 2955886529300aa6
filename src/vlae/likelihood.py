"""Old home of the observation models, kept for one release: they are now
:mod:`vlae.observation` (the one name of the observation axis, as the
configuration's ``model.observation``). Nothing in vlae imports this module."""

from __future__ import annotations

from .observation import (
    OBSERVATIONS,
    Bernoulli,
    DiscretizedLogisticMixture,
    ObservationModel,
    bernoulli_from_uniform,
    bernoulli_log_prob,
    observation_model,
)

__all__ = [
    "ObservationModel",
    "Bernoulli",
    "DiscretizedLogisticMixture",
    "OBSERVATIONS",
    "observation_model",
    "bernoulli_log_prob",
    "bernoulli_from_uniform",
]
