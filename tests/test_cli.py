"""The ``vlae`` command line, the tutorial's scripts and the one-import API."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlae import cli
from vlae.checkpoint import save_checkpoint
from vlae.cli import train as cli_train
from vlae.config import get_preset
from vlae.model import VLAE

from conftest import fallback_environ

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _vlae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**fallback_environ(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vlae", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _is_clean_error(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith("error:") and "Traceback" not in stderr


def test_train_then_eval_end_to_end(tmp_path):
    run = tmp_path / "run"
    done = _vlae("train", "--preset", "tiny", "--max-steps", "5", "--batch-size", "16", "--dataset",
                 "mnist-embedded", "--run-dir", str(run), "--set", "train.eval_subset=20", "--threads", "1",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stopped after 5 steps" in done.stdout
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 16
    figures = {path.name for path in (run / "figures").glob("*.png")}  # drawn by default at the end of training
    assert {"training_curves.png", "samples.png", "reconstructions.png", "kl_heatmap.png"} <= figures
    done = _vlae("eval", str(run), "--k", "4", "--subset", "20", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "IW bound, k=4" in done.stdout and "nats" in done.stdout and "bits/dim" in done.stdout
    result = json.loads((run / "eval_mnist-embedded_test_k4_n20.json").read_text())  # names the data
    assert result["images"] == 20 and result["estimator"] == "IW bound, k=4"
    assert f"NLL    {result['nll']:.2f}" in done.stdout
    done = _vlae("eval", str(tmp_path / "missing-run"), cwd=tmp_path)  # the real entry point, not main()
    assert done.returncode == 2 and _is_clean_error(done.stderr), done.stderr
    assert "missing-run" in done.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A binarized-MNIST tiny checkpoint (untrained), for eval and sample."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = VLAE(get_preset("tiny").model)
    return save_checkpoint(folder / "best.pt", {"config": get_preset("tiny").to_dict(), "model": model.state_dict(),
                                                "ema": None})


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv, culprit", [
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--preset", "tiny", "--set", "model.latent_dim=lots"], "model.latent_dim"),
    (["train", "--preset", "tiny", "--set", "model.colour=3"], "model.colour"),
    (["train", "--preset", "tiny", "--set", "nonsense"], "nonsense"),
    (["train", "--preset", "tiny", "--prior", "mixture"], "model.prior"),
    (["train", "--preset", "tiny", "--epochs", "0"], "nothing to train"),
    (["train"], "--preset is required"),
    (["train", "--resume"], "--resume needs --run-dir"),
    (["train", "--preset", "tiny", "--batch-size", "many"], "--batch-size"),
    (["eval", "no/such/run.pt"], "no/such/run.pt"),
    (["eval", "x.pt", "--k", "0"], "--k"),
    (["sample", "no/such/run"], "no/such/run"),
    (["presets", "huge"], "unknown preset"),
    (["train", "--preset", "tiny", "--device", "tpu9"], "tpu9"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_error_line(capsys, argv, culprit):
    status, _, err = _main(capsys, *argv)
    assert status == 2
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and culprit in err


def test_corrupt_data_file(tmp_path, capsys, checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "binarized_mnist_test.amat").write_text("0 1 0 1\nthis is not a data file\n")
    status, _, err = _main(capsys, "eval", str(checkpoint), "--data-dir", str(bad), "--k", "2")
    assert status == 2 and _is_clean_error(err) and "binarized_mnist_test.amat" in err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\x00" * 100)
    status, _, err = _main(capsys, "eval", str(tmp_path), "--k", "2")
    assert status == 2 and "best.pt" in err and _is_clean_error(err)


def test_presets_sample_and_interrupt(tmp_path, capsys, checkpoint, monkeypatch):
    status, out, _ = _main(capsys, "presets")
    assert status == 0 and all(name in out for name in ("mnist-paper", "mnist-small", "tiny"))
    status, out, _ = _main(capsys, "presets", "tiny")
    assert status == 0 and json.loads(out)["model"]["latent_dim"] == 8
    png = tmp_path / "s.png"
    status, out, _ = _main(capsys, "sample", str(checkpoint), "--n", "4", "--out", str(png))
    assert status == 0 and png.stat().st_size > 0 and "4 samples" in out
    threads = torch.get_num_threads()
    try:
        status, _, _ = _main(capsys, "sample", str(checkpoint), "--n", "4", "-o", str(png), "--device", "cpu",
                             "--threads", "1")
        assert status == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    status, _, err = _main(capsys, "sample", str(checkpoint), "--n", "4", "-o", str(png), "--progress", "on")
    assert status == 0 and "sample: 100%" in err and "4/4" in err
    status, _, err = _main(capsys, "sample", str(checkpoint), "--n", "4", "-o", str(png), "--device", "tpu")
    assert status == 2 and "invalid device 'tpu'" in err and _is_clean_error(err)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "run", interrupted)  # looked up when the parser is built
    status, _, err = _main(capsys, "train", "--preset", "tiny")
    assert status == 130 and "--resume" in err


def test_config_from_args_order():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--preset", "tiny", "--lr", "0.01", "--soft-free-bits", "--latent-dim", "4",
                              "--set", "train.lr=0.02", "--set", "model.flow_steps=1"])
    cfg = cli.config_from_args(args)
    assert cfg.train.lr == 0.02 and cfg.train.soft_free_bits and cfg.model.latent_dim == 4
    assert cfg.model.flow_steps == 1 and cfg.train.epochs == get_preset("tiny").train.epochs


def test_sweep_and_ablation_are_registered():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("train", "eval", "sample", "plot", "download", "presets", "verify"):
        assert name in choices
    for name in ("sweep", "ablation"):
        try:
            __import__(f"vlae.{name}")
        except ImportError:
            continue
        assert name in choices


def test_implementation_example_runs(monkeypatch):
    import doctest

    monkeypatch.syspath_prepend(str(ROOT))
    import implementation

    result = doctest.testmod(implementation, verbose=False)
    assert result.attempted >= 10 and result.failed == 0
    assert {"VLAE", "MaskedConv2d", "MaskedPixelCNN", "GatedPixelCNN", "MADE", "AFPrior", "IAFPosterior", "Encoder",
            "get_preset", "train", "evaluate_model", "load_model"} <= set(implementation.__all__)


def test_train_minimal_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    import train_minimal

    out = tmp_path / "results"
    # $VLAE_DATA_DIR (tests/conftest.py: the shared binarized MNIST if present), else the announced embedded fallback.
    status = train_minimal.main(["--max-steps", "2", "--k", "2", "--eval-subset", "4", "--output-dir", str(out),
                                 "--use-flow", "--no-plots", "--latent-dim", "8"])
    captured = capsys.readouterr()
    assert status == 0
    assert "IW bound, k=2" in captured.out  # the estimator is named
    summary = json.loads(next(out.glob("eval_*_test_k2_n4.json")).read_text())
    assert ("notice:" in captured.err) == bool(summary.get("data_fallback"))  # a fallback is announced and recorded
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["prior"] == "af" and cfg["model"]["latent_dim"] == 8 and cfg["preset"] == "mnist-small"
    assert (out / "best.pt").is_file() and len(list(out.glob("eval_*_test_k2_n4.json"))) == 1

    # into the used folder: one line in this script's own options (it has no --run-dir), the folder untouched
    args = ["--k", "2", "--eval-subset", "4", "--output-dir", str(out), "--use-flow", "--no-plots", "--latent-dim", "8"]
    before = sorted(p.name for p in out.iterdir())
    assert train_minimal.main(["--max-steps", "2", *args]) == 2
    err = capsys.readouterr().err
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("notice:"))  # a fallback's
    assert err.startswith(f"error: {out}: the run folder is not empty") and err.count("\n") == 1, err
    assert "--resume" in err and "--overwrite" in err and "--output-dir" in err and "--run-dir" not in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert train_minimal.main(["--max-steps", "3", "--resume", *args]) == 0  # what the line says works
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_train_minimal_interrupted_names_its_own_way_to_continue(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    import train_minimal

    import vlae.train

    def interrupted(cfg, run_dir, **kw):
        raise vlae.train.Interrupted(signal.SIGTERM, Path(run_dir), None, 7)

    monkeypatch.setattr(vlae.train, "train", interrupted)
    assert train_minimal.main(["--output-dir", str(tmp_path / "r"), "--no-plots"]) == 143
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted; continue with the same command plus --resume: python train_minimal.py ... "
                   f"--resume --output-dir {tmp_path / 'r'}")
