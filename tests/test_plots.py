"""Tests of vlae.plots: every figure is a readable PNG, and the receptive-field
figure marks exactly the pixels autograd says a logit depends on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from vlae import plots
from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.pixelcnn import FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN

torch.set_num_threads(1)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01  # not a blank canvas


def tiny_model(**overrides) -> VLAE:
    cfg = get_preset("tiny")
    for key, value in overrides.items():
        setattr(cfg.model, key, value)
    torch.manual_seed(0)
    model = VLAE(cfg.model).eval()
    model.initialize(torch.bernoulli(torch.full((16, 1, 28, 28), 0.2)))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    return torch.bernoulli(torch.full((12, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(1))


def write_metrics(path) -> None:
    lines = []
    for step in range(1, 61):
        rec = {"step": step, "epoch": (step - 1) // 20, "loss": 200 - step, "nelbo": 199 - step,
               "recon": 180 - step, "kl": 19 + step / 60, "lr": 1e-3}
        if step == 7:
            del rec["kl"], rec["lr"]  # tolerate missing keys
        lines.append(json.dumps(rec))
        if step % 20 == 0:
            lines.append(json.dumps({"split": "valid", "epoch": (step - 1) // 20, "elbo": -(190 - step),
                                     "kl": 20.0, "iw_k16": -(185 - step)}))
    lines.append("not json")
    path.write_text("\n".join(lines) + "\n")


def test_training_curves(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics)
    warnings = []
    train, valid = plots.read_metrics(metrics, notice=warnings.append)
    assert len(train) == 60 and len(valid) == 3
    assert len(warnings) == 1 and "skipped 1 line" in warnings[0] and "line 64" in warnings[0]  # "not json", said
    assert_png(plots.plot_training_curves(metrics, tmp_path / "curves.png", notice=None))
    with pytest.raises(VLAEError, match="does not exist"):
        plots.plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


def test_read_metrics_drops_superseded_records_and_refuses_binary(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "superseded": True}, {"step": 2, "loss": 3.0},
        {"step": 3, "skipped": True}]) + "\n")
    warnings = []
    train, _ = plots.read_metrics(metrics, notice=warnings.append)
    assert [r.get("loss") for r in train] == [5.0, 3.0, None] and not warnings
    metrics.write_bytes(b'{"step": 1}\n\xff\xfe garbage\n')
    with pytest.raises(VLAEError, match="not UTF-8"):
        plots.read_metrics(metrics)


def test_figures_go_only_where_they_can_be_written(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(VLAEError, match="is a file, not a folder"):
        plots.plot_samples(model, 4, blocker / "samples.png")
    out = plots.plot_samples(model, 4, tmp_path / "samples.png")
    assert_png(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # written atomically


@pytest.mark.parametrize("name", ["reconstructions", "lossy_decompression", "kl_heatmap", "latent_traversals",
                                  "interpolations"])
def test_image_figures(model, images, tmp_path, name):
    out = getattr(plots, f"plot_{name}")(model, images, tmp_path / f"{name}.png")
    assert out == tmp_path / f"{name}.png"
    assert_png(out)


def test_samples_and_receptive_field_figures(model, tmp_path):
    assert_png(plots.plot_samples(model, 10, tmp_path / "samples.png"))
    assert_png(plots.plot_receptive_field(model, tmp_path / "rf.png"))
    assert_png(plots.plot_receptive_field(GatedPixelCNN(3, 5, 8, 4), tmp_path / "rf_gated.png", pixel=(0, 0)))


def test_unconditional_model(tmp_path, images):
    model = tiny_model(latent_dim=0)
    assert_png(plots.plot_samples(model, 4, tmp_path / "samples.png"))
    with pytest.raises(VLAEError, match="latent"):
        plots.plot_reconstructions(model, images, tmp_path / "r.png")


@pytest.mark.parametrize("decoder", [MaskedPixelCNN(1, 3, 4, 4), MaskedPixelCNN(3, 5, 4, 4, tie_weights=False),
                                     MaskedPixelCNN(4, 3, 4, 0), GatedPixelCNN(1, 3, 4, 4), GatedPixelCNN(3, 3, 4, 0),
                                     GatedPixelCNN(2, 5, 4, 4)],
                         ids=["masked1", "masked3k5", "masked4-uncond", "gated1", "gated3-uncond", "gated2k5"])
def test_jacobian_support_equals_reported_field(decoder):
    shape = (20, 24)
    pixel = plots._default_pixel(decoder, shape)
    w = decoder.window()
    assert pixel[0] - w["up"] >= 0 and pixel[1] - w["left"] >= 0 and pixel[1] + w["right"] < shape[1]
    support = plots.jacobian_support(decoder, pixel, shape)
    assert int(support.sum()) == decoder.receptive_field_size()
    assert torch.equal(support, plots.receptive_field_mask(decoder, pixel, shape))
    assert not support[pixel]  # a pixel never sees itself


def test_jacobian_support_of_factorized_decoder_is_empty():
    assert not plots.jacobian_support(FactorizedDecoder(4, 8), (3, 3), (8, 8)).any()


def test_plot_run(model, images, tmp_path):
    from vlae.checkpoint import save_checkpoint

    run_dir = tmp_path / "run"
    write_metrics(tmp_path / "metrics.jsonl")
    save_checkpoint(run_dir / "best.pt", {"config": get_preset("tiny").to_dict(), "model": model.state_dict(),
                                          "ema": None})
    (run_dir / "metrics.jsonl").write_text((tmp_path / "metrics.jsonl").read_text())
    paths = plots.plot_run(run_dir, images=images)
    assert len(paths) == 8 and all(p.parent == run_dir / "figures" for p in paths)
    for p in paths:
        assert_png(p)
    with pytest.raises(VLAEError, match="does not exist"):
        plots.plot_run(tmp_path / "no-such-run")


def test_visualization_script(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "visualization.py"
    out = tmp_path / "rf.png"
    done = subprocess.run([sys.executable, str(script), "--receptive-field", "--decoder-layers", "2", "--kernel", "5",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_png(out)
    bad = subprocess.run([sys.executable, str(script), "--receptive-field", "--kernel", "4"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------- colour
def colour_model(**overrides) -> VLAE:
    """A cifar-small-shaped model (RGB, logistic mixture, spatial code 2x2x2) on 8x8 images."""
    cfg = get_preset("cifar-small")
    small = dict(image_shape=(3, 8, 8), latent_shape=(2, 2, 2), latent_dim=8, stage_channels=(8, 8, 8),
                 decoder_filters=8, cond_channels=4, prior_hidden=8, flow_steps=1, mixture_components=2,
                 free_bits_groups=2)
    for key, value in {**small, **overrides}.items():
        setattr(cfg.model, key, value)
    cfg.model.validate()
    torch.manual_seed(0)
    model = VLAE(cfg.model).eval()
    model.initialize(torch.randint(0, 256, (8, 3, 8, 8)).float())
    return model


def test_colour_figures_and_the_kl_maps_of_a_spatial_code(tmp_path):
    model = colour_model()
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(2)).float()
    for name in ("reconstructions", "lossy_decompression", "kl_heatmap"):
        assert_png(getattr(plots, f"plot_{name}")(model, x, tmp_path / f"{name}.png"))
    assert_png(plots.plot_samples(model, 4, tmp_path / "samples.png"))
    with pytest.raises(VLAEError, match="gray context"):  # only a gray-context decoder makes that experiment
        plots.plot_grayscale_experiment(model, x, tmp_path / "gray.png")
    assert not (tmp_path / "gray.png").exists()


def test_chroma_is_zero_for_gray_and_follows_the_colour():
    gray = torch.full((2, 3, 4, 4), 77.0)
    assert torch.allclose(plots._chroma(gray), torch.zeros(2, 3), atol=1e-5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 100.0  # luma 29.9: chroma (70.1, -29.9, -29.9)
    torch.testing.assert_close(plots._chroma(red), torch.tensor([[70.1, -29.9, -29.9]]))
    assert torch.allclose(plots._chroma(red + 50.0), plots._chroma(red), atol=1e-4)  # brightness is not chroma


def test_colour_retention_compares_with_own_and_other_images():
    model = colour_model(gray_context=True)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    result = plots.colour_retention(model, x, draws=2)
    assert result["images"] == 4 and result["draws"] == 2
    assert all(result[key] >= 0 and math.isfinite(result[key]) for key in ("own", "other", "prior"))
    same = plots.colour_retention(model, x[:1].expand(4, -1, -1, -1), draws=2)
    assert same["own"] == pytest.approx(same["other"], abs=1e-4)  # "other" is another image: here, an equal one
    tinted = x.clone()
    tinted[1::2, 0] = 255.0  # every other image red: its neighbours' chroma now differs from its own
    result = plots.colour_retention(model, tinted)
    assert result["other"] != pytest.approx(result["own"])
    with pytest.raises(VLAEError, match="at least 2 RGB images"):
        plots.colour_retention(model, x[:1])


def test_colour_retention_tool_errors_are_one_line(tmp_path):
    import subprocess

    tool = str(Path(__file__).resolve().parents[1] / "tools" / "colour_retention.py")
    missing = subprocess.run([sys.executable, tool, str(tmp_path / "no-run")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "no-run" in missing.stderr
    few = subprocess.run([sys.executable, tool, str(tmp_path), "--images", "1"], capture_output=True, text=True,
                         timeout=120)
    assert few.returncode == 2 and "--images" in few.stderr


def test_grayscale_experiment_figure(tmp_path):
    model = colour_model(gray_context=True)
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(2)).float()
    assert_png(plots.plot_grayscale_experiment(model, x, tmp_path / "gray.png", n=3, n_images=4))
