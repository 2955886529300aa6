"""Checkpoints: atomic writes, validation on load, model loading from runs and files."""

from __future__ import annotations

import os

import pytest
import torch

from vlae import checkpoint as ckpt
from vlae.checkpoint import (
    FORMAT_VERSION,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = VLAE(cfg.model)
    ema = VLAE(cfg.model).state_dict()
    return {"config": cfg.to_dict(), "model": model.state_dict(), "ema": ema, "trainer": {"step": 3}}


def test_round_trip_and_load_model(tmp_path, state):
    path = save_checkpoint(tmp_path / "ckpt-000000003.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION and loaded["trainer"] == {"step": 3}
    assert loaded["config"] == get_preset("tiny")
    raw, cfg = load_model(path, weights="raw")
    ema, _ = load_model(tmp_path, weights="ema")  # a run folder: the latest ckpt-*.pt
    assert cfg == get_preset("tiny") and not raw.training
    assert all(torch.equal(raw.state_dict()[k], state["model"][k]) for k in state["model"])
    assert all(torch.equal(ema.state_dict()[k], state["ema"][k]) for k in state["ema"])
    no_ema = dict(state, ema=None)
    save_checkpoint(tmp_path / "plain.pt", no_ema)
    fallback, _ = load_model(tmp_path / "plain.pt", weights="ema")  # polyak off: raw weights
    assert torch.equal(fallback.state_dict()["decoder.out.bias"], state["model"]["decoder.out.bias"])
    with pytest.raises(VLAEError, match="weights"):
        load_model(path, weights="average")


def test_run_folder_prefers_best_then_latest(tmp_path, state):
    with pytest.raises(VLAEError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    for step in (5, 40, 12):
        save_checkpoint(tmp_path / ckpt.checkpoint_name(step), state)
    assert latest_checkpoint(tmp_path).name == "ckpt-000000040.pt"
    assert resolve_checkpoint(tmp_path) == tmp_path / "ckpt-000000040.pt"
    save_checkpoint(tmp_path / "best.pt", state)
    assert resolve_checkpoint(tmp_path) == tmp_path / "best.pt"
    assert resolve_checkpoint(tmp_path, prefer="last") == tmp_path / "ckpt-000000040.pt"
    with pytest.raises(VLAEError, match="no such"):
        resolve_checkpoint(tmp_path / "missing")


def test_crash_mid_write_leaves_the_old_file(tmp_path, state, monkeypatch):
    path = save_checkpoint(tmp_path / "best.pt", state)
    before = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # e.g. Ctrl-C or the machine going down mid-write

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, dict(state, trainer={"step": 99}))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["trainer"] == {"step": 3}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_name_the_file(tmp_path, state, damage):
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint " * 50,
                      "empty": b""}[damage])
    with pytest.raises(VLAEError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)
    with pytest.raises(VLAEError, match="ckpt.pt"):
        load_model(path)


def test_missing_newer_and_incompatible(tmp_path, state):
    with pytest.raises(VLAEError, match="nothing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    newer = save_checkpoint(tmp_path / "newer.pt", state)
    payload = torch.load(newer, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, newer)
    with pytest.raises(VLAEError, match="newer.pt: checkpoint format 2 is newer"):
        load_checkpoint(newer)
    config = {**state["config"], "model": {**state["config"]["model"], "hyper_warp": 3}}
    unknown = save_checkpoint(tmp_path / "unknown.pt", dict(state, config=config))
    with pytest.raises(VLAEError, match="unknown.pt: configuration incompatible.*hyper_warp"):
        load_checkpoint(unknown)
    invalid = {**state["config"], "model": {**state["config"]["model"], "prior": "mixture"}}
    with pytest.raises(VLAEError, match="invalid.pt: configuration incompatible.*model.prior"):
        load_checkpoint(save_checkpoint(tmp_path / "invalid.pt", dict(state, config=invalid)))
    weights = {k: v for k, v in state["model"].items() if not k.startswith("decoder.out")}
    mismatch = save_checkpoint(tmp_path / "mismatch.pt", dict(state, model=weights, ema=None))
    with pytest.raises(VLAEError, match="mismatch.pt: raw weights do not match"):
        load_model(mismatch)
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    with pytest.raises(VLAEError, match="other.pt: not a vlae checkpoint"):
        load_checkpoint(not_ours)


def test_safetensors_export(tmp_path, state):
    from safetensors.torch import load_file

    path = save_checkpoint(tmp_path / "best.pt", state)
    out = ckpt.export_safetensors(path)
    assert out == tmp_path / "model.safetensors"
    tensors = load_file(out)
    assert all(torch.equal(tensors[k], state["ema"][k]) for k in state["ema"])


def test_full_disk_is_one_line_naming_the_file(tmp_path, state, monkeypatch):
    import errno

    def full(obj, f):  # what torch's zip writer does when the file's write fails with ENOSPC
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            # chained to the OSError, as torch's own error is: what the writer's message is read from
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(VLAEError, match=r"ckpt.pt: cannot write \(No space left on device\)"):
        save_checkpoint(tmp_path / "ckpt.pt", state)
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("unexpected pos 9 vs 1")))
    with pytest.raises(VLAEError, match="unexpected pos 9 vs 1; is the disk full"):
        save_checkpoint(tmp_path / "ckpt.pt", state)
    assert os.listdir(tmp_path) == []  # no temporary file left behind
    (tmp_path / "file").write_text("")
    with pytest.raises(VLAEError, match="file/sub/ckpt.pt: cannot write"):
        save_checkpoint(tmp_path / "file" / "sub" / "ckpt.pt", state)


def test_copy_and_temporaries(tmp_path, state):
    path = save_checkpoint(tmp_path / "ckpt-000000003.pt", state)
    ckpt.copy_checkpoint(path, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == path.read_bytes()
    for name in (".ckpt-000000004.pt.x1y2.tmp", ".best.pt.tmp", ".metrics.jsonl.abc.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    removed = ckpt.remove_temporaries(tmp_path)
    assert len(removed) == 3 and sorted(os.listdir(tmp_path)) == ["best.pt", "ckpt-000000003.pt"]


def test_weights_mismatch_names_the_keys(tmp_path, state):
    model = state["model"]
    assert ckpt.weights_mismatch(model, dict(model)) is None
    changed = {k: v for k, v in model.items() if k != "decoder.out.bias"}
    changed["decoder.out.weight"] = torch.zeros(2, 2)
    changed["extra"] = torch.zeros(1)
    problem = ckpt.weights_mismatch(model, changed)
    assert "missing decoder.out.bias" in problem and "unexpected extra" in problem
    assert f"decoder.out.weight has shape (2, 2), expected {tuple(model['decoder.out.weight'].shape)}" in problem
    path = save_checkpoint(tmp_path / "wrong.pt", dict(state, model=changed, ema=None))
    with pytest.raises(VLAEError, match="wrong.pt: raw weights do not match.*missing decoder.out.bias"):
        load_model(path)


def test_random_bytes_do_not_echo_torch_advice(tmp_path):
    import pickle

    path = tmp_path / "random.pt"
    path.write_bytes(pickle.dumps(object()))  # a pickle of a class: refused by weights_only
    with pytest.raises(VLAEError, match="random.pt: not a readable vlae checkpoint") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value)
