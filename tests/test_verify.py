"""``python setup.py`` verifies an installation: every check passes, a broken
check makes it fail, and setuptools-style use is refused with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlae import verify

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "setup.py"


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SETUP), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _rows(stdout: str) -> list[str]:
    lines = stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return lines[start:-1]  # between the header rule and the summary line


def test_setup_py_passes_every_check(tmp_path):
    proc = _run(cwd=tmp_path)  # from any directory, not only the checkout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1].split("|")[0].strip() == "check" and [c.strip() for c in lines[1].split("|")[1:]] == [
        "result", "time"]
    rows = _rows(proc.stdout)
    assert len(rows) == len(verify.CHECKS)
    for row in rows:
        assert row.split("|")[1].strip() == "PASS", row
    assert lines[-1].startswith(f"{len(verify.CHECKS)}/{len(verify.CHECKS)} checks passed")


@pytest.mark.parametrize("args", [["install"], ["bdist_wheel"], ["develop"], ["sdist"], ["--version"],
                                  ["egg_info", "--egg-base", "x"]])
def test_setuptools_use_is_refused(args):
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "error: setup.py is the verification script; install with `pip install -e .` (pyproject.toml)")


def test_unknown_argument_is_a_usage_error():
    proc = _run("fast")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unexpected argument 'fast'")
    assert "Traceback" not in proc.stderr


def test_broken_check_fails(monkeypatch, capsys):
    def broken() -> None:
        """masks A/B contents"""
        raise AssertionError("3x3 mask A is wrong\nsecond line is dropped")

    def crashing() -> None:
        """MADE connectivity == order"""
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(verify, "check_masks", broken)
    monkeypatch.setattr(verify, "check_made_connectivity", crashing)
    monkeypatch.setattr(verify, "CHECKS", ["check_masks", "check_made_connectivity", "check_flow"])
    threads = torch.get_num_threads()
    assert verify.main() == 1
    assert torch.get_num_threads() == threads
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 3
    assert [r.split("|")[1].strip() for r in rows] == ["FAIL", "FAIL", "PASS"]
    assert rows[0].split("|")[-1].strip() == "3x3 mask A is wrong"
    assert rows[1].split("|")[-1].strip() == "RuntimeError: shape mismatch"
    assert verify.run_checks(verbose=False) is False
    assert capsys.readouterr().out == ""


def test_run_checks_true_when_all_pass(monkeypatch):
    monkeypatch.setattr(verify, "CHECKS", ["check_masks", "check_flow", "check_iw_bound"])
    assert verify.run_checks(verbose=False) is True
