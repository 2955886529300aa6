"""Arithmetic that gives the same bits on every machine, for the codec.

A lossless decoder must reproduce the encoder's probabilities *exactly*. Two
machines running the same float64 network agree only to a few units in the last
place: thread count changes reduction orders, AVX-512, AVX2 and the plain
``default`` kernels use different vector widths, FMA contractions and
transcendental implementations (SLEEF, glibc, CUDA's libdevice). IEEE-754 does fix
one thing everywhere: ``+ - * /`` of two doubles is *correctly rounded*, and
``floor``, ``rint``, ``frexp``, ``ldexp`` and comparisons are exact. So:

- :func:`snap` rounds a float64 value to a coarse grid (16 significant bits, and
  steps of ``2**-16`` below 1 unless ``relative``), which absorbs the machines' last-bit disagreement
  except for values within :data:`TIE_MARGIN` of a rounding boundary; it reports
  those *near-ties* so that the encoder can record which way it rounded and the
  decoder replay it (:mod:`vlae.codec`).
- :func:`exp`, :func:`sigmoid`, :func:`normal_tail` and :func:`normal_quantile`
  evaluate elementary functions with nothing but correctly rounded numpy ufuncs
  in a fixed order (no reductions, whose order numpy's SIMD dispatch may change,
  no libm), so equal inputs give equal outputs on every IEEE-754 machine.

Example:
    >>> snap(np.array([0.1, 3.0, -1e-9]))[0]
    array([0.1000061, 3.       , 0.       ])
    >>> float(sigmoid(np.array([0.0]))[0]), abs(float(exp(np.array([1.0]))[0]) - float(np.e)) < 1e-15
    (0.5, True)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "snap",
    "SIGNIFICANT_BITS",
    "TIE_MARGIN",
    "exp",
    "sigmoid",
    "normal_tail",
    "normal_bin_masses",
    "normal_quantile",
]

#: The grid: ``2**(max(e, 0) - 16)`` for ``|v|`` in ``[2**(e-1), 2**e)``.
SIGNIFICANT_BITS = 16
#: A value closer than this to a rounding boundary, in grid steps, is a near-tie:
#: ``2**-24`` steps is ``2**-40 * max(1, |v|)`` (at most), about 8,000 float64 ulps.
TIE_MARGIN = 2.0**-24


def snap(
    v: np.ndarray, force: tuple[np.ndarray, np.ndarray] | None = None, relative: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round float64 values to the grid.

    Args:
        v: finite float64 values, any shape.
        force: ``(flat indices, directions)``: at these indices round up (1) or
            down (0) as given instead (a decoder replaying the encoder's near-ties).
        relative: 16 significant bits at every magnitude (for probabilities, on which
            machines disagree relatively), not steps of ``2**-16`` below 1.

    Returns:
        The snapped values (same shape), and the flat indices of the near-ties with
        the direction each was rounded (1: up; ties go up, or away from 0 if ``relative``).
    """
    flat = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
    out = np.empty_like(flat)
    near, up = [np.zeros(0, np.intp)], [np.zeros(0, np.uint8)]
    # In blocks: the codec snaps a chunk's Cholesky factors at once (D^2 values per image,
    # 200 MB at D = 512), and temporaries that large are fresh pages, faulted in every time
    # (10x slower than the rounding itself).
    for start in range(0, flat.size, _BLOCK):
        stop = min(start + _BLOCK, flat.size)
        here = None
        if force is not None and len(force[0]):
            inside = (force[0] >= start) & (force[0] < stop)
            here = (force[0][inside] - start, force[1][inside])
        out[start:stop], block_near, block_up = (_snap_relative if relative else _snap_steps)(flat[start:stop], here)
        near.append(block_near + start)
        up.append(block_up)
    return out.reshape(np.shape(v)), np.concatenate(near), np.concatenate(up)


def _snap_relative(v: np.ndarray, force) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`snap` of a 1-D block, ``relative``: on the bits, keep the implicit 1 and 15
    fraction bits, round the other 37 half away from 0."""
    bits = v.view(np.int64)
    rest = bits & _DROPPED
    # |rest - half| < near, as one unsigned comparison
    near = np.flatnonzero((rest - (_HALF - _NEAR + 1)).view(np.uint64) < np.uint64(2 * _NEAR - 1))
    if force is None or not len(force[0]):
        out = ((bits + _HALF) & ~_DROPPED).view(np.float64)  # adding half carries into the kept bits
        return out, near, (rest[near] >= _HALF).astype(np.uint8)
    up = (rest >= _HALF).astype(np.uint8)
    up[force[0]] = force[1]
    out = ((bits - rest) + (up.astype(np.int64) << _DROP)).view(np.float64)  # a carry bumps the exponent
    return out, near, up[near]


def _snap_steps(v: np.ndarray, force) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`snap` of a 1-D block, in grid steps: ``2**-16`` below 1, 16 significant bits above."""
    _, e = np.frexp(v)  # |v| = m 2^e, m in [0.5, 1): exact
    shift = SIGNIFICANT_BITS - np.maximum(e, 0)
    q = np.ldexp(v, shift)  # v in grid steps, exact
    low = np.floor(q)
    frac = q - low  # exact: q and low share the exponent range
    up = (frac >= 0.5).astype(np.uint8)
    near = np.flatnonzero(np.abs(frac - 0.5) < TIE_MARGIN)
    if force is not None and len(force[0]):
        up[force[0]] = force[1]
    return np.ldexp(low + up, -shift), near, up[near]


_BLOCK = 1 << 20  # values rounded at a time (8 MB)
_DROP = 52 - (SIGNIFICANT_BITS - 1)  # fraction bits a relative snap drops
_DROPPED, _HALF = (1 << _DROP) - 1, 1 << (_DROP - 1)
_NEAR = int(TIE_MARGIN * (1 << _DROP))  # TIE_MARGIN grid steps, in units of the last bit


# Cody and Waite's split of ln 2: _LN2_HI has 32 significant bits, so k * _LN2_HI is
# exact for |k| < 2**21 and the reduced argument loses nothing to cancellation.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.0 / math.log(2.0)
_TAYLOR = [1.0 / math.factorial(n) for n in range(14)]  # exp(r) for |r| <= ln(2) / 2: error < 1e-17


def exp(x: np.ndarray) -> np.ndarray:
    """``e**x`` to about 1 ulp: ``x = k ln 2 + r``, ``e**r`` by its Taylor polynomial
    (degree 13, Horner), then ``ldexp(e**r, k)``."""
    x = np.clip(np.asarray(x, dtype=np.float64), -746.0, 710.0)  # beyond: 0 and inf
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _TAYLOR[13])
    for c in reversed(_TAYLOR[:13]):
        p = p * r + c
    return np.ldexp(p, k.astype(np.int32))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e**-x)``."""
    return 1.0 / (1.0 + exp(-np.asarray(x, dtype=np.float64)))


# Chebyshev fit of erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0, with
# fractional error below 1.2e-7 everywhere (Press et al., Numerical Recipes, 6.2).
_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def normal_tail(x: np.ndarray) -> np.ndarray:
    """``Phi(-|x|)``: the standard normal's mass beyond ``|x|`` on one side, to a
    relative 1.2e-7 (tails included; what the codec's latent bins are defined by)."""
    z = np.abs(np.asarray(x, dtype=np.float64)) * _INV_SQRT2
    t = 1.0 / (1.0 + 0.5 * z)
    p = np.full_like(t, _ERFC[-1])
    for c in reversed(_ERFC[:-1]):
        p = p * t + c
    return 0.5 * (t * exp(p - z * z))


def normal_bin_masses(edges: np.ndarray) -> np.ndarray:
    """``Phi(edges[..., k + 1]) - Phi(edges[..., k])`` for increasing ``edges (..., K + 1)``
    (infinities allowed): ``(..., K)``, each edge's tail computed once, and every mass
    from the tails on the side away from 0, so small masses in either tail keep their
    relative precision. Tails beyond ``|x| = 9`` (below 1.2e-19) count as 0 and are not
    evaluated: a narrow proposal pays only for the edges near it."""
    edges = np.asarray(edges, dtype=np.float64)
    near = np.abs(edges) < 9.0
    tail = np.zeros_like(edges)
    tail[near] = normal_tail(edges[near])
    a, b, lo, hi = tail[..., :-1], tail[..., 1:], edges[..., :-1], edges[..., 1:]
    return np.where(lo >= 0, a - b, np.where(hi <= 0, b - a, (1.0 - a) - b))


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """The inverse of this module's normal CDF, by bisection (``Phi(-x) = normal_tail(x)``):
    exact to the last bit of the bracket, and symmetric, ``q(1 - p) = -q(p)``."""
    p = np.asarray(p, dtype=np.float64)
    lower = np.minimum(p, 1.0 - p)  # exact for the codec's dyadic p
    lo, hi = np.full_like(lower, -40.0), np.zeros_like(lower)
    for _ in range(100):  # the bracket halves each time: 40 * 2^-100 is below any ulp
        mid = 0.5 * (lo + hi)
        below = normal_tail(mid) < lower  # mid <= 0, so normal_tail(mid) = Phi(mid)
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    q = np.where(lower <= 0, -np.inf, np.where(lower == 0.5, 0.0, hi))  # Phi~(0) is 0.5 only to 1e-7
    return np.where(p > 0.5, -q, q)
