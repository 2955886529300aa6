"""The training loop: learning, skipped updates, exact resumption, stopping, files, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlae.checkpoint import latest_checkpoint, load_checkpoint
from vlae.config import config_from_dict, get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.train import kl_warmup_weight, lr_lambda, soft_free_bits_update, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # module scope: set before the module-scoped reference run (results depend on threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int = 96, seed: int = 0) -> torch.Tensor:
    """Binary blobs with structure (a bright square at a random place), uint8 (n, 1, 28, 28)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 28, 28, generator=g) < 0.05).to(torch.uint8)
    for i, (r, c) in enumerate(torch.randint(0, 20, (n, 2), generator=g).tolist()):
        x[i, 0, r:r + 8, c:c + 8] = 1
    return x


DATA = _images()


def _cfg(**train):
    cfg = get_preset("tiny")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_subset, cfg.train.progress = 4, 16, 16, "off"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _weights(run_dir):
    state = load_checkpoint(latest_checkpoint(run_dir))
    return state["model"], state["ema"], state


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 4 epochs of 6 steps."""
    run = tmp_path_factory.mktemp("reference")
    summary = train(_cfg(), run, data=DATA, quiet=True, log_every=2)
    return run, summary


def test_loss_goes_down_and_files_are_written(reference):
    run, summary = reference
    assert summary["steps"] == 24 and summary["epochs"] == 4 and summary["stopped"] == "epochs"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "split" not in r]
    valid_records = [r for r in records if r.get("split") == "valid"]
    assert len(valid_records) == 4  # one per epoch (eval_every=1)
    for key in ("step", "epoch", "loss", "nelbo", "recon", "kl", "kl_weight", "lr", "grad_norm", "skipped",
                "images_per_s", "time"):
        assert key in train_records[0], key
    for key in ("elbo", "nelbo", "kl", "bits_per_dim"):
        assert key in valid_records[0], key
    assert train_records[-1]["nelbo"] < train_records[0]["nelbo"] - 50  # starts near 300 nats, learns fast
    assert valid_records[-1]["nelbo"] < valid_records[0]["nelbo"]
    config = json.loads((run / "config.json").read_text())
    assert config_from_dict(config) == _cfg()
    assert (run / "best.pt").is_file() and (run / "summary.json").is_file()
    assert len(list(run.glob("ckpt-*.pt"))) == 2  # keep_last


def test_same_seed_same_weights_other_seed_different(reference, tmp_path):
    run, _ = reference
    train(_cfg(epochs=1), tmp_path / "a", data=DATA, quiet=True)
    train(_cfg(epochs=1), tmp_path / "b", data=DATA, quiet=True)
    train(_cfg(epochs=1, seed=1), tmp_path / "c", data=DATA, quiet=True)
    a, b, c = (_weights(tmp_path / d)[0] for d in "abc")
    assert _same(a, b)
    assert not _same(a, c)


def test_resume_after_max_steps_is_exact(reference, tmp_path):
    run, _ = reference
    first = train(_cfg(max_steps=9), tmp_path, data=DATA, quiet=True, log_every=2)  # stops mid-epoch 2
    assert first["steps"] == 9 and first["stopped"] == "max_steps" and first["batch_in_epoch"] == 3
    assert _weights(tmp_path)[2]["trainer"]["batch_in_epoch"] == 3
    train(_cfg(), tmp_path, data=DATA, quiet=True, resume=True, log_every=2)
    ref_model, ref_ema, _ = _weights(run)
    model, ema, state = _weights(tmp_path)
    assert state["trainer"]["step"] == 24
    assert _same(ref_model, model) and _same(ref_ema, ema)


def test_resume_after_crash_mid_epoch_is_exact(reference, tmp_path):
    run, _ = reference

    class Crash(Exception):
        pass

    def crash(record):
        if record["step"] == 15:  # in epoch 3; the last checkpoint is from the end of epoch 2
            raise Crash

    with pytest.raises(Crash):
        train(_cfg(), tmp_path, data=DATA, quiet=True, callback=crash)
    assert _weights(tmp_path)[2]["trainer"]["step"] == 12
    train(_cfg(), tmp_path, data=DATA, quiet=True, resume=True)
    assert _same(_weights(run)[0], _weights(tmp_path)[0]) and _same(_weights(run)[1], _weights(tmp_path)[1])


@pytest.mark.parametrize("interval", [{"checkpoint_steps": 1}, {"checkpoint_seconds": 1e-9}])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(reference, tmp_path, interval):
    def crash(record):
        if record["step"] == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(**interval), tmp_path, data=DATA, quiet=True, callback=crash)
    state = _weights(tmp_path)[2]
    assert state["trainer"]["step"] == 14 and state["trainer"]["batch_in_epoch"] == 2
    assert state["trainer"]["reason"] == ("steps" if "checkpoint_steps" in interval else "time")
    train(_cfg(), tmp_path, data=DATA, quiet=True, resume=True)
    run, _ = reference
    assert _same(_weights(run)[0], _weights(tmp_path)[0]) and _same(_weights(run)[1], _weights(tmp_path)[1])


def test_non_finite_update_is_skipped_and_counted(tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = VLAE.forward

    def poisoned(self, x, method="terms"):
        terms = forward(self, x, method)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                terms.recon = terms.recon * float("nan")
        return terms

    monkeypatch.setattr(VLAE, "forward", poisoned)
    summary = train(_cfg(max_steps=5), tmp_path, data=DATA, quiet=True, log_every=5)
    assert summary["skipped"] == 1 and summary["steps"] == 5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skips = [r for r in records if "skipped_step" in r]
    assert [(r["step"], r["skipped_step"]) for r in skips] == [(3, "non-finite loss")]
    assert not {"loss", "nelbo", "recon", "kl", "grad_norm"} & set(skips[0])  # no made-up numbers
    window = [r for r in records if r["step"] == 5 and "split" not in r]
    assert window[0]["steps_averaged"] == 4 and math.isfinite(window[0]["loss"])  # the 4 good steps only
    model, ema, state = _weights(tmp_path)
    assert state["trainer"]["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in ema.values() if v.is_floating_point())


def test_time_budget_and_max_steps_stop_with_a_checkpoint(tmp_path):
    summary = train(_cfg(epochs=0, time_budget=1e-6), tmp_path / "t", data=DATA, quiet=True)
    assert summary["stopped"] == "time_budget" and summary["steps"] == 1
    assert _weights(tmp_path / "t")[2]["trainer"]["reason"] == "time_budget"
    summary = train(_cfg(epochs=0, max_steps=3, tensorboard=True), tmp_path / "m", data=DATA, quiet=True,
                    log_every=1)
    assert summary["stopped"] == "max_steps" and summary["steps"] == 3
    assert latest_checkpoint(tmp_path / "m").name == "ckpt-000000003.pt"
    assert list((tmp_path / "m" / "tb").glob("events.out.tfevents.*"))


def test_dynamic_data_soft_free_bits_and_kl_warmup(tmp_path):
    grey = (DATA.float() * 200 + 20).to(torch.uint8)  # grey levels: binarized afresh every epoch
    cfg = _cfg(epochs=2, soft_free_bits=True, kl_warmup_steps=4)
    cfg.model.free_bits = 0.5  # a floor far above the KL, so the weight must move down
    summary = train(cfg, tmp_path, data={"train": grey, "valid": DATA}, quiet=True, log_every=1)
    assert summary["steps"] == 12 and math.isclose(summary["kl_weight_gamma"], 0.9 ** 12)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    weights = [r["kl_weight"] for r in records if "split" not in r]
    assert weights[:5] == pytest.approx([0.0, 0.25 * 0.9, 0.5 * 0.81, 0.75 * 0.729, 0.9 ** 4])


def test_resume_refuses_other_model_or_nothing(reference, tmp_path):
    run, _ = reference
    with pytest.raises(VLAEError, match="nothing to resume"):
        train(_cfg(), tmp_path, data=DATA, quiet=True, resume=True)
    cfg = _cfg()
    cfg.model.latent_dim = 4
    with pytest.raises(VLAEError, match="model.latent_dim"):
        train(cfg, run, data=DATA, quiet=True, resume=True)
    with pytest.raises(VLAEError, match="train.lr"):
        train(_cfg(lr=1e-4), run, data=DATA, quiet=True, resume=True)


def test_schedules():
    assert soft_free_bits_update(1.0, kl=1.0, target=2.0) == pytest.approx(0.9)
    assert soft_free_bits_update(0.5, kl=3.0, target=2.0) == pytest.approx(0.55)
    assert soft_free_bits_update(0.95, kl=3.0, target=2.0) == 1.0
    assert soft_free_bits_update(0.5, kl=2.05, target=2.0) == 0.5  # within the paper's 5% band: unchanged
    assert [kl_warmup_weight(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert kl_warmup_weight(0, 0) == 1.0
    cfg = _cfg(lr_warmup_steps=4, lr_decay="cosine", max_steps=100)
    f = lr_lambda(cfg, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.25 * 1.0) and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    f = lr_lambda(_cfg(lr_decay="exponential", lr_decay_rate=0.5), steps_per_epoch=10)
    assert f(20) == pytest.approx(0.25)


def _poison_updates(monkeypatch, which):
    """Make the optimiser's update at the calls in ``which`` leave a NaN weight."""
    calls = {"n": 0}
    step = torch.optim.Adamax.step

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in which:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.Adamax, "step", poisoned)


def test_update_that_breaks_the_weights_is_undone(tmp_path, monkeypatch):
    _poison_updates(monkeypatch, {3})
    summary = train(_cfg(max_steps=5), tmp_path, data=DATA, quiet=True, log_every=1)
    assert summary["skipped"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["skipped_step"] for r in records if "skipped_step" in r]
    assert skipped == ["non-finite weights after the update (undone)"]
    model, ema, _ = _weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in [*model.values(), *ema.values()] if v.is_floating_point())


def test_updates_failing_in_a_row_stop_with_an_error(tmp_path, monkeypatch):
    _poison_updates(monkeypatch, set(range(3, 100)))
    with pytest.raises(VLAEError, match="training diverged: 3 updates in a row skipped"):
        train(_cfg(max_steps=20, max_skipped_steps=3), tmp_path, data=DATA, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped_step" in r] == [3, 4, 5]


def test_one_run_per_folder(tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(max_steps=2), run, data=DATA, quiet=True)
    with pytest.raises(VLAEError, match="not empty.*--resume.*--overwrite"):
        train(_cfg(max_steps=2), run, data=DATA, quiet=True)
    with pytest.raises(VLAEError, match="exclude each other"):
        train(_cfg(max_steps=2), run, data=DATA, quiet=True, resume=True, overwrite=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(VLAEError, match="notes.txt"):
        train(_cfg(max_steps=2), run, data=DATA, quiet=True, overwrite=True)
    (run / "notes.txt").unlink()
    cfg = _cfg(max_steps=3)
    cfg.model.latent_dim = 4  # another architecture: the old run is gone, not mixed in
    train(cfg, run, data=DATA, quiet=True, overwrite=True)
    assert "deleted the previous run" in capsys.readouterr().err
    assert [p.name for p in run.glob("ckpt-*.pt")] == ["ckpt-000000003.pt"]
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines()]) == 1  # the final validation
    with pytest.raises(VLAEError, match="is a file, not a folder"):
        train(_cfg(max_steps=2), run / "config.json" / "sub", data=DATA, quiet=True)


def test_resume_checks_data_threads_and_checkpoint_contents(reference, tmp_path, capsys):
    import shutil

    run, _ = reference
    other = _images(seed=1)
    with pytest.raises(VLAEError, match="other train data.*sha256"):
        train(_cfg(), run, data=other, quiet=True, resume=True)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    last = latest_checkpoint(copy)
    state = torch.load(last, weights_only=True)
    (copy / ".ckpt-000000099.pt.abc.tmp").write_bytes(b"half")
    state["trainer"]["threads"] = 3
    torch.save(state, last)
    train(_cfg(epochs=5), copy, data=DATA, quiet=True, resume=True)
    err = capsys.readouterr().err
    assert "written with 3 CPU threads, this run uses 1" in err and "removed 1 temporary file" in err
    assert not list(copy.glob(".*.tmp"))
    for damage, message in [("rng", "no rng entry"), ("shape", "decoder.out.weight has shape"),
                            ("trainer", "lacks step")]:
        broken = dict(state)
        if damage == "rng":
            del broken["rng"]
        elif damage == "shape":
            broken["model"] = dict(state["model"], **{"decoder.out.weight": torch.zeros(1, 2, 3)})
        else:
            broken["trainer"] = {k: v for k, v in state["trainer"].items() if k != "step"}
        torch.save(broken, latest_checkpoint(copy))
        with pytest.raises(VLAEError, match=message):
            train(_cfg(epochs=6), copy, data=DATA, quiet=True, resume=True)


def test_resumed_log_is_one_history_and_best_pt_catches_up(reference, tmp_path, monkeypatch):
    """A kill after a checkpoint but before best.pt was copied from it, and after more records were logged."""
    import vlae.train.loop as train_module

    run, _ = reference
    copies = {"n": 0}
    real_copy = train_module.copy_checkpoint

    def dying_copy(source, target):
        copies["n"] += 1
        if copies["n"] == 3:  # the third improvement: its checkpoint is on disk, best.pt not yet
            raise KeyboardInterrupt
        return real_copy(source, target)

    monkeypatch.setattr(train_module, "copy_checkpoint", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path, data=DATA, quiet=True, log_every=2)
    monkeypatch.undo()
    stale = load_checkpoint(tmp_path / "best.pt")["trainer"]["step"]
    assert stale == 12 and _weights(tmp_path)[2]["trainer"]["best_step"] == 18
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a later kill mid-write leaves
        f.write('{"step": 19, "epoch": 3, "loss": 1.0}\n{"step": 20, "ep')
    train(_cfg(), tmp_path, data=DATA, quiet=True, log_every=2, resume=True)

    def history(folder):
        drop = ("time", "images_per_s")
        return [{k: v for k, v in json.loads(line).items() if k not in drop}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert history(tmp_path) == history(run)  # exact resumption: the same records, once each
    best, ref_best = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(run / "best.pt")
    assert best["trainer"]["step"] == ref_best["trainer"]["step"] == 24
    assert _same(best["ema"], ref_best["ema"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_step"] == 24 and summary["best_nelbo"] == ref_best["trainer"]["best"]


def test_sigterm_writes_a_resumable_checkpoint(reference, tmp_path):
    import os
    import signal

    from vlae.train import Interrupted

    def preempt(record):
        if record["step"] == 15:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as stop:
        train(_cfg(), tmp_path, data=DATA, quiet=True, callback=preempt)
    assert stop.value.exit_status == 143 and stop.value.checkpoint == tmp_path / "ckpt-000000015.pt"
    assert str(tmp_path) in str(stop.value) and "--resume" in str(stop.value)
    import pickle

    assert str(pickle.loads(pickle.dumps(stop.value))) == str(stop.value)  # process pools send it back
    assert _weights(tmp_path)[2]["trainer"]["reason"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is uninstalled
    train(_cfg(), tmp_path, data=DATA, quiet=True, resume=True)
    run, _ = reference
    assert _same(_weights(run)[0], _weights(tmp_path)[0]) and _same(_weights(run)[1], _weights(tmp_path)[1])


def test_a_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch):
    """Read from another folder (``vlae eval``, ``vlae compress``, a resume), a run finds the
    data it was trained on: ``train.data_dir`` is saved resolved against the folder training
    ran in. The caller's configuration is left as it was."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(epochs=0, max_steps=1, data_dir="data/mnist")
    train(cfg, "run", data=DATA, quiet=True)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["data_dir"]
    assert saved == str(tmp_path / "data" / "mnist")
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["config"].train.data_dir == saved
    assert cfg.train.data_dir == "data/mnist"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's message")
def test_cuda_graphs_asked_for_on_a_cpu_are_refused_in_one_line(tmp_path):
    with pytest.raises(VLAEError, match=r"cuda_graph=on needs a CUDA device; this run is on cpu"):
        train(_cfg(epochs=0, max_steps=1, cuda_graph="on", device="cpu"), tmp_path / "g", data=DATA, quiet=True)


def test_the_gpu_loop_reads_the_device_only_where_it_decides(tmp_path, monkeypatch):
    """The CUDA training loop on an emulated GPU (``tests/emulated_cuda.py``: every tensor's
    device checked as CUDA checks it, host reads counted; the numbers are the CPU's). Between
    the reads of the statistics every ``log_every`` steps, and the epochs' ends, a step reads
    nothing from the device, so the host runs ahead of the GPU (the first step may: it creates
    the optimiser's state). The eager CUDA path trains as the CPU does, and a run resumes from
    the GPU on the CPU and back."""
    from vlae.train.loop import Trainer

    from emulated_cuda import emulated_cuda

    on_cpu = train(_cfg(epochs=2, precision="fp32", device="cpu"), tmp_path / "cpu", data=DATA, quiet=True,
                   log_every=4)
    events: list[tuple[str, int]] = []  # (what the loop began, host reads so far)

    def spy(name):
        real = getattr(Trainer, name)

        def spied(self, *args, **kwargs):
            events.append((name, len(reads)))
            return real(self, *args, **kwargs)

        return spied

    for name in ("train_step", "record", "end_epoch", "write_checkpoint"):
        monkeypatch.setattr(Trainer, name, spy(name))
    with emulated_cuda() as reads:
        on_gpu = train(_cfg(epochs=2, precision="fp32", device="cuda", cuda_graph="off"), tmp_path / "gpu",
                       data=DATA, quiet=True, log_every=4)
    assert on_gpu["device"] == "cuda" and on_gpu["steps"] == 12
    # Step i's share: from its train_step to the next one's (to the run's end for the last).
    starts = [i for i, (name, _) in enumerate(events) if name == "train_step"] + [len(events)]
    marks = [n for _, n in events] + [len(reads)]
    quiet, deciding = {}, {}
    for step, (a, b) in enumerate(zip(starts, starts[1:]), start=1):
        decides = any(name != "train_step" for name, _ in events[a:b])
        (deciding if decides else quiet)[step] = marks[b] - marks[a]
    assert list(deciding) == [4, 6, 8, 12] and min(deciding.values()) > 0  # where it decides, it reads
    assert not any(n for step, n in quiet.items() if step > 1), quiet
    assert on_gpu["valid"]["nelbo"] == pytest.approx(on_cpu["valid"]["nelbo"], rel=1e-5)
    weights, _, _ = _weights(tmp_path / "gpu")
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in weights.values())
    # The run moves to the CPU and back, and ends where one uninterrupted CPU run ends.
    monkeypatch.undo()
    train(_cfg(epochs=3, precision="fp32", device="cpu"), tmp_path / "gpu", data=DATA, quiet=True, log_every=4,
          resume=True)
    with emulated_cuda():
        moved = train(_cfg(epochs=4, precision="fp32", device="cuda", cuda_graph="off"), tmp_path / "gpu",
                      data=DATA, quiet=True, log_every=4, resume=True)
    stayed = train(_cfg(epochs=4, precision="fp32", device="cpu"), tmp_path / "cpu4", data=DATA, quiet=True,
                   log_every=4)
    assert moved["steps"] == stayed["steps"] == 24 and moved["device"] == "cuda"
    assert moved["valid"]["nelbo"] == pytest.approx(stayed["valid"]["nelbo"], rel=1e-5)
