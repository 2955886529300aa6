"""The training step as one function of device tensors, replayable as a CUDA graph.

:class:`TrainStep` takes one optimiser step on the batch in its static buffer
``x`` and reads everything else it needs from device tensors (the KL warm-up
factor, the soft-free-bits weight ``gamma``, the optimiser's learning rate). It
writes everything it produces to device tensors too: the update, the Polyak
average, ``gamma``, and one row of statistics per step in ``rows``::

    code, loss, recon, kl, grad_norm, kl_weight     (float64; code 0 = good step)

so the host never waits for the device inside a step: it reads ``rows`` once per
logging window (:meth:`TrainStep.read`). Because nothing in the step depends on
a value the host must see, the whole step (forward, backward, gradient
clipping, Adamax/Adam with ``capturable=True``, the skip decision, Polyak
averaging) can be captured once as a CUDA graph and replayed
(:meth:`TrainStep.capture`), which removes the cost of launching its thousands
of small kernels one by one from Python.

**Skipped updates, decided on the device.** A step whose loss, gradient norm or
updated weights are not finite must leave the weights, the optimiser state and
the Polyak average exactly as they were. Before the update the step copies the
weights and optimiser state into buffers allocated once; after it, it selects
per tensor ``new if ok else saved``. The selection multiplies the tensors'
*integer views* by ``ok`` and ``1 - ok``: integer arithmetic picks the exact bits
and, unlike ``new * ok + saved * (1 - ok)`` in floating point, is not poisoned by
a NaN it discards. The average and ``gamma`` move only when ``ok``. Codes:
:data:`SKIP_REASONS`.

The optimiser's very first update creates its state (there is none to save
before it), so that one update alone is checked on the host.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..model import VLAE
from ..runtime import Runtime

__all__ = ["TrainStep", "SKIP_REASONS", "ROW"]

SKIP_REASONS = {1: "non-finite loss", 2: "non-finite gradient", 3: "non-finite weights after the update (undone)"}
ROW = ("code", "loss", "recon", "kl", "grad_norm", "kl_weight")
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size integer type, by bytes per element


class TrainStep:
    """One optimiser step of a VLAE, sync-free (see the module docstring).

    Args:
        model: the :class:`~vlae.model.VLAE` whose parameters the optimiser updates.
        forward: what computes the bound's terms from ``x``: the model, its DDP
            wrapper or a compiled version of either.
        optimizer: Adamax or Adam over ``model.parameters()``; on CUDA with
            ``capturable=True`` and a tensor learning rate on the device.
        runtime: device, processes and precision.
        batch_shape: ``(B, C, H, W)`` of the static input buffer ``x``.
        window: rows of statistics held between two :meth:`read` calls.
        grad_clip: maximal global gradient norm (0: no clipping).
        hard_free_bits: the free-bits floor of :meth:`VLAE.kl_penalty`.
        soft_target: ``lambda`` of soft free bits (appendix C), 0 for none.
        ema: the Polyak-averaged copy of ``model`` (``None``: no averaging).
        polyak: the average's decay.
        gamma, ema_updates: the soft-free-bits weight and the number of
            averaging updates so far (a resumed run's values).
    """

    def __init__(
        self,
        model: VLAE,
        forward: Callable,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        batch_shape: tuple[int, ...],
        window: int,
        grad_clip: float = 0.0,
        hard_free_bits: bool = True,
        soft_target: float = 0.0,
        ema: torch.nn.Module | None = None,
        polyak: float = 0.0,
        gamma: float = 1.0,
        ema_updates: int = 0,
    ):
        self.model, self.forward, self.optimizer, self.runtime = model, forward, optimizer, runtime
        self.max_norm = grad_clip or math.inf
        self.hard_free_bits, self.soft_target, self.polyak = hard_free_bits, soft_target, polyak
        self.params = list(model.parameters())
        self.averaged = [p.detach() for p in ema.parameters()] if ema is not None else []
        # On a CPU the host reads a tensor for free: a good step then skips the selection, and the average
        # takes its weight as a number (the same bits either way; tests check both paths).
        self.free_reads = runtime.device.type == "cpu"
        self._ones: list[torch.Tensor] = []
        dev = runtime.device
        f64 = dict(dtype=torch.float64, device=dev)
        self.x = torch.zeros(batch_shape, device=dev)
        self.kl_warmup = torch.ones((), **f64)  # the host writes the step's warm-up factor before each step
        self.gamma = torch.tensor(float(gamma), **f64)
        self.ema_updates = torch.tensor(float(ema_updates), **f64)
        self.rows = torch.zeros(window, len(ROW), **f64)
        self.slot = torch.zeros((), dtype=torch.long, device=dev)
        self.pending = 0  # steps since the last read (host count)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._with_state: bool | None = None

    # ------------------------------------------------------------------ the step
    def __call__(self) -> None:
        """Take one step on ``x`` (replaying the graph once captured)."""
        if self.pending >= self.rows.shape[0]:
            raise RuntimeError("TrainStep: read() the statistics before taking more steps than the window holds")
        self.pending += 1
        if self.graph is not None:
            self.graph.replay()
            return
        fresh = not self.optimizer.state
        if self._with_state is not (not fresh):
            self._track(with_state=not fresh)
        ok = self._step()
        if fresh and not bool(ok):  # the first update created the state: forget it (host check, once)
            self.optimizer.state.clear()

    def _step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        kl_weight = self.kl_warmup * self.gamma
        with self.runtime.autocast():
            terms = self.forward(self.x)
            loss = terms.recon.mean() + kl_weight.float() * self.model.kl_penalty(terms, free_bits=self.hard_free_bits)
        loss.backward()
        with torch.no_grad():  # the rest records nothing for autograd (checking the weights would, on each)
            return self._update(terms, loss, kl_weight)

    def _update(self, terms, loss: torch.Tensor, kl_weight: torch.Tensor) -> torch.Tensor:
        """Clip, update, decide, undo a bad update, average, record: everything after backward."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        stats = torch.stack(
            [
                loss.detach().float(),
                terms.recon.detach().float().mean(),
                terms.kl.detach().float().mean(),
                grad_norm.detach().float(),
            ]
        ).double()
        stats = self.runtime.all_reduce_mean(stats)  # every process takes the same decision
        self._save()
        self.optimizer.step()
        weights_ok = torch.stack(torch._foreach_norm(self.params)).isfinite().all()
        zero = torch.zeros((), dtype=torch.float64, device=stats.device)
        code = torch.where(
            ~stats[0].isfinite(),
            zero + 1,
            torch.where(~stats[3].isfinite(), zero + 2, torch.where(weights_ok, zero, zero + 3)),
        )
        ok = code == 0
        self._keep_if(ok)
        self._average(ok)
        if self.soft_target > 0:
            self.gamma.copy_(torch.where(ok, self._soft_free_bits(stats[2]), self.gamma))
        row = torch.cat([code[None], stats, kl_weight[None]])
        self.rows.index_copy_(0, self.slot[None], row[None])
        self.slot += 1
        return ok

    def _soft_free_bits(self, kl: torch.Tensor, rate: float = 0.1, threshold: float = 0.05) -> torch.Tensor:
        """:func:`vlae.train.soft_free_bits_update` on device tensors."""
        g, target = self.gamma, self.soft_target
        return torch.where(
            kl < target,
            g * (1 - rate),
            torch.where(kl > target * (1 + threshold), torch.clamp(g * (1 + rate), max=1.0), g),
        )

    def _average(self, ok: torch.Tensor) -> None:
        """Polyak averaging with the warm-up of :func:`vlae.train.polyak_multi_avg_fn`; the first
        update copies the weights (weight 1), a skipped step moves nothing (weight 0)."""
        if not self.averaged:
            return
        n = self.ema_updates
        decay = torch.clamp((1 + n) / (10 + n), max=self.polyak)
        weight = (torch.where(n == 0, torch.ones_like(n), 1 - decay) * ok).float()
        current = [p.detach() for p in self.params]
        if self.free_reads:
            torch._foreach_lerp_(self.averaged, current, float(weight))
        else:  # lerp takes per-tensor weights: ones times the weight (adding a tensor to a list reads it on the host)
            if len(self._ones) != len(self.averaged):
                self._ones = [torch.ones_like(a) for a in self.averaged]
            torch._foreach_lerp_(self.averaged, current, torch._foreach_mul(self._ones, weight))
        self.ema_updates += ok.double()

    # ------------------------------------------------------------------ exact rollback
    def _track(self, with_state: bool) -> None:
        """Integer views of the tensors an update changes, and buffers to save them in."""
        live = [p.detach() for p in self.params]
        if with_state:
            live += [
                v for p in self.params for v in self.optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)
            ]
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in live:
            groups.setdefault(_INT_VIEW[t.element_size()], []).append(t.view(_INT_VIEW[t.element_size()]))
        self._groups = [(views, [v.clone() for v in views]) for views in groups.values()]
        self._with_state = with_state

    @torch.no_grad()
    def _save(self) -> None:
        for views, saved in self._groups:
            torch._foreach_copy_(saved, views)

    @torch.no_grad()
    def _keep_if(self, ok: torch.Tensor) -> None:
        if self.free_reads and bool(ok):  # a good step keeps its update: nothing to select
            return
        for views, saved in self._groups:
            keep = ok.to(views[0].dtype)
            restored = torch._foreach_mul(saved, 1 - keep)
            torch._foreach_mul_(views, keep)
            torch._foreach_add_(views, restored)

    # ------------------------------------------------------------------ graphs and reads
    def capture(self) -> None:
        """Capture :meth:`_step` as one CUDA graph; later calls replay it.

        Call after at least one eager step (the optimiser's state must exist) taken
        on a side stream, as :class:`vlae.train.Trainer` does. Capturing runs nothing: the
        current step is the first replay.
        """
        if not self.optimizer.state:
            raise RuntimeError("TrainStep.capture: take an eager step first (the optimiser has no state)")
        if not self._with_state:
            self._track(with_state=True)
        torch.cuda.synchronize(self.runtime.device)
        graph, inside = torch.cuda.CUDAGraph(), None
        try:
            with torch.cuda.graph(graph):
                try:
                    self._step()
                except Exception as error:  # the cause; ending the capture then fails with a vaguer error
                    inside = error
                    raise
        except Exception as error:
            raise (inside or error) from None
        self.graph = graph

    def read(self) -> tuple[list[list[float]], float, int]:
        """The rows of the steps since the last read, ``gamma`` and the number of
        averaging updates: the one synchronisation with the device."""
        k = self.pending
        flat = torch.cat([self.rows[:k].flatten(), self.gamma[None], self.ema_updates[None]]).tolist()
        self.slot.zero_()
        self.pending = 0
        width = len(ROW)
        return [flat[i * width : (i + 1) * width] for i in range(k)], flat[-2], int(flat[-1])
