"""``vlae reproduce``: the projection, the refusal to start days of CPU work unasked, and a
short run end to end whose report names every deviation from the protocol."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert mnist.train_images == 18_000_000 and mnist.eval_samples == 4096 * 10_000  # train + valid (appendix A)
    assert protocol_config(mnist, "cpu").train.train_on_valid
    assert (cifar.preset, cifar.batch_size, cifar.eval_k, cifar.paper_value, cifar.unit) == (
        "cifar-paper-dense", 128, 512, 2.95, "bits/dim")
    cfg = protocol_config(cifar, "cpu")
    assert cfg.train.max_steps == 530_000 and cfg.train.epochs == 0 and cfg.train.train_on_valid
    assert cfg.model.encoder_kind == "densenet" and cfg.eval.k == 512


@pytest.mark.parametrize("name,dataset,paper", [("dynamic-mnist", "mnist", 78.53), ("omniglot", "omniglot", 90.98),
                                               ("caltech101-silhouettes", "caltech101-silhouettes", 77.36)])
def test_the_other_binary_datasets_run_the_static_mnist_protocol(name, dataset, paper):
    """The paper's section 4.2: one model and one set of hyperparameters for every binary dataset,
    trained on the training and validation images, evaluated on all of the test images."""
    from vlae.data.catalogue import COUNTS

    static, p = PROTOCOLS["static-mnist"], PROTOCOLS[name]
    assert (p.dataset, p.paper_value, p.unit) == (dataset, paper, "nats")
    assert (p.preset, p.batch_size, p.epochs, p.eval_k) == (static.preset, static.batch_size, static.epochs, 4096)
    assert p.test_images == COUNTS[(dataset, "test")]
    assert p.epoch_images == COUNTS[(dataset, "train")] + COUNTS[(dataset, "valid")]
    cfg, reference = protocol_config(p, "cpu"), protocol_config(static, "cpu")
    assert cfg.model == reference.model and cfg.train.dataset == dataset and cfg.train.train_on_valid
    assert {k: v for k, v in vars(cfg.train).items() if k != "dataset"} == {
        k: v for k, v in vars(reference.train).items() if k != "dataset"}


def test_a_cpu_is_told_how_long_and_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["reproduce", "static-mnist", "--run-dir", str(run), *FAST]) == 2
    captured = capsys.readouterr()
    assert "static-mnist on cpu: training 18,000,000 images" in captured.out
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
    assert report["checkpoint"].endswith(".pt") and "best.pt" not in report["checkpoint"]  # the final parameters
    text = " ".join(report["deviations"])
    assert "time_budget" in text and "test images: 10 of 10,000" in text and "k=4" in text
    assert "train.batch_size=8" in text
    markdown = (run / "reproduce.md").read_text()
    assert "| test nats | 79.03 |" in markdown and "Deviations from the protocol" in markdown
    assert f"| weights | the final parameters, Polyak-averaged | `{Path(report['checkpoint']).name}`" in markdown
    assert main(["reproduce", "static-mnist", "--run-dir", str(run), *FAST]) == 2  # one reproduction per folder
    assert "not empty" in capsys.readouterr().err


def test_a_protocol_on_stand_in_data_says_so(tmp_path, no_data_location):
    """Without Caltech-101 Silhouettes on disk (and no location named), the run trains and
    evaluates on the embedded digits: the report names that as a deviation, never as the paper's."""
    run = tmp_path / "run"
    status = main(["reproduce", "caltech101-silhouettes", "--run-dir", str(run), "--time-budget", "1", "--subset", "8",
                   "--k", "2", *FAST])
    assert status == 0
    report = json.loads((run / "reproduce.json").read_text())
    assert report["paper"] == 77.36 and not report["faithful"]
    assert any("a fallback, not the paper's dataset" in d for d in report["deviations"])
    assert report["config"]["train"]["train_on_valid"]
