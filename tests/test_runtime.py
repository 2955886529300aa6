"""vlae.runtime: the device, the process group and the collectives of one process.
(Two processes: tests/test_evaluate.py evaluates under a gloo group of two ranks.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from vlae import checkpoint
from vlae.errors import VLAEError
from vlae.runtime import Runtime, pick_device, torchrun_ranks


def test_pick_device_names_the_bad_device():
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(VLAEError, match="invalid device 'gpu0'"):
        pick_device("gpu0")
    assert checkpoint.pick_device is pick_device  # its old home still imports it


def test_one_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert torchrun_ranks() == (0, 1, 0)
    rt = Runtime.create("cpu", "fp32", join=False)
    assert (rt.device, rt.world, rt.main, rt.bf16) == (torch.device("cpu"), 1, True, False)
    with rt.process_group():
        assert not dist.is_initialized()
        assert rt.gather_to_main([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert not dist.is_initialized()


_STEPS = textwrap.dedent("""
    import resource, sys
    import torch
    from vlae.runtime import keep_cpu_heap
    kept = keep_cpu_heap() if sys.argv[1] == "keep" else False
    def step():  # a step's worth of small tensors (64 KiB each, 100 MiB in all), freed at its end
        blocks = [torch.ones(16384) for _ in range(1600)]
        del blocks
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_heap_is_kept_between_steps(monkeypatch):
    """Four repeats of a step take their pages back through ~100,000 page faults when glibc
    trims its heap, and reuse the first step's memory once keep_cpu_heap has run (every time:
    glibc's adaptive default does so only in some processes)."""
    for name in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    kept, faults = _faults("keep", **env)
    assert kept == "True" and faults < 2000
    # The baseline trims at every free. glibc's own default is no baseline: from one process to
    # the next it either trims (~100,000 faults) or happens to keep this heap (~50), and even its
    # starting thresholds held fixed do the same, so only a forced trim shows the count sees it.
    _, trimmed = _faults("adaptive", MALLOC_TRIM_THRESHOLD_="0", **env)
    assert trimmed > 20 * max(faults, 100)
    kept, _ = _faults("keep", MALLOC_TRIM_THRESHOLD_="131072", **env)  # the user's setting stands
    assert kept == "False"
