"""vlae.runtime: the device, the process group and the collectives of one process.
(Two processes: tests/test_evaluate.py evaluates under a gloo group of two ranks.)"""

from __future__ import annotations

import ctypes
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
    import ctypes, sys
    from vlae.runtime import keep_cpu_heap
    class Info(ctypes.Structure):  # glibc's struct mallinfo2: arena is the heap it holds
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
    kept = keep_cpu_heap() if sys.argv[1] == "keep" else False
    before = libc.mallinfo2().arena
    # A step's worth of small blocks (64 KiB each, 100 MiB), freed at its end. Straight from malloc:
    # torch's tensors interleave the heap with other objects, one of which may pin its top.
    blocks = [libc.malloc(65536) for _ in range(1600)]
    for b in blocks:
        libc.free(b)
    print(kept, (libc.mallinfo2().arena - before) >> 20)
""")


def _held(mode: str, **env: str) -> tuple[str, int]:
    """Whether keep_cpu_heap took effect, and the MiB glibc still holds after a step's memory is freed."""
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc >= 2.33's allocator")
def test_cpu_heap_is_kept_between_steps(monkeypatch):
    """After a step's small blocks are freed, glibc trims its heap back to the kernel (and the
    next step faults every page in again) unless keep_cpu_heap has run. Measured by what the
    allocator holds: page-fault counts vary with transparent huge pages, and a freed heap whose
    top another object pins is not trimmed at all."""
    for name in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    kept, held = _held("keep", **env)
    assert kept == "True" and held >= 90
    _, trimmed = _held("adaptive", MALLOC_TRIM_THRESHOLD_="0", **env)  # a trim at every free
    assert trimmed < 10
    kept, _ = _held("keep", MALLOC_TRIM_THRESHOLD_="131072", **env)  # the user's setting stands
    assert kept == "False"
