"""Where a command runs: device, processes, precision and threads, in one place.

A :class:`Runtime` answers the questions every long-running command asks before
its first tensor: which device (``auto``: CUDA, then MPS, then the CPU), which
process of how many (``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
NCCL on GPUs, gloo on CPUs), and in which precision the model's arithmetic runs
(bf16 autocast where it is supported and chosen, fp32 otherwise). On a CPU it
also asks the C library's allocator to keep the memory a step frees for the next
step (:func:`keep_cpu_heap`).

Example:
    >>> rt = Runtime.create("cpu", "fp32")
    >>> rt.device, rt.world, rt.main, rt.bf16
    (device(type='cpu'), 1, True, False)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .errors import VLAEError

__all__ = ["Runtime", "cpu_name", "keep_cpu_heap", "pick_device", "torchrun_ranks"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere). Two CPUs
    with the same vector instructions still differ: in speed, and in the last bits of the
    kernels PyTorch picks for them (an AMD EPYC and an Intel Xeon, both AVX-512)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def torchrun_ranks() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment, ``(0, 1, 0)`` without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: cuda if available, else mps, else cpu; otherwise ``torch.device(name)``."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise VLAEError(f"invalid device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise VLAEError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VLAEError(f"device {name!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# glibc's mallopt parameters and the values keep_cpu_heap sets: blocks from 32 MiB up (glibc's own
# largest adaptive choice on 64-bit systems) are mapped apart; up to 1 GiB of free heap stays mapped
_MALLOPT = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_MMAP_THRESHOLD": (-3, 32 << 20)}
_USER_MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_heap_kept: bool | None = None


def keep_cpu_heap() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, for this process; whether it now does.

    PyTorch allocates a CPU tensor with ``malloc`` and frees it when the last reference
    goes, so a training step frees its activations and allocates them again in the next
    step. glibc returns the free top of its heap to the system once it exceeds a
    threshold that it adapts to the sizes seen so far, and the next step then takes every
    page of it back through a page fault that zero-fills it. Whether a loop falls into
    this depends on the order of its allocations, not on its arithmetic: the sync-free
    training loop took 3-4 times the page faults of the previous one for the same
    kernels, and ran ``mnist-small`` 15 % slower on 2 threads (``bench/train_speedup.py``).
    Fixed thresholds (:data:`_MALLOPT`) keep the memory mapped; the process's peak memory
    is unchanged, it is only not handed back between steps.

    Nothing is changed outside Linux with glibc, or when the environment already sets
    glibc's allocator (``MALLOC_*_`` or ``GLIBC_TUNABLES``: the user's choice stands).
    Called once per process by :meth:`Runtime.create` for a CPU device.
    """
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = False
        if sys.platform.startswith("linux") and not any(name in os.environ for name in _USER_MALLOC_SETTINGS):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _heap_kept = all(libc.mallopt(code, value) == 1 for code, value in _MALLOPT.values())
            except (OSError, AttributeError):  # not glibc
                pass
    return _heap_kept


@dataclass(frozen=True)
class Runtime:
    """The device, process rank and precision of this process (see the module docstring)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    bf16: bool = False

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto", join: bool = True) -> "Runtime":
        """Choose the device and precision, and join torchrun's process group (once;
        ``join=False``: only within :meth:`process_group`).

        ``precision="auto"`` is bf16 on CUDA devices that support it, else fp32.
        """
        rank, world, local_rank = torchrun_ranks()
        dev = pick_device(device)
        if world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if join and world > 1 and not dist.is_initialized():
            dist.init_process_group(_backend(dev))
        bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
        if bf16 and dev.type not in ("cuda", "cpu"):
            raise VLAEError(f"invalid option train.precision: bf16 is not supported on {dev.type}")
        if dev.type == "cpu":
            keep_cpu_heap()
        return cls(dev, rank, world, bf16)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def autocast(self) -> AbstractContextManager:
        """The context the model's forward pass runs in (bf16 autocast, or nothing)."""
        # no cast cache: a CUDA graph must not capture casts made outside it
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the processes (``values`` itself for one process)."""
        if not self.distributed:
            return values
        out = values.to(self.device)
        dist.all_reduce(out)
        return out / self.world

    @contextlib.contextmanager
    def process_group(self) -> Iterator[None]:
        """Within the block, torchrun's process group: joined on entry unless it exists,
        left on exit if joined here (nothing for one process)."""
        mine = self.distributed and not dist.is_initialized()
        if mine:
            dist.init_process_group(_backend(self.device))
        try:
            yield
        finally:
            if mine:
                dist.destroy_process_group()

    def gather_to_main(self, items: list[Any]) -> list[Any]:
        """Every process's ``items``, in rank order, on the main process (empty elsewhere;
        ``items`` itself for one process). Inside :meth:`process_group`."""
        if not self.distributed:
            return items
        parts: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(items, parts, dst=0)
        return [item for part in parts for item in part] if parts is not None else []


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"
