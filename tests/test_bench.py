"""The throughput benchmarks run end to end (on the CPU, tiny preset, dry-run sizes)
and write strict JSON with the fields the closing notes quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_gpu_script_dry_run_writes_one_report(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", str(out)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())  # strict JSON: json.loads accepts NaN, so check the text too
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    train_row = report["train"]["rows"][0]
    assert train_row["preset"] == "tiny" and train_row["images_per_s"] > 0
    assert 0 < train_row["fraction_of_gemm"] < 5 and train_row["gflop_per_image"] > 0
    assert 0 < train_row["loop_fraction_of_bare"] < 5
    eval_row = report["eval"]["rows"][0]
    assert eval_row["samples_per_s"] > 0 and eval_row["gflop_per_sample"] > 0
    projection = report["projection"][0]
    assert projection["train_hours"] > 0 and projection["eval_hours"] > 0


def test_eval_benchmark_rejects_bad_options():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "eval.py"), "--k", "0"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--k" in proc.stderr
