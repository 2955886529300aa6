"""Exercise 4 -- MADE and the autoregressive-flow (AF) prior.

Task
    VLAE's prior p(z) is an autoregressive flow: ``eps = f(z)`` with
    ``eps ~ N(0, I)``, each step an affine map whose shift and scale for variable
    ``d`` are computed by a MADE from the variables before ``d``. You implement:

    1. ``made_degrees(features, hidden, order)``: the degree of every input and
       hidden unit.
    2. ``made_masks(degrees)``: the 0/1 connectivity masks of the hidden layers
       (a unit reads units of degree ``<=`` its own) and of the output layer
       (strictly ``<``).
    3. ``AffineAutoregressive.forward`` (one pass, with its log-determinant) and
       ``.inverse`` (``D`` passes).
    4. ``AFPrior``: steps whose order is reversed from one step to the next,
       ``to_noise``, ``log_prob`` and ``sample``.

    ``MADE`` itself (the network that uses your masks) is given.

Paper
    VLAE (Chen et al., ICLR 2017), "Learned prior with autoregressive flow": an
    AF prior with a diagonal-Gaussian posterior gives the same bound as an IAF
    posterior, at a lower cost. MADE: Germain et al. (2015), "MADE: Masked
    Autoencoder for Distribution Estimation", section 4. In this repository:
    ``paper_notes.md`` section 3, ``src/vlae/made.py``, ``src/vlae/flows.py``.

    The paper's AF steps are *mean-only*: ``s = 0``, ``y = x + m(x)``, a
    volume-preserving map whose log-determinant is zero (chosen for stability).
    This exercise builds the general scale-and-shift step (as in IAF and MAF),
    so that the log-determinant is there to get right; the library offers both
    (``vlae.flows.AFPrior(..., mean_only=True)``, the default, as in the paper).

Prerequisites
    The change-of-variables formula, ``log p(z) = log N(f(z); 0, I) + log|det df/dz|``.

Expected time
    45-60 minutes.

Run
    python exercises/exercise_04_flow_prior.py              # check your code
    python exercises/exercise_04_flow_prior.py --solution   # check the reference solution
"""

from __future__ import annotations

import math
import os
import sys
from typing import Sequence

import torch
import torch.nn as nn

from vlae.made import MaskedLinear  # nn.Linear whose weight is multiplied by a fixed (out, in) 0/1 mask

# ============================================================================ your code


def made_degrees(features: int, hidden: Sequence[int], order: Sequence[int]) -> list[torch.Tensor]:
    """Degrees of MADE's units: ``[inputs (D,), hidden layer 1 (H_1,), ...]`` (long tensors).

    - Input ``d`` gets degree ``1 + (its position in order)``: ``order[0]`` comes
      first and has degree 1. (Careful: variable ``order[i]`` has degree
      ``i + 1``, which is not the same as variable ``i`` having ``order[i] + 1``.)
    - Hidden units get degrees in ``1 .. D-1``, and every layer must contain
      each of these values (cycle through them). A unit of degree ``D`` would be
      useless (no output may read it); one of degree 0 would read nothing.

    Example:
        >>> made_degrees(3, [4], [2, 0, 1])
        [tensor([2, 3, 1]), tensor([1, 2, 1, 2])]
    """
    # TODO (1)
    raise NotImplementedError("TODO: made_degrees(features, hidden, order)")


def made_masks(degrees: list[torch.Tensor]) -> list[torch.Tensor]:
    """Masks ``(out, in)`` of float 0/1 for every hidden layer and the output layer.

    Args:
        degrees: ``[inputs (D,), hidden 1, ..., hidden L]`` as from :func:`made_degrees`.

    Returns:
        ``L + 1`` masks. Hidden layer ``l``: ``mask[k, j] = 1`` when unit ``k``
        (degree ``m_k``) may read unit ``j`` of the layer below (degree ``m_j``),
        i.e. ``m_k >= m_j``. Output layer (one output per variable, ``(D, H_L)``):
        output ``d`` may read hidden unit ``j`` only when ``degree(d) > m_j``
        (strictly), so it never sees its own variable.
    """
    # TODO (2)
    raise NotImplementedError("TODO: made_masks(degrees)")


class MADE(nn.Module):
    """``(B, D) -> (B, n_params, D)``: output ``[:, p, d]`` depends only on the
    variables before ``d`` in ``order``. (Given: uses your degrees and masks.)"""

    def __init__(self, features: int, hidden: Sequence[int], order: Sequence[int], n_params: int = 2,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features, self.n_params = features, n_params
        masks = made_masks(made_degrees(features, hidden, order))
        layers: list[nn.Module] = []
        for mask in masks[:-1]:
            layers += [MaskedLinear(mask), activation()]
        self.net = nn.Sequential(*layers)
        self.out = MaskedLinear(masks[-1].repeat(n_params, 1))  # n_params outputs per variable
        with torch.no_grad():  # start near the identity map
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x)).view(x.shape[0], self.n_params, self.features)


class AffineAutoregressive(nn.Module):
    """One flow step ``y = x * exp(s(x)) + m(x)``, where ``s_d`` and ``m_d`` depend
    only on the variables before ``d`` in ``order``.

    The Jacobian ``dy/dx`` is triangular (in the order) with diagonal ``exp(s)``,
    so ``log|det dy/dx| = sum_d s_d``.
    """

    def __init__(self, features: int, hidden: Sequence[int], order: Sequence[int],
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features, self.order = features, list(order)
        self.made = MADE(features, hidden, self.order, n_params=2, activation=activation)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_scale s, shift m)``, each ``(B, D)``; ``s`` is soft-bounded to (-3, 3)."""
        out = self.made(x)
        return 3.0 * torch.tanh(out[:, 0] / 3.0), out[:, 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``x (B, D) -> y (B, D), log|det dy/dx| (B,)``."""
        # TODO (3)
        raise NotImplementedError("TODO: AffineAutoregressive.forward (y and its log-determinant)")

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B, D) -> x (B, D)`` with ``forward(x)[0] == y``.

        ``s`` and ``m`` depend on ``x``, which is unknown: start from any ``x``
        (zeros); after one pass the first variable in the order is exact, after
        two the first two, ... after ``D`` passes all of them.
        """
        # TODO (4)
        raise NotImplementedError("TODO: AffineAutoregressive.inverse (D passes)")


class AFPrior(nn.Module):
    """Autoregressive-flow prior: ``eps = f_K(... f_1(z))``, ``eps ~ N(0, I)``.

    Step ``k`` is an :class:`AffineAutoregressive` with order ``0, 1, ..., D-1``
    for even ``k`` and the reverse for odd ``k`` (each step conditions on what
    the previous one could not).

    Example:
        >>> prior = AFPrior(4, steps=2, hidden=[8])
        >>> z = prior.sample(5)
        >>> prior.log_prob(z).shape
        torch.Size([5])
    """

    def __init__(self, features: int, steps: int = 2, hidden: Sequence[int] = (32, 32),
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features = features
        # TODO (5): self.steps = nn.ModuleList of `steps` AffineAutoregressive(features, hidden, order, activation)
        raise NotImplementedError("TODO: AFPrior.__init__ (steps with the order reversed between steps)")

    def to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, D) -> eps (B, D), log|det d eps / dz| (B,)``: every step's forward, in turn."""
        # TODO (6)
        raise NotImplementedError("TODO: AFPrior.to_noise")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)``, ``(B, D) -> (B,)``, by the change of variables."""
        # TODO (7)
        raise NotImplementedError("TODO: AFPrior.log_prob")

    def sample(self, n: int, eps: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``n`` samples ``(n, D)``: ``eps ~ N(0, I)`` (or the given ``eps``) mapped back
        through the steps' inverses."""
        # TODO (8)
        raise NotImplementedError("TODO: AFPrior.sample")


# ============================================================================ checker (no need to read on)
# Reading further gives the answers away. Run this file to check your code.

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _checker import Checklist, expect, fail, main  # noqa: E402

CHECKS = Checklist("Exercise 4: MADE and the autoregressive-flow prior")

_LOG_2PI = math.log(2 * math.pi)


def _ranks(order) -> torch.Tensor:
    rank = torch.empty(len(order), dtype=torch.long)
    for position, variable in enumerate(order):
        rank[variable] = position + 1
    return rank


def _as_long(t, what: str) -> torch.Tensor:
    expect(isinstance(t, torch.Tensor), f"{what} is a {type(t).__name__}, expected a tensor")
    return t.long()


@CHECKS.check("made_degrees: input degrees are 1 + the position in the order")
def _input_degrees(ex):
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 4, 2]):
        degrees = ex.made_degrees(len(order), [8], order)
        expect(isinstance(degrees, (list, tuple)) and len(degrees) == 2,
               "made_degrees(D, [8], order) should return [input degrees, hidden degrees]")
        got = _as_long(degrees[0], "the input degrees")
        want = _ranks(order)
        if torch.equal(got, want):
            continue
        if torch.equal(got, torch.tensor(order) + 1):
            hint = ("you gave variable i the degree order[i] + 1; variable order[i] is the i-th in the order, "
                    "so degrees[order[i]] = i + 1")
        elif torch.equal(got, want - 1):
            hint = "degrees start at 1 (degree 0 is reserved for 'reads nothing')"
        else:
            hint = "degrees[order[i]] = i + 1 for i = 0 .. D-1"
        fail(f"order {order}: input degrees {got.tolist()}, expected {want.tolist()}", hint)


@CHECKS.check("made_degrees: hidden degrees lie in 1..D-1 and each layer holds every one of them")
def _hidden_degrees(ex):
    for features, hidden in [(5, [8, 6]), (4, [3, 7, 12]), (2, [3])]:
        degrees = ex.made_degrees(features, hidden, list(range(features)))
        expect(len(degrees) == len(hidden) + 1, f"made_degrees({features}, {hidden}, ...) returned {len(degrees)} "
               f"tensors, expected {len(hidden) + 1} (inputs, then one per hidden layer)")
        for layer, (width, deg) in enumerate(zip(hidden, degrees[1:]), 1):
            deg = _as_long(deg, f"hidden layer {layer}'s degrees")
            expect(tuple(deg.shape) == (width,), f"hidden layer {layer} has {width} units but "
                   f"{tuple(deg.shape)} degrees")
            if deg.min() < 1:
                fail(f"D={features}, layer {layer}: degrees {deg.tolist()} include {int(deg.min())}",
                     "a hidden unit of degree 0 reads nothing (every input has degree >= 1): use 1..D-1")
            if deg.max() > features - 1:
                fail(f"D={features}, layer {layer}: degrees {deg.tolist()} include {int(deg.max())}",
                     f"a hidden unit of degree {features} is useless: no output may read it. Use 1..D-1")
            missing = sorted(set(range(1, features)) - set(deg.tolist()))
            expect(not missing, f"D={features}, layer {layer} (width {width}): degrees {deg.tolist()} miss "
                   f"{missing}", "every layer must hold each degree 1..D-1, or some output loses a predecessor: "
                   "cycle through them, e.g. torch.arange(width) % (D - 1) + 1")


def _want_masks(degrees):
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((degrees[0][:, None] > degrees[-1][None, :]).float())
    return masks


def _degrees_fixture():
    return [torch.tensor([2, 4, 1, 3]), torch.tensor([1, 2, 3, 1, 2, 3]), torch.tensor([3, 1, 2, 2, 1])]


@CHECKS.check("made_masks: hidden layers read units of degree <= their own")
def _hidden_masks(ex):
    degrees = _degrees_fixture()
    masks = ex.made_masks([d.clone() for d in degrees])
    want = _want_masks(degrees)
    expect(isinstance(masks, (list, tuple)) and len(masks) == len(want),
           f"made_masks returned {len(masks) if isinstance(masks, (list, tuple)) else type(masks).__name__} masks "
           f"for 2 hidden layers, expected 3 (2 hidden + 1 output)")
    for layer in range(len(want) - 1):
        got = masks[layer]
        expect(isinstance(got, torch.Tensor), f"mask {layer} is not a tensor")
        if tuple(got.shape) == tuple(want[layer].T.shape) and got.shape != want[layer].shape:
            fail(f"hidden mask {layer + 1} has shape {tuple(got.shape)}, expected (out, in) = "
                 f"{tuple(want[layer].shape)}", "nn.Linear's weight is (out_features, in_features): so is its mask")
        expect(tuple(got.shape) == tuple(want[layer].shape), f"hidden mask {layer + 1} has shape "
               f"{tuple(got.shape)}, expected {tuple(want[layer].shape)}")
        strict = (degrees[layer + 1][:, None] > degrees[layer][None, :]).float()
        if torch.equal(got.float(), strict):
            fail(f"hidden mask {layer + 1} uses a strict >", "a hidden unit of degree m must also read units of "
                 "degree m (>=); only the output layer is strict. With > here every output loses its "
                 "immediate predecessor")
        expect(torch.equal(got.float(), want[layer]), f"hidden mask {layer + 1} is wrong: got\n{got.int().tolist()}"
               f"\nexpected\n{want[layer].int().tolist()}", "mask[k, j] = 1 when degree_out[k] >= degree_in[j]")


@CHECKS.check("made_masks: the output layer reads only strictly lower degrees")
def _output_mask(ex):
    degrees = _degrees_fixture()
    got = ex.made_masks([d.clone() for d in degrees])[-1]
    want = _want_masks(degrees)[-1]
    expect(tuple(got.shape) == tuple(want.shape), f"output mask has shape {tuple(got.shape)}, expected "
           f"(D, H_last) = {tuple(want.shape)}", "one output row per variable, in the variables' index order")
    if torch.equal(got.float(), (degrees[0][:, None] >= degrees[-1][None, :]).float()):
        fail("the output mask uses >=", "with >= output d reads hidden units of degree(d), which see variable d "
             "itself: the flow would not be autoregressive. The output layer needs a strict >")
    expect(torch.equal(got.float(), want), f"output mask is wrong: got\n{got.int().tolist()}\nexpected\n"
           f"{want.int().tolist()}", "mask[d, j] = 1 when degree_input[d] > degree_hidden[j]")


@CHECKS.check("MADE, by the Jacobian: output d depends on exactly the variables before d (random orders)")
def _made_connectivity(ex):
    generator = torch.Generator().manual_seed(3)
    for features, hidden in [(6, [12, 12]), (5, [4]), (7, [9, 6, 8])]:
        order = torch.randperm(features, generator=generator).tolist()
        made = ex.MADE(features, hidden, order, n_params=2, activation=nn.Tanh).double()
        with torch.no_grad():
            for p in made.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
        x = torch.randn(4, features, generator=generator, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: made(v).sum(0), x)  # (n_params, D, B, D)
        deps = jac.abs().sum(dim=(0, 2)) != 0  # (D out, D in)
        rank = _ranks(order)
        want = rank[:, None] > rank[None, :]
        for d in range(features):
            for k in range(features):
                if deps[d, k] and not want[d, k]:
                    what = "itself" if d == k else f"variable {k}, which comes after it"
                    fail(f"order {order}: the outputs of variable {d} depend on {what}",
                         "output masks must be strict (>), hidden masks >=; and input degrees follow the order")
                if want[d, k] and not deps[d, k]:
                    fail(f"order {order}, hidden {hidden}: the outputs of variable {d} ignore variable {k}, "
                         "which comes before it",
                         "a connection is lost: hidden masks must use >=, and every hidden layer must hold "
                         "every degree 1..D-1")


def _step(ex, features: int = 5, order=None, seed: int = 0):
    torch.manual_seed(seed)
    step = ex.AffineAutoregressive(features, [16, 16], order if order is not None else [2, 4, 0, 3, 1]).double()
    with torch.no_grad():  # a clearly non-trivial step
        step.made.out.weight.mul_(8.0)
        step.made.out.bias.copy_(torch.randn_like(step.made.out.bias))
    return step


@CHECKS.check("affine step: forward computes y = x * exp(s(x)) + m(x) in one pass")
def _step_forward(ex):
    step = _step(ex)
    x = torch.randn(6, 5, dtype=torch.float64)
    out = step(x)
    expect(isinstance(out, tuple) and len(out) == 2, "forward should return (y, logdet)")
    y, _ = out
    s, m = step.params(x)
    want = x * s.exp() + m
    if torch.allclose(y, (x - m) * torch.exp(-s), atol=1e-8):
        fail("forward computes (x - m) * exp(-s)", "that is the other direction: forward is y = x * exp(s) + m")
    expect(tuple(y.shape) == (6, 5) and torch.allclose(y, want, atol=1e-8), "y differs from x * exp(s) + m "
           "with (s, m) = self.params(x)", "call self.params(x) once and combine: y = x * s.exp() + m")


@CHECKS.check("affine step: the log-det equals log|det dy/dx| from torch.slogdet")
def _step_logdet(ex):
    step = _step(ex)
    x = torch.randn(4, 5, dtype=torch.float64)
    _, logdet = step(x)
    expect(isinstance(logdet, torch.Tensor), "logdet is not a tensor")
    if tuple(logdet.shape) == (4, 5):
        fail("logdet has shape (B, D)", "sum over the dimensions: one log-determinant per sample, shape (B,)")
    expect(tuple(logdet.shape) == (4,), f"logdet has shape {tuple(logdet.shape)}, expected (B,) = (4,)")
    for b in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: step(v[None])[0][0], x[b])
        sign, want = torch.linalg.slogdet(jac)
        got = logdet[b].item()
        if abs(got - want.item()) > 1e-6:
            if abs(got + want.item()) < 1e-6:
                hint = "wrong sign: dy/dx is triangular with diagonal exp(s), so log|det| = +sum(s)"
            elif abs(got) < 1e-12:
                hint = "the log-det is missing: it is sum(s) over the dimensions"
            else:
                hint = "log|det dy/dx| = sum_d s_d (the diagonal of a triangular Jacobian is exp(s))"
            fail(f"sample {b}: logdet {got:.6f}, slogdet of the Jacobian {want.item():.6f}", hint)


class _Chain(nn.Module):
    """A stand-in for MADE (same output layout ``(B, 2, D)``) in which the log-scale and shift of each
    variable read only the variable just before it in ``order``, with slope 2: an error left in one
    variable doubles in the next, so an inverse one pass short is visibly wrong (a random MADE is
    nearly exact a pass or two early)."""

    def __init__(self, order):
        super().__init__()
        self.order = list(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = torch.zeros_like(x)
        prev[:, self.order[1:]] = x[:, self.order[:-1]]
        raw_log_scale = 0.6 * torch.tanh(prev) + 0.4
        shift = 2.0 * prev + 0.3
        return torch.stack([raw_log_scale, shift], 1)


def _reference_passes(step, y: torch.Tensor, passes: int, start: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.zeros_like(y) if start is None else start
    for _ in range(passes):
        log_scale, shift = step.params(x)
        x = (y - shift) * torch.exp(-log_scale)
    return x


@CHECKS.check("affine step: inverse(forward(x)) = x and forward(inverse(y)) = y (a fixture where every pass "
              "matters)")
def _step_inverse(ex):
    for order, chain in (([2, 4, 0, 3, 1], True), ([2, 4, 0, 3, 1], False), ([0, 1, 2, 3, 4], False)):
        step = _step(ex, order=order)
        if chain:
            step.made = _Chain(order).double()
        x = torch.randn(8, 5, dtype=torch.float64)
        with torch.no_grad():
            y, _ = step(x)
            back = step.inverse(y)
        expect(isinstance(back, torch.Tensor) and back.shape == x.shape,
               "inverse should return x, a tensor shaped like y")
        error = (back - x).abs().max().item()
        if error > 1e-7:
            exact = 0  # leading variables of the order that came out right
            while exact < 5 and (back[:, order[exact]] - x[:, order[exact]]).abs().max() <= 1e-7:
                exact += 1
            fixture = "a step whose variables each depend strongly on the one before" if chain else "a MADE step"
            where = (f"{fixture}, order {order}: inverse(forward(x)) differs from x by up to {error:.3g}; the first "
                     f"{exact} variable(s) of the order are exact, variable {order[exact]} is not")
            with torch.no_grad():
                if 0 < exact < 5 and torch.allclose(back, _reference_passes(step, y, exact), atol=1e-9):
                    fail(where, f"that is what {exact} pass(es) give: pass t makes the t-th variable of the order "
                         f"exact, so it takes D = {step.features} passes (for _ in range(self.features))")
                if exact == 0:
                    log_scale, shift = step.params(torch.zeros_like(y))
                    if torch.allclose(back[:, order[0]], ((y - shift) * log_scale.exp())[:, order[0]], atol=1e-9):
                        fail(where, "the first variable is already wrong: undo the scale with exp(-s), "
                             "x = (y - m) * exp(-s)")
                    if torch.allclose(back[:, order[0]], (y * torch.exp(-log_scale) - shift)[:, order[0]], atol=1e-9):
                        fail(where, "the first variable is already wrong: subtract the shift before undoing the "
                             "scale, x = (y - m) * exp(-s)")
            fail(where, "repeat x = (y - m(x)) * exp(-s(x)) D times (self.features passes), starting from x = 0, "
                 "with (s, m) = self.params(x) recomputed from the current x in every pass")
        y2 = torch.randn(8, 5, dtype=torch.float64)
        with torch.no_grad():
            again, _ = step(step.inverse(y2))
        expect(torch.allclose(again, y2, atol=1e-7), f"order {order}: forward(inverse(y)) differs from y")


def _prior(ex, features: int = 4, steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    prior = ex.AFPrior(features, steps=steps, hidden=[12, 12]).double()
    expect(hasattr(prior, "steps") and len(prior.steps) == steps,
           f"AFPrior(..., steps={steps}).steps should hold {steps} flow steps")
    with torch.no_grad():
        for step in prior.steps:
            step.made.out.weight.mul_(6.0)
            step.made.out.bias.copy_(0.5 * torch.randn_like(step.made.out.bias))
    return prior


@CHECKS.check("AF prior: order 0..D-1 in the first step, reversed between consecutive steps")
def _orders(ex):
    features = 4
    prior = _prior(ex, features=features, steps=3)
    orders = [list(step.order) for step in prior.steps]
    expect(orders[0] == list(range(features)), f"first step's order {orders[0]}, expected {list(range(features))}",
           "step 0 uses the order 0, 1, ..., D-1; steps 1, 3, ... its reverse")
    for k in range(1, len(orders)):
        expect(orders[k] == orders[k - 1][::-1], f"step orders {orders}: step {k} does not reverse step {k - 1}",
               "with the same order in every step the whole flow stays triangular: the first variable is never "
               "conditioned on the others. Reverse the order between steps")
    # What reversing buys: the composed map is dense, not triangular.
    z = torch.randn(features, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: _compose(prior, v[None])[0], z)
    expect((jac.triu(1) != 0).any() and (jac.tril(-1) != 0).any(), "the Jacobian of the whole flow is "
           "triangular", "reverse the order between steps so each variable depends on every other")


def _compose(prior, z):
    for step in prior.steps:
        z = step(z)[0]
    return z


@CHECKS.check("AF prior: to_noise composes the steps and adds their log-dets")
def _to_noise(ex):
    prior = _prior(ex)
    z = torch.randn(5, 4, dtype=torch.float64)
    out = prior.to_noise(z)
    expect(isinstance(out, tuple) and len(out) == 2, "to_noise should return (eps, logdet)")
    eps, logdet = out
    expect(torch.allclose(eps, _compose(prior, z), atol=1e-9), "eps differs from applying every step's forward "
           "in order", "loop over self.steps in order: z, ld = step(z)")
    want = sum(step(v)[1] for step, v in zip(prior.steps, _intermediates(prior, z)))
    expect(tuple(logdet.shape) == (5,), f"logdet has shape {tuple(logdet.shape)}, expected (B,)")
    expect(torch.allclose(logdet, want, atol=1e-9), "logdet differs from the sum of the steps' log-dets")


def _intermediates(prior, z):
    values = []
    for step in prior.steps:
        values.append(z)
        z = step(z)[0]
    return values


@CHECKS.check("AF prior: log_prob equals the change-of-variables formula (brute-force Jacobian)")
def _log_prob(ex):
    prior = _prior(ex)
    z = 1.5 * torch.randn(6, 4, dtype=torch.float64)
    got = prior.log_prob(z)
    expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (6,),
           f"log_prob returned shape {tuple(getattr(got, 'shape', ()))}, expected (B,) = (6,)",
           "sum the per-dimension terms: one log-density per sample")
    for b in range(6):
        eps = _compose(prior, z[b:b + 1])[0]
        jac = torch.autograd.functional.jacobian(lambda v: _compose(prior, v[None])[0], z[b])
        _, logabsdet = torch.linalg.slogdet(jac)
        gauss = (-0.5 * (eps.pow(2) + _LOG_2PI)).sum()
        want = gauss + logabsdet
        value = got[b].item()
        if abs(value - want.item()) > 1e-6:
            hints = [
                (gauss - logabsdet, "the log-det is subtracted: for z -> eps, p(z) = N(eps) |det d eps/dz|, so add it"),
                (gauss, "the log-det is missing: log p(z) = log N(eps; 0, I) + log|det d eps/dz|"),
                (gauss + 0.5 * 4 * _LOG_2PI + logabsdet, "the normalising constant -0.5 * log(2 pi) per dimension "
                 "is missing"),
                ((-0.5 * (z[b].pow(2) + _LOG_2PI)).sum(), "that is log N(z; 0, I): map z to eps with to_noise first"),
            ]
            hint = next((h for v, h in hints if abs(value - float(v.detach())) < 1e-6),
                        "log p(z) = sum_d log N(eps_d; 0, 1) + logdet, with (eps, logdet) = to_noise(z)")
            fail(f"sample {b}: log_prob {value:.6f}, change of variables gives {want.item():.6f}", hint)


@CHECKS.check("AF prior: sample inverts to_noise (to_noise(sample(eps)) = eps)")
def _sample(ex):
    prior = _prior(ex)
    eps = torch.randn(7, 4, dtype=torch.float64)
    z = prior.sample(7, eps=eps)
    expect(isinstance(z, torch.Tensor) and tuple(z.shape) == (7, 4), "sample(7, eps=eps) should return (7, D)")
    error = (_compose(prior, z) - eps).abs().max().item()
    if error >= 1e-6:
        with torch.no_grad():
            forward_order = eps
            for step in prior.steps:
                forward_order = step.inverse(forward_order)
            wrong_way = [_compose(prior, eps), eps]
            for step in reversed(prior.steps):
                wrong_way[1] = step(wrong_way[1])[0]
        if torch.allclose(z, eps, atol=1e-9):
            hint = "sample returned eps itself: map it back through every step's inverse"
        elif torch.allclose(z, forward_order, atol=1e-6):
            hint = ("the inverses are applied in the steps' forward order: to_noise applies step 1 first, so "
                    "sample must undo the last step first: for step in reversed(self.steps)")
        elif any(torch.allclose(z, w, atol=1e-6) for w in wrong_way):
            hint = "sample applies the steps' forward maps (z -> eps); it needs their inverses (eps -> z)"
        else:
            hint = ("undo the steps in reverse order, each with its inverse: for step in reversed(self.steps): "
                    "z = step.inverse(z); and use the eps given")
        fail(f"to_noise(sample(n, eps)) differs from eps by up to {error:.3g}", hint)
    fresh = prior.sample(3, generator=torch.Generator().manual_seed(0))
    expect(tuple(fresh.shape) == (3, 4) and torch.isfinite(fresh).all(),
           "sample(3) without eps should draw eps ~ N(0, I) of shape (3, D)")


@CHECKS.check("AF prior: the density integrates to 1 (2-D grid)")
def _normalised(ex):
    torch.manual_seed(0)
    prior = ex.AFPrior(2, steps=2, hidden=[8]).double()
    with torch.no_grad():
        for step in prior.steps:
            step.made.out.weight.mul_(4.0)
    side = torch.linspace(-9, 9, 361, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        mass = prior.log_prob(grid).exp().sum().item() * (side[1] - side[0]).item() ** 2
    expect(abs(mass - 1.0) < 2e-3, f"the density sums to {mass:.4f} over [-9, 9]^2, not 1",
           "a density must integrate to one: check the log-det sign and the Gaussian's constant")
    return f"integral over [-9, 9]^2: {mass:.5f}"


if __name__ == "__main__":
    raise SystemExit(main(CHECKS, __file__, sys.modules[__name__]))
