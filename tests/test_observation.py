"""Observation models: probabilities sum to one, edges are exact and finite,
samples drawn from given uniforms follow the probabilities, and the margins the
fast sampler trusts really bound the draw.

Sampling tests use a chi-square statistic over bins with expected count >= 20;
with the seeds fixed the statistic is a fixed number, and the bound
``df + 6 sqrt(2 df)`` (six standard deviations of a chi-square with ``df``
degrees of freedom) fails any distribution that differs by more than sampling
noise, e.g. a bin off by one or a wrong channel coupling.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlae.config import ModelConfig
from vlae.errors import VLAEError
from vlae.observation import (
    Bernoulli,
    DiscretizedLogisticMixture,
    bernoulli_from_uniform,
    bernoulli_log_prob,
    observation_model,
)

torch.set_num_threads(1)


def _params(obs, n: int, seed: int, spread: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, obs.param_channels, 1, 1, generator=g, dtype=dtype) * spread


def _extreme(obs, dtype=torch.float64) -> torch.Tensor:
    """Means beyond both edges and inside, log-scales far beyond both clamps,
    saturated mixture logits and coefficients."""
    K, C = obs.components, obs.channels
    rows = []
    for mean, log_s, logit, coef in [(-3.0, -20.0, 50.0, 20.0), (3.0, -20.0, -50.0, -20.0), (0.0, 20.0, 0.0, 0.0),
                                     (0.999, -7.0, 5.0, 1.0), (-1.0, -5.0, -5.0, -1.0), (1.0, 3.0, 1.0, 3.0)]:
        logits = torch.linspace(-logit, logit, K, dtype=dtype)
        full = lambda n, value: torch.full((n,), value, dtype=dtype)  # noqa: E731
        rows.append(torch.cat([logits, full(C * K, mean), full(C * K, log_s), full(obs.n_coeffs * K, coef)]))
    return torch.stack(rows)[:, :, None, None]


def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Chi-square of ``counts`` against ``probs`` (any shape), merging cells in
    order of size until each expected count is >= 20; returns (statistic, bound)."""
    n = counts.sum().item()
    order = torch.argsort(probs.flatten(), descending=True)
    c, p = counts.flatten()[order].double(), probs.flatten()[order].double() * n
    cells, acc_c, acc_p = [], 0.0, 0.0
    for ci, pi in zip(c.tolist(), p.tolist()):
        acc_c, acc_p = acc_c + ci, acc_p + pi
        if acc_p >= 20:
            cells.append((acc_c, acc_p))
            acc_c, acc_p = 0.0, 0.0
    if acc_p > 0:  # the tail joins the last cell
        cells[-1] = (cells[-1][0] + acc_c, cells[-1][1] + acc_p)
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return stat, df + 6 * math.sqrt(2 * max(df, 1))


# ---------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_one_channel_probabilities_sum_to_one(dtype, tol):
    obs = DiscretizedLogisticMixture(channels=1, components=10)
    params = torch.cat([_params(obs, 20, seed=0, dtype=dtype), _params(obs, 20, seed=1, spread=6.0, dtype=dtype),
                        _extreme(obs, dtype)])
    x = torch.arange(256, dtype=dtype).view(1, 1, 1, 256)
    lp = obs.log_prob_pixels(params.expand(-1, -1, 1, 256), x.expand(len(params), -1, -1, -1))
    assert lp.dtype == dtype and torch.isfinite(lp).all()
    total = lp.exp().sum(-1).flatten()
    assert (total - 1).abs().max() < tol, total


def _unpack(obs, params: torch.Tensor):
    """The documented layout of one pixel's outputs ``(P,)``: weights ``(K,)``, means,
    scales ``(C, K)`` (log-scales clamped to [-7, 7]), coefficients ``(3, K)`` (tanh)."""
    K, C = obs.components, obs.channels
    logits, means, log_s, coef = params.flatten().split([K, C * K, C * K, obs.n_coeffs * K])
    return (torch.softmax(logits, 0), means.view(C, K), log_s.view(C, K).clamp(-7, 7).exp(),
            torch.tanh(coef.view(obs.n_coeffs, K)))


def _bins(mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Discretized logistic probabilities of all 256 values as differences of the CDF
    at the 257 bin edges (-inf, edges between values, +inf): ``(..., 256)``. An
    oracle independent of the model's factorised log form."""
    inner = (torch.arange(255, dtype=torch.float64) + 0.5) / 127.5 - 1
    edges = torch.cat([torch.tensor([-math.inf]), inner, torch.tensor([math.inf])]).double()
    cdf = torch.sigmoid((edges - mu[..., None]) / s[..., None])
    return cdf[..., 1:] - cdf[..., :-1]


def _joint_oracle(obs, params: torch.Tensor) -> torch.Tensor:
    """``p(R, G, B)`` over all 256^3 values from CDF differences: ``(256, 256, 256)``."""
    w, m, s, (a, b, c) = _unpack(obs, params)
    v = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    p_r = _bins(m[0], s[0])  # (K, R)
    p_g = _bins(m[1][:, None] + a[:, None] * v, s[1][:, None])  # (K, R, G)
    out = torch.zeros(256, 256, 256, dtype=torch.float64)
    for r0 in range(0, 256, 32):
        vr = v[r0:r0 + 32]
        mu_b = m[2][:, None, None] + b[:, None, None] * vr[:, None] + c[:, None, None] * v  # (K, r, G)
        p_b = _bins(mu_b, s[2][:, None, None])  # (K, r, G, B)
        out[r0:r0 + 32] = torch.einsum("k,kr,krg,krgb->rgb", w, p_r[:, r0:r0 + 32], p_g[:, r0:r0 + 32], p_b)
    return out


@pytest.fixture(scope="module")
def rgb_case():
    """A 3-component RGB mixture with strong R->G and R,G->B coupling, its full joint
    table from the CDF-difference oracle, and 200,000 samples drawn from fixed uniforms."""
    obs = DiscretizedLogisticMixture(channels=3, components=3)
    params = torch.cat([torch.tensor([0.5, -0.3, 0.0]),  # mixture logits
                        torch.tensor([-0.6, 0.1, 0.7, 0.2, -0.5, 0.0, -0.1, 0.3, -0.4]),  # means (C, K)
                        torch.tensor([-2.0, -3.5, -1.5, -2.5, -4.0, -2.0, -3.0, -2.2, -5.0]),  # log-scales (C, K)
                        torch.tensor([1.5, -0.8, 0.4, -1.0, 0.7, 2.0, 0.3, 0.9, -1.2])]).double()  # coefficients
    assert params.numel() == obs.param_channels == 30
    params = params.view(1, -1, 1, 1)
    n = 200_000
    u = torch.rand(1, obs.uniforms_per_pixel, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = obs.sample(params.view(1, -1, 1).expand(-1, -1, n), u)[0].long()  # (3, n)
    return obs, params, _joint_oracle(obs, params), x


def _oracle_at(obs, params: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """The same oracle at chosen values ``pts (N, 3)`` only: ``(N,)``."""
    w, m, s, (a, b, c) = _unpack(obs, params)
    r, g, bl = pts.long().T
    v = pts / 127.5 - 1
    take = lambda table, idx: table.gather(-1, idx[:, None, None].expand(-1, table.shape[1], 1))[..., 0]  # noqa: E731
    p_r = _bins(m[0], s[0]).T[r]  # (N, K)
    p_g = take(_bins(m[1] + a * v[:, :1], s[1]), g)
    p_b = take(_bins(m[2] + b * v[:, :1] + c * v[:, 1:2], s[2]), bl)
    return (w * p_r * p_g * p_b).sum(1)


def _rgb_points(n: int, seed: int) -> torch.Tensor:
    """``n`` random values plus every combination of the edge values 0, 1, 254, 255: ``(N, 3)``."""
    edges = torch.tensor([0.0, 1.0, 254.0, 255.0])
    corners = torch.cartesian_prod(edges, edges, edges)
    rand = torch.randint(0, 256, (n, 3), generator=torch.Generator().manual_seed(seed)).double()
    return torch.cat([corners.double(), rand])


@pytest.mark.parametrize("case", ["coupled", "random", "extreme"])
def test_three_channel_log_prob_is_the_normalised_joint(case, rgb_case):
    """``log_prob`` equals the joint built from CDF differences, which sums to one
    over all 256^3 values by construction (checked on the full table of the coupled
    case): at 20,000 (4,000) random values and every combination of edge values, for
    strongly coupled, random and extreme outputs (the last two with 10 components)."""
    pts = _rgb_points(20_000 if case == "coupled" else 4_000, seed=1)
    if case == "coupled":
        obs, params, joint, _ = rgb_case
        assert abs(joint.sum().item() - 1) < 1e-9
        expected = joint[pts[:, 0].long(), pts[:, 1].long(), pts[:, 2].long()]
        torch.testing.assert_close(_oracle_at(obs, params, pts), expected, rtol=1e-12, atol=0)
    else:
        obs = DiscretizedLogisticMixture(channels=3, components=10)
        params = _params(obs, 1, seed=5, spread=2.0) if case == "random" else _extreme(obs)[3:4]
        expected = _oracle_at(obs, params, pts)
    lp = obs.log_prob_pixels(params.view(1, -1, 1), pts.T[None])[0]
    torch.testing.assert_close(lp.exp(), expected, rtol=1e-7, atol=1e-13)


@pytest.mark.slow
def test_three_channel_probabilities_sum_to_one_exhaustively():
    """All 16.7M values of one pixel through ``log_prob`` itself (tens of seconds)."""
    obs = DiscretizedLogisticMixture(channels=3, components=2)
    params = _params(obs, 1, seed=9, spread=1.5)
    gb = torch.stack(torch.meshgrid(torch.arange(256.), torch.arange(256.), indexing="ij")).double()
    total = 0.0
    for r0 in range(0, 256, 16):
        r = torch.arange(r0, r0 + 16, dtype=torch.float64).view(16, 1, 1, 1).expand(-1, 1, 256, 256)
        total += obs.log_prob_pixels(params, torch.cat([r, gb.expand(16, -1, -1, -1)], 1)).exp().sum().item()
    assert abs(total - 1) < 1e-9


# ---------------------------------------------------------------------- sampling
def test_one_channel_samples_follow_the_probabilities():
    obs = DiscretizedLogisticMixture(channels=1, components=10)
    n = 200_000
    for seed in range(3):
        params = _params(obs, 1, seed=seed, spread=1.5)
        probs = obs.log_prob_pixels(params.expand(-1, -1, 1, 256), torch.arange(256.).double().view(1, 1, 1, 256)).exp()
        u = torch.rand(1, obs.uniforms_per_pixel, n, generator=torch.Generator().manual_seed(seed + 10),
                       dtype=torch.float64)
        x = obs.sample(params.view(1, -1, 1).expand(-1, -1, n), u).long().flatten()
        stat, bound = _chi2_ok(torch.bincount(x, minlength=256), probs.flatten())
        assert stat < bound, (seed, stat, bound)


def test_three_channel_samples_follow_the_probabilities(rgb_case):
    _, _, joint, x = rgb_case
    r, g, b = x
    for axes, values in [((1, 2), r), ((0, 2), g), ((0, 1), b)]:  # the three marginals
        stat, bound = _chi2_ok(torch.bincount(values, minlength=256), joint.sum(axes))
        assert stat < bound, (axes, stat, bound)
    # Joint structure (the coupling of G to R and of B to R and G): 16x16 blocks of value pairs.
    for (i, j), (a, c) in [((0, 1), (r, g)), ((1, 2), (g, b)), ((0, 2), (r, b))]:
        table = joint.sum(3 - i - j).view(16, 16, 16, 16).sum((1, 3))
        counts = torch.bincount((a // 16) * 16 + c // 16, minlength=256).view(16, 16)
        stat, bound = _chi2_ok(counts, table)
        assert stat < bound, ((i, j), stat, bound)


def test_uncoupled_sampler_would_fail_the_joint_test(rgb_case):
    """The joint test has teeth: shuffling G across samples keeps every marginal
    but breaks the R->G coupling, and the statistic then far exceeds its bound."""
    _, _, joint, x = rgb_case
    r, g = x[0], x[1][torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))]
    table = joint.sum(2).view(16, 16, 16, 16).sum((1, 3))
    stat, bound = _chi2_ok(torch.bincount((r // 16) * 16 + g // 16, minlength=256).view(16, 16), table)
    assert stat > 10 * bound


@pytest.mark.parametrize("channels", [1, 3])
def test_sampling_is_a_function_of_the_uniforms(channels):
    obs = DiscretizedLogisticMixture(channels=channels, components=4)
    g = torch.Generator().manual_seed(3)
    params = torch.randn(2, obs.param_channels, 5, 6, generator=g)
    u = torch.rand(2, obs.uniforms_per_pixel, 5, 6, generator=g)
    x = obs.sample(params, u)
    assert x.shape == (2, channels, 5, 6) and x.dtype == params.dtype
    assert torch.equal(x, obs.sample(params.clone(), u.clone()))
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255
    # Positions are independent: sampling a crop gives the crop of the sample.
    assert torch.equal(obs.sample(params[:, :, 1:3, 2:5], u[:, :, 1:3, 2:5]), x[:, :, 1:3, 2:5])
    # Uniforms exactly 0 or 1 (possible in float32) give the edge values, not NaN.
    u[:, 1:] = 0.0
    assert (obs.sample(params, u) == 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_margin_bounds_the_draw(channels):
    """Moving every output by less than ``margin * (1 + |output|)`` never changes
    a pixel; moving the decisive output by a few margins does change some."""
    obs = DiscretizedLogisticMixture(channels=channels, components=5)
    g = torch.Generator().manual_seed(11)
    params = torch.randn(4, obs.param_channels, 16, 16, generator=g, dtype=torch.float64) * 2
    u = torch.rand(4, obs.uniforms_per_pixel, 16, 16, generator=g, dtype=torch.float64)
    x, margin = obs.sample_with_margin(params, u)
    assert margin.shape == (4, 16, 16) and (margin > 0).all()
    # The bound is first order, as rounding errors are: perturbations are capped at
    # 1e-3 (relative), still 10^4 times float32 rounding.
    step = margin.clamp(max=1e-3)[:, None] * (1 + params.abs())
    for trial in range(10):
        sign = torch.randint(0, 2, params.shape, generator=g).double() * 2 - 1
        assert torch.equal(obs.sample(params + 0.99 * step * sign, u), x), trial
    # ... and it is not vacuous: a few margins' worth does move some pixels.
    changed = sum(int((obs.sample(params + 5 * step * s, u) != x).any(1).sum()) for s in (1, -1))
    assert changed >= 5


# ---------------------------------------------------------------------- edges, gradients, precision
def test_edge_bins_take_the_tails():
    obs = DiscretizedLogisticMixture(channels=1, components=1)
    # One logistic centred at value 0 with scale 1 (in [-1, 1] units): P(x = 0) = sigma((-1 + 1/255 + 1)).
    params = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    lp0 = obs.log_prob_pixels(params, torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(lp0.exp().item(), torch.sigmoid(torch.tensor(1 / 255, dtype=torch.float64)).item(),
                               rtol=1e-12, atol=0)
    lp255 = obs.log_prob_pixels(params, torch.full((1, 1, 1, 1), 255.0, dtype=torch.float64))
    torch.testing.assert_close(lp255.exp().item(),
                               1 - torch.sigmoid(torch.tensor(2 - 1 / 255, dtype=torch.float64)).item(),
                               rtol=1e-12, atol=0)


def test_tiny_probabilities_stay_exact_in_float32():
    """A bin far in the tail of a narrow logistic: float32 differences of CDFs
    would round to 0 (log = -inf); the factorised form matches float64."""
    obs = DiscretizedLogisticMixture(channels=1, components=1)
    params = torch.tensor([0.0, 0.5, -4.0]).view(1, 3, 1, 1)  # mean 0.5, scale e^-4
    x = torch.tensor([10.0, 60.0, 128.0, 200.0, 250.0]).view(1, 1, 1, 5)
    lp32 = obs.log_prob_pixels(params.expand(-1, -1, 1, 5), x)
    lp64 = obs.log_prob_pixels(params.double().expand(-1, -1, 1, 5), x.double())
    assert torch.isfinite(lp32).all() and lp64.min() < -50  # genuinely tiny probabilities
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_gradients_are_finite_at_the_edges(channels):
    obs = DiscretizedLogisticMixture(channels=channels, components=4)
    params = torch.cat([_extreme(obs, torch.float32), _params(obs, 4, seed=2, dtype=torch.float32) * 5])
    n = len(params)
    for value in (0.0, 1.0, 127.0, 254.0, 255.0):
        p = params.clone().requires_grad_(True)
        x = torch.full((n, channels, 1, 1), value)
        x[::2, 0] = 255.0 - value  # edges mixed across channels too
        lp = obs.log_prob(p, x)
        assert torch.isfinite(lp).all(), value
        (grad,) = torch.autograd.grad(lp.sum(), p)
        assert torch.isfinite(grad).all(), value


def test_bf16_autocast_log_probs_are_fp32():
    obs = DiscretizedLogisticMixture(channels=3, components=10)
    g = torch.Generator().manual_seed(4)
    params = torch.randn(3, obs.param_channels, 6, 6, generator=g)
    x = torch.randint(0, 256, (3, 3, 6, 6), generator=g).float()
    ref = obs.log_prob(params, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = obs.log_prob(params.bfloat16(), x)
        lp_b = Bernoulli().log_prob(params[:, :1].bfloat16(), (x[:, :1] > 127).float())
    assert lp.dtype == torch.float32 and lp_b.dtype == torch.float32
    # Exactly the fp32 computation on the bf16-rounded outputs ...
    torch.testing.assert_close(lp, obs.log_prob(params.bfloat16().float(), x), rtol=0, atol=0)
    # ... and close to the unrounded one (bf16 keeps 8 bits of each output).
    torch.testing.assert_close(lp, ref, rtol=0.02, atol=2.0)


# ---------------------------------------------------------------------- Bernoulli, validation, factory
def test_bernoulli_is_the_historical_model():
    obs = Bernoulli()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 5, 5, generator=g)
    x = torch.bernoulli(torch.full((4, 1, 5, 5), 0.4), generator=g)
    u = torch.rand(4, 1, 5, 5, generator=g)
    assert torch.equal(obs.log_prob(logits, x), bernoulli_log_prob(logits, x))
    torch.testing.assert_close(obs.log_prob_pixels(logits, x).sum((1, 2)), obs.log_prob(logits, x))
    xs, margin = obs.sample_with_margin(logits, u)
    assert torch.equal(xs, bernoulli_from_uniform(logits, u))
    assert torch.equal(margin, (u - torch.sigmoid(logits)).abs()[:, 0])
    assert (obs.param_channels, obs.uniforms_per_pixel, obs.dims((1, 5, 5))) == (1, 1, 25)
    assert torch.equal(obs.scale(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))


def test_value_checks_are_one_line_errors():
    bern, mix = Bernoulli(), DiscretizedLogisticMixture(3, 10)
    bern.check(torch.tensor([0.0, 1.0]))
    mix.check(torch.tensor([0.0, 17.0, 255.0]))
    mix.check(torch.tensor([0, 255], dtype=torch.uint8))
    for obs, bad, match in [(bern, torch.tensor([0.0, 0.5]), "binary"), (mix, torch.tensor([0.0, 256.0]), "0..255"),
                            (mix, torch.tensor([-1.0]), "0..255"), (mix, torch.tensor([1.5]), "non-integer"),
                            (mix, torch.tensor([math.nan]), "NaN")]:
        with pytest.raises(VLAEError, match=match) as err:
            obs.check(bad)
        assert "\n" not in str(err.value)


def test_mixture_sizes_and_scale():
    assert DiscretizedLogisticMixture(3, 10).param_channels == 100  # PixelCNN++'s 100 outputs
    assert DiscretizedLogisticMixture(1, 10).param_channels == 30
    assert DiscretizedLogisticMixture(3, 10).uniforms_per_pixel == 4
    assert DiscretizedLogisticMixture(3).dims((3, 32, 32)) == 3072
    s = DiscretizedLogisticMixture(1).scale(torch.tensor([0.0, 127.5, 255.0]))
    assert torch.equal(s, torch.tensor([-1.0, 0.0, 1.0]))
    for bad in (dict(channels=2), dict(components=0)):
        with pytest.raises(VLAEError):
            DiscretizedLogisticMixture(**bad)


def test_factory_from_config():
    assert isinstance(observation_model(ModelConfig()), Bernoulli)
    obs = observation_model(ModelConfig(image_shape=(3, 8, 8), observation="logistic_mixture", mixture_components=5))
    assert isinstance(obs, DiscretizedLogisticMixture) and (obs.channels, obs.components) == (3, 5)
    cfg = ModelConfig(observation="poisson")
    with pytest.raises(VLAEError, match="observation"):
        observation_model(cfg)
    with pytest.raises(VLAEError, match="observation"):
        cfg.validate()
    with pytest.raises(VLAEError, match="1 channel"):
        ModelConfig(image_shape=(3, 8, 8)).validate()
    with pytest.raises(VLAEError, match="1 or 3"):
        ModelConfig(image_shape=(2, 8, 8), observation="logistic_mixture").validate()
