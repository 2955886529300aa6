"""What each dataset is: observation, shape, split sizes, files, URLs and digests.

Tables only, read by the modules that find, fetch and read the files. The
tables a test replaces (:data:`COUNTS`, :data:`DIGESTS`, :data:`URLS`) are read
as ``catalogue.COUNTS`` and so on at call time, never imported by name, so that
one patch of this module reaches every reader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

__all__ = [
    "SPLITS",
    "OLD_NAMES",
    "WORDS",
    "observation_of",
    "DatasetInfo",
    "INFO",
    "DATASETS",
    "EMBEDDED",
    "BINARIZATION_SEED",
    "SUBSET_SEED",
    "PHOTOS",
    "PIXELS",
    "COUNTS",
    "DIGESTS",
    "URLS",
    "CIFAR_ARCHIVE",
    "CIFAR_FOLDER",
    "CIFAR_TRAIN",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")

#: The observation axis has one name, the configuration's ``model.observation``
#: (:data:`~vlae.config.OBSERVATIONS`: ``"bernoulli"``, ``"logistic_mixture"``).
#: Its old names in the data (``Images.kind``, ``DatasetInfo.kind``) and in the
#: data identities of runs written before, read for one release.
OLD_NAMES: dict[str, str] = {"binary": "bernoulli", "8bit": "logistic_mixture"}
#: Deprecated (one release; not in ``__all__``): the old names, :data:`OLD_NAMES`' keys.
KINDS: tuple[str, ...] = tuple(OLD_NAMES)
#: What messages call each observation (:data:`~vlae.config.OBSERVATIONS`): the words users know.
WORDS: dict[str, str] = {"bernoulli": "binary", "logistic_mixture": "8-bit"}


def observation_of(name: str) -> str:
    """The observation ``name`` means, given by its name or its old name (anything else unchanged).

    Example:
        >>> observation_of("8bit"), observation_of("bernoulli")
        ('logistic_mixture', 'bernoulli')
    """
    return OLD_NAMES.get(name, name)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds.

    Attributes:
        observation: ``"bernoulli"`` (binary images) or ``"logistic_mixture"`` (8-bit
            images), as ``model.observation`` (see :class:`~vlae.data.images.Images`).
        shape: ``(C, H, W)`` of one image.
        files: whose files are read and downloaded (``mnist-8bit`` reads ``mnist``'s).
        fallback: the embedded dataset :func:`~vlae.data.load.load_or_fallback` substitutes, with
            a notice, when no data location was named and the files are absent.
    """

    observation: str
    shape: tuple[int, int, int]
    files: str
    fallback: str | None

    @property
    def kind(self) -> str:
        """Deprecated (one release): the old name of :attr:`observation` (``"binary"``, ``"8bit"``)."""
        warnings.warn("DatasetInfo.kind is deprecated; use DatasetInfo.observation", DeprecationWarning, stacklevel=2)
        return {new: old for old, new in OLD_NAMES.items()}[self.observation]


_DIGIT = (1, 28, 28)
INFO: dict[str, DatasetInfo] = {
    "binarized-mnist": DatasetInfo("bernoulli", _DIGIT, "binarized-mnist", "mnist-embedded"),
    "mnist": DatasetInfo("bernoulli", _DIGIT, "mnist", "mnist-embedded"),
    "fashion-mnist": DatasetInfo("bernoulli", _DIGIT, "fashion-mnist", "mnist-embedded"),
    "omniglot": DatasetInfo("bernoulli", _DIGIT, "omniglot", "mnist-embedded"),
    "caltech101-silhouettes": DatasetInfo("bernoulli", _DIGIT, "caltech101-silhouettes", "mnist-embedded"),
    "mnist-embedded": DatasetInfo("bernoulli", _DIGIT, "mnist-embedded", None),
    "mnist-8bit": DatasetInfo("logistic_mixture", _DIGIT, "mnist", "mnist-embedded-8bit"),
    "fashion-mnist-8bit": DatasetInfo("logistic_mixture", _DIGIT, "fashion-mnist", "mnist-embedded-8bit"),
    "mnist-embedded-8bit": DatasetInfo("logistic_mixture", _DIGIT, "mnist-embedded", None),
    "cifar10": DatasetInfo("logistic_mixture", (3, 32, 32), "cifar10", "photos-embedded"),
    "photos-embedded": DatasetInfo("logistic_mixture", (3, 32, 32), "photos-embedded", None),
}
DATASETS: tuple[str, ...] = tuple(INFO)
EMBEDDED = frozenset(n for n, i in INFO.items() if i.files in ("mnist-embedded", "photos-embedded"))

#: Seed of ``torch.Generator().manual_seed(...)`` for every binarization done
#: once at load time (the test splits of dynamic datasets, mnist-embedded), so
#: that numbers are comparable across runs and machines.
BINARIZATION_SEED = 0

#: Seed of the permutation that picks evaluation subsets (:func:`~vlae.data.images.fixed_subset`).
SUBSET_SEED = 0

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

PIXELS = 28 * 28

#: Images per (dataset, split): checked on load, so a file truncated at a line
#: or record boundary cannot pass silently; also fixes the valid/train cut.
COUNTS: dict[tuple[str, str], int] = {
    ("binarized-mnist", "train"): 50_000,
    ("binarized-mnist", "valid"): 10_000,
    ("binarized-mnist", "test"): 10_000,
    ("mnist", "train"): 50_000,
    ("mnist", "valid"): 10_000,
    ("mnist", "test"): 10_000,
    ("mnist-8bit", "train"): 50_000,
    ("mnist-8bit", "valid"): 10_000,
    ("mnist-8bit", "test"): 10_000,
    ("fashion-mnist", "train"): 50_000,
    ("fashion-mnist", "valid"): 10_000,
    ("fashion-mnist", "test"): 10_000,
    ("fashion-mnist-8bit", "train"): 50_000,
    ("fashion-mnist-8bit", "valid"): 10_000,
    ("fashion-mnist-8bit", "test"): 10_000,
    ("omniglot", "train"): 23_000,
    ("omniglot", "valid"): 1_345,
    ("omniglot", "test"): 8_070,
    ("caltech101-silhouettes", "train"): 4_100,
    ("caltech101-silhouettes", "valid"): 2_264,
    ("caltech101-silhouettes", "test"): 2_307,
    ("cifar10", "train"): 45_000,
    ("cifar10", "valid"): 5_000,
    ("cifar10", "test"): 10_000,
    ("mnist-embedded", "train"): 4_000,
    ("mnist-embedded", "valid"): 500,
    ("mnist-embedded", "test"): 500,
    ("mnist-embedded-8bit", "train"): 4_000,
    ("mnist-embedded-8bit", "valid"): 500,
    ("mnist-embedded-8bit", "test"): 500,
    # 961 + 864 + 3,233 + 961 patches (stride 16); 15 x 23; 9 x 14 + 13 x 20 (stride 32).
    ("photos-embedded", "train"): 6_019,
    ("photos-embedded", "valid"): 345,
    ("photos-embedded", "test"): 386,
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
DIGESTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("binarized-mnist", "binarized_mnist_train.mat"): (
        "sha256:79a0312c7389d855cfc97e3812de3998417c5829d8a51543b56a90a91252ae7e",
    ),
    ("binarized-mnist", "binarized_mnist_valid.mat"): (
        "sha256:7436afc856959075c7787025bb8a4ba2b520b9230ee39667c66aa7dd2819dd68",
    ),
    ("binarized-mnist", "binarized_mnist_test.mat"): (
        "sha256:5bc30222e1e7896cbccd1e1db6b28540cc1230f4d2d5473841a5f6cc54be8d38",
    ),
    ("binarized-mnist", "binarized_mnist_train.amat"): (
        "sha256:ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    ),
    ("binarized-mnist", "binarized_mnist_valid.amat"): (
        "sha256:1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    ),
    ("binarized-mnist", "binarized_mnist_test.amat"): (
        "sha256:e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    ),
    ("mnist", "train-images-idx3-ubyte.gz"): (
        "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    ("mnist", "t10k-images-idx3-ubyte.gz"): (
        "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): (
        "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "sha256:b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    ),
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): (
        "md5:bef4ecab320f06d8554ea6380940ec79",
        "sha256:cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    ),
    ("omniglot", "chardata.mat"): ("md5:21ecaf34373511aa7691cf2e0802aa3d",),
    ("cifar10", "cifar-10-python.tar.gz"): (
        "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "md5:c58f30108f718f92721af3b95e74349a",
    ),
}

_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_KERAS = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_MNIST = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_IDX_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

#: Files -> file name -> URLs to try in order (canonical source first, then mirrors).
URLS: dict[str, dict[str, tuple[str, ...]]] = {
    "binarized-mnist": {
        f"binarized_mnist_{s}.amat": (_LAROCHELLE + f"binarized_mnist_{s}.amat", _KERAS + f"binarized_mnist_{s}.amat")
        for s in SPLITS
    },
    "mnist": {f: tuple(m + f for m in _MNIST) for f in _IDX_FILES},
    "fashion-mnist": {f: tuple(m + f for m in _FASHION) for f in _IDX_FILES},
    "omniglot": {
        "chardata.mat": (
            "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",
            "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",
        )
    },
    "caltech101-silhouettes": {
        "caltech101_silhouettes_28_split1.mat": (
            "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",
            "http://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",
        )
    },
    "cifar10": {CIFAR_ARCHIVE: ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)},
}
