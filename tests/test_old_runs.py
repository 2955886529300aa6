"""A run written before the observation axis had one name still evaluates, resumes and loads.

``tests/data/old_main_run`` was written by main at eba17a5 (see its README): its
checkpoint and summary record the data as ``"kind": "binary"``, where today's
identities say ``"observation": "bernoulli"``. Evaluating, resuming and loading it
must report no data difference and give the numbers that main gave. Today's code
does not reach its own deprecated names on the way (the marks turn them into errors).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlae.checkpoint import load_checkpoint, load_model
from vlae.cli import main
from vlae.data import dataset_identity, identity_differences, load_or_fallback, migrate_identity

OLD_RUN = Path(__file__).parent / "data" / "old_main_run"
CHECKPOINT = "ckpt-000000004.pt"
OURS = "error:.* is deprecated:DeprecationWarning"  # the deprecations of vlae's old names

pytestmark = pytest.mark.filterwarnings(OURS)


@pytest.fixture
def run(tmp_path) -> Path:
    """A copy of the old run folder, with its best.pt (the same bytes as its checkpoint)."""
    folder = tmp_path / "run"
    shutil.copytree(OLD_RUN, folder)
    shutil.copyfile(folder / CHECKPOINT, folder / "best.pt")
    return folder


def test_the_run_uses_the_old_names():
    """The fixture is what it says: written with the old names (else the tests below prove nothing)."""
    saved = load_checkpoint(OLD_RUN / CHECKPOINT)["data"]
    summary = json.loads((OLD_RUN / "summary.json").read_text())
    for identity in (saved["train"], saved["valid"], summary["data_identity"]["train"]):
        assert identity["kind"] == "binary" and "observation" not in identity
    assert json.loads((OLD_RUN / "config.json").read_text())["model"]["observation"] == "bernoulli"


def test_old_identities_compare_equal_to_todays():
    saved = load_checkpoint(OLD_RUN / CHECKPOINT)["data"]
    for split in ("train", "valid"):
        now = dataset_identity(load_or_fallback("mnist-embedded", split))
        assert now["observation"] == "bernoulli" and "kind" not in now
        assert identity_differences(saved[split], now) == [] == identity_differences(now, saved[split])
        assert migrate_identity(saved[split])["observation"] == "bernoulli"
        assert list(migrate_identity(saved[split])) == list(now)  # the same fields in the same order
    other = {**saved["train"], "kind": "8bit"}
    assert identity_differences(other, dataset_identity(load_or_fallback("mnist-embedded", "train"))) == [
        "observation: 'logistic_mixture' -> 'bernoulli'"]


def test_eval_gives_mains_numbers_over_mains_result(run, capsys):
    old = json.loads((run / "eval_mnist-embedded_test_k4_n20.json").read_text())
    assert old["data_identity"]["kind"] == "binary"
    assert main(["eval", str(run), "--k", "4", "--subset", "20", "--split", "test", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "other data" not in err and "warning" not in err
    new = json.loads((run / "eval_mnist-embedded_test_k4_n20.json").read_text())  # replaced: the same data
    assert new["data_identity"]["observation"] == "bernoulli" and "kind" not in new["data_identity"]
    assert new["data_identity"]["sha256"] == old["data_identity"]["sha256"]
    for key in ("nll", "elbo", "kl"):
        assert new[key] == pytest.approx(old[key], rel=1e-6, abs=1e-6)


def test_resume_continues_without_a_data_difference(run, capsys):
    assert main(["train", "--resume", "--run-dir", str(run), "--max-steps", "6", "--device", "cpu",
                 "--quiet", "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "other" not in err and "does not record its data" not in err and "warning" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["data_identity"]["train"]["observation"] == "bernoulli"
    state = load_checkpoint(run / "ckpt-000000006.pt")
    assert state["data"]["train"]["observation"] == "bernoulli" and "kind" not in state["data"]["train"]


def test_load_model_gives_the_same_weights(run):
    model, cfg = load_model(run)
    assert cfg.model.observation == model.observation.name == "bernoulli"
    ema = load_checkpoint(run / CHECKPOINT)["ema"]
    params = model.state_dict()
    assert set(params) == set(ema) and all(torch.equal(params[k], ema[k]) for k in ema)
