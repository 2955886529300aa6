"""The images of one split, as every training and evaluation step uses them.

:class:`Images` holds a split in memory; :func:`dataset_identity` fingerprints
it so that a run can refuse to resume, or an evaluation to overwrite, on other
data; :func:`fixed_subset` picks the evaluation subsets; :func:`as_images`
wraps the tensors that tests and sweeps pass instead of a named dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..config import OBSERVATIONS
from ..errors import VLAEError, require
from .catalogue import OLD_NAMES, SUBSET_SEED, WORDS, observation_of

__all__ = ["Images", "as_images", "dataset_identity", "identity_differences", "migrate_identity", "fixed_subset"]


@dataclass(init=False)
class Images:
    """One split of a dataset.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)``: 0/1 for static binary data,
            grey levels 0..255 for dynamic binary data and for 8-bit data.
        name: dataset name, one of :data:`~vlae.data.catalogue.DATASETS` (``"custom"`` for tensors).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"train+valid"``.
        observation: the observation model the images are for, as ``model.observation``
            (:data:`~vlae.config.OBSERVATIONS`): ``"bernoulli"`` (binary images) or
            ``"logistic_mixture"`` (8-bit images, 0..255 used as is). The old names
            ``"binary"`` and ``"8bit"``, and the keyword ``kind=``, are read for one release.
        dynamic: binary only: :meth:`observed` samples fresh binary images.
        source: human-readable origin (file paths or package).
        fallback: ``None``, or what was substituted for what when the requested
            dataset was absent (see :func:`~vlae.data.load.load_or_fallback`); record it.

    Example:
        >>> x = Images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "custom", "test", observation="logistic_mixture")
        >>> x.observed().shape
        torch.Size([2, 3, 32, 32])
    """

    images: torch.Tensor
    name: str
    split: str
    observation: str = "bernoulli"
    dynamic: bool = False
    source: str = ""
    fallback: str | None = None

    def __init__(
        self,
        images: torch.Tensor,
        name: str,
        split: str,
        observation: str | None = None,
        dynamic: bool = False,
        source: str = "",
        fallback: str | None = None,
        *,
        kind: str | None = None,
    ):
        what = f"{name} {split}"
        if kind is not None:
            warnings.warn(
                "Images(kind=...) is deprecated; use Images(observation=...)", DeprecationWarning, stacklevel=2
            )
            require(
                observation is None or observation_of(observation) == observation_of(kind),
                f"{what}: observation={observation!r} and kind={kind!r} disagree; give observation only",
            )
            observation = kind
        elif observation in OLD_NAMES:
            warnings.warn(
                f"the observation {observation!r} is deprecated; use {OLD_NAMES[observation]!r}",
                DeprecationWarning,
                stacklevel=2,
            )
        self.images, self.name, self.split = images, name, split
        self.observation = observation_of("bernoulli" if observation is None else observation)
        self.dynamic, self.source, self.fallback = dynamic, source, fallback
        self._check()

    def _check(self) -> None:
        shape = tuple(self.images.shape)
        what = f"{self.name} {self.split}"
        require(
            self.observation in OBSERVATIONS,
            f"{what}: unknown observation {self.observation!r}; choose one of {', '.join(OBSERVATIONS)} "
            f"({', '.join(WORDS[o] for o in OBSERVATIONS)} images)",
        )
        require(
            self.images.dtype == torch.uint8 and len(shape) == 4 and min(shape[1:], default=0) > 0,
            f"{what}: expected uint8 images of shape (N, C, H, W), got {self.images.dtype} {shape}",
        )
        binary = self.observation == "bernoulli"
        require(
            binary or not self.dynamic,
            f"{what}: 8-bit images are used as they are; dynamic binarization is for binary images",
        )
        if binary and not self.dynamic and len(self):
            top = int(self.images.max())
            require(
                top <= 1,
                f"{what}: static binary images must hold 0/1, found values up to {top} "
                "(grey levels need dynamic binarization or observation='logistic_mixture')",
            )

    @property
    def kind(self) -> str:
        """Deprecated (one release): the old name of :attr:`observation` (``"binary"``, ``"8bit"``)."""
        warnings.warn("Images.kind is deprecated; use Images.observation", DeprecationWarning, stacklevel=2)
        return {new: old for old, new in OLD_NAMES.items()}[self.observation]

    def __len__(self) -> int:
        return self.images.shape[0]

    def observed(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The model's observed images ``(N, C, H, W)``, ``uint8``, on the images' device.

        8-bit and static binary data are returned as they are. Dynamic binary
        data is sampled as ``Bernoulli(images / 255)`` with ``generator``, which
        must live on the same device as the images.
        """
        if not self.dynamic:
            return self.images
        return torch.bernoulli(self.images.float() / 255, generator=generator).to(torch.uint8)

    binarized = observed  # the name of the binary-only days, kept for existing code

    def to(self, device: torch.device | str) -> Images:
        """A copy whose images live on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device))


def as_images(obj: Any, name: str, observation: str = "bernoulli", *, kind: str | None = None) -> Images:
    """An :class:`Images` from an Images or a ``uint8 (N, C, H, W)`` tensor of images for
    ``observation`` (bernoulli: dynamically binarized when it holds grey levels;
    logistic_mixture: 8-bit, used as is). ``kind=``, the old keyword with the old names,
    is read for one release."""
    if kind is not None:
        warnings.warn(
            "as_images(kind=...) is deprecated; use as_images(observation=...)", DeprecationWarning, stacklevel=2
        )
        observation = kind
    observation = observation_of(observation)
    if isinstance(obj, Images):
        return obj
    if isinstance(obj, torch.Tensor):
        images = (obj if obj.dtype == torch.uint8 else obj.to(torch.uint8)).cpu()
        dynamic = observation == "bernoulli" and bool((images > 1).any())
        return Images(
            images, name="custom", split=name, observation=observation, dynamic=dynamic, source="data= argument"
        )
    raise VLAEError(f"data: expected vlae.data.Images or a uint8 tensor for {name}, got {type(obj).__name__}")


def dataset_identity(ds: Images) -> dict[str, Any]:
    """A JSON-able fingerprint of one split, for checkpoints and result files.

    ``sha256`` is of the images' bytes as held (grey levels for dynamic data),
    so two identities with equal ``sha256``, ``shape`` and ``images`` hold the
    same pixels in the same order wherever the files lie; ``source`` is only
    informative (paths differ between machines).

    Example:
        >>> x = Images(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "custom", "test")
        >>> dataset_identity(x)["sha256"][:12], dataset_identity(x)["shape"]
        ('66687aadf862', [1, 4, 4])
    """
    images = ds.images.detach().cpu().contiguous()
    return {
        "name": ds.name,
        "observation": ds.observation,
        "split": ds.split,
        "images": len(ds),
        "shape": list(images.shape[1:]),
        "dynamic": ds.dynamic,
        "source": ds.source,
        "fallback": ds.fallback,
        "sha256": hashlib.sha256(images.numpy()).hexdigest(),
    }


def migrate_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A :func:`dataset_identity` dict with today's names: the identities that runs
    wrote before the observation axis had one name say ``"kind": "binary"`` (or
    ``"8bit"``) where today's say ``"observation": "bernoulli"`` (or
    ``"logistic_mixture"``), in the same place. Others are returned as they are.

    Example:
        >>> migrate_identity({"name": "mnist", "kind": "binary", "split": "test"})
        {'name': 'mnist', 'observation': 'bernoulli', 'split': 'test'}
    """
    if "kind" not in identity or "observation" in identity:
        return identity
    return {
        ("observation" if k == "kind" else k): (observation_of(v) if k == "kind" and isinstance(v, str) else v)
        for k, v in identity.items()
    }


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: saved -> current`` for each field of two :func:`dataset_identity`
    dicts that differ, ignoring ``source`` and ``fallback`` (texts that name paths,
    which move with the machine; the images themselves are compared through
    ``sha256``); empty if the data is the same. Identities with the old names
    (:func:`migrate_identity`) are compared under today's."""
    saved, current = migrate_identity(saved), migrate_identity(current)
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in ("source", "fallback")]
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def fixed_subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images spread over the whole split, the same ones for every run,
    seed and machine (0 or ``n >= len(images)``: all, in file order).

    Not the first ``n``: the canonical test files are sorted by class (the first
    1,000 images of binarized MNIST's test set are zeros, about 10 nats harder
    than the average digit), so a prefix is a biased sample. The choice is a
    permutation drawn with
    :data:`~vlae.data.catalogue.SUBSET_SEED`, kept in file order.

    Args:
        images: ``(N, ...)`` tensor.
        n: how many to keep.

    Returns:
        ``(min(n, N), ...)`` tensor, on ``images``' device.
    """
    if n <= 0 or n >= len(images):
        return images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return images[pick.sort().values.to(images.device)]
