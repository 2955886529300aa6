"""Autoregressive flows: invertibility, log-determinants against the autograd
Jacobian, the AF prior's density against brute-force change of variables,
sampling against that density (histogram and normalisation), and the IAF
posterior's density against brute force.

Everything runs in float64 with weights drawn large enough (N(0, 0.5^2)) that
the transforms are far from the identity.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch.autograd.functional import jacobian

from vlae.flows import AffineAutoregressive, AFPrior, GaussianPrior, IAFPosterior, standard_normal_log_prob
from vlae.verify import randomized

torch.set_num_threads(1)


def _rank(order):
    return {v: r for r, v in enumerate(order)}


STEP_CASES = [(mean_only, context) for mean_only in (True, False) for context in (0, 3)]


@pytest.mark.parametrize("mean_only,context", STEP_CASES)
def test_affine_step_inverse_and_logdet(mean_only, context):
    D, order = 5, [3, 0, 4, 1, 2]
    step = randomized(AffineAutoregressive(D, [8, 8], order, context=context, mean_only=mean_only,
                                           activation="tanh"), seed=7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, D, generator=gen, dtype=torch.float64) * 2
    c = torch.randn(6, context, generator=gen, dtype=torch.float64) if context else None
    y, ld = step(x, c)
    assert ld.shape == (6, D)
    assert not torch.allclose(y, x, atol=1e-2)  # a real transform, not the identity
    x_back, ld_back = step.inverse(y, c)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld_back, ld, rtol=0, atol=1e-10)
    y2 = torch.randn(6, D, generator=gen, dtype=torch.float64) * 2
    torch.testing.assert_close(step(step.inverse(y2, c)[0], c)[0], y2, rtol=0, atol=1e-10)
    if mean_only:
        assert torch.equal(ld, torch.zeros_like(ld))  # volume preserving
    else:
        assert ld.abs().max() > 0.1 and ld.abs().max() <= step.scale_bound
    rank = _rank(order)
    for b in range(x.shape[0]):
        cb = None if c is None else c[b]
        J = jacobian(lambda v: step(v[None], None if cb is None else cb[None])[0][0], x[b])
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign != 0
        torch.testing.assert_close(ld[b].sum(), logabsdet, rtol=0, atol=1e-10)
        # Triangular in the MADE order, with exp(s_d) on the diagonal.
        for d in range(D):
            for k in range(D):
                if rank[k] > rank[d]:
                    assert J[d, k] == 0
                elif rank[k] < rank[d]:
                    assert J[d, k] != 0
        torch.testing.assert_close(torch.diagonal(J), ld[b].exp(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("mean_only", [True, False])
def test_af_prior_log_prob_is_change_of_variables(mean_only):
    D = 4
    prior = randomized(AFPrior(D, steps=3, hidden=[6, 6], mean_only=mean_only, activation="tanh"), seed=11)
    z = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    lp = prior.log_prob(z)
    assert lp.shape == (5,)
    torch.testing.assert_close(prior.log_prob_per_dim(z).sum(-1), lp, rtol=0, atol=0)
    for b in range(z.shape[0]):
        eps = prior.to_noise(z[b:b + 1])[0][0]
        J = jacobian(lambda v: prior.to_noise(v[None])[0][0], z[b])
        _, logabsdet = torch.linalg.slogdet(J)
        brute = standard_normal_log_prob(eps).sum() + logabsdet
        torch.testing.assert_close(lp[b], brute, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mean_only", [True, False])
def test_af_prior_rsample_inverts_to_noise(mean_only):
    prior = randomized(AFPrior(4, steps=3, hidden=[6, 6], mean_only=mean_only, activation="tanh"), seed=12)
    eps = torch.randn(7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = prior.rsample(7, eps=eps)
    torch.testing.assert_close(prior.to_noise(z)[0], eps, rtol=0, atol=1e-10)
    # Seeded sampling is reproducible.
    s1 = prior.sample(3, generator=torch.Generator().manual_seed(5))
    s2 = prior.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and s1.dtype == torch.float64


def test_orders_reverse_between_steps():
    D = 5
    for flow in (AFPrior(D, steps=4, hidden=[8]), IAFPosterior(D, steps=3, hidden=[8], context=2)):
        degrees = [step.made.degrees.tolist() for step in flow.steps]
        assert degrees[0] == [1, 2, 3, 4, 5]
        for a, b in zip(degrees, degrees[1:]):
            assert b == a[::-1]


def _af_2d() -> AFPrior:
    # Two non-volume-preserving steps in D = 2: the density is visibly
    # non-Gaussian (skewed, with a scale that varies across the plane).
    return randomized(AFPrior(2, steps=2, hidden=[8, 8], mean_only=False, activation="tanh"), seed=3)


def _bin_probabilities(prior: AFPrior, edges: torch.Tensor, sub: int) -> torch.Tensor:
    """Probability of each 2-D bin by the midpoint rule on ``sub x sub`` points per bin."""
    n, w = len(edges) - 1, float(edges[1] - edges[0])
    pts = edges[0] + (torch.arange(n * sub, dtype=torch.float64) + 0.5) * w / sub
    with torch.no_grad():
        dens = prior.log_prob(torch.cartesian_prod(pts, pts)).exp().view(n * sub, n * sub)
    return dens.view(n, sub, n, sub).sum((1, 3)) * (w / sub) ** 2


def test_af_prior_samples_follow_its_density():
    """Chi-square goodness of fit of 200k samples to the reported density.

    Bins: 0.5 x 0.5 on [-6, 6]^2, bins expecting fewer than 5 samples and the
    outside merged into one. Expected counts come from a 10x10 midpoint rule
    per bin, whose relative error (O(h^2) with h = 0.05) is far below the
    1/sqrt(count) sampling noise, so under a correct implementation the
    statistic is chi-square with (bins - 1) degrees of freedom; the threshold is
    its 1 - 1e-4 quantile (fixed seed, so deterministic). A density or sampler
    that is off by a missing log-det or a wrong order lands orders of magnitude above.
    """
    prior = _af_2d()
    N = 200_000
    z = prior.sample(N, generator=torch.Generator().manual_seed(1))
    edges = torch.linspace(-6, 6, 25, dtype=torch.float64)
    p = _bin_probabilities(prior, edges, sub=10).flatten()
    ix = torch.bucketize(z[:, 0].contiguous(), edges) - 1
    iy = torch.bucketize(z[:, 1].contiguous(), edges) - 1
    inside = (ix >= 0) & (ix < 24) & (iy >= 0) & (iy < 24)
    counts = torch.bincount(ix[inside] * 24 + iy[inside], minlength=24 * 24).double()
    expected = N * p
    big = expected >= 5
    obs = torch.cat([counts[big], (N - counts[big].sum()).reshape(1)])
    exp = torch.cat([expected[big], (N - expected[big].sum()).reshape(1)])
    assert big.sum() > 150  # the test has many cells to fail on
    assert exp[-1] > 0, "the density puts more than all the mass inside the bins"
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df), f"chi2 = {chi2:.1f} with {df} degrees of freedom"


def test_af_prior_density_integrates_to_one():
    """Midpoint quadrature (h = 0.025) on [-10, 10]^2: quadrature error O(h^2)
    is below 1e-4 and no sample of 200k falls outside [-10, 10]^2 (the test
    above draws them), so the mass must be 1 within 1e-3."""
    prior = _af_2d()
    L, n = 10.0, 800
    pts = -L + (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * L / n)
    with torch.no_grad():
        mass = prior.log_prob(torch.cartesian_prod(pts, pts)).exp().sum() * (2 * L / n) ** 2
    z = prior.sample(200_000, generator=torch.Generator().manual_seed(1))
    assert z.abs().max() < L
    assert abs(float(mass) - 1) < 1e-3, f"density integrates to {float(mass)}"


def test_gaussian_prior():
    prior = GaussianPrior(3).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected, rtol=0, atol=1e-12)
    assert prior.rsample(5).shape == (5, 3) and prior.rsample(5).dtype == torch.float64


@pytest.mark.parametrize("mean_only,context", [(False, 3), (True, 3), (False, 0)])
def test_iaf_posterior_log_q_is_change_of_variables(mean_only, context):
    D, B = 4, 3
    post = randomized(IAFPosterior(D, steps=2, hidden=[6, 6], context=context, mean_only=mean_only), seed=21)
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(B, D, generator=gen, dtype=torch.float64)
    log_sigma = torch.randn(B, D, generator=gen, dtype=torch.float64) * 0.5
    h = torch.randn(B, context, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, D, generator=gen, dtype=torch.float64)
    z, log_q = post.rsample(mu, log_sigma, h, eps)
    assert z.shape == log_q.shape == (B, D)
    for b in range(B):
        f = lambda e: post.rsample(mu[b:b + 1], log_sigma[b:b + 1], h[b:b + 1], e[None])[0][0]  # noqa: E731
        _, logabsdet = torch.linalg.slogdet(jacobian(f, eps[b]))
        brute = standard_normal_log_prob(eps[b]).sum() - logabsdet
        torch.testing.assert_close(log_q[b].sum(), brute, rtol=0, atol=1e-10)
    if context:  # the steps read the encoder context
        assert not torch.allclose(post.rsample(mu, log_sigma, h + 1, eps)[0], z)


def test_iaf_posterior_without_steps_is_diagonal_gaussian():
    post = IAFPosterior(5, steps=0).double()
    gen = torch.Generator().manual_seed(8)
    mu = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    log_sigma = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    z, log_q = post.rsample(mu, log_sigma, None, eps)
    torch.testing.assert_close(z, mu + log_sigma.exp() * eps, rtol=0, atol=1e-14)
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    torch.testing.assert_close(log_q, normal.log_prob(z), rtol=0, atol=1e-12)
    assert math.isfinite(float(log_q.sum()))
