"""Fault injection for ``vlae train``: the real command in real subprocesses.

Each case of :data:`CASES` is bad input or a hostile environment (a run
folder that is not ours, non-finite options, a full disk, a damaged
checkpoint), with the exit status, the one-line message and the state of the
run folder it must leave. The kill tests send real signals: SIGINT and
SIGTERM must leave a resumable checkpoint and exit 130 / 143; SIGKILL at
random moments, including in the middle of checkpoint writes, followed by
``--resume`` must give the weights, optimiser state, log and ``best.pt`` of a
run that was never interrupted.

Data: a small local folder in the ``caltech101-silhouettes`` layout holding
synthetic blobs (fast to load; only the files' shape matters here).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from vlae.checkpoint import latest_checkpoint, load_checkpoint

DATASET = "caltech101-silhouettes"
COUNTS = {"train_data": 4100, "val_data": 2264, "test_data": 2307}
# ENOSPC for every write to a binary temporary file (how checkpoints are written), as on a full disk
FULL_DISK = """
import builtins, errno, os, sys
real_open = builtins.open
class Full:
    def __init__(self, f): self.f = f
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
def full_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Full(f) if str(file).endswith(".tmp") and "b" in mode else f
builtins.open = full_open
from vlae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _write_data(folder: Path, seed: int) -> Path:
    """Synthetic binary blobs in the layout of Marlin's .mat file (column-major, 0 = shape)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)

    def blobs(n: int) -> np.ndarray:
        x = (rng.random((n, 28, 28)) < 0.05).astype(np.uint8)
        for i, (r, c) in enumerate(rng.integers(0, 20, (n, 2))):
            x[i, r:r + 8, c:c + 8] = 1
        return (1 - x).transpose(0, 2, 1).reshape(n, 784)

    (folder / DATASET).mkdir(parents=True)
    savemat(folder / DATASET / "caltech101_silhouettes_28_split1.mat", {k: blobs(n) for k, n in COUNTS.items()},
            do_compression=True)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data, other = _write_data(root / "data", 0), _write_data(root / "other", 1)
    common = ["train", "--preset", "tiny", "--dataset", DATASET, "--data-dir", str(data), "--batch-size", "16",
              "--set", "train.eval_subset=20", "--threads", "1", "--no-figures"]
    done = _vlae(*common, "--max-steps", "6", "--checkpoint-steps", "3", "--run-dir", str(root / "base"), cwd=root)
    assert done.returncode == 0, done.stderr
    return {"root": root, "data": data, "other": other, "common": common, "base": root / "base"}


def _command(prelude: str | None = None) -> list[str]:
    return [sys.executable, *(["-c", prelude] if prelude else ["-m", "vlae"])]


def _environ() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "VLAE_DATA_DIR": "/nonexistent-vlae-data"}  # --data-dir wins


def _vlae(*args: str, cwd: Path, prelude: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*_command(prelude), *args], cwd=cwd, env=_environ(), capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[-1]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _copy_base(env, name: str, edit: Callable[[dict], None] | None = None) -> Path:
    run = env["root"] / name
    shutil.copytree(env["base"], run)
    if edit is not None:
        last = latest_checkpoint(run)
        state = torch.load(last, weights_only=True)
        edit(state)
        torch.save(state, last)
    return run


def _drop_rng(state: dict) -> None:
    del state["rng"]


def _wrong_shape(state: dict) -> None:
    state["model"]["decoder.out.weight"] = torch.zeros(3, 2, 1)


# Every case: (name, how to set up the run folder -> path, extra arguments, exit status, message, folder check).
# The folder check receives (run folder, its listing before).
UNTOUCHED = ("untouched", lambda run, before: _listing(run) == before)
ABSENT = ("not created", lambda run, before: not run.exists())
CASES = [
    ("non-empty run folder without --resume", lambda env: _copy_base(env, "nonempty"),
     ["--max-steps", "2", "--set", "model.latent_dim=4"], 2, "the run folder is not empty", UNTOUCHED),
    ("resume on other data", lambda env: _copy_base(env, "otherdata"),
     ["--resume", "--max-steps", "8", "--data-dir", "{other}"], 2, "trained on other train data", UNTOUCHED),
    ("--lr inf", lambda env: env["root"] / "lrinf", ["--lr", "inf", "--max-steps", "2"], 2,
     "invalid option train.lr: must be a finite number", ABSENT),
    ("lr_decay_rate nan", lambda env: env["root"] / "decaynan", ["--set", "train.lr_decay_rate=nan"], 2,
     "train.lr_decay_rate: must be a finite number", ABSENT),
    ("--free-bits inf", lambda env: env["root"] / "fbinf", ["--free-bits", "inf"], 2,
     "model.free_bits: must be a finite number", ABSENT),
    ("negative weight decay", lambda env: env["root"] / "wd", ["--set", "train.weight_decay=-1"], 2,
     "train.weight_decay: must be >= 0", ABSENT),
    ("run folder under /proc", lambda env: Path("/proc/vlae-run"), ["--max-steps", "2"], 2,
     "/proc/vlae-run: cannot create the run folder", ABSENT),
    ("run folder under a regular file", lambda env: env["base"] / "config.json" / "run", ["--max-steps", "2"], 2,
     "config.json is a file, not a folder", ABSENT),
    ("run folder is a regular file", lambda env: env["base"] / "summary.json", ["--max-steps", "2"], 2,
     "summary.json is a file, not a folder", ("unchanged", lambda run, before: run.is_file())),
    ("updates diverge (--lr 1e3)", lambda env: env["root"] / "diverge",
     ["--lr", "1e3", "--max-steps", "40", "--max-skipped-steps", "3"], 2, "training diverged: 3 updates in a row",
     ("no checkpoint of a broken model", lambda run, before: latest_checkpoint(run) is None)),
    ("full disk at the first checkpoint", lambda env: env["root"] / "full", ["--max-steps", "3"], 2,
     "ckpt-000000003.pt: cannot write (No space left on device)",
     ("no checkpoint, no temporary file", lambda run, before: not [n for n in _listing(run) if ".pt" in n])),
    ("resume with a wrong-shape tensor", lambda env: _copy_base(env, "shape", _wrong_shape),
     ["--resume", "--max-steps", "8"], 2, "decoder.out.weight has shape (3, 2, 1)", UNTOUCHED),
    ("resume without the rng entry", lambda env: _copy_base(env, "norng", _drop_rng),
     ["--resume", "--max-steps", "8"], 2, "cannot resume: the checkpoint has no rng entry", UNTOUCHED),
]


@pytest.mark.parametrize("name, setup, extra, status, message, check", CASES, ids=[c[0] for c in CASES])
def test_fault(env, name, setup, extra, status, message, check):
    run = setup(env)
    before = _listing(run)
    extra = [a.format(other=env["other"]) for a in extra]
    prelude = FULL_DISK if "full disk" in name else None
    done = _vlae(*env["common"], *extra, "--run-dir", str(run), cwd=env["root"], prelude=prelude)
    assert done.returncode == status, done.stderr
    assert message in _one_error_line(done.stderr), done.stderr
    what, holds = check
    assert holds(run, before), f"run folder {what}: {_listing(run)}"


def test_overwrite_replaces_the_run_and_resume_cleans_up(env):
    run = _copy_base(env, "overwrite")
    done = _vlae(*env["common"], "--max-steps", "2", "--set", "model.latent_dim=4", "--overwrite", "--run-dir",
                 str(run), "--quiet", cwd=env["root"])
    assert done.returncode == 0 and "deleted the previous run" in done.stderr, done.stderr
    assert [p.name for p in run.glob("ckpt-*.pt")] == ["ckpt-000000002.pt"]
    assert json.loads((run / "config.json").read_text())["model"]["latent_dim"] == 4
    (run / ".ckpt-000000003.pt.k2j4.tmp").write_bytes(b"half a checkpoint")
    (run / ".best.pt.tmp").write_bytes(b"half a copy")
    done = _vlae(*env["common"], "--max-steps", "3", "--set", "model.latent_dim=4", "--threads", "2", "--resume",
                 "--run-dir", str(run), "--quiet", cwd=env["root"])
    assert done.returncode == 0, done.stderr
    assert "removed 2 temporary file(s)" in done.stderr and "written with 1 CPU threads, this run uses 2" in done.stderr
    assert not list(run.glob(".*.tmp"))


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``predicate()``; False if the process finished (exit 0) first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() == 0:
            return False
        assert proc.poll() is None, f"exited {proc.returncode} early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.0005)
    return True


def _started(run: Path) -> Callable[[], bool]:
    return lambda: (run / "metrics.jsonl").is_file() or latest_checkpoint(run) is not None


def _stamp(path: Path) -> tuple[int, int] | None:
    """Which version of a file is there (atomic writes give a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def test_sigint_then_sigterm_each_write_a_resumable_checkpoint(env):
    """Ctrl-C in the first session, a scheduler's SIGTERM in the resumed one: 130, then 143, one history."""
    run, steps = env["root"] / "signals", []
    for sig, status in [(signal.SIGINT, 130), (signal.SIGTERM, 143)]:
        before = _stamp(run / "config.json")
        proc = subprocess.Popen([*_command(), *env["common"], "--max-steps", "100000", "--set", "train.epochs=0",
                                 *(["--resume"] if steps else []), "--run-dir", str(run)], cwd=env["root"],
                                env=_environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _stamp(run / "config.json") != before, proc)  # written just before the first step
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == status, err
        assert f"interrupted by {sig.name} at step" in err and f"--resume --run-dir {run}" in err, err
        assert "RUN_DIR" not in err and "Traceback" not in err
        state = load_checkpoint(latest_checkpoint(run))
        assert state["trainer"]["reason"] == sig.name and f"wrote {latest_checkpoint(run)}" in err
        steps.append(state["trainer"]["step"])
        assert json.loads((run / "summary.json").read_text())["stopped"] == sig.name
    assert 1 <= steps[0] < steps[1]  # the second session continued the first


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(env):
    """Three kills -9 (two in the middle of a checkpoint write), then resume: as if never interrupted."""
    args = [*env["common"], "--max-steps", "20", "--checkpoint-steps", "1", "--quiet"]
    reference = env["root"] / "kill-reference"
    done = _vlae(*args, "--run-dir", str(reference), cwd=env["root"])
    assert done.returncode == 0, done.stderr
    run, rng, kills = env["root"] / "killed", random.Random(0), []
    for kill in range(3):
        again = ["--resume"] if latest_checkpoint(run) else ["--overwrite"] if run.exists() else []
        proc = subprocess.Popen([*_command(), *args, *again, "--run-dir", str(run)], cwd=env["root"], env=_environ(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kill == 1:  # a random moment once training runs
            if _wait_for(_started(run), proc):
                time.sleep(rng.uniform(0.0, 1.0))
        else:  # while a checkpoint is being written
            _wait_for(lambda: any(p.name.startswith(".ckpt-") for p in run.iterdir()) if run.is_dir() else False,
                      proc)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL)
        kills.append(proc.returncode)
        if proc.returncode == 0:  # it finished before the kill: nothing left to interrupt
            break
    assert kills[0] == -signal.SIGKILL  # the first kill, mid-write, always lands
    done = _vlae(*args, "--resume" if latest_checkpoint(run) else "--overwrite", "--run-dir", str(run), cwd=env["root"])
    assert done.returncode == 0, done.stderr
    mine, theirs = load_checkpoint(latest_checkpoint(run)), load_checkpoint(latest_checkpoint(reference))
    assert mine["trainer"]["step"] == theirs["trainer"]["step"] == 20
    for key in ("model", "ema"):
        assert all(torch.equal(mine[key][k], theirs[key][k]) for k in theirs[key]), key
    assert all(torch.equal(a, b) for i in theirs["optimizer"]["state"]
               for a, b in zip(mine["optimizer"]["state"][i].values(), theirs["optimizer"]["state"][i].values()))
    mine, theirs = _history(run), _history(reference)
    assert [(r["step"], r.get("split")) for r in mine] == [(r["step"], r.get("split")) for r in theirs]  # once each
    assert [r for r in mine if r.get("split")] == [r for r in theirs if r.get("split")]  # validation: bit for bit
    best, reference_best = load_checkpoint(run / "best.pt")["ema"], load_checkpoint(reference / "best.pt")["ema"]
    assert all(torch.equal(best[k], reference_best[k]) for k in reference_best)
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- sweeps and ablations stopped by a signal

# `vlae sweep` / `vlae ablation` with one tiny run on the embedded digits, long enough to be stopped while training.
RUNNER = ["--preset", "tiny", "--set", "train.dataset=mnist-embedded", "--set", "train.eval_subset=8",
          "--set", "train.batch_size=16", "--eval-subset", "4", "--k", "2", "--jobs", "1", "--threads", "1"]
SWEEP = ["sweep", *RUNNER, "--layers", "1", "--kernels", "3", "--priors", "af"]
ABLATION = ["ablation", *RUNNER, "--variants", "af"]
# Every case: (name, command, run folder, how the signal is sent, signal, exit status, the one line's pieces).
# "group": to the process group, as the terminal's Ctrl-C; "process": to the command alone, as `kill PID`.
STOP_CASES = [
    ("Ctrl-C on a sweep", SWEEP, "masked-L1-k3-af", "group", signal.SIGINT, 130,
     ["interrupted by SIGINT (stopped masked-L1-k3-af at step ", "run the same command again to continue the sweep"]),
    ("SIGTERM to a sweep", SWEEP, "masked-L1-k3-af", "process", signal.SIGTERM, 143,
     ["interrupted by SIGTERM (stopped masked-L1-k3-af at step ", "continue the sweep"]),
    ("Ctrl-C on an ablation", ABLATION, "af", "group", signal.SIGINT, 130,
     ["interrupted by SIGINT (stopped af at step ", "continue the ablation"]),
    ("SIGTERM to an ablation", ABLATION, "af", "process", signal.SIGTERM, 143,
     ["interrupted by SIGTERM (stopped af at step ", "continue the ablation"]),
]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children of children included), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("name, args, run, how, sig, status, pieces", STOP_CASES, ids=[c[0] for c in STOP_CASES])
def test_a_signal_stops_a_sweep_and_its_workers(tmp_path, name, args, run, how, sig, status, pieces):
    """The workers checkpoint, the command exits within a bounded time with one line, no process
    is left training; a rerun with another budget is refused and leaves the folder as it was."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vlae", *args, "--out", str(out)]
    proc = subprocess.Popen([*command, "--max-steps", "100000"], cwd=tmp_path, env=_environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: latest_checkpoint(out / run) is not None or (out / run / "metrics.jsonl").is_file(), proc)
        workers = _descendants(proc.pid)
        assert workers, "no worker process"
        os.killpg(proc.pid, sig) if how == "group" else proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(piece in lines[0] for piece in pieces), lines[0]
    deadline = time.monotonic() + 10  # the forkserver ends when it sees its parent gone
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers), f"orphaned processes: {_alive(workers)}"
    state = load_checkpoint(latest_checkpoint(out / run))
    assert state["trainer"]["reason"] == sig.name and f"at step {state['trainer']['step']})" in lines[0]
    assert not (out / run / "results.json").exists()

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = subprocess.run([*command, "--max-steps", "150"], cwd=tmp_path, env=_environ(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"interrupted at step {state['trainer']['step']} of a run with other settings" in line
    assert "train.max_steps: 100000 -> 150" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written, no table
