"""Installation check: the library's key properties, proved in miniature.

``python setup.py`` (or ``python -m vlae.verify``) runs these checks on the CPU
in a few seconds and prints one row per check. They are small versions of the
test suite's proofs, so a PASS means the installed torch computes what the
paper's mathematics says:

- masks A and B have the contents of the PixelCNN paper;
- a masked and a gated decoder depend on exactly the pixels their
  ``receptive_field()`` reports (autograd Jacobian, float64, every pixel);
- MADE's outputs depend on exactly the inputs earlier in its order;
- an affine autoregressive flow inverts, and its log-determinant is the
  ``slogdet`` of its Jacobian;
- the IW bound with one sample equals the ELBO for the same noise;
- a few optimiser steps on the ``tiny`` preset lower the loss on a fixed batch.

Example:
    >>> from vlae.verify import run_checks
    >>> ok = run_checks(verbose=False)
    >>> ok
    True
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Callable

import torch
from torch.autograd.functional import jacobian

from .errors import one_line

__all__ = ["CHECKS", "run_checks", "main", "randomized"]

# Function names, resolved when the checks run (so a test can replace one).
CHECKS: list[str] = [
    "check_masks",
    "check_masked_receptive_field",
    "check_gated_receptive_field",
    "check_made_connectivity",
    "check_flow",
    "check_iw_bound",
    "check_training_step",
]


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise AssertionError(reason)


def randomized(module: torch.nn.Module, seed: int, std: float = 0.5) -> torch.nn.Module:
    """``module`` in float64 with generic weights ``N(0, std^2)`` (seeded), in place: every
    dependency its structure allows then has a non-zero derivative, so a Jacobian's exact
    zeros are the structure's (the checks here and the test suite's)."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return module


def check_masks() -> None:
    """masks A/B contents"""
    from .masked_conv import make_mask

    expected = {
        (3, "A"): [[1, 1, 1], [1, 0, 0], [0, 0, 0]],
        (3, "B"): [[1, 1, 1], [1, 1, 0], [0, 0, 0]],
        (5, "A"): [[1] * 5, [1] * 5, [1, 1, 0, 0, 0], [0] * 5, [0] * 5],
        (5, "B"): [[1] * 5, [1] * 5, [1, 1, 1, 0, 0], [0] * 5, [0] * 5],
    }
    for (k, kind), rows in expected.items():
        got = make_mask(k, kind).int().tolist()
        _expect(got == rows, f"{k}x{k} mask {kind} is {got}, expected {rows}")


def _receptive_field_matches(dec, cond_channels: int) -> None:
    w = dec.window()
    H, W = w["up"] + w["down"] + 2, w["left"] + w["right"] + 2
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, H, W, generator=gen, dtype=torch.float64)
    c = torch.randn(1, cond_channels, H, W, generator=gen, dtype=torch.float64)
    jx = jacobian(lambda v: dec(v, c).reshape(-1), x, vectorize=True).reshape(H * W, H * W) != 0
    jc = (jacobian(lambda v: dec(x, v).reshape(-1), c, vectorize=True).reshape(H * W, cond_channels, H * W) != 0).any(1)
    rf, cf = dec.receptive_field(), dec.condition_field()
    for i, j in itertools.product(range(H), range(W)):
        want = {(i + dy) * W + j + dx for dy, dx in rf if 0 <= i + dy < H and 0 <= j + dx < W}
        got = set(torch.nonzero(jx[i * W + j]).flatten().tolist())
        _expect(got == want, f"output ({i}, {j}) depends on {len(got)} pixels, receptive_field() says {len(want)}")
        want_c = {(i + dy) * W + j + dx for dy, dx in cf if 0 <= i + dy < H and 0 <= j + dx < W}
        got_c = set(torch.nonzero(jc[i * W + j]).flatten().tolist())
        # Near a border zero padding may cut a path: a subset is allowed there.
        interior = w["up"] <= i < H - w["down"] and w["left"] <= j < W - w["right"]
        _expect(
            got_c == want_c if interior else got_c <= want_c,
            f"output ({i}, {j}) reads the conditioning map outside condition_field()",
        )


def check_masked_receptive_field() -> None:
    """masked decoder: receptive field == Jacobian support"""
    from .pixelcnn import MaskedPixelCNN

    dec = randomized(MaskedPixelCNN(layers=3, kernel_size=3, filters=4, cond_channels=2, blocks_1x1=1), seed=1)
    _receptive_field_matches(dec, 2)
    _expect(
        dec.receptive_field_size() == 21,
        f"3-layer 3x3 masked decoder sees {dec.receptive_field_size()} pixels, expected 21",
    )


def check_gated_receptive_field() -> None:
    """gated decoder: receptive field == Jacobian support"""
    from .pixelcnn import GatedPixelCNN

    dec = randomized(GatedPixelCNN(layers=3, kernel_size=3, filters=3, cond_channels=2), seed=2)
    _receptive_field_matches(dec, 2)
    _expect(
        dec.receptive_field_size() == 24,
        f"3-layer 3x3 gated decoder sees {dec.receptive_field_size()} pixels, expected 24 (no blind spot)",
    )


def check_made_connectivity() -> None:
    """MADE connectivity == order"""
    from .made import MADE

    order = [3, 0, 4, 1, 2]
    made = randomized(MADE(5, [6, 6], n_params=2, order=order, context=2, activation="tanh"), seed=3)
    gen = torch.Generator().manual_seed(4)
    x, c = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(2, generator=gen, dtype=torch.float64)
    J = jacobian(lambda v: made(v, c), x)  # (n_params, D, D)
    rank = {v: r for r, v in enumerate(order)}
    want = torch.tensor([[rank[k] < rank[d] for k in range(5)] for d in range(5)])
    for p in range(2):
        _expect(torch.equal(J[p] != 0, want), f"MADE output {p} depends on inputs outside its order")
    _expect(torch.equal(made.connectivity(), want), "MADE.connectivity() disagrees with the order")
    Jc = jacobian(lambda v: made(x, v), c)
    _expect(bool((Jc != 0).any(-1).all()), "the context does not reach every MADE output")


@torch.no_grad()  # jacobian() enables gradients itself
def check_flow() -> None:
    """flow log-det == slogdet, inverse(forward(x)) == x"""
    from .flows import AffineAutoregressive, AFPrior, standard_normal_log_prob

    step = randomized(AffineAutoregressive(4, [6, 6], [2, 0, 3, 1], mean_only=False, activation="tanh"), seed=4)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y, ld = step(x)
    err = float((step.inverse(y)[0] - x).abs().max())
    _expect(err < 1e-10, f"inverse(forward(x)) differs from x by {err:.2e}")
    for b in range(3):
        _, logabsdet = torch.linalg.slogdet(jacobian(lambda v: step(v[None])[0][0], x[b]))
        diff = abs(float(ld[b].sum() - logabsdet))
        _expect(diff < 1e-10, f"log-det differs from slogdet of the Jacobian by {diff:.2e}")
    prior = randomized(AFPrior(3, steps=2, hidden=[5], mean_only=False, activation="tanh"), seed=6)
    z = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, logabsdet = torch.linalg.slogdet(jacobian(lambda v: prior.to_noise(v[None])[0][0], z))
    brute = standard_normal_log_prob(prior.to_noise(z[None])[0][0]).sum() + logabsdet
    diff = abs(float(prior.log_prob(z[None])[0] - brute))
    _expect(diff < 1e-10, f"AF prior log p(z) differs from the change of variables by {diff:.2e}")


def _tiny_model(seed: int, **options):
    from .config import get_preset
    from .model import VLAE

    cfg = get_preset("tiny").model
    for key, value in options.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    return VLAE(cfg)


def check_iw_bound() -> None:
    """IW bound (k=1) == ELBO"""
    model = _tiny_model(7, image_shape=(1, 12, 12), posterior="iaf").double()
    x = torch.bernoulli(
        torch.full((4, 1, 12, 12), 0.3, dtype=torch.float64), generator=torch.Generator().manual_seed(8)
    )
    model.initialize(x)
    with torch.no_grad():
        elbo = -model.terms(x, generator=torch.Generator().manual_seed(9)).nelbo
        iw = model.iw_bound(x, 1, generator=torch.Generator().manual_seed(9))
    diff = float((iw - elbo).abs().max())
    _expect(diff < 1e-9, f"IW bound with k=1 differs from the ELBO by {diff:.2e} nats")


def check_training_step() -> None:
    """training: Adam steps on the tiny preset lower the loss"""
    model = _tiny_model(10)
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(11))
    model.initialize(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fixed_loss() -> float:  # the same noise each time: a deterministic function of the weights
        with torch.no_grad():
            return float(model.loss(x, generator=torch.Generator().manual_seed(12))[0])

    before = fixed_loss()
    for step in range(5):
        opt.zero_grad()
        loss, _ = model.loss(x, generator=torch.Generator().manual_seed(100 + step))
        _expect(bool(torch.isfinite(loss.detach())), f"loss is {float(loss.detach())} at step {step}")
        loss.backward()
        opt.step()
    after = fixed_loss()
    _expect(after < before, f"loss did not drop: {before:.2f} -> {after:.2f} nats")


def run_checks(verbose: bool = True) -> bool:
    """Run every check; print ``check | result | time`` rows; return whether all passed."""
    module = sys.modules[__name__]
    results: list[tuple[str, bool, float, str]] = []
    width = 54
    if verbose:
        print(f"vlae installation check (torch {torch.__version__}, CPU)")
        print(f"{'check':<{width}} | result | time")
        print(f"{'-' * width}-+--------+--------")
    # The checks are tiny: extra threads only add synchronisation, which costs
    # seconds on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in CHECKS:
            results.append(_run_one(getattr(module, name), width, verbose))
    finally:
        torch.set_num_threads(threads)
    passed = sum(ok for _, ok, _, _ in results)
    if verbose:
        total = sum(t for _, _, t, _ in results)
        print(f"{passed}/{len(results)} checks passed in {total:.1f} s")
    return passed == len(results)


def _run_one(fn: Callable[[], None], width: int, verbose: bool) -> tuple[str, bool, float, str]:
    """Run one check; its first docstring line names it in the table."""
    title = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
    start = time.perf_counter()
    try:
        with torch.random.fork_rng():  # leave the caller's random state alone
            fn()
        ok, reason = True, ""
    except Exception as exc:  # noqa: BLE001 -- every failure becomes a row, never a traceback
        # An assertion's message is the check's own verdict; anything else is named by its type.
        text = one_line(exc, headline=True)
        named = isinstance(exc, AssertionError) or not str(exc).strip()
        ok, reason = False, text if named else f"{type(exc).__name__}: {text}"
    elapsed = time.perf_counter() - start
    if verbose:
        row = f"{title:<{width}} | {'PASS' if ok else 'FAIL':<6} | {elapsed:5.2f} s"
        print(row + (f" | {reason}" if reason else ""), flush=True)
    return title, ok, elapsed, reason


def main() -> int:
    """Exit status 0 when every check passes, 1 otherwise."""
    return 0 if run_checks(verbose=True) else 1


if __name__ == "__main__":
    sys.exit(main())
