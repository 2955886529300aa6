"""Evaluation: the IW bound agrees with the model's, standard errors, active units, the JSON record."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vlae.checkpoint import save_checkpoint
from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.evaluate import active_units, evaluate_checkpoint, evaluate_model, image_seed, standard_error
from vlae.model import VLAE

from emulated_cuda import emulated_cuda

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def _eager_log_weights(model, x, eps):
    """The log weights as computed before the fast path: the whole decoder on a k-fold copy of each image."""
    k = eps.shape[0] // x.shape[0]
    mu, log_sigma, h = model.encode(x)
    rep = lambda t: t.repeat(k, 1)  # noqa: E731
    z, log_q = model.posterior.rsample(rep(mu), rep(log_sigma), rep(h), eps)
    xk = x.repeat(k, 1, 1, 1)
    return (model.observation.log_prob(model.decoder(model.observation.scale(xk), model.upsampler(z)), xk)
            + model.prior.log_prob(z) - log_q.sum(1)).view(k, x.shape[0])


def test_iw_bound_matches_the_eager_computation_with_per_image_streams(model):
    x, k, seed = _images(6), 10, 5
    result = evaluate_model(model, x, k=k, batch_size=4, chunk=3, progress=False, seed=seed)
    nll = []
    with torch.no_grad():
        for i in range(6):  # image i's samples come from its own stream, whatever the batch
            eps = torch.randn((k, model.latent_dim), generator=torch.Generator().manual_seed(image_seed(seed, i)))
            log_w = _eager_log_weights(model, x[i:i + 1].float(), eps).double()
            nll.append(-(torch.logsumexp(log_w, 0) - math.log(k)))
    nll = torch.cat(nll)
    assert result["nll"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert result["nll_se"] == pytest.approx(float(nll.std() / math.sqrt(6)), rel=1e-4)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    assert result["estimator"] == "IW bound, k=10" and result["images"] == 6
    assert -result["elbo"] >= result["nll"]  # the mean log weight bounds log p(x) less tightly
    assert result["elbo"] == pytest.approx(-(result["recon"] + result["kl"]), rel=1e-7)  # the same k samples
    assert len(result["kl_per_dim"]) == 8 and sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-6)


@pytest.mark.parametrize("kind", ["masked", "masked-cond-every-layer", "gated", "gated-4x2", "iaf"])
def test_fast_log_weights_equal_the_eager_ones(kind):
    """Shared encoder and first layer, channels-last weights, chunked passes: the
    same log weights as the whole model on k copies, to float rounding."""
    cfg = get_preset("tiny").model
    if kind.startswith("gated"):
        cfg.decoder, cfg.decoder_filters = "gated", 8
        cfg.decoder_field = "4x2" if kind == "gated-4x2" else ""  # one vertical layer: its part is shared further
    cfg.cond_every_layer = kind in ("masked-cond-every-layer", "gated")
    cfg.posterior = "iaf" if kind == "iaf" else "gaussian"
    torch.manual_seed(3)
    m = VLAE(cfg)
    m.initialize(torch.bernoulli(torch.full((16, 1, 28, 28), 0.2)))
    m.eval()
    x, k = _images(3, seed=4).float(), 7
    eps = torch.randn((k * 3, cfg.latent_dim), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        eager = _eager_log_weights(m, x, eps)
        m.to(memory_format=torch.channels_last)
        shared = m.shared(x)
        fast = torch.cat([-m.sample_terms(x, n, eps=eps[s * 3:(s + n) * 3], shared=shared).nelbo.view(n, 3)
                          for s, n in ((0, 3), (3, 3), (6, 1))])
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=2e-4)
    assert not torch.allclose(fast, eager.roll(1, 1))  # the images' weights differ: the check has teeth


def test_an_unconditional_pixelcnn_gets_its_exact_likelihood():
    cfg = get_preset("tiny").model
    cfg.latent_dim = 0
    torch.manual_seed(1)
    m = VLAE(cfg).eval()
    x = _images(5, seed=6)
    result = evaluate_model(m, x, k=4, batch_size=2, progress=False)
    with torch.no_grad():
        exact = m.terms(x.float()).recon.double()
    assert result["nll"] == pytest.approx(float(exact.mean()), rel=1e-6)  # float32 rounding (layout, batch)
    assert result["elbo"] == pytest.approx(-result["nll"], rel=1e-12) and result["kl"] == 0
    assert result["active_units"] == 0 and result["kl_per_dim"] == []


def test_numbers_do_not_depend_on_batch_or_pass_size(model):
    x = _images(7, seed=2)
    a = evaluate_model(model, x, k=12, batch_size=7, progress=False, seed=3)
    b = evaluate_model(model, x, k=12, batch_size=2, chunk=5, progress=False, seed=3)
    c = evaluate_model(model, x, k=12, batch_size=7, progress=False, seed=4)
    for key in ("nll", "elbo", "kl", "recon"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6)
    assert c["nll"] != pytest.approx(a["nll"], rel=1e-6)  # another seed: other samples


def test_compiled_evaluation_gives_the_eager_numbers(model):
    """``compile=True`` fuses the same operations: the same per-image bounds to float rounding."""
    x = _images(8, seed=7)
    eager = evaluate_model(model, x, k=6, batch_size=4, chunk=3, progress=False, seed=2)
    torch._dynamo.reset()
    compiled = evaluate_model(model, x, k=6, batch_size=4, chunk=3, progress=False, seed=2, compile=True)
    for key in ("nll", "elbo", "kl", "recon"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-4)
    assert compiled["kl_per_dim"] == pytest.approx(eager["kl_per_dim"], rel=1e-4, abs=1e-5)
    other = evaluate_model(model, x, k=6, batch_size=4, chunk=3, progress=False, seed=3, compile=True)
    assert other["nll"] != pytest.approx(eager["nll"], rel=1e-5)  # the comparison can fail


def test_one_sample_bound_is_the_elbo(model):
    result = evaluate_model(model, _images(5), k=1, batch_size=5, progress=False)
    assert result["nll"] == pytest.approx(-result["elbo"], rel=1e-12)


def test_iw_bound_tightens_with_k(model):
    x = _images(8, seed=3)
    loose = evaluate_model(model, x, k=1, batch_size=8, progress=False, seed=0)
    tight = evaluate_model(model, x, k=64, batch_size=8, progress=False, seed=0)
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
    assert written["compiled"] is False
    assert written["estimator"] == "IW bound, k=3" and written["images"] == 10 and written["split"] == "test"
    assert written["config"]["train"]["dataset"] == "mnist-embedded" and "command" in written
    assert written["nll"] == pytest.approx(result["nll"]) and written["checkpoint"].endswith("best.pt")
    again = evaluate_checkpoint(tmp_path, split="test", k=3, subset=10, seed=0, notice=lambda m: None,
                                progress=False, out=tmp_path / "again.json")
    assert again["nll"] == result["nll"]  # seeded: the same importance samples


def test_evaluation_on_an_emulated_gpu_keeps_each_tensor_on_its_device(tmp_path, model):
    """``vlae eval --device cuda``'s code path (its GPU branches: more log weights per pass, no
    channels-last) on ``tests/emulated_cuda.py``'s GPU: devices are checked as CUDA checks
    them, and the numbers, the CPU's arithmetic, are the CPU run's."""
    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    run = dict(split="test", k=3, subset=6, seed=0, notice=lambda m: None, progress=False)
    on_cpu = evaluate_checkpoint(tmp_path, device="cpu", out=tmp_path / "cpu.json", **run)
    with emulated_cuda():
        on_gpu = evaluate_checkpoint(tmp_path, device="cuda", out=tmp_path / "gpu.json", **run)
    assert json.loads((tmp_path / "gpu.json").read_text())["device"].startswith("cuda")
    for key in ("nll", "elbo", "kl"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-6), key

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
    import vlae.evaluate.checkpoint_eval as checkpoint_eval  # where evaluate_checkpoint looks summarize up

    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    real = checkpoint_eval.summarize
    monkeypatch.setattr(checkpoint_eval, "summarize", lambda *a, **kw: {**real(*a, **kw), "nll": math.inf})
    with pytest.raises(VLAEError, match="IW bound came out inf"):
        evaluate_checkpoint(tmp_path, k=2, subset=3, notice=lambda m: None, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_result_names_say_what_was_measured():
    from vlae.evaluate import result_name

    assert result_name("binarized-mnist", "test", 4096) == "eval_binarized-mnist_test_k4096.json"
    assert (result_name("mnist-embedded", "valid", 4, images=50, weights="raw")
            == "eval_mnist-embedded_valid_k4_n50_raw.json")


def test_evaluate_checkpoint_subset_is_the_fixed_subset(tmp_path, model):
    from vlae.data import fixed_subset, load_or_fallback

    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    result = evaluate_checkpoint(tmp_path, split="test", k=2, subset=6, seed=1, notice=lambda m: None, progress=False)
    images = load_or_fallback("mnist-embedded", "test").binarized(torch.Generator().manual_seed(1))
    model.eval()
    expect = evaluate_model(model, fixed_subset(images, 6), k=2, batch_size=cfg.eval.batch_size, seed=1,
                            progress=False)
    prefix = evaluate_model(model, images[:6], k=2, batch_size=cfg.eval.batch_size, seed=1, progress=False)
    assert result["nll"] == pytest.approx(expect["nll"], abs=1e-9)
    assert result["nll"] != pytest.approx(prefix["nll"], abs=1e-6)


# ----------------------------------------------------------------------------- scaling out


def _checkpoint(tmp_path, model):
    cfg = get_preset("tiny")
    cfg.train.dataset = "mnist-embedded"
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
    return tmp_path


_SAME = ("nll", "nll_se", "elbo", "elbo_se", "recon", "kl", "kl_per_dim", "active_units", "posterior_mean_variance",
         "images", "estimator")


def _quiet(**kw):
    return dict(k=3, subset=10, seed=2, batch_size=3, notice=lambda m: None, progress=False, **kw)


def test_sharded_and_merged_equals_unsharded(tmp_path, model):
    run = _checkpoint(tmp_path, model)
    whole = evaluate_checkpoint(run, **_quiet(out=tmp_path / "whole.json"))
    parts = [evaluate_checkpoint(run, **_quiet(shard=f"{i}/3")) for i in (2, 0, 1)]  # any order
    assert all(p["partial"] and p["path"].endswith(f".shard-{p['shard'][0]}-of-3.pt") for p in parts)
    assert sum(p["images"] for p in parts) == 10  # 4 blocks of 3 images over 3 shards
    with pytest.raises(VLAEError, match="exclude"):
        evaluate_checkpoint(run, **_quiet(shard="0/3", merge=True))
    merged = evaluate_checkpoint(run, **_quiet(merge=True))
    assert merged["shards"] == 3 and whole["shards"] == 1
    for key in _SAME:  # the same per-image samples: the same numbers, not merely close ones
        assert merged[key] == whole[key], key
    assert not list(run.glob("*.parts"))  # finished blocks are cleaned up


def test_merge_refuses_missing_or_foreign_shards(tmp_path, model):
    run = _checkpoint(tmp_path, model)
    with pytest.raises(VLAEError, match="nothing to merge"):
        evaluate_checkpoint(run, **_quiet(merge=True))
    evaluate_checkpoint(run, **_quiet(shard="1/2"))
    with pytest.raises(VLAEError, match=r"shard\(s\) 0/2 not finished"):
        evaluate_checkpoint(run, **_quiet(merge=True))
    with pytest.raises(VLAEError, match="another evaluation"):  # another seed draws other samples
        evaluate_checkpoint(run, **{**_quiet(merge=True), "seed": 9})


def test_shards_of_another_seed_or_batch_size_never_overwrite_a_finished_one(tmp_path, model):
    """A seed-1 or --batch-size 2 shard 0/2 beside a finished seed-0 one: three files, each merged alone."""
    run = _checkpoint(tmp_path, model)
    first = evaluate_checkpoint(run, **_quiet(shard="0/2"))
    kept = Path(first["path"]).read_bytes()
    other_seed = evaluate_checkpoint(run, **{**_quiet(shard="0/2"), "seed": 1})
    other_batch = evaluate_checkpoint(run, **{**_quiet(shard="0/2"), "batch_size": 2})
    paths = {first["path"], other_seed["path"], other_batch["path"]}
    assert len(paths) == 3 and Path(first["path"]).read_bytes() == kept
    assert ".seed2-b3-" in first["path"] and ".seed1-b3-" in other_seed["path"] and ".seed2-b2-" in other_batch["path"]
    evaluate_checkpoint(run, **_quiet(shard="1/2"))
    assert evaluate_checkpoint(run, **_quiet(merge=True))["nll"] == evaluate_checkpoint(
        run, **_quiet(out=tmp_path / "whole.json"))["nll"]


@pytest.mark.parametrize("damage", ["cut short", "random bytes", "foreign"])
def test_a_damaged_or_foreign_shard_is_one_line_at_merge(tmp_path, model, capsys, damage):
    from vlae.cli import main

    run = _checkpoint(tmp_path, model)
    args = ["eval", str(run), "--k", "3", "--subset", "10", "--batch-size", "3", "--progress", "off"]
    for i in (0, 1):
        assert main([*args, "--shard", f"{i}/2"]) == 0
    [path] = run.glob("*.shard-1-of-2.pt")
    if damage == "cut short":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        torch.save({"fingerprint": 1, "hello": torch.zeros(2)}, path)
    capsys.readouterr()
    assert main([*args, "--merge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "rerun that shard (`vlae eval ... --shard 1/2`" in err and "weights_only" not in err
    assert not list(run.glob("eval_*.json"))  # no result written
    assert main([*args, "--shard", "1/2"]) == 0 and main([*args, "--merge"]) == 0  # what the line says works


def test_torchrun_with_more_processes_than_blocks_names_the_processes(tmp_path, model, monkeypatch):
    """`torchrun --nproc-per-node 2 -m vlae eval RUN --subset 5`: the user gave no --shard."""
    run = _checkpoint(tmp_path, model)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(VLAEError) as error:
        evaluate_checkpoint(run, **{**_quiet(), "subset": 5, "batch_size": 50})
    assert str(error.value) == ("2 processes but only 1 block(s) of images (5 images, --batch-size 50): use fewer "
                                "processes or a smaller --batch-size")


@pytest.mark.parametrize("spec", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3", ""])
def test_bad_shard_specs_are_one_line_errors(spec):
    from vlae.evaluate import parse_shard

    with pytest.raises(VLAEError, match="invalid --shard") as error:
        parse_shard(spec)
    assert "\n" not in str(error.value)


def test_more_shards_than_blocks_is_an_error(tmp_path, model, capsys):
    from vlae.cli import main

    run = _checkpoint(tmp_path, model)
    assert main(["eval", str(run), "--k", "2", "--subset", "4", "--batch-size", "2", "--shard", "0/3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --shard 0/3: 3 shards but only 2 block(s)") and "\n" not in err
    assert main(["eval", str(run), "--k", "2", "--shard", "5/4"]) == 2
    assert "invalid --shard '5/4'" in capsys.readouterr().err


def test_an_interrupted_evaluation_resumes_from_its_finished_blocks(tmp_path, model, monkeypatch):
    import vlae.evaluate.bound as bound  # where the blocks look evaluate_block up

    run = _checkpoint(tmp_path, model)
    whole = evaluate_checkpoint(run, **_quiet(out=tmp_path / "whole.json"))
    real, calls = bound.evaluate_block, []

    def interrupted(model, x, indices, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the third block
        calls.append(indices)
        return real(model, x, indices, *args)

    monkeypatch.setattr(bound, "evaluate_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_checkpoint(run, **_quiet())
    [parts] = run.glob("eval_mnist-embedded_test_k3_n10.seed2-b3-*.parts")
    assert len(list(parts.glob("block-*.pt"))) == 2 and not (run / "eval_mnist-embedded_test_k3_n10.json").exists()

    def counting(model, x, indices, *args):
        calls.append(indices)
        return real(model, x, indices, *args)

    monkeypatch.setattr(bound, "evaluate_block", counting)
    resumed = evaluate_checkpoint(run, **_quiet())
    assert calls[2:] == [range(6, 9), range(9, 10)]  # only the blocks not finished before
    for key in _SAME:
        assert resumed[key] == whole[key], key
    assert not parts.exists()


def _rank(rank: int, world: int, port: int, run: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    result = evaluate_checkpoint(run, **_quiet(device="cpu"))
    torch.save({key: result.get(key) for key in (*_SAME, "partial", "shards")}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow  # two processes and a gloo group: ~20 s on a busy 2-core machine
def test_two_processes_give_the_result_of_one(tmp_path, model):
    """As under ``torchrun --nproc-per-node 2``: the ranks are the shards (gloo), rank 0 writes the result."""
    import socket

    import torch.multiprocessing as mp

    run = _checkpoint(tmp_path, model)
    one = evaluate_checkpoint(run, **_quiet(out=tmp_path / "one.json"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(run), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert second["partial"] and not first["partial"] and first["shards"] == 2
    for key in _SAME:
        assert first[key] == one[key], key
    written = json.loads((run / "eval_mnist-embedded_test_k3_n10.json").read_text())
    assert written["nll"] == one["nll"] and written["shards"] == 2


def test_the_package_names_are_its_modules_objects():
    """``vlae.evaluate`` re-exports each name from the one module that defines it (no copies)."""
    import vlae.evaluate
    from vlae.evaluate import bound, checkpoint_eval, result_file, shards, statistics

    homes = {bound: ["evaluate_model", "evaluate_block", "image_seed"], checkpoint_eval: ["evaluate_checkpoint"],
             result_file: ["result_name"], shards: ["blocks_of", "parse_shard", "shard_blocks"],
             statistics: ["summarize", "active_units", "standard_error", "ACTIVE_THRESHOLD"]}
    assert sorted(n for names in homes.values() for n in names) == sorted(vlae.evaluate.__all__)
    for module, names in homes.items():
        for name in names:
            assert getattr(vlae.evaluate, name) is getattr(module, name), name
    assert checkpoint_eval.summarize is statistics.summarize and bound.evaluate_block is vlae.evaluate.evaluate_block
