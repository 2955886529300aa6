"""Fault injection for evaluation, sampling, plotting and loading: the real ``vlae``
command in subprocesses, fed absurd options, broken checkpoints, unwritable output
paths and foreign files.

Every case is a row of :data:`CASES`: the command, the exit status, a piece of the
one ``error:`` line expected on stderr (never a traceback), and the files that must
not appear or must stay byte-for-byte as they were. One tiny run is trained once for
the module (a few steps on the embedded data) and every broken input is derived from
it. The rest of the module checks the strict JSON writer, the messages of the
loaders, and the fast sampler on a decoder with kernel size 1 (an empty receptive
field) in-process.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vlae.checkpoint import load_model, save_checkpoint
from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.outputs import dumps, write_json
from vlae.sampling import fast_sample

from conftest import fallback_environ

ROOT = Path(__file__).resolve().parents[1]
RESULT = "run/eval_mnist-embedded_test_k2_n1.json"  # what `vlae eval run --k 2 --subset 1` writes
OTHER_DATA = "run/eval_mnist-embedded_test_k2_n20.json"  # holds a result of other files under that name
LEGACY = "run/eval_test_k2_n1.json"  # the old name, here a real-data result: must survive

# The subprocess cases take about a minute of CPU together (most of it Python and torch starting).
slow = pytest.mark.slow


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _vlae(*args: str, cwd: Path, env: tuple[tuple[str, str], ...] = ()) -> subprocess.CompletedProcess:
    env = {**fallback_environ(cwd), "OMP_NUM_THREADS": "1", **dict(env)}
    return subprocess.run([sys.executable, "-m", "vlae", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _with(state: dict, **changes) -> dict:
    return {**state, **changes}


def _nan_weights(weights: dict) -> dict:
    """A diverged run: the first floating-point tensor turned into NaN."""
    out = dict(weights)
    name = next(k for k, v in out.items() if v.is_floating_point())
    out[name] = torch.full_like(out[name], math.nan)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """A folder holding a trained tiny run and broken variants of it."""
    lab = tmp_path_factory.mktemp("faults")
    done = _vlae("train", "--preset", "tiny", "--max-steps", "4", "--batch-size", "16", "--dataset", "mnist-embedded",
                 "--run-dir", "run", "--set", "train.eval_subset=20", "--threads", "1", "--quiet", "--no-figures",
                 cwd=lab)
    assert done.returncode == 0, done.stderr
    run = lab / "run"
    state = torch.load(run / "best.pt", weights_only=True)
    raw = {k: v for k, v in state.items() if k not in ("format_version", "vlae_version", "torch_version")}
    weights = "ema" if state.get("ema") is not None else "model"

    save_checkpoint(lab / "nan.pt", _with(raw, **{weights: _nan_weights(state[weights])}))
    (lab / "nanrun").mkdir()
    shutil.copy(lab / "nan.pt", lab / "nanrun" / "best.pt")
    shutil.copy(run / "metrics.jsonl", lab / "nanrun" / "metrics.jsonl")
    wider = json.loads(json.dumps(state["config"]))
    wider["model"]["decoder_filters"] += 4  # the stored weights no longer fit the architecture
    save_checkpoint(lab / "mismatch.pt", _with(raw, config=wider))
    broken = json.loads(json.dumps(state["config"]))
    broken["model"]["latent_dim"] = "eight"
    save_checkpoint(lab / "badcfg.pt", _with(raw, config=broken))
    (lab / "random.pt").write_bytes(random.Random(0).randbytes(4096))

    for name in ("binmetrics", "figfile"):
        (lab / name).mkdir()
        shutil.copy(run / "best.pt", lab / name / "best.pt")
    (lab / "binmetrics" / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 3.0}\n\xff\xfe\x00garbage\n')
    (lab / "figfile" / "figures").write_text("a file where the figures folder belongs\n")
    (lab / "adir").mkdir()
    (lab / "adir.png").mkdir()
    (lab / OTHER_DATA).write_text(json.dumps({"estimator": "IW bound, k=2", "dataset": "mnist-embedded",
                                              "split": "test", "data": "/elsewhere/mnist_5k.csv.gz", "images": 20,
                                              "data_identity": {"name": "mnist-embedded", "split": "test",
                                                                "images": 20, "source": "/elsewhere/mnist_5k.csv.gz",
                                                                "sha256": "0" * 64},
                                              "nll": 99.0}))
    from vlae.evaluate import evaluate_checkpoint

    for k, damage in ((2, "cut"), (3, "foreign")):  # two sharded evaluations whose shard 1/2 is spoilt
        for i in (0, 1):
            part = evaluate_checkpoint(run, k=k, subset=4, batch_size=2, shard=f"{i}/2", progress=False,
                                       notice=lambda _m: None)
        path = Path(part["path"])
        if damage == "cut":
            path.write_bytes(path.read_bytes()[:300])
        else:
            torch.save({"fingerprint": "?", "note": torch.zeros(1)}, path)
    (lab / LEGACY).write_text(json.dumps({"estimator": "IW bound, k=2", "dataset": "binarized-mnist",
                                          "split": "test", "data": "/data/binarized_mnist_test.amat", "images": 1,
                                          "nll": 80.0}))
    return lab


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    message: str  # a piece of the one error line
    status: int = 2
    absent: tuple[str, ...] = ()  # files that must not be written
    unchanged: tuple[str, ...] = ()  # files that must keep their bytes
    env: tuple[tuple[str, str], ...] = ()  # environment variables of the command


CASES = [
    # invalid numbers (item 9)
    Case("eval-negative-chunk", ("eval", "run", "--k", "2", "--subset", "4", "--chunk", "-1"), "invalid --chunk",
         absent=("run/eval_mnist-embedded_test_k2_n4.json",)),
    Case("eval-zero-k", ("eval", "run", "--k", "0"), "invalid --k"),
    Case("sample-negative-seed", ("sample", "run", "--n", "2", "--seed", "-1", "--out", "s1.png"), "invalid --seed",
         absent=("s1.png",)),
    # a diverged (NaN) model is refused, nothing written (item 9)
    Case("eval-nan-model", ("eval", "nan.pt", "--k", "2", "--subset", "4"), "NaN or infinity",
         absent=("eval_mnist-embedded_test_k2_n4.json",)),
    Case("sample-nan-model", ("sample", "nan.pt", "--n", "2", "--out", "nan.png"), "NaN or infinity",
         absent=("nan.png",)),
    Case("plot-nan-model", ("plot", "nanrun"), "NaN or infinity", absent=("nanrun/figures",)),
    # output paths (item 10)
    Case("sample-out-folder", ("sample", "run", "--n", "2", "--out", "adir"), "no extension"),
    Case("sample-out-folder-with-suffix", ("sample", "run", "--n", "2", "--out", "adir.png"), "is a folder"),
    Case("sample-out-trailing-slash", ("sample", "run", "--n", "2", "--out", "new.png/"), "names a folder",
         absent=("new.png",)),
    Case("sample-out-unknown-extension", ("sample", "run", "--n", "2", "--out", "s.xyz"), "extension '.xyz'",
         absent=("s.xyz",)),
    Case("sample-out-under-proc", ("sample", "run", "--n", "2", "--out", "/proc/vlae-samples.png"), "/proc"),
    Case("sample-out-under-file", ("sample", "run", "--n", "2", "--out", "run/config.json/s.png"),
         "is a file, not a folder", unchanged=("run/config.json",)),
    Case("eval-out-under-file", ("eval", "run", "--k", "2", "--subset", "4", "--out", "run/summary.json/r.json"),
         "is a file, not a folder", unchanged=("run/summary.json",)),
    Case("eval-out-under-proc", ("eval", "run", "--k", "2", "--subset", "4", "--out", "/proc/vlae-eval.json"), "/proc"),
    Case("plot-figures-is-a-file", ("plot", "figfile"), "is a file, not a folder", unchanged=("figfile/figures",)),
    Case("plot-non-utf8-metrics", ("plot", "binmetrics"), "not UTF-8",
         absent=("binmetrics/figures/training_curves.png",)),
    # loading (item 11)
    Case("eval-architecture-mismatch", ("eval", "mismatch.pt", "--k", "2", "--subset", "4"), "decoder.",
         absent=("eval_mnist-embedded_test_k2_n4.json",)),
    Case("eval-bad-config-value", ("eval", "badcfg.pt", "--k", "2"), "model.latent_dim"),
    Case("eval-random-bytes", ("eval", "random.pt", "--k", "2"), "not a readable vlae checkpoint"),
    # kernel size 1 (item 12): fine for the masked decoder (see below); a gated one is refused up front
    Case("train-gated-kernel-1", ("train", "--preset", "tiny", "--decoder", "gated", "--decoder-kernel", "1",
                                  "--dataset", "mnist-embedded", "--run-dir", "gated1"), "gated decoder needs a kernel",
         absent=("gated1",)),
    # issue 21: sampling in bounded batches, refused when the grid cannot be an image (item 4)
    Case("sample-too-many", ("sample", "run", "--n", "100000000", "--out", "huge.png"),
         "invalid --n: 100000000 samples make a grid of 290001 x 290001 pixels", absent=("huge.png",)),
    # a damaged or foreign shard at --merge (item 3): one line naming the file and the shard to rerun
    Case("merge-cut-shard", ("eval", "run", "--k", "2", "--subset", "4", "--batch-size", "2", "--merge"),
         "shard-1-of-2.pt: unreadable partial result (cut short or damaged",
         absent=("run/eval_mnist-embedded_test_k2_n4.json",)),
    Case("merge-foreign-shard", ("eval", "run", "--k", "3", "--subset", "4", "--batch-size", "2", "--merge"),
         "shard-1-of-2.pt: not a partial result of `vlae eval --shard`; delete it and rerun that shard "
         "(`vlae eval ... --shard 1/2`", absent=("run/eval_mnist-embedded_test_k3_n4.json",)),
    # $VLAE_DATA_DIR is an explicit location, never replaced by the embedded data (item 10)
    Case("train-vlae-data-dir-missing", ("train", "--preset", "tiny", "--max-steps", "1", "--run-dir", "envrun"),
         "binarized-mnist: $VLAE_DATA_DIR names typo, which does not exist", absent=("envrun",),
         env=(("VLAE_DATA_DIR", "typo"),)),
    Case("train-vlae-data-dir-without-data", ("train", "--preset", "tiny", "--max-steps", "1", "--run-dir", "envrun2"),
         "$VLAE_DATA_DIR names adir, which holds no binarized-mnist data", absent=("envrun2",),
         env=(("VLAE_DATA_DIR", "adir"),)),
    # a folder where the compressed file belongs (item 9)
    Case("decompress-a-folder", ("decompress", "run", "adir", "-o", "out.npy"),
         "adir: is a folder; give the file that `vlae compress` wrote", absent=("out.npy",)),
    # results (item 4): a result of other data under the same name is never replaced
    Case("eval-over-other-data", ("eval", "run", "--k", "2", "--subset", "20"), "other data",
         unchanged=(OTHER_DATA,)),
]


@pytest.fixture(scope="module")
def outcomes(lab) -> dict[str, tuple[subprocess.CompletedProcess, dict[str, bytes], dict[str, bytes]]]:
    """Every case run once (a few at a time: most of a case is Python starting)."""
    before = {c.name: {f: (lab / f).read_bytes() for f in c.unchanged} for c in CASES}

    def run(case: Case):
        return case.name, _vlae(*case.args, cwd=lab, env=case.env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(pool.map(run, CASES))
    return {c.name: (done[c.name], before[c.name]) for c in CASES}


@slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, lab, outcomes):
    done, before = outcomes[case.name]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == case.status, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert case.message in lines[0], lines[0]
    if case.env:
        assert "`vlae download binarized-mnist`" in lines[0], lines[0]
    assert "weights_only" not in lines[0]  # never torch's advice to unpickle code
    for name in case.absent:
        assert not (lab / name).exists(), name
    for name, data in before.items():
        assert (lab / name).read_bytes() == data, name


@slow
def test_no_temporary_files_left(lab, outcomes):
    assert sorted(str(p.relative_to(lab)) for p in lab.rglob("*.tmp")) == []


@slow
def test_architecture_mismatch_names_the_keys(outcomes):
    line = outcomes["eval-architecture-mismatch"][0].stderr.strip()
    assert "decoder.first.weight" in line and "(8, 1, 3, 3)" in line and "(12, 1, 3, 3)" in line, line


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


@slow
def test_eval_result_names_its_data_and_is_strict_json(lab, outcomes):
    legacy = (lab / LEGACY).read_bytes()
    done = _vlae("eval", "run", "--k", "2", "--subset", "1", "--threads", "1", cwd=lab)
    assert done.returncode == 0, done.stderr
    assert f"wrote {RESULT}" in done.stdout and "mnist-embedded test, 1 images" in done.stdout
    result = _strict((lab / RESULT).read_text())
    assert result["data_identity"]["name"] == "mnist-embedded" and result["data_identity"]["images"] == 1
    assert result["data_fallback"] is False and result["requested_dataset"] == "mnist-embedded"
    assert result["nll_se"] is None and "nll_se" in result["non_finite"]  # one image: no standard error
    assert math.isfinite(result["nll"])
    assert (lab / LEGACY).read_bytes() == legacy  # a real-data result under the old name is untouched


# ---------------------------------------------------------------------- in-process


def test_strict_json_writer(tmp_path):
    import numpy as np

    text = dumps({"a": math.nan, "b": [1.0, -math.inf], "c": {"d": np.float32("inf"), "e": torch.tensor(2.5)},
                  "f": (1, 2), "g": torch.tensor([0.5, math.nan])})
    data = _strict(text)
    assert data == {"a": None, "b": [1.0, None], "c": {"d": None, "e": 2.5}, "f": [1, 2], "g": [0.5, None],
                    "non_finite": ["a", "b[1]", "c.d", "g[1]"]}
    assert _strict(dumps({"x": 1.5})) == {"x": 1.5}  # finite: no note
    path = write_json(tmp_path / "deep" / "r.json", {"nll": math.inf})
    assert _strict(path.read_text()) == {"nll": None, "non_finite": ["nll"]}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(VLAEError, match="is a folder"):
        write_json(tmp_path / "deep", {})


def test_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from vlae import cli, outputs
    from vlae.experiments import plots  # where `vlae plot` looks plot_run up

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(VLAEError, match=r"r.json: cannot write \(No space left on device\)"):
        write_json(tmp_path / "r.json", {"nll": 1.0})
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    monkeypatch.undo()

    def vanished(*args, **kwargs):  # an OSError no vlae code turned into a message
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "run/best.pt")

    monkeypatch.setattr(plots, "plot_run", vanished)
    assert cli.main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "error: run/best.pt: No such file or directory\n"


def test_sweep_writes_strict_json(tmp_path):
    from vlae.sweep import _write_json

    _write_json(tmp_path / "results.json", {"nll": math.nan, "path": tmp_path})
    assert _strict((tmp_path / "results.json").read_text())["nll"] is None


def test_bad_config_values_name_the_field():
    from vlae.config import config_from_dict

    for section, key, value in [("model", "latent_dim", "eight"), ("train", "lr", "fast"), ("model", "image_shape",
                                                                                            [1, 28]),
                                ("model", "weight_norm", 1), ("eval", "k", 2.5)]:
        data = get_preset("tiny").to_dict()
        data[section][key] = value
        with pytest.raises(VLAEError, match=f"{section}.{key}"):
            config_from_dict(data).validate()
    data = get_preset("tiny").to_dict()
    data["train"]["lr"], data["eval"]["k"] = 1, 16.0  # harmless: an int for a float, an integral float for an int
    cfg = config_from_dict(data).validate()
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.eval.k == 16 and isinstance(cfg.eval.k, int)


def test_checkpoint_of_a_nan_model_is_refused_but_raw_weights_load(tmp_path):
    cfg = get_preset("tiny")
    model = VLAE(cfg.model)
    save_checkpoint(tmp_path / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(),
                                           "ema": _nan_weights(model.state_dict())})
    with pytest.raises(VLAEError, match="ema weights hold NaN or infinity in 1 of"):
        load_model(tmp_path, weights="ema")
    assert load_model(tmp_path, weights="raw")[0] is not None


@pytest.mark.parametrize("latent_dim", [8, 0])
def test_kernel_size_one_samples_exactly(latent_dim, tmp_path):
    """Kernel size 1: the first (type-A) layer of a masked PixelCNN reads no pixel
    at all, so each pixel depends on z only; the fast sampler must still equal
    naive sampling."""
    from vlae.plots import jacobian_support, plot_receptive_field

    cfg = get_preset("tiny").model
    cfg.decoder_kernel, cfg.latent_dim = 1, latent_dim
    cfg.validate()
    torch.manual_seed(0)
    model = VLAE(cfg).eval()
    assert model.decoder.receptive_field() == frozenset()
    naive = model.sample(3, generator=torch.Generator().manual_seed(1))
    fast = fast_sample(model, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fast, naive)
    assert not jacobian_support(model, (10, 10)).any()  # the empty field is real, not just reported
    assert plot_receptive_field(model, tmp_path / "rf.png").is_file()


def test_gated_kernel_size_one_is_refused_by_validation():
    cfg = get_preset("tiny")
    cfg.model.decoder, cfg.model.decoder_kernel = "gated", 1
    with pytest.raises(VLAEError, match="model.decoder_kernel: a gated decoder needs a kernel of at least 3"):
        cfg.validate()


@slow
def test_ctrl_c_during_eval_names_the_same_eval_command_to_continue(lab):
    """SIGINT mid-evaluation: 130 and one line naming `vlae eval` (not `vlae train --resume`);
    the same command then continues from the kept blocks and finishes."""
    import signal
    import time

    # 40 blocks: the signal must land mid-run even when a loaded machine delays this process's polling
    args = ("eval", "run", "--k", "1000", "--subset", "80", "--batch-size", "2", "--progress", "off", "--out",
            "interrupted.json")
    # A child inherits an ignored SIGINT (POSIX), and then Python never raises KeyboardInterrupt:
    # give it the default disposition a shell gives a foreground command, whatever this worker has.
    proc = subprocess.Popen([sys.executable, "-m", "vlae", *args], cwd=lab, env={**fallback_environ(lab),
                            "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(lab.glob("interrupted.*.parts/block-*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no block finished"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err, (err, signal.getsignal(signal.SIGINT))
    assert "run the same `vlae eval` command again" in lines[0] and "vlae train" not in lines[0], lines[0]
    kept = len(list(lab.glob("interrupted.*.parts/block-*.pt")))
    assert kept >= 1 and not (lab / "interrupted.json").exists()
    done = _vlae(*args, cwd=lab)
    assert done.returncode == 0, done.stderr
    result = json.loads((lab / "interrupted.json").read_text())
    assert result["images"] == 80 and not list(lab.glob("interrupted.*.parts"))  # finished, blocks cleaned up
    (lab / "interrupted.json").unlink()
