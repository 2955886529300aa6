"""The sync-free training step: exact rollback decided on the device, no host reads, fp32 KL, compile.

CUDA-only checks (graph replay, sync debug mode, checkpoints across devices) are in
tests/test_cuda_train.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vlae.config import get_preset
from vlae.model import VLAE
from vlae.runtime import Runtime
from vlae.train.step import SKIP_REASONS, TrainStep


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.2).float()


def _step(soft: bool = True, polyak: float = 0.998, window: int = 8) -> TrainStep:
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.free_bits = 0.5 if soft else cfg.model.free_bits
    model = VLAE(cfg.model)
    x = _images()
    model.initialize(x)
    ema = copy.deepcopy(model).requires_grad_(False) if polyak else None
    optimizer = torch.optim.Adamax(model.parameters(), lr=2e-3)
    lam = cfg.model.free_bits * cfg.model.data_dims
    step = TrainStep(model, model, optimizer, Runtime.create("cpu", "fp32"), tuple(x.shape), window, grad_clip=100.0,
                     hard_free_bits=not soft, soft_target=lam if soft else 0.0, ema=ema, polyak=polyak)
    step.x.copy_(x)
    return step


def _snapshot(step: TrainStep) -> dict:
    state = [{k: v.clone() for k, v in step.optimizer.state[p].items()} for p in step.params]
    return {"params": [p.detach().clone() for p in step.params], "state": state,
            "ema": [a.clone() for a in step.averaged], "gamma": step.gamma.clone(),
            "ema_updates": step.ema_updates.clone()}


def _identical(a: dict, b: dict) -> bool:
    def bits(u):
        return (u if u.dim() else u.reshape(1)).view(torch.uint8)

    def same(u, v):
        return u.dtype == v.dtype and u.shape == v.shape and torch.equal(bits(u), bits(v))

    return (all(same(u, v) for u, v in zip(a["params"], b["params"]))
            and all(same(u, v) for u, v in zip(a["ema"], b["ema"]))
            and all(sa.keys() == sb.keys() and all(same(sa[k], sb[k]) for k in sa)
                    for sa, sb in zip(a["state"], b["state"]))
            and same(a["gamma"], b["gamma"]) and same(a["ema_updates"], b["ema_updates"]))


@pytest.mark.parametrize("fault", ["loss", "gradient", "weights"])
def test_a_bad_step_leaves_weights_optimizer_state_average_and_gamma_bit_identical(fault, monkeypatch):
    step = _step()
    for _ in range(2):  # the optimiser's state exists, the average has moved
        step()
    before = _snapshot(step)
    if fault == "loss":
        forward = step.forward
        step.forward = lambda x: (lambda t: setattr(t, "recon", t.recon * float("nan")) or t)(forward(x))
    elif fault == "gradient":
        handle = step.params[0].register_hook(lambda g: g * float("inf"))
    else:
        update = torch.optim.Adamax.step

        def poisoned(self, *args, **kwargs):
            out = update(self, *args, **kwargs)
            with torch.no_grad():
                self.param_groups[0]["params"][1].view(-1)[0] = float("nan")
            return out

        monkeypatch.setattr(torch.optim.Adamax, "step", poisoned)
    step()
    assert _identical(before, _snapshot(step))
    rows, gamma, updates = step.read()
    expected = {"loss": 1, "gradient": 2, "weights": 3}[fault]
    assert [int(r[0]) for r in rows] == [0, 0, expected] and SKIP_REASONS[expected]
    assert updates == 2 and gamma == float(before["gamma"])
    # the rows of good steps hold finite numbers, and the next good step moves everything again
    assert all(math.isfinite(v) for r in rows[:2] for v in r)
    if fault == "loss":
        step.forward = step.model
    elif fault == "gradient":
        handle.remove()
    else:
        monkeypatch.undo()
    step()
    after = _snapshot(step)
    assert not torch.equal(after["params"][0], before["params"][0])
    assert not torch.equal(after["ema"][0], before["ema"][0])
    assert int(step.read()[0][0][0]) == 0 and float(step.ema_updates) == 3


def test_the_first_update_of_a_fresh_optimizer_is_undone_by_forgetting_its_state():
    step = _step()
    before = [p.detach().clone() for p in step.params]
    step.x.fill_(float("nan"))
    step()
    assert not step.optimizer.state and all(torch.equal(a, p) for a, p in zip(before, step.params))
    assert int(step.read()[0][0][0]) == 1


class _HostReads:
    """Counts the ways a tensor reaches the host (each a device synchronisation on a GPU)."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(self_, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_step_reads_nothing_on_the_host(monkeypatch):
    """TrainStep's own code reads no tensor; the optimiser is torch's, whose ``capturable``
    mode keeps it on the device too (its CPU mode reads its step counter, so it is stubbed
    here by an update of the same shape; tests/test_cuda_train.py checks the real one on a GPU)."""
    step = _step()
    step.free_reads = False  # the path a GPU takes (on a CPU a good step reads `ok` to skip the selection)
    step()  # the first update: state created, checked on the host once (by design)
    monkeypatch.setattr(torch.optim.Adamax, "step", lambda self: torch._foreach_add_(
        [p.detach() for p in self.param_groups[0]["params"]], [p.grad for p in self.param_groups[0]["params"]],
        alpha=-1e-3))
    reads = _HostReads(monkeypatch)
    for _ in range(3):
        step()
    assert reads.calls == []
    rows, _, _ = step.read()  # the window's one read
    assert reads.calls and len(rows) == 4


def test_the_cpu_shortcut_and_the_device_path_give_the_same_bits(monkeypatch):
    """On a CPU a good step skips the selection and the average takes its weight as a number;
    the GPU's path (select by integer views, weights as tensors) must give the same bits."""
    cheap, device = _step(), _step()
    device.free_reads = False
    for step in (cheap, device):
        torch.manual_seed(3)
        for i in range(5):
            if i == 3:
                step.x[0, 0, 0, 0] = float("nan")  # one bad step in the middle
            step()
            step.x[0, 0, 0, 0] = 0.0
    assert _identical(_snapshot(cheap), _snapshot(device))
    assert [r[0] for r in cheap.read()[0]] == [r[0] for r in device.read()[0]] == [0, 0, 0, 1, 0]


def test_the_window_must_be_read_before_it_overflows():
    step = _step(window=2)
    step()
    step()
    with pytest.raises(RuntimeError, match="read"):
        step()
    assert len(step.read()[0]) == 2
    step()


def test_kl_and_densities_stay_float32_under_bf16_autocast():
    for name in ("tiny", "cifar-small"):
        torch.manual_seed(0)
        cfg = get_preset(name)
        model = VLAE(cfg.model)
        x = (torch.rand(2, *cfg.model.image_shape) * (2 if name == "tiny" else 256)).floor()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = model.terms(x)
            z, log_q = model.posterior_sample(x)
        assert terms.kl.dtype == terms.kl_per_dim.dtype == log_q.dtype == z.dtype == torch.float32, name
        assert terms.recon.dtype == torch.float32


def test_compiled_training_gives_the_eager_numbers_without_recompiling(tmp_path):
    """torch.compile of the model (static shapes) against eager: the same losses and weights to
    float tolerance over several steps and a validation pass of another batch size, compiled once."""
    import json

    import torch._dynamo

    from vlae.train import train

    def run(folder, compile):
        cfg = get_preset("tiny")
        cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_subset, cfg.train.progress = 2, 16, 24, "off"
        cfg.train.compile = compile
        summary = train(cfg, tmp_path / folder, data=_images(48, 1).to(torch.uint8), quiet=True, log_every=1)
        records = [json.loads(line) for line in (tmp_path / folder / "metrics.jsonl").read_text().splitlines()]
        return summary, records

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, eager = run("eager", False)
        torch._dynamo.reset()
        with torch._dynamo.config.patch(error_on_recompile=True):
            summary, compiled = run("compiled", True)
    finally:
        torch.set_num_threads(threads)
    assert summary["compiled"] and summary["steps"] == 6
    for a, b in zip(eager, compiled):
        assert a.keys() == b.keys()
        for key in ("loss", "nelbo", "kl", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), (a["step"], key)
    assert [r["split"] for r in compiled if "split" in r] == ["valid", "valid"]
