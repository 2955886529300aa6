"""Distributed training without torchrun: two CPU processes (gloo) train the tiny preset."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from vlae.checkpoint import latest_checkpoint, load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    from vlae import model as model_module
    from vlae.config import get_preset
    from vlae.train import train

    made = []
    init = model_module.VLAE.__init__

    def remember(self, *args, **kwargs):  # keep a handle on the model train() builds
        init(self, *args, **kwargs)
        made.append(self)

    model_module.VLAE.__init__ = remember
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(64, 1, 28, 28, generator=g) < 0.2).to(torch.uint8)
    cfg = get_preset("tiny")
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.eval_subset, cfg.train.progress = 4, 8, 8, "off"
    try:
        summary = train(cfg, run_dir, data=data, quiet=True)
        torch.save({"state": made[-1].state_dict(), "summary_steps": summary["steps"],
                    "world": summary["world_size"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_stay_identical(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(run_dir), str(out_dir)), nprocs=2, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["world"] == 2 and r["summary_steps"] == 4 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # DDP kept the replicas in step
    state = load_checkpoint(latest_checkpoint(run_dir))  # written by rank 0 only, with both ranks' RNG states
    assert all(torch.equal(state["model"][k], a[k]) for k in a)
    assert state["rng"]["world"] == 2 and len(state["rng"]["ranks"]) == 2
    assert not torch.equal(state["rng"]["ranks"][0]["torch"], state["rng"]["ranks"][1]["torch"])  # own noise
