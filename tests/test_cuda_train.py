"""Training on a CUDA device: the step replayed as a CUDA graph equals the eager step, a bad
step inside the graph is rolled back exactly, nothing synchronises inside a step, and
checkpoints move between GPU and CPU. Skipped without a GPU (bench/gpu.sh runs them)."""

from __future__ import annotations

import copy

import pytest
import torch

from vlae.config import get_preset
from vlae.model import VLAE
from vlae.runtime import Runtime
from vlae.train.step import TrainStep

from conftest import needs_cuda

pytestmark = needs_cuda


def _images(n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.2).float()


def _step(precision: str = "fp32") -> TrainStep:
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    rt = Runtime.create("cuda", precision)
    model = VLAE(cfg.model).to(rt.device)
    x = _images().to(rt.device)
    model.initialize(x)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adamax(model.parameters(), lr=torch.tensor(2e-3, device=rt.device), capturable=True)
    step = TrainStep(model, model, optimizer, rt, tuple(x.shape), window=16, grad_clip=100.0, ema=ema, polyak=0.998)
    step.x.copy_(x)
    return step


def _on_side_stream(step: TrainStep) -> None:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_replay_equals_the_eager_step(precision):
    eager, graphed = _step(precision), _step(precision)
    torch.manual_seed(1)
    for _ in range(6):
        eager()
    torch.manual_seed(1)
    _on_side_stream(graphed)
    graphed.capture()
    for _ in range(5):
        graphed()
    rows_e, rows_g = torch.tensor(eager.read()[0]), torch.tensor(graphed.read()[0])
    assert (rows_g[:, 0] == 0).all()
    torch.testing.assert_close(rows_g, rows_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(graphed.params, eager.params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(graphed.averaged, eager.averaged):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_bad_step_inside_the_graph_is_undone_exactly():
    step = _step()
    _on_side_stream(step)
    step.capture()
    step()
    x = step.x.clone()

    def snapshot():
        state = [v.clone() for p in step.params for v in step.optimizer.state[p].values()]
        return [p.detach().clone() for p in step.params] + state + [a.clone() for a in step.averaged]

    before = snapshot()
    step.x.fill_(float("nan"))  # a non-finite loss
    step()
    lr = step.optimizer.param_groups[0]["lr"]
    step.x.copy_(x)
    lr.fill_(float("inf"))  # finite loss and gradient, non-finite weights after the update
    step()
    after = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    lr.fill_(2e-3)
    step()
    codes = [int(r[0]) for r in step.read()[0]]
    assert codes == [0, 0, 1, 3, 0]  # the eager warm-up, a replay, the two faults, a good replay
    assert not torch.equal(step.params[0], before[0])


def test_no_synchronisation_inside_a_step():
    step = _step()
    step()  # the first update creates the optimiser state (checked on the host, once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(step.read()[0]) == 4


def test_training_with_graphs_checkpoints_that_resume_on_cpu_and_back(tmp_path):
    from vlae.checkpoint import latest_checkpoint, load_checkpoint
    from vlae.train import train

    data = (_images(96, 3)).to(torch.uint8)

    def cfg(device, steps, graph="auto"):
        c = get_preset("tiny")
        c.train.epochs, c.train.max_steps, c.train.batch_size, c.train.eval_subset = 0, steps, 16, 16
        c.train.device, c.train.progress, c.train.cuda_graph = device, "off", graph
        return c

    summary = train(cfg("cuda", 8), tmp_path / "moved", data=data, quiet=True, log_every=4)
    assert summary["cuda_graph"] and summary["skipped"] == 0
    train(cfg("cpu", 12), tmp_path / "moved", data=data, quiet=True, log_every=4, resume=True)
    assert load_checkpoint(latest_checkpoint(tmp_path / "moved"))["trainer"]["step"] == 12
    summary = train(cfg("cuda", 16), tmp_path / "moved", data=data, quiet=True, log_every=4, resume=True)
    assert summary["steps"] == 16 and summary["cuda_graph"]
    # the same run with and without the graph (the CPU steps above draw other noise: not compared)
    graph = train(cfg("cuda", 16), tmp_path / "graph", data=data, quiet=True, log_every=4)
    eager = train(cfg("cuda", 16, "off"), tmp_path / "eager", data=data, quiet=True, log_every=4)
    assert graph["cuda_graph"] and not eager["cuda_graph"]
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d), map_location="cpu") for d in ("graph", "eager"))
    assert a["trainer"]["step"] == b["trainer"]["step"] == 16
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-3, atol=1e-4)
    assert graph["valid"]["nelbo"] == pytest.approx(eager["valid"]["nelbo"], rel=1e-3)
