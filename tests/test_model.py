"""The VLAE's bounds, free bits, sampling and input checks, on tiny float64 models
(12x12 images).

What is proved:
- the IW bound with k = 1 is the single-sample ELBO for the same noise;
- where p(x|z) ignores z and q = p(z), the IW bound is exactly log p(x) for any k;
- on average the IW bound lies above the ELBO and grows with k;
- chunking the k samples does not change the bound for the same samples;
- free bits floor each group's KL and stop its gradient below the floor;
- naive sampling uses exactly the probabilities of a teacher-forced pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlae import VLAE, get_preset
from vlae.errors import VLAEError
from vlae.flows import standard_normal_log_prob
from vlae.model import Terms, nats_to_bits_per_dim
from vlae.observation import bernoulli_log_prob

torch.set_num_threads(1)

HW = (12, 12)


def make_model(seed: int = 0, init: bool = True, **options) -> VLAE:
    cfg = get_preset("tiny").model
    cfg.image_shape = (1, *HW)
    for key, value in options.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = VLAE(cfg).double()
    if init:
        model.initialize(images(16, seed=100 + seed))
    return model


def images(n: int, seed: int = 0, p: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, *HW), p, dtype=torch.float64), generator=gen)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


VARIANTS = [
    dict(prior="af", posterior="gaussian", decoder="masked"),
    dict(prior="gaussian", posterior="iaf", decoder="gated", cond_every_layer=True),
    dict(prior="af", posterior="iaf", decoder="factorized"),
    dict(prior="af", posterior="gaussian", decoder="masked", mean_only=False, weight_norm=False),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_iw_bound_with_one_sample_is_the_elbo(options):
    model = make_model(**options)
    x = images(5, seed=1)
    with torch.no_grad():
        for s in range(3):
            elbo = -model.terms(x, generator=gen(s)).nelbo
            iw = model.iw_bound(x, 1, generator=gen(s))
            assert iw.dtype == torch.float64 and iw.shape == (5,)
            torch.testing.assert_close(iw, elbo, rtol=0, atol=1e-10)
        # ... and a different seed gives a different value (the noise matters).
        assert not torch.allclose(model.iw_bound(x, 1, generator=gen(99)), elbo)


def _ignore_z(model: VLAE) -> VLAE:
    """Make q(z|x) = N(0, I) = p(z) and the conditioning map identically 0."""
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.zero_()
        last = model.upsampler.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    return model


@pytest.mark.parametrize("decoder", ["masked", "gated"])
def test_iw_bound_is_exact_when_z_is_ignored(decoder):
    model = _ignore_z(make_model(decoder=decoder, prior="gaussian", posterior="gaussian"))
    x = images(4, seed=2)
    with torch.no_grad():
        mu, log_sigma, _ = model.encode(x)
        assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(log_sigma, torch.zeros_like(log_sigma))
        cond = torch.zeros(4, model.cfg.cond_channels, *HW, dtype=torch.float64)
        log_px = bernoulli_log_prob(model.decoder(model.observation.scale(x), cond), x)
        for k in (1, 5, 50):
            for chunk in (0, 1, 7):
                iw = model.iw_bound(x, k, chunk=chunk, generator=gen(k))
                torch.testing.assert_close(iw, log_px, rtol=0, atol=1e-10)
        # The single-sample terms agree too: KL estimate 0, recon = -log p(x).
        terms = model.terms(x, generator=gen(0))
        torch.testing.assert_close(terms.kl, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(-terms.recon, log_px, rtol=0, atol=1e-10)


def _batch_means(fn, seeds) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([fn(s).mean() for s in seeds])


def test_iw_bound_above_elbo_and_growing_in_k():
    """E[IW_k] is non-decreasing in k and E[IW_1] = ELBO (Burda et al., 2016).

    Estimates average over a batch of 6 images and independent seeds; each
    comparison allows 3 standard errors of the difference of the two means
    (standard errors from the spread of the per-seed batch means), so a correct
    implementation fails with probability < 0.3% per comparison (and the
    seeds are fixed). On this random model the gaps are much larger than the
    noise, so a bound that does not tighten with k would fail.
    """
    model = make_model(seed=3)
    x = images(6, seed=3)
    elbo = _batch_means(lambda s: -model.terms(x, generator=gen(1000 + s)).nelbo, range(48))
    means = {"elbo": elbo}
    for k in (1, 4, 16, 64):
        means[k] = _batch_means(lambda s: model.iw_bound(x, k, generator=gen(k * 100 + s)), range(12))

    def se(a):
        return float(a.std() / math.sqrt(len(a)))

    def at_least(a, b):  # mean of a >= mean of b, up to 3 standard errors
        return float(a.mean()) >= float(b.mean()) - 3 * math.hypot(se(a), se(b))

    assert at_least(means[64], means["elbo"])
    assert float(means[64].mean()) > float(means["elbo"].mean())
    for k1, k2 in [(1, 4), (4, 16), (16, 64)]:
        assert at_least(means[k2], means[k1]), (k1, k2, float(means[k1].mean()), float(means[k2].mean()))
    # IW_1 estimates the ELBO: equal within noise both ways.
    assert at_least(means[1], means["elbo"]) and at_least(means["elbo"], means[1])


def test_iw_bound_is_log_mean_exp_of_the_log_weights():
    model = make_model(seed=4)
    x = images(3, seed=4)
    with torch.no_grad():
        log_w = model.log_weights(x, 9, generator=gen(7))
        assert log_w.shape == (9, 3)
        iw = model.iw_bound(x, 9, chunk=9, generator=gen(7))
    torch.testing.assert_close(iw, torch.logsumexp(log_w.double(), 0) - math.log(9), rtol=0, atol=1e-10)
    assert torch.all(iw >= log_w.mean(0) - 1e-10)  # Jensen, sample by sample
    assert torch.all(iw <= log_w.max(0).values + 1e-10)


class _NoisePool:
    """Stands in for ``posterior_sample``: hands out base noise from a fixed
    pool in order, however many samples are asked for at a time, so every
    chunking sees the very same samples."""

    def __init__(self, model: VLAE, k: int, batch: int, seed: int):
        self.model, self.next = model, 0
        self.pool = torch.randn(k, batch, model.latent_dim, generator=gen(seed), dtype=torch.float64)

    def __call__(self, x, n=1, generator=None):
        mu, log_sigma, h = self.model.encode(x)
        eps = self.pool[self.next:self.next + n].reshape(n * x.shape[0], -1)
        self.next += n
        rep = lambda t: t.repeat(n, 1)  # noqa: E731 -- sample-major, as posterior_sample documents
        return self.model.posterior.rsample(rep(mu), rep(log_sigma), rep(h), eps)


def test_chunking_does_not_change_the_bound(monkeypatch):
    """For the same samples, chunk sizes 1, 3, 7 (ragged) and k give one value.

    (With a shared generator the chunks draw the noise in different calls;
    CPU ``randn`` then only reproduces the same numbers when each call's size is
    a multiple of 16, so the samples themselves are pinned here by a pool.)
    """
    model = make_model(seed=5, posterior="iaf")
    x = images(3, seed=5)
    k = 10
    results = []
    for chunk in (1, 3, 7, k):
        monkeypatch.setattr(model, "posterior_sample", _NoisePool(model, k, 3, seed=11))
        results.append(model.iw_bound(x, k, chunk=chunk))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=1e-10)
    monkeypatch.setattr(model, "posterior_sample", _NoisePool(model, k, 3, seed=12))
    assert not torch.allclose(model.iw_bound(x, k), results[0])  # the pool's noise is really used


def test_free_bits_penalty_is_a_floor_per_group():
    model = make_model(init=False, free_bits=0.01, free_bits_groups=4)
    lam = 0.01 * 144 / 4  # nats per group
    B, D = 5, 8
    kl_per_dim = torch.rand(B, D, generator=gen(0), dtype=torch.float64) * 0.3 - 0.1  # may be negative
    kl_per_dim[:, :2] += 1.0  # group 0 well above its floor, the others below
    kl_per_dim.requires_grad_(True)
    terms = Terms(torch.zeros(B, dtype=torch.float64), kl_per_dim.sum(1), kl_per_dim)
    per_group = kl_per_dim.detach().view(B, 4, 2).sum(-1).mean(0)
    assert per_group[0] > lam and (per_group[1:] < lam).all()
    expected = per_group.clamp_min(lam).sum()
    penalty = model.kl_penalty(terms)
    torch.testing.assert_close(penalty.detach(), expected, rtol=0, atol=1e-12)
    penalty.backward()
    # Only the group above the floor passes gradient (1/B per entry).
    assert torch.equal(kl_per_dim.grad[:, 2:], torch.zeros(B, 6, dtype=torch.float64))
    torch.testing.assert_close(kl_per_dim.grad[:, :2], torch.full((B, 2), 1 / B, dtype=torch.float64))
    # Without free bits the penalty is the plain batch-mean KL.
    torch.testing.assert_close(model.kl_penalty(terms, free_bits=False).detach(), terms.kl.detach().mean())


def test_free_bits_stop_kl_gradient_below_the_floor():
    model = make_model(seed=6, free_bits=1.0, free_bits_groups=2)  # floor 72 nats per group
    x = images(4, seed=6)
    terms = model.terms(x, generator=gen(0))
    assert (terms.kl_per_dim.view(4, 2, -1).sum(-1).mean(0) < 72).all()
    model.kl_penalty(terms).backward(retain_graph=True)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 10  # the gradient did reach the encoder and the prior: as zeros
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    model.zero_grad()
    model.kl_penalty(terms, free_bits=False).backward()
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("decoder", ["masked", "gated"])
def test_unconditional_model_bounds_are_exact(decoder):
    model = make_model(latent_dim=0, decoder=decoder)
    assert not hasattr(model, "encoder")
    x = images(4, seed=7)
    with torch.no_grad():
        terms = model.terms(x)
        assert torch.equal(terms.kl, torch.zeros(4, dtype=torch.float64))
        log_px = bernoulli_log_prob(model.decoder(model.observation.scale(x), None), x)
        torch.testing.assert_close(-terms.recon, log_px, rtol=0, atol=0)
        for k in (1, 5, 50):
            torch.testing.assert_close(model.iw_bound(x, k), -terms.recon, rtol=0, atol=1e-10)
        assert model.log_weights(x, 3).shape == (3, 4)
    with pytest.raises(VLAEError, match="latent"):
        model.reconstruct(x)


@pytest.mark.parametrize("decoder", ["masked", "gated", "factorized"])
def test_sampling_uses_the_teacher_forced_probabilities(decoder):
    model = make_model(seed=8, decoder=decoder, cond_every_layer=decoder == "gated")
    n = 3
    z = model.prior.sample(n, generator=gen(1))
    u = torch.rand(n, 1, *HW, generator=gen(2), dtype=torch.float64)
    x, probs = model.sample(n, z=z, u=u, return_probs=True)
    assert x.shape == probs.shape == (n, 1, *HW)
    assert torch.equal(x, (u < probs).double())
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model.logits(x, z)), probs, rtol=0, atol=1e-12)
    # Same z and u: same image; the seeded default path is reproducible.
    assert torch.equal(model.sample(n, z=z, u=u), x)
    assert torch.equal(model.sample(2, generator=gen(3)), model.sample(2, generator=gen(3)))


def test_unconditional_sampling_is_teacher_forced_too():
    model = make_model(seed=9, latent_dim=0)
    u = torch.rand(2, 1, *HW, generator=gen(2), dtype=torch.float64)
    x, probs = model.sample(2, u=u, return_probs=True)
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model.logits(x, None)), probs, rtol=0, atol=1e-12)


def test_reconstruct_shapes():
    model = make_model(seed=10)
    x = images(3, seed=10)
    out = model.reconstruct(x, n=4, generator=gen(0))
    assert out.shape == (4, 3, 1, *HW)
    assert torch.all((out == 0) | (out == 1))
    calls = []
    out = model.reconstruct(x, n=2, sampler=lambda z, u: calls.append(z.shape) or torch.zeros_like(u))
    assert out.shape == (2, 3, 1, *HW) and calls == [(6, 8)]


def test_loss_and_terms_shapes():
    model = make_model(seed=11, free_bits=0.01)
    x = images(4, seed=11)
    loss, terms = model.loss(x, generator=gen(0))
    assert loss.shape == () and terms.recon.shape == terms.kl.shape == (4,)
    assert terms.kl_per_dim.shape == (4, 8)
    torch.testing.assert_close(terms.kl, terms.kl_per_dim.sum(1))
    torch.testing.assert_close(terms.nelbo, terms.recon + terms.kl)
    loss0, _ = model.loss(x, kl_weight=0.0, generator=gen(0))
    torch.testing.assert_close(loss0, terms.recon.mean())
    assert nats_to_bits_per_dim(144 * math.log(2), 144) == pytest.approx(1.0)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(2, 1, 10, 12), "shape"),
    (torch.zeros(1, 12, 12), "shape"),
    (torch.zeros(2, 3, 12, 12), "shape"),
    (torch.full((2, 1, 12, 12), 0.5), "binary"),
    (torch.full((2, 1, 12, 12), 2.0), "binary"),
    (np.zeros((2, 1, 12, 12)), "torch.Tensor"),
    ([[0, 1]], "torch.Tensor"),
])
def test_bad_input_raises_vlae_error(bad, match):
    model = make_model(init=False)
    for call in (model.check_images, lambda b: model.iw_bound(b, 2), lambda b: model.reconstruct(b),
                 model.initialize):
        with pytest.raises(VLAEError, match=match) as info:
            call(bad)
        assert "\n" not in str(info.value)


def test_bad_k_raises():
    model = make_model(init=False)
    with pytest.raises(VLAEError, match="k must be"):
        model.iw_bound(images(1), 0)


def test_check_images_accepts_uint8_and_returns_model_dtype():
    model = make_model(init=False)
    out = model.check_images(images(2).to(torch.uint8))
    assert out.dtype == torch.float64


def test_prior_log_prob_is_used_in_the_kl():
    # kl_per_dim = log q - log p(z) per dimension, with the same z as the recon.
    model = make_model(seed=12, prior="gaussian", posterior="gaussian")
    x = images(2, seed=12)
    with torch.no_grad():
        terms = model.terms(x, generator=gen(4))
        mu, log_sigma, _ = model.encode(x)
        eps = torch.randn(2, 8, generator=gen(4), dtype=torch.float64)
        z = mu + log_sigma.exp() * eps
        expected = standard_normal_log_prob(eps) - log_sigma - standard_normal_log_prob(z)
    torch.testing.assert_close(terms.kl_per_dim, expected, rtol=0, atol=1e-10)
