"""vlae.runtime: the device, the process group and the collectives of one process.
(Two processes: tests/test_evaluate.py evaluates under a gloo group of two ranks.)"""

from __future__ import annotations

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
