"""``vlae reproduce``: the projection, the refusal to start days of CPU work unasked, and a
short run end to end whose report names every deviation from the protocol."""

from __future__ import annotations

import json

import pytest
import torch

from vlae.cli import main
from vlae.protocols import PROTOCOLS
from vlae.reproduce import protocol_config

FAST = ["--set", "train.batch_size=8", "--set", "train.eval_subset=16", "--warmup-steps", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_protocols_follow_the_paper():
    mnist, cifar = PROTOCOLS["static-mnist"], PROTOCOLS["cifar10"]
    assert (mnist.preset, mnist.batch_size, mnist.epochs, mnist.eval_k, mnist.paper_value) == (
        "mnist-paper", 128, 300, 4096, 79.03)
    assert mnist.train_images == 15_000_000 and mnist.eval_samples == 4096 * 10_000
    assert (cifar.preset, cifar.batch_size, cifar.eval_k, cifar.paper_value, cifar.unit) == (
        "cifar-paper-dense", 128, 512, 2.95, "bits/dim")
    cfg = protocol_config(cifar, "cpu")
    assert cfg.train.max_steps == 530_000 and cfg.train.epochs == 0 and cfg.train.train_on_valid
    assert cfg.model.encoder_kind == "densenet" and cfg.eval.k == 512


def test_a_cpu_is_told_how_long_and_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["reproduce", "static-mnist", "--run-dir", str(run), *FAST]) == 2
    captured = capsys.readouterr()
    assert "static-mnist on cpu: training 15,000,000 images" in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: static-mnist would take about") and "--yes" in error and "--time-budget" in error
    assert not run.exists()  # the projection trains in a temporary folder


def test_a_short_reproduction_reports_beside_the_paper_and_names_its_deviations(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(["reproduce", "static-mnist", "--run-dir", str(run), "--time-budget", "2", "--subset", "10",
                   "--k", "4", *FAST])
    assert status == 0
    report = json.loads((run / "reproduce.json").read_text())
    assert report["paper"] == 79.03 and report["unit"] == "nats" and report["k"] == 4 and report["test_images"] == 10
    assert report["ours"] == report["iw_nll_nats"] > 0 and not report["faithful"]
    text = " ".join(report["deviations"])
    assert "time_budget" in text and "test images: 10 of 10,000" in text and "k=4" in text
    assert "train.batch_size=8" in text
    markdown = (run / "reproduce.md").read_text()
    assert "| test nats | 79.03 |" in markdown and "Deviations from the protocol" in markdown
    assert main(["reproduce", "static-mnist", "--run-dir", str(run), *FAST]) == 2  # one reproduction per folder
    assert "not empty" in capsys.readouterr().err
