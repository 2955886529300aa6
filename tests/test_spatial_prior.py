"""The PixelCNN AF prior over a latent map: exact autoregressive support of
every step (autograd Jacobians in float64 against the support the masks imply,
and strict triangularity in the step's own order), inverse(forward) = identity,
log-determinants against slogdet, and log p(z) against brute-force change of
variables. Latent map 2x3x3 = 18 dimensions, weights N(0, 0.5^2) so every
transform is far from the identity.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from vlae.errors import VLAEError
from vlae.flows import standard_normal_log_prob
from vlae.spatial_prior import ChannelMaskedConv2d, PixelCNNAutoregressive, SpatialAFPrior, latent_map
from vlae.verify import randomized

torch.set_num_threads(1)

SHAPE = (2, 3, 3)
D = 18


def _codes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5


def _rank(order: torch.Tensor) -> torch.Tensor:
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank


def test_channel_mask_centre_and_spatial_taps():
    conv = ChannelMaskedConv2d(torch.arange(2), torch.tensor([0, 0, 1, 1]), 3, strict=True)
    centre = conv.mask[:, :, 1, 1]
    assert centre.tolist() == [[0, 0], [0, 0], [1, 0], [1, 0]]  # group 1 reads channel 0 only
    assert conv.mask[:, :, 0].eq(1).all() and conv.mask[:, :, 1, 0].eq(1).all()  # earlier positions: all channels
    assert conv.mask[:, :, 2].eq(0).all() and conv.mask[:, :, 1, 2].eq(0).all()  # later positions: none
    loose = ChannelMaskedConv2d(torch.arange(2), torch.tensor([0, 1]), 3, strict=False)
    assert loose.mask[:, :, 1, 1].tolist() == [[1, 0], [1, 1]]


def _check_support(step: PixelCNNAutoregressive, seed: int = 0) -> None:
    d = step.features
    allowed = step.connectivity()
    rank = _rank(step.order())
    earlier = rank[None, :] < rank[:, None]  # [d, e]: e comes before d in the step's order
    assert not (allowed & ~earlier).any(), "a variable reads itself or a later one"
    # The step's first variable is a constant; its immediate successors read it.
    order = step.order()
    assert not allowed[order[0]].any() and allowed[order[1], order[0]] and allowed[order[2], order[1]]
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5
    eye = torch.eye(d, dtype=torch.bool)
    for b in range(x.shape[0]):
        J = jacobian(lambda v: step(v[None])[0][0], x[b])
        assert torch.equal(J != 0, allowed | eye), "Jacobian support differs from the masks' report"
        torch.testing.assert_close(torch.diagonal(J), step(x[b:b + 1])[1][0].exp(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layers,kernel", [(2, 3), (1, 5), (0, 3)])
def test_step_support_is_exact_and_strictly_triangular(reverse, layers, kernel):
    _check_support(randomized(PixelCNNAutoregressive(SHAPE, hidden=6, layers=layers, kernel_size=kernel,
                                                     reverse=reverse, mean_only=False), seed=3))


def test_support_with_uneven_channel_groups():
    # 4 channel groups over 6 hidden units: sizes 2, 1, 2, 1.
    step = randomized(PixelCNNAutoregressive((4, 2, 3), hidden=6, layers=2, mean_only=False), seed=4)
    assert step.net.convs[1].mask[:, :, 1, 1].sum(1).tolist() == [2, 2, 3, 5, 5, 6]
    _check_support(step)


def test_steps_alternate_order_and_see_far():
    prior = SpatialAFPrior(SHAPE, steps=3, hidden=6, layers=2)
    orders = [step.order() for step in prior.steps]
    assert torch.equal(orders[1], orders[0].flip(0)) and torch.equal(orders[2], orders[0])
    assert orders[0][:3].tolist() == [0, 9, 1]  # (c0, pos0), (c1, pos0), (c0, pos1) in flat (C, h, w)
    # Two steps in opposite orders make every variable depend on every other one.
    randomized(prior, seed=5)
    J = jacobian(lambda v: prior.to_noise(v[None])[0][0], _codes(1)[0])
    assert (J != 0).all()


@pytest.mark.parametrize("mean_only", [True, False])
def test_step_inverse_is_exact(mean_only):
    step = randomized(PixelCNNAutoregressive(SHAPE, hidden=6, layers=2, reverse=True, mean_only=mean_only), seed=1)
    x = _codes(5)
    y, ld = step(x)
    assert not torch.allclose(y, x, atol=1e-2)
    x_back, ld_back = step.inverse(y)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld_back, ld, rtol=0, atol=1e-10)
    if mean_only:
        assert torch.equal(ld, torch.zeros_like(ld))
    else:
        assert 0.1 < ld.abs().max() <= step.scale_bound


# Random scale steps stacked deep blow samples up to 1e20; two keep them tame.
@pytest.mark.parametrize("mean_only,steps,std", [(True, 4, 0.5), (False, 2, 0.3)])
def test_prior_inverse_logdet_and_log_prob(mean_only, steps, std):
    prior = randomized(SpatialAFPrior(SHAPE, steps=steps, hidden=6, layers=2, mean_only=mean_only), seed=2, std=std)
    eps = _codes(4, seed=9)
    z = prior.rsample(4, eps=eps)
    back, logdet = prior.to_noise(z)
    torch.testing.assert_close(back, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(prior.rsample(4, eps=prior.to_noise(_codes(4))[0]), _codes(4), rtol=0, atol=1e-9)
    log_p = prior.log_prob_per_dim(z)
    assert log_p.shape == (4, D)
    for b in range(z.shape[0]):
        J = jacobian(lambda v: prior.to_noise(v[None])[0][0], z[b])
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign != 0
        torch.testing.assert_close(logdet[b].sum(), logabsdet, rtol=0, atol=1e-9)
        if not mean_only:
            assert logabsdet.abs() > 1.0  # the scale variant makes the check non-trivial
        brute = standard_normal_log_prob(prior.to_noise(z[b:b + 1])[0]).sum() + logabsdet
        torch.testing.assert_close(prior.log_prob(z[b:b + 1])[0], brute, rtol=0, atol=1e-9)


def test_rsample_is_differentiable_and_seeded():
    prior = SpatialAFPrior(SHAPE, steps=2, hidden=4, layers=1)
    a = prior.rsample(3, generator=torch.Generator().manual_seed(0))
    b = prior.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.detach(), b)
    a.sum().backward()
    assert prior.steps[0].net.convs[0].weight.grad is not None


def test_weight_norm_and_data_dependent_init():
    from vlae.layers import data_dependent_init
    prior = SpatialAFPrior(SHAPE, steps=2, hidden=6, layers=2, weight_norm=True)
    z = torch.randn(64, D)
    data_dependent_init(prior.steps[0].net, latent_map(z, SHAPE))
    h = prior.steps[0].net.convs[0](latent_map(z, SHAPE))
    torch.testing.assert_close(h.mean((0, 2, 3)), torch.zeros(6), rtol=0, atol=1e-5)
    assert torch.isfinite(prior.log_prob(z)).all()


def test_latent_map_layout_and_errors():
    v = torch.arange(2 * D, dtype=torch.float64).view(2, D)
    m = latent_map(v, SHAPE)
    assert m.shape == (2, *SHAPE) and m[1, 1, 2, 0] == D + 9 + 6
    with pytest.raises(VLAEError, match="17 latent dimensions"):
        latent_map(torch.zeros(17), SHAPE)
    prior = SpatialAFPrior(SHAPE, steps=1, hidden=4, layers=1)
    with pytest.raises(VLAEError, match=r"shape \(B, 18\)"):
        prior.log_prob(torch.zeros(2, 16))


def test_hidden_must_cover_channel_groups():
    with pytest.raises(ValueError, match="hidden=1"):
        SpatialAFPrior(SHAPE, hidden=1)


def _prior_2d(shape: tuple[int, int, int]) -> SpatialAFPrior:
    # Two non-volume-preserving steps on 2 variables: a skewed, visibly
    # non-Gaussian density, the dependence running across channels (2, 1, 1)
    # or across positions (1, 1, 2).
    # Weights chosen so samples stay inside [-10, 10]^2 while spreading wide.
    return randomized(SpatialAFPrior(shape, steps=2, hidden=4, layers=1, mean_only=False), seed=4, std=0.3)


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 1, 2)])
def test_samples_follow_the_density_which_integrates_to_one(shape):
    """One midpoint grid (h = 0.05) on [-10, 10]^2 gives the mass, which must be
    1 within 1e-3 (quadrature error O(h^2) ~ 1e-4; no sample falls outside),
    and the probabilities of 0.5 x 0.5 bins on [-6, 6]^2 (10x10 points each).
    Chi-square goodness of fit of 50k samples to those bins (bins expecting
    < 5 and the outside merged), threshold the 1 - 1e-4 quantile, fixed seed."""
    from scipy import stats

    prior = _prior_2d(shape)
    N, L, h = 50_000, 10.0, 0.05
    with torch.no_grad():
        z = prior.sample(N, generator=torch.Generator().manual_seed(1))
        n = round(2 * L / h)
        pts = -L + (torch.arange(n, dtype=torch.float64) + 0.5) * h
        dens = prior.log_prob(torch.cartesian_prod(pts, pts)).exp().view(n, n) * h * h
    assert z.abs().max() < L and z.std(0).min() > 0.5
    assert abs(float(dens.sum()) - 1) < 1e-3, f"density integrates to {float(dens.sum())}"
    first = round((L - 6) / h)  # grid index of the edge -6
    expected = dens[first:n - first, first:n - first].reshape(24, 10, 24, 10).sum((1, 3)).flatten() * N
    edges = torch.linspace(-6, 6, 25, dtype=torch.float64)
    ix = torch.bucketize(z[:, 0].contiguous(), edges) - 1
    iy = torch.bucketize(z[:, 1].contiguous(), edges) - 1
    inside = (ix >= 0) & (ix < 24) & (iy >= 0) & (iy < 24)
    counts = torch.bincount(ix[inside] * 24 + iy[inside], minlength=24 * 24).double()
    big = expected >= 5
    obs = torch.cat([counts[big], (N - counts[big].sum()).reshape(1)])
    exp = torch.cat([expected[big], (N - expected[big].sum()).reshape(1)])
    assert big.sum() > 100 and exp[-1] > 0
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, len(obs) - 1), f"chi2 = {chi2:.1f}, {len(obs) - 1} degrees of freedom"
    assert abs(float(torch.corrcoef(z.t())[0, 1])) > 0.1  # the flow couples the two variables
