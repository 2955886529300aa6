"""Fault injection for 8-bit colour input: the ``vlae`` command (in-process,
``vlae.cli.main``) fed images the model cannot read.

Every case is a row of :data:`CASES`: the arguments, a piece of the one
``error:`` line expected on stderr (never a traceback), exit status 2, and the
paths that must not appear. The rows cover the wrong channel count or image
size for the model, values outside 0..255 or not integers, a corrupt or
truncated CIFAR-10 archive, and a binary model given colour data (and the
reverse). One binary and one colour run are trained for a step each for the
module (tiny networks, the embedded data); the module takes ~15 s on one core.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from vlae.checkpoint import load_model
from vlae.cli import main
from vlae.errors import VLAEError

# A cifar-small-shaped model (3x32x32, logistic mixture, spatial code), narrowed to train in a second.
SMALL_COLOUR = ["model.latent_shape=2,8,8", "model.latent_dim=128", "model.stage_channels=8,8,8",
                "model.decoder_filters=8", "model.cond_channels=4", "model.prior_hidden=8", "model.flow_steps=1",
                "model.mixture_components=2", "model.free_bits_groups=2", "train.eval_subset=8"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """Two trained runs (``binary``: tiny on MNIST digits; ``colour``: a narrow
    cifar-small on the CIFAR-10 fallback, the photographs) and broken inputs."""
    lab = tmp_path_factory.mktemp("colour-faults")
    mp = pytest.MonkeyPatch()
    mp.delenv("VLAE_DATA_DIR", raising=False)  # no data location: the photographs stand in for CIFAR-10
    mp.setenv("XDG_CACHE_HOME", str(lab / "empty-cache"))
    try:
        common = ["--max-steps", "1", "--batch-size", "8", "--threads", "1", "--quiet", "--no-figures"]
        assert main(["train", "--preset", "tiny", "--dataset", "mnist-embedded", "--run-dir", str(lab / "binary"),
                     *common, "--set", "train.eval_subset=8"]) == 0
        assert main(["train", "--preset", "cifar-small", "--run-dir", str(lab / "colour"), *common,
                     *_sets(SMALL_COLOUR)]) == 0
    finally:
        mp.undo()
    rng = np.random.default_rng(0)
    arrays = {
        "ok.npy": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
        "gray.npy": rng.integers(0, 256, (2, 1, 32, 32), dtype=np.uint8),
        "small.npy": rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8),
        "over.npy": np.full((2, 3, 32, 32), 300, dtype=np.int32),
        "negative.npy": np.full((2, 3, 32, 32), -1, dtype=np.int32),
        "fractional.npy": np.full((2, 3, 32, 32), 12.5, dtype=np.float32),
    }
    for name, a in arrays.items():
        np.save(lab / name, a)
    archive = lab / "corrupt" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b\x08\x00 not really gzip" * 64)
    truncated = lab / "truncated" / "cifar10" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir(parents=True)
    with tarfile.open(truncated, "w:gz") as tar:  # a real gzip'd tar, cut short below
        tar.add(lab / "ok.npy", "cifar-10-batches-py/data_batch_1")
    truncated.write_bytes(truncated.read_bytes()[:-40])
    return lab


@dataclass
class Case:
    name: str
    args: list[str]  # "{lab}" is replaced by the lab folder
    message: str  # a piece of the error line
    absent: tuple[str, ...] = ()  # paths (under the lab) that must not exist afterwards


TRAIN = ["--max-steps", "1", "--threads", "1", "--quiet", "--no-figures"]
CASES = [
    # a binary model given colour data, and the reverse
    Case("binary preset on colour photographs", ["train", "--preset", "tiny", "--dataset", "photos-embedded",
                                                 "--run-dir", "{lab}/out", *TRAIN],
         "photos-embedded holds 8-bit images of 3x32x32, but the model observes binary images of 1x28x28", ("out",)),
    Case("colour preset on binary digits", ["train", "--preset", "cifar-small", "--dataset", "mnist-embedded",
                                            "--run-dir", "{lab}/out", *TRAIN],
         "mnist-embedded holds binary images of 1x28x28, but the model observes 8-bit images of 3x32x32", ("out",)),
    Case("binary preset on 8-bit digits (same size, other kind)",
         ["train", "--preset", "tiny", "--dataset", "mnist-8bit", "--run-dir", "{lab}/out", *TRAIN],
         "holds 8-bit images of 1x28x28, but the model observes binary images of 1x28x28", ("out",)),
    Case("colour model of another image size", ["train", "--preset", "cifar-small", "--dataset", "photos-embedded",
                                                "--set", "model.image_shape=3,16,16", "--set",
                                                "model.latent_shape=8,4,4", "--set", "model.latent_dim=128",
                                                "--run-dir", "{lab}/out", *TRAIN],
         "holds 8-bit images of 3x32x32, but the model observes 8-bit images of 3x16x16", ("out",)),
    Case("resuming a binary run on colour data", ["train", "--resume", "--run-dir", "{lab}/binary",
                                                  "--dataset", "photos-embedded", *TRAIN], "dataset"),
    Case("compressing colour photographs with a binary model",
         ["compress", "{lab}/binary", "--dataset", "photos-embedded", "--subset", "2", "-o", "{lab}/out.vlae"],
         "1, 28, 28", ("out.vlae",)),
    Case("compressing binary digits with a colour model",
         ["compress", "{lab}/colour", "--dataset", "mnist-embedded", "--subset", "2", "-o", "{lab}/out.vlae"],
         "3, 32, 32", ("out.vlae",)),
    # images of the wrong shape or values for a colour model
    Case("one channel for an RGB model", ["compress", "{lab}/colour", "{lab}/gray.npy", "-o", "{lab}/out.vlae"],
         "expected 8-bit images (N, 3, H, W)", ("out.vlae",)),
    Case("16x16 images for a 32x32 model", ["compress", "{lab}/colour", "{lab}/small.npy", "-o", "{lab}/out.vlae"],
         "3, 32, 32", ("out.vlae",)),
    Case("values above 255", ["compress", "{lab}/colour", "{lab}/over.npy", "-o", "{lab}/out.vlae"],
         "values 0..255", ("out.vlae",)),
    Case("negative values", ["compress", "{lab}/colour", "{lab}/negative.npy", "-o", "{lab}/out.vlae"],
         "values 0..255", ("out.vlae",)),
    Case("fractional values", ["compress", "{lab}/colour", "{lab}/fractional.npy", "-o", "{lab}/out.vlae"],
         "integer dtype", ("out.vlae",)),
    # a corrupt or truncated CIFAR-10 archive, found through --data-dir
    Case("corrupt archive, train", ["train", "--preset", "cifar-small", "--data-dir", "{lab}/corrupt",
                                    "--run-dir", "{lab}/out", *TRAIN], "cifar-10-python.tar.gz", ("out",)),
    Case("truncated archive, train", ["train", "--preset", "cifar-small", "--data-dir", "{lab}/truncated",
                                      "--run-dir", "{lab}/out", *TRAIN], "cifar-10-python.tar.gz", ("out",)),
    Case("corrupt archive, eval", ["eval", "{lab}/colour", "--data-dir", "{lab}/corrupt", "--k", "2", "--subset", "2",
                                   "--progress", "off", "--out", "{lab}/out.json"],
         "cifar-10-python.tar.gz", ("out.json",)),
    Case("sample --n 100000000 (issue 21)", ["sample", "{lab}/colour", "--n", "100000000", "--out", "{lab}/huge.png"],
         "invalid --n: 100000000 samples make a grid of 330001 x 330001 pixels", ("huge.png",)),
    Case("truncated archive, compress", ["compress", "{lab}/colour", "--dataset", "cifar10", "--data-dir",
                                         "{lab}/truncated", "-o", "{lab}/out.vlae"],
         "cifar-10-python.tar.gz", ("out.vlae",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_colour_input_is_one_line_status_2_and_writes_nothing(case, lab, capsys, monkeypatch):
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(lab / "empty-cache"))
    before = sorted(p.name for p in lab.iterdir())
    runs = {r: sorted(p.name for p in (lab / r).iterdir()) for r in ("binary", "colour")}
    status = main([a.replace("{lab}", str(lab)) for a in case.args])
    err = capsys.readouterr().err
    assert status == 2, err
    line = [ln for ln in err.splitlines() if not ln.startswith("notice:")]
    assert len(line) == 1 and line[0].startswith("error: ") and "Traceback" not in err, err
    assert case.message in line[0], line[0]
    for path in case.absent:
        assert not (lab / path).exists(), path
    assert sorted(p.name for p in lab.iterdir()) == before  # nothing new beside the runs either
    assert {r: sorted(p.name for p in (lab / r).iterdir()) for r in runs} == runs  # nor in them


def test_a_colour_model_refuses_bad_images_in_the_library(lab):
    model, _ = load_model(lab / "colour")
    good = torch.randint(0, 256, (2, 3, 32, 32)).float()
    assert torch.isfinite(model.terms(good).nelbo).all()
    for bad, message in ((good[:, :1], r"shape \(B, 3, 32, 32\)"), (good[..., :16, :16], r"shape \(B, 3, 32, 32\)"),
                         (good + 256, "0..255"), (good - 256, "0..255"), (good.clamp(0, 254) + 0.5, "non-integer"),
                         (good * float("nan"), "NaN")):
        with pytest.raises(VLAEError, match=message) as error:
            model.check_images(bad)
        assert "\n" not in str(error.value)


def test_sample_of_a_colour_run_writes_its_rgb_samples(lab, capsys):
    """``vlae sample`` (the fast sampler) writes the colour samples themselves:
    every tile of the PNG holds the RGB values that ``fast_sample`` draws with the same seed."""
    from PIL import Image

    from vlae.sampling import fast_sample

    out = lab / "samples.png"
    try:
        assert main(["sample", str(lab / "colour"), "--n", "2", "--seed", "3", "--out", str(out)]) == 0
        assert "fast sampler" in capsys.readouterr().out
        png = np.asarray(Image.open(out).convert("RGB")).astype(int)
    finally:
        out.unlink(missing_ok=True)
    model, _ = load_model(lab / "colour")
    x = fast_sample(model, 2, generator=torch.Generator().manual_seed(3)).permute(0, 2, 3, 1).numpy()
    assert png.shape == (1 * 33 + 1, 2 * 33 + 1, 3)  # a 1x2 grid of 32x32 tiles, 1-pixel gaps
    for i in range(2):
        tile = png[1:33, 1 + 33 * i:33 + 33 * i]
        assert np.abs(tile - x[i]).max() <= 1  # 8-bit values through float [0, 1] and back
    assert len({tuple(v) for v in png[1:33, 1:33].reshape(-1, 3)}) > 100  # colour, not one grey channel


def test_eval_of_a_colour_run_defaults_to_the_papers_k_and_names_estimator_and_data(lab, capsys, monkeypatch):
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(lab / "empty-cache"))
    out = lab / "eval.json"
    try:
        assert main(["eval", str(lab / "colour"), "--subset", "1", "--progress", "off", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    printed = capsys.readouterr().out
    assert result["estimator"] == "IW bound, k=512" and result["k"] == 512  # cifar presets: eval.k = 512, as the paper
    assert result["dataset"] == "photos-embedded" and result["requested_dataset"] == "cifar10"
    assert "photos-embedded (embedded fallback for cifar10) test, 1 images, IW bound, k=512" in printed
    assert "bits/dim" in printed
