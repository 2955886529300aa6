"""Tests of vlae.sampling: the fast sampler returns exactly the naive sampler's images.

Every comparison is bit for bit (``torch.equal``) against :meth:`VLAE.sample` /
:meth:`VLAE.decode` with the same generator seed, on decoders with random,
perturbed weights (so that probabilities are spread out, not all near 0.5).
"""

from __future__ import annotations

import copy

import pytest
import torch

from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.pixelcnn import GatedPixelCNN, MaskedPixelCNN
from vlae.sampling import FastSampler, crop_logits, fast_sample, wavefront_slope

from emulated_cuda import emulated_cuda

torch.set_num_threads(1)

SMALL = (1, 12, 20)  # non-square, cheap for the naive sampler
MNIST = (1, 28, 28)


def make_model(seed: int = 0, **overrides) -> VLAE:
    """The tiny preset with overrides, weight-norm initialised on a random batch,
    decoder weights perturbed, and the output layer rescaled so that the logits
    spread over about +-3 (probabilities far from 0.5 and from each other)."""
    cfg = get_preset("tiny").model
    cfg.decoder_filters = 6
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = VLAE(cfg).eval()
    x = torch.bernoulli(torch.full((16, *cfg.image_shape), 0.3))
    model.initialize(x)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
        z = torch.randn(16, cfg.latent_dim) if cfg.latent_dim else None
        logits = model.logits(x, z)
        out = model.decoder.out2 if cfg.decoder == "gated" else model.decoder.out
        scale = 3.0 / logits.std()
        out.g.mul_(scale)
        out.bias.mul_(scale).sub_(scale * logits.mean())
    return model


def naive_and_fast(model: VLAE, n: int, seed: int = 1, **kwargs):
    xn, pn = model.sample(n, generator=torch.Generator().manual_seed(seed), return_probs=True)
    sampler = FastSampler(model, **kwargs)
    xf, pf = sampler.sample(n, generator=torch.Generator().manual_seed(seed), return_probs=True)
    return xn, pn, xf, pf, sampler


def check_exact(model: VLAE, n: int = 3, seed: int = 1, **kwargs) -> None:
    xn, pn, xf, pf, _ = naive_and_fast(model, n, seed, **kwargs)
    # a meaningful check needs confident probabilities and both pixel values
    assert (pn - 0.5).abs().mean() > 0.15 and 0.05 < xn.mean() < 0.95, "test model too close to trivial"
    assert torch.equal(xn, xf)
    torch.testing.assert_close(pf, pn, rtol=0, atol=1e-5)


MASKED = [dict(decoder="masked", decoder_layers=depth, decoder_kernel=k, tie_weights=tie)
          for depth in (1, 2, 3, 4) for k in (3, 5) for tie in (True, False)]


@pytest.mark.parametrize("cfg", MASKED,
                         ids=lambda c: f"L{c['decoder_layers']}-k{c['decoder_kernel']}-tie{c['tie_weights']}")
def test_masked_small_image_bit_identical(cfg):
    check_exact(make_model(image_shape=SMALL, **cfg))


@pytest.mark.parametrize("depth,k", [(1, 3), (2, 5), (3, 3)])
def test_gated_small_image_bit_identical(depth, k):
    check_exact(make_model(image_shape=SMALL, decoder="gated", decoder_layers=depth, decoder_kernel=k,
                           cond_every_layer=True))


@pytest.mark.parametrize("cfg", [
    dict(decoder="masked", decoder_layers=2),
    dict(decoder="masked", decoder_layers=3, cond_every_layer=True, tie_weights=True),
    dict(decoder="masked", decoder_layers=2, latent_dim=0),
    dict(decoder="gated", decoder_layers=2),
    dict(decoder="gated", decoder_layers=2, latent_dim=0),
    dict(decoder="factorized"),
], ids=["masked", "masked-cond-every-layer", "masked-unconditional", "gated", "gated-unconditional", "factorized"])
def test_mnist_shape_bit_identical(cfg):
    check_exact(make_model(image_shape=MNIST, **cfg), n=2)


@pytest.mark.parametrize("cfg", [dict(decoder="masked", decoder_layers=3, decoder_kernel=5, latent_dim=0),
                                 dict(decoder="gated", decoder_layers=2, decoder_kernel=3)])
def test_window_method_bit_identical(cfg):
    check_exact(make_model(1, image_shape=SMALL, **cfg), method="window")


@pytest.mark.parametrize("decoder", ["masked", "gated"])
def test_uniforms_on_the_decision_boundary(decoder):
    """Uniforms placed exactly on (or one float below) the naive sampler's own
    probabilities: the fast probabilities differ in the last bits, so without
    the exact re-decision some pixels would flip; with it none does."""
    model = make_model(image_shape=SMALL, decoder=decoder, decoder_layers=2)
    g = torch.Generator().manual_seed(3)
    z = model.prior.sample(3, generator=g)
    x0, p0 = model.decode(z, torch.rand((3, *SMALL), generator=g), return_probs=True)
    u = torch.where(x0 == 1, torch.nextafter(p0, torch.zeros_like(p0)), p0)
    xn, pn = model.decode(z, u, return_probs=True)
    assert torch.equal(xn, x0) and torch.equal(pn, p0)
    sampler = FastSampler(model)
    xf, pf = sampler.decode(z, u, return_probs=True)
    assert torch.equal(xf, xn)
    assert torch.equal(pf, pn)  # every pixel was settled by the naive computation itself
    assert sampler.fallbacks == xn.numel()
    unguarded = FastSampler(model, tol=0.0).decode(z, u)
    assert not torch.equal(unguarded, xn), "rounding never mattered: the boundary test lost its point"


def test_settling_every_pixel_reproduces_naive_probabilities():
    model = make_model(image_shape=SMALL, decoder="masked", decoder_layers=2)
    xn, pn, xf, pf, sampler = naive_and_fast(model, 4, tol=1.0)
    assert sampler.fallbacks == xn.numel()
    assert torch.equal(xf, xn) and torch.equal(pf, pn)


@pytest.mark.parametrize("decoder", ["masked", "gated"])
def test_probabilities_equal_teacher_forced(decoder):
    model = make_model(image_shape=MNIST, decoder=decoder, decoder_layers=3)
    g = torch.Generator().manual_seed(5)
    z = model.prior.sample(4, generator=g)
    x, p = FastSampler(model).decode(z, torch.rand((4, *MNIST), generator=g), return_probs=True)
    teacher = torch.sigmoid(model.logits(x, z))
    torch.testing.assert_close(p, teacher, rtol=0, atol=1e-5)


def test_fast_sample_matches_model_sample_and_reconstruct():
    model = make_model(image_shape=MNIST, decoder_layers=2)
    assert torch.equal(fast_sample(model, 3, generator=torch.Generator().manual_seed(7)),
                       model.sample(3, generator=torch.Generator().manual_seed(7)))
    images = torch.bernoulli(torch.full((2, *MNIST), 0.3), generator=torch.Generator().manual_seed(0))
    naive = model.reconstruct(images, n=2, generator=torch.Generator().manual_seed(8))
    fast = FastSampler(model).reconstruct(images, n=2, generator=torch.Generator().manual_seed(8))
    assert fast.shape == (2, 2, *MNIST) and torch.equal(fast, naive)


@pytest.mark.parametrize("decoder", [MaskedPixelCNN(3, 5, 5, 4, 1, False, True), GatedPixelCNN(3, 3, 5, 4),
                                     MaskedPixelCNN(2, 3, 5, 0, 1)], ids=["masked", "gated", "unconditional"])
def test_crop_reproduces_full_logits(decoder):
    """The locality the window method relies on, in float64 for every pixel."""
    torch.manual_seed(0)
    dec = decoder.double()
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((2, 1, 10, 14), 0.4, dtype=torch.float64))
    cond = torch.randn(2, 4, 10, 14, dtype=torch.float64) if dec.cond_channels else None
    full = dec(x, cond)
    crops = torch.stack([crop_logits(dec, x, cond, i, j) for i in range(10) for j in range(14)], -1)
    torch.testing.assert_close(crops.view_as(full), full, rtol=0, atol=1e-10)


def test_backend_properties_exactness_relies_on():
    """The exact re-decision reuses one full decoder pass for one pixel per image:
    a row's logits must not depend on other rows, nor on pixels where the masked
    weights are zero (bit for bit, not just mathematically)."""
    model = make_model(image_shape=MNIST, decoder_layers=3)
    x = torch.bernoulli(torch.full((5, *MNIST), 0.4))
    cond = model.condition(torch.randn(5, model.latent_dim))
    ref = model.decoder(x, cond)
    other = x.clone()
    other[1:] = 1 - other[1:]
    assert torch.equal(model.decoder(other, cond)[0], ref[0])
    later = x.clone().flatten(1)
    later[:, 14 * 28 + 14:] = 1 - later[:, 14 * 28 + 14:]
    assert torch.equal(model.decoder(later.view_as(x), cond)[:, :, 14, 14], ref[:, :, 14, 14])


def test_wavefront_slope():
    assert wavefront_slope({(-1, -1), (-1, 0), (-1, 1), (0, -1)}) == 2
    assert wavefront_slope({(0, -1), (0, -2)}) == 0
    assert wavefront_slope(MaskedPixelCNN(6, 5, 4, 0).receptive_field()) == 3
    with pytest.raises(ValueError):
        wavefront_slope({(0, 1)})


def test_bad_input():
    model = make_model(image_shape=SMALL)
    with pytest.raises(VLAEError, match="method"):
        FastSampler(model, method="magic")
    with pytest.raises(VLAEError, match="uniforms"):
        FastSampler(model).decode(torch.zeros(2, model.latent_dim), torch.rand(2, 1, 12, 12))


# ---------------------------------------------------------------------- colour (discretized logistic mixture)
COLOUR = (3, 8, 8)


def make_colour_model(seed: int = 0, **overrides) -> VLAE:
    """An 8-bit model on random images, decoder weights perturbed so the mixtures
    spread over the 256 values (not all mass in one bin)."""
    from vlae.config import ModelConfig

    base = dict(image_shape=COLOUR, observation="logistic_mixture", mixture_components=3, latent_dim=8,
                made_hidden=(16,), encoder_channels=8, upsampler_channels=8, decoder_filters=6, flow_steps=1,
                decoder="gated", decoder_field="4x2")
    base.update(overrides)
    cfg = ModelConfig(**base)
    torch.manual_seed(seed)
    model = VLAE(cfg).eval()
    model.initialize(torch.randint(0, 256, (16, *cfg.image_shape)).float())
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def check_exact_colour(model: VLAE, n: int = 3, seed: int = 1, **kwargs) -> FastSampler:
    xn, pn, xf, pf, sampler = naive_and_fast(model, n, seed, **kwargs)
    # a meaningful check: many distinct values, not a constant image
    assert xn.unique().numel() > 50 and torch.equal(xn, xn.round()) and 0 <= xn.min() and xn.max() <= 255
    assert torch.equal(xn, xf)
    assert pn.shape == (n, model.observation.param_channels, *model.cfg.image_shape[1:])  # the mixture's outputs
    torch.testing.assert_close(pf, pn, rtol=0, atol=1e-4)
    return sampler


COLOUR_CASES = {
    "gated-4x2": dict(),
    "gated-7x4-gray": dict(decoder_field="7x4", gray_context=True),
    "gated-5x3-blocks": dict(decoder_field="5x3", gated_blocks_1x1=2),
    "gated-vdo-L2": dict(decoder_field="", decoder_layers=2, decoder_kernel=3),
    "masked": dict(decoder="masked", decoder_field="", decoder_layers=2),
    "masked-gray": dict(decoder="masked", decoder_field="", decoder_layers=2, gray_context=True),
    "factorized": dict(decoder="factorized", decoder_field=""),
    "unconditional": dict(latent_dim=0, decoder_field="5x3"),
    "grayscale-8bit": dict(image_shape=(1, 8, 8), decoder_field="5x3"),
}


@pytest.mark.parametrize("case", list(COLOUR_CASES))
def test_colour_bit_identical(case):
    check_exact_colour(make_colour_model(**COLOUR_CASES[case]))


@pytest.mark.parametrize("case", ["gated-7x4-gray", "masked"])
def test_colour_window_method_bit_identical(case):
    check_exact_colour(make_colour_model(2, **COLOUR_CASES[case]), method="window")


def _on_the_edges(model: VLAE, z, u0):
    """Uniforms that put every channel's logistic draw on the edge of the bin naive
    sampling chose (one mixture component): the fast sampler's outputs differ in
    the last bits, so unguarded some pixels would move to the neighbouring value."""
    obs = model.observation
    x0, p0 = model.decode(z, u0, return_probs=True)
    _, means, log_scales, coeffs = obs._split(p0)
    v = obs.scale(x0)
    u = u0.clone()
    for c in range(obs.channels):
        mu, s = obs._mean(means, coeffs, v, c)[:, 0], log_scales[:, c, 0].exp()
        edge = torch.where(x0[:, c] > 0, (x0[:, c] - 0.5) / 127.5 - 1, (x0[:, c] + 0.5) / 127.5 - 1)
        uc = torch.sigmoid((edge - mu) / s)
        for _ in range(50):  # nudge onto the side of the edge that keeps the chosen value
            x = obs.sample(p0, torch.cat([u[:, :c + 1], uc[:, None], u[:, c + 2:]], 1))[:, c]
            wrong = x != x0[:, c]
            if not wrong.any():
                break
            uc = torch.where(wrong & (x < x0[:, c]), torch.nextafter(uc, torch.ones_like(uc)), uc)
            uc = torch.where(wrong & (x > x0[:, c]), torch.nextafter(uc, torch.zeros_like(uc)), uc)
        # Where float32 cannot land on the chosen side (bins narrower than one step of
        # u far in a tail), keep the original uniform.
        u[:, c + 1] = torch.where(wrong, u[:, c + 1], uc)
    return x0, p0, u


def test_colour_uniforms_on_the_bin_edges():
    model = make_colour_model(3, mixture_components=1, decoder_field="5x3")
    g = torch.Generator().manual_seed(3)
    z = model.prior.sample(3, generator=g)
    x0, p0, u = _on_the_edges(model, z, torch.rand((3, *model.uniforms_shape), generator=g))
    xn, pn = model.decode(z, u, return_probs=True)
    assert torch.equal(xn, x0) and torch.equal(pn, p0)  # the very same image, now on the edges
    sampler = FastSampler(model)
    xf, pf = sampler.decode(z, u, return_probs=True)
    assert torch.equal(xf, xn)
    assert sampler.fallbacks >= 0.9 * xn[:, 0].numel()  # (nearly) every pixel settled by the naive computation
    unguarded = FastSampler(model, tol=0.0).decode(z, u)
    assert not torch.equal(unguarded, xn), "rounding never mattered: the edge test lost its point"


def test_colour_reconstruct_and_teacher_forced_params():
    model = make_colour_model(4, decoder_field="7x4")
    images = torch.randint(0, 256, (2, *COLOUR), generator=torch.Generator().manual_seed(0)).float()
    naive = model.reconstruct(images, n=2, generator=torch.Generator().manual_seed(8))
    fast = FastSampler(model).reconstruct(images, n=2, generator=torch.Generator().manual_seed(8))
    assert fast.shape == (2, 2, *COLOUR) and torch.equal(fast, naive)
    g = torch.Generator().manual_seed(5)
    z = model.prior.sample(2, generator=g)
    x, p = FastSampler(model).decode(z, torch.rand((2, *model.uniforms_shape), generator=g), return_probs=True)
    torch.testing.assert_close(p, model.params(x, z), rtol=0, atol=1e-4)


def test_colour_uniforms_shape_is_checked():
    model = make_colour_model()
    with pytest.raises(VLAEError, match="uniforms"):
        FastSampler(model).decode(torch.zeros(2, model.latent_dim), torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("make", [make_model, make_colour_model], ids=["binary", "colour"])
def test_sampling_in_batches_bounds_memory_and_draws_the_same_images(make, monkeypatch):
    """`vlae sample --n N` draws SAMPLE_BATCH images at a time (memory bounded whatever N), one batch
    after the other from one generator: the images of separate calls, and fast = naive."""
    from vlae.sampling import sample_in_batches

    model = make()
    sizes, real = [], FastSampler.sample

    def spy(self, n, generator=None, return_probs=False):
        sizes.append(n)
        return real(self, n, generator=generator, return_probs=return_probs)

    monkeypatch.setattr(FastSampler, "sample", spy)
    x = sample_in_batches(model, 5, torch.Generator().manual_seed(3), batch=2)
    assert sizes == [2, 2, 1] and x.dtype == torch.uint8 and x.shape == (5, *model.cfg.image_shape)
    gen = torch.Generator().manual_seed(3)
    one_by_one = torch.cat([real(FastSampler(model), b, generator=gen) for b in (2, 2, 1)])
    assert torch.equal(x, one_by_one.to(torch.uint8))
    assert torch.equal(x, sample_in_batches(model, 5, torch.Generator().manual_seed(3), naive=True, batch=2))



@pytest.mark.parametrize("make", [make_model, make_colour_model], ids=["binary", "colour"])
def test_sampling_on_an_emulated_gpu_keeps_each_tensor_on_its_device(make):
    """The samplers with the model on ``cuda`` (``tests/emulated_cuda.py``: devices checked as
    CUDA checks them; the generator and the numbers are the CPU's, so the images are too)."""
    from vlae.sampling import sample_in_batches

    model = make()
    on_cpu = sample_in_batches(model, 3, torch.Generator().manual_seed(3), batch=2)
    with emulated_cuda():
        gpu = copy.deepcopy(model).to("cuda")
        assert next(gpu.parameters()).device.type == "cuda"
        for naive in (False, True):
            x = sample_in_batches(gpu, 3, torch.Generator(device="cuda").manual_seed(3), naive=naive, batch=2)
            assert torch.equal(x.cpu(), on_cpu), naive
@pytest.mark.parametrize("decoder,method", [("masked", "auto"), ("gated", "auto"), ("masked", "window"),
                                            ("gated", "window"), ("factorized", "auto")])
def test_pixel_order_is_the_drawing_order(decoder, method):
    model = make_model(image_shape=SMALL, decoder=decoder, decoder_layers=3)
    sampler = FastSampler(model, method=method)
    order = sampler.pixel_order()
    assert torch.equal(torch.cat(order).sort().values, torch.arange(12 * 20))  # every pixel once
    if decoder == "factorized":
        assert len(order) == 1
        return
    z = model.prior.sample(2)
    engine = sampler.engine(model.condition(z), 2, 12, 20, torch.zeros(2, *SMALL))
    drawn = [pos for _, _, pos in engine.schedule(12, 20) if pos is not None]
    assert len(order) == len(drawn) > 12 and all(torch.equal(a, b) for a, b in zip(order, drawn))


@pytest.mark.parametrize("kernel,mask_type", [(1, "A"), (1, "B"), (3, "A"), (3, "B"), (5, "B"), (3, "V_A")])
def test_cached_convolution_is_the_convolution_at_its_positions(kernel, mask_type):
    """The engines' gather-and-multiply (feature-major canvas, one product per layer) gives
    the full masked convolution's outputs at any set of positions, a tapless 1x1 type-A
    mask its bias alone (float64, to rounding)."""
    from vlae.masked_conv import MaskedConv2d
    from vlae.wavefront import _Canvas, _Tap

    torch.manual_seed(0)
    n, c, h, w = 3, 4, 7, 9
    conv = MaskedConv2d(c, 5, kernel, mask_type=mask_type).double()
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    canvas = _Canvas(n, h, w, c, kernel // 2, x)
    every = torch.arange(h * w)
    canvas.write(canvas.index(every, w), x.flatten(2).permute(1, 2, 0))
    pos = torch.tensor([0, 5, 9, 31, 62])
    out = _Tap(conv, canvas.width)(canvas, canvas.index(pos, w))  # (out, P, n)
    full = conv(x).flatten(2)[:, :, pos].permute(1, 2, 0)
    assert out.shape == (5, len(pos), n)
    torch.testing.assert_close(out, full, rtol=0, atol=1e-13)
    if kernel == 1 and mask_type == "A":
        assert torch.equal(out, conv.bias.detach()[:, None, None].expand_as(out))
