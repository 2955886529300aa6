"""The throughput benchmarks run end to end (on the CPU, tiny preset, dry-run sizes)
and write strict JSON with the fields the closing notes quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(data: bool = True) -> dict[str, str]:
    """The benchmarks' environment: one torch thread, ``src`` importable; ``data=False``
    drops ``VLAE_DATA_DIR`` (the GPU script's dry run then codes the embedded digits)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if not data:
        env.pop("VLAE_DATA_DIR", None)
    return env


def test_gpu_script_dry_run_writes_one_report(tmp_path):
    """The GPU script's steps with the GPU run's flags (bf16, compile; graphs become eager), on the CPU."""
    out = tmp_path / "gpu.json"
    env = _env(data=False)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())  # strict JSON: json.loads accepts NaN, so check the text too
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    steps = [json.loads(line) for line in (tmp_path / "gpu.logs" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["tests", "train_bf16", "train_fp32", "eval_mnist", "eval_cifar",
                                         "precision", "protocol", "train_compile", "protocol",
                                         "codec_tests", "codec_train", "codec", "codec_batch"]
    assert all(s["status"] == 0 for s in steps)
    rows = {(r["mode"], r["precision"]): r for t in report["train"] for r in t["rows"]}
    assert set(rows) == {("eager", "bf16"), ("eager", "fp32"), ("compile", "bf16")}
    bf16 = rows[("eager", "bf16")]
    assert bf16["preset"] == "tiny" and bf16["images_per_s"] > 0 and bf16["gflop_per_image"] > 0
    assert 0 < bf16["loop_fraction_of_bare"] < 5
    assert bf16["loop_fraction_per_round"] == [bf16["loop_fraction_of_bare"]]  # one round by default
    eval_rows = [r for e in report["eval"] for r in e["rows"]]
    assert all(r["samples_per_s"] > 0 and r["gflop_per_sample"] > 0 for r in eval_rows)
    assert sorted(r["compiled"] for r in eval_rows) == [False, True]  # the binary protocol's evaluation compiled
    precision = report["precision"][0]
    assert [r["precision"] for r in precision["rows"]] == ["fp32", "bf16"] and precision["choice"] in ("fp32", "bf16")
    assert report["stand_in"] == "tiny"
    for projection in report["projection"]:
        assert projection["train_hours"] > 0 and projection["eval_hours"] > 0
    assert [p["protocol"] for p in report["projection"]] == [
        "static-mnist", "dynamic-mnist", "omniglot", "caltech101-silhouettes", "cifar10"]
    codec = json.loads((tmp_path / "gpu.logs" / "codec.json").read_text())
    vlae = codec["codecs"][0]  # the stream, coded with the network on the script's device
    assert (codec["dataset"], codec["images"], codec["device"]) == ("mnist-embedded", 500, "cpu") and vlae["exact"]
    assert vlae["compress_images_per_s"] > 0 and vlae["decompress_images_per_s"] > 0


def test_gpu_script_runs_the_codec_steps_alone(tmp_path):
    """``--codec``: only the codec's steps (what a short GPU lease runs), and an unknown option is refused."""
    out = tmp_path / "gpu.json"
    env = _env(data=False)
    script = str(ROOT / "bench" / "gpu.sh")
    proc = subprocess.run(["bash", script, "--dry-run", "--codec", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = [json.loads(line) for line in (tmp_path / "gpu.logs" / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["status"]) for s in steps] == [("codec_tests", 0), ("codec_train", 0), ("codec", 0),
                                                         ("codec_batch", 0)]
    for name, batch in (("codec", 500), ("codec-batch", 250)):  # tiny's default chunk; the script's large chunk
        codec = json.loads((tmp_path / "gpu.logs" / f"{name}.json").read_text())
        assert codec["codecs"][0]["exact"] and codec["codecs"][0]["batch"] == batch
    cross = json.loads((tmp_path / "gpu.logs" / "codec.json").read_text())["codecs"][0]["decoded_on_other_device"]
    assert cross["device"] == "cpu" and cross["exact"] and cross["images_per_s"] > 0
    assert not out.exists()  # no training report: those steps did not run
    proc = subprocess.run(["bash", script, "--codecs"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option --codecs" in proc.stderr


def test_gpu_script_names_missing_packages_before_any_step(tmp_path):
    bare = tmp_path / "python"  # an interpreter without site-packages: neither vlae nor torch importable
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    env = dict(_env(), PYTHON=str(bare), PYTHONPATH="")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", str(tmp_path / "g.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "missing Python packages: vlae" in proc.stderr
    assert not (tmp_path / "g.logs" / "steps.jsonl").exists()


def test_eval_benchmark_rejects_bad_options():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "eval.py"), "--k", "0"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--k" in proc.stderr


def _git_head() -> str | None:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _compare_with_head(tmp_path, script: str, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a same-run comparison of this checkout against its own HEAD: the process and its JSON."""
    import pytest

    head = _git_head()
    if head is None:
        pytest.skip("not a git checkout: the reference tree comes from git")
    out = tmp_path / "speedup.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--presets", "tiny", "--reference", head,
                           "--threads", "1", "--rounds", "2", *options, "--json", str(out)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_eval_speedup_compares_two_trees_in_one_run(tmp_path):
    proc, written = _compare_with_head(tmp_path, "eval_speedup.py", "--images", "2", "--k", "4", "--seconds", "0.05",
                                       "--compile")
    assert written["compile"] is True and "current, compiled" in proc.stdout
    result = written["results"][0]
    assert result["preset"] == "tiny" and len(result["round_ratios"]) == 2
    assert result["reference_samples_per_s"] > 0 and result["current_samples_per_s"] > 0
    assert result["speedup"] == result["current_samples_per_s"] / result["reference_samples_per_s"]
    assert "speed-up" in proc.stdout and "tiny" in proc.stdout


def test_train_speedup_compares_two_trees_in_one_run(tmp_path):
    _, written = _compare_with_head(tmp_path, "train_speedup.py", "--steps", "6", "--batch-size", "8")
    result = written["results"][0]
    assert result["preset"] == "tiny" and len(result["round_ratios"]) == 2
    assert result["ratio"] == result["current_images_per_s"] / result["reference_images_per_s"]


def test_eval_speedup_unknown_revision_is_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "eval_speedup.py"), "--reference", "no-such-rev",
                           "--presets", "tiny"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no-such-rev" in proc.stderr


def test_compress_benchmark_8bit_against_image_codecs(tmp_path):
    """bench/compress.py on 8-bit digits: vlae's row, the image codecs present (each
    skipped with a notice otherwise), per image and over the whole set, all exact."""
    import shutil

    import torch

    from vlae.checkpoint import save_checkpoint
    from vlae.config import ModelConfig, get_preset
    from vlae.model import VLAE

    cfg = get_preset("tiny")
    cfg.model = ModelConfig(**{**cfg.model.__dict__, "observation": "logistic_mixture", "mixture_components": 2})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "best.pt", {"config": cfg.to_dict(), "model": VLAE(cfg.model).state_dict(),
                                                   "ema": None})
    out = tmp_path / "compress.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compress.py"), "--run", str(tmp_path / "run"),
                           "--dataset", "mnist-embedded-8bit", "--subset", "3", "--per-image", "2", "--k", "0",
                           "--threads", "1", "--out", str(out)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["codec"]: r for r in json.loads(out.read_text())["codecs"]}
    assert rows["vlae file (all included)"]["exact"] and all(r["exact"] for r in rows.values())
    for name, tool in [("WebP", "cwebp"), ("JPEG-XL", "cjxl"), ("JPEG 2000", "opj_compress")]:
        ours = [r for c, r in rows.items() if c.startswith(name)]
        if shutil.which(tool):
            assert len(ours) == 2 and ours[1]["images"] == 2 and ours[0]["bits_per_dim"] > 0
        else:
            assert not ours and f"notice: {name}" in proc.stderr
    assert rows["lzma -9e, per image"]["images"] == 2
