"""Evaluation: the IW bound agrees with the model's, standard errors, active units, the JSON record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlae.checkpoint import save_checkpoint
from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.evaluate import active_units, evaluate_checkpoint, evaluate_model, standard_error
from vlae.model import VLAE


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VLAE(get_preset("tiny").model)
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.2))
    m.initialize(x)
    return m.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.15), generator=torch.Generator().manual_seed(seed)
                           ).to(torch.uint8)


def test_iw_bound_matches_the_model(model):
    x = _images(6)
    result = evaluate_model(model, x, k=10, batch_size=3, chunk=4, progress=False,
                            generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    expected = []
    for start in (0, 3):  # evaluate_model draws, per batch, the IW samples and then one ELBO sample
        expected.append(model.iw_bound(x[start:start + 3].float(), k=10, chunk=4, generator=gen))
        model.terms(x[start:start + 3].float(), generator=gen)
    nll = -torch.cat(expected)
    assert result["nll"] == pytest.approx(float(nll.mean()), rel=1e-9)
    assert result["nll_se"] == pytest.approx(float(nll.std() / math.sqrt(6)), rel=1e-9)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    assert result["estimator"] == "IW bound, k=10" and result["images"] == 6
    assert -result["elbo"] >= result["nll"]  # the mean log weight bounds log p(x) less tightly
    assert len(result["kl_per_dim"]) == 8 and sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-6)


def test_one_sample_bound_is_the_elbo(model):
    result = evaluate_model(model, _images(5), k=1, batch_size=5, progress=False)
    assert result["nll"] == pytest.approx(-result["elbo"], rel=1e-12)


def test_iw_bound_tightens_with_k(model):
    x = _images(8, seed=3)
    loose = evaluate_model(model, x, k=1, batch_size=8, progress=False, generator=torch.Generator().manual_seed(0))
    tight = evaluate_model(model, x, k=64, batch_size=8, progress=False, generator=torch.Generator().manual_seed(0))
    assert tight["nll"] < loose["nll"]


def test_standard_error_formula():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 9.0])
    assert standard_error(values) == pytest.approx(np.std(values.numpy(), ddof=1) / math.sqrt(5))
    assert math.isnan(standard_error(torch.tensor([3.0])))


def test_active_units_on_a_constructed_case():
    g = torch.Generator().manual_seed(0)
    n = 2000
    means = torch.stack([
        torch.randn(n, generator=g),  # variance 1: active
        0.05 * torch.randn(n, generator=g),  # variance 0.0025: inactive
        torch.zeros(n),  # collapsed onto the prior
        0.2 * torch.randn(n, generator=g),  # variance 0.04: active
    ], 1)
    count, variances = active_units(means)
    assert count == 2
    assert variances[0] == pytest.approx(1.0, rel=0.1) and variances[2] == 0.0


def test_active_units_of_a_model_with_a_dead_encoder(model):
    import copy

    dead = copy.deepcopy(model)
    for p in dead.encoder.parameters():  # q(z|x) no longer depends on x: no unit is active
        p.data.zero_()
    assert evaluate_model(dead, _images(12), k=2, batch_size=6, progress=False)["active_units"] == 0
    assert evaluate_model(model, _images(12), k=2, batch_size=6, progress=False)["active_units"] > 0


def test_bad_inputs(model):
    with pytest.raises(VLAEError, match="k must be"):
        evaluate_model(model, _images(2), k=0)
    with pytest.raises(VLAEError, match="binary"):
        evaluate_model(model, _images(2) * 3, k=2)
    with pytest.raises(VLAEError, match="no images"):
        evaluate_model(model, _images(2)[:0], k=2)
    with pytest.raises(VLAEError, match="chunk"):
        evaluate_model(model, _images(2), k=2, chunk=-1)
    with pytest.raises(VLAEError, match="batch_size"):
        evaluate_model(model, _images(2), k=2, batch_size=0)


def test_evaluate_checkpoint_writes_json(tmp_path, model):
    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    result = evaluate_checkpoint(tmp_path, split="test", k=3, subset=10, seed=0, notice=lambda m: None,
                                 progress=False)
    path = tmp_path / "eval_mnist-embedded_test_k3_n10.json"  # the name says what was measured, on which data
    assert result["path"] == str(path)
    written = json.loads(path.read_text(), parse_constant=_no_constant)  # strict JSON
    assert written["data_identity"]["name"] == "mnist-embedded" and written["data_identity"]["images"] == 10
    assert written["data_identity"]["subset_of"] == 500 and written["data_fallback"] is False
    assert written["estimator"] == "IW bound, k=3" and written["images"] == 10 and written["split"] == "test"
    assert written["config"]["train"]["dataset"] == "mnist-embedded" and "command" in written
    assert written["nll"] == pytest.approx(result["nll"]) and written["checkpoint"].endswith("best.pt")
    again = evaluate_checkpoint(tmp_path, split="test", k=3, subset=10, seed=0, notice=lambda m: None,
                                progress=False, out=tmp_path / "again.json")
    assert again["nll"] == result["nll"]  # seeded: the same importance samples


def _no_constant(name):
    raise AssertionError(f"non-strict JSON constant {name}")


def test_evaluate_checkpoint_records_non_finite_as_null(tmp_path, model):
    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    result = evaluate_checkpoint(tmp_path, k=2, subset=1, notice=lambda m: None, progress=False)
    assert math.isnan(result["nll_se"])  # one image: no standard error
    written = json.loads(open(result["path"]).read(), parse_constant=_no_constant)
    assert written["nll_se"] is None and written["elbo_se"] is None
    assert set(written["non_finite"]) == {"nll_se", "elbo_se"} and math.isfinite(written["nll"])


def test_evaluate_checkpoint_never_overwrites_other_data(tmp_path, model):
    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    real = tmp_path / "real.json"  # what a result on other files looks like (here written by an older vlae)
    real.write_text(json.dumps({"estimator": "IW bound, k=2", "dataset": "binarized-mnist", "split": "test",
                                "data": "/data/binarized_mnist_test.amat", "images": 10000, "nll": 80.0}))
    before = real.read_text()
    with pytest.raises(VLAEError, match="other data"):
        evaluate_checkpoint(tmp_path, k=2, subset=4, out=real, notice=lambda m: None, progress=False)
    assert real.read_text() == before
    first = evaluate_checkpoint(tmp_path, k=2, subset=4, notice=lambda m: None, progress=False)
    again = evaluate_checkpoint(tmp_path, k=2, subset=4, seed=1, notice=lambda m: None, progress=False)
    assert again["path"] == first["path"]  # the same data: a re-evaluation replaces it
    moved = json.loads(open(first["path"]).read())
    moved["data_identity"]["source"] = "/another/machine/mnist_5k.csv.gz"  # same pixels (sha256) elsewhere
    open(first["path"], "w").write(json.dumps(moved))
    evaluate_checkpoint(tmp_path, k=2, subset=4, notice=lambda m: None, progress=False)
    moved["data_identity"]["sha256"] = "0" * 64  # other pixels
    open(first["path"], "w").write(json.dumps(moved))
    with pytest.raises(VLAEError, match="other data"):
        evaluate_checkpoint(tmp_path, k=2, subset=4, notice=lambda m: None, progress=False)
    with pytest.raises(VLAEError, match="other data"):  # same name, other images: refused
        evaluate_checkpoint(tmp_path, k=2, subset=5, out=first["path"], notice=lambda m: None, progress=False)
    with pytest.raises(VLAEError, match="chunk"):
        evaluate_checkpoint(tmp_path, k=2, subset=4, chunk=-1, notice=lambda m: None, progress=False)


def test_a_non_finite_bound_is_an_error_and_writes_nothing(tmp_path, model, monkeypatch):
    import vlae.evaluate

    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    real = vlae.evaluate.evaluate_model
    monkeypatch.setattr(vlae.evaluate, "evaluate_model", lambda *a, **kw: {**real(*a, **kw), "nll": math.inf})
    with pytest.raises(VLAEError, match="IW bound came out inf"):
        evaluate_checkpoint(tmp_path, k=2, subset=3, notice=lambda m: None, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_result_names_say_what_was_measured():
    from vlae.evaluate import result_name

    assert result_name("binarized-mnist", "test", 4096) == "eval_binarized-mnist_test_k4096.json"
    assert result_name("mnist-embedded", "valid", 4, images=50, weights="raw") == "eval_mnist-embedded_valid_k4_n50_raw.json"


def test_evaluate_checkpoint_subset_is_the_fixed_subset(tmp_path, model):
    from vlae.data import fixed_subset, load_or_fallback

    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    result = evaluate_checkpoint(tmp_path, split="test", k=2, subset=6, seed=1, notice=lambda m: None, progress=False)
    images = load_or_fallback("mnist-embedded", "test").binarized(torch.Generator().manual_seed(1))
    model.eval()
    expect = evaluate_model(model, fixed_subset(images, 6), k=2, batch_size=cfg.eval.batch_size,
                            generator=torch.Generator().manual_seed(1), progress=False)
    prefix = evaluate_model(model, images[:6], k=2, batch_size=cfg.eval.batch_size,
                            generator=torch.Generator().manual_seed(1), progress=False)
    assert result["nll"] == pytest.approx(expect["nll"], abs=1e-9)
    assert result["nll"] != pytest.approx(prefix["nll"], abs=1e-6)
