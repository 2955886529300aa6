"""Shared pieces of the throughput benchmarks: the dense-GEMM reference, FLOP
counting, model construction and strict JSON output.

A throughput number means little alone: two cores of one CPU and one GPU differ
by orders of magnitude. Every benchmark therefore measures a dense matrix
product on the same device in the same run and prints the model's achieved
FLOP/s as a fraction of it. FLOPs are counted by
:class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions; elementwise work is not counted, which is why memory-bound parts
show a low fraction).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["gemm_gflops", "count_flops", "timed_rate", "synchronize", "build_model", "random_images",
           "environment", "write_json"]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(device: torch.device, n: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 1.0
                ) -> float:
    """Achieved GFLOP/s of ``n x n @ n x n`` products on ``device`` (2 n^3 FLOPs each),
    the median over about ``seconds`` of repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: thread pools, kernels, clocks
        a @ b
    synchronize(device)
    times: list[float] = []
    budget = time.perf_counter() + seconds
    while time.perf_counter() < budget or len(times) < 5:
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that one call of ``fn`` performs (as counted by PyTorch's flop counter)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed_rate(fn: Callable[[], Any], items: int, device: torch.device, seconds: float, warmup: int = 2,
               statistic: str = "median") -> tuple[float, int]:
    """items/s of ``fn`` (which processes ``items`` items per call) over repeats
    filling about ``seconds``, from the median call time, or with
    ``statistic="mean"`` from the total time (comparable with a loop's rate,
    which pays for its slow calls too); returns the rate and the number of timed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    budget = time.perf_counter() + seconds
    while time.perf_counter() < budget or len(times) < 3:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    per_call = statistics.median(times) if statistic == "median" else statistics.fmean(times)
    return items / per_call, len(times)


def random_images(cfg, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images the model accepts: binary pixels at MNIST's ink density, or
    8-bit values (the cost of a forward pass does not depend on the values)."""
    shape = (n, *cfg.model.image_shape)
    if getattr(cfg.model, "observation", "bernoulli") == "bernoulli":
        return torch.bernoulli(torch.full(shape, 0.13), generator=generator)
    return torch.randint(0, 256, shape, generator=generator).float()


def build_model(preset: str, overrides: list[str], device: torch.device, seed: int = 0):
    """A preset's model, data-dependently initialised on random images, on ``device``."""
    from vlae.config import apply_overrides, get_preset
    from vlae.model import VLAE

    cfg = apply_overrides(get_preset(preset), overrides)
    cfg.validate()
    torch.manual_seed(seed)
    model = VLAE(cfg.model)
    model.initialize(random_images(cfg, 64, torch.Generator().manual_seed(seed)))
    return cfg, model.to(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    from vlae.runtime import cpu_name  # here, not above: the speed-up benchmarks' reference workers
    # import this module against older checkouts of vlae, which lack it
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": cpu_name()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (non-finite numbers become null), parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n")
