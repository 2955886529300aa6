"""The spatial encoder q(z|x) and its mirror z -> conditioning maps: shapes,
the exact image region each latent position reads (autograd, float64, which
also pins the flat (C, h, w) layout), data-dependent initialisation, and the
paper-size parameter count.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlae.encoder import HEAD_INIT, DenseBlock, SpatialEncoder, SpatialUpsampler
from vlae.layers import data_dependent_init
from vlae.spatial_prior import latent_map
from vlae.verify import randomized

torch.set_num_threads(1)


@pytest.mark.parametrize("kind", ["resnet", "densenet"])
def test_shapes(kind):
    enc = SpatialEncoder((4, 4, 4), (3, 16, 16), (6, 8, 8), (2, 1, 3), kind, context_dim=5)
    mu, log_sigma, h = enc(torch.randn(2, 3, 16, 16))
    assert mu.shape == log_sigma.shape == (2, 64) and h.shape == (2, 5)
    assert SpatialEncoder((4, 4, 4), (1, 16, 16), kind=kind)(torch.randn(2, 1, 16, 16))[2].shape == (2, 0)
    up = SpatialUpsampler((4, 4, 4), (3, 16, 16), 7, (6, 8, 8), (2, 1, 3), kind)
    assert up(mu).shape == (2, 7, 16, 16)


def _radius(kind: str, blocks: int, steps: int = 3) -> int:
    # 3x3 convolutions at one resolution: two per ResNet block, `steps` per dense block.
    return 2 * blocks if kind == "resnet" else steps * -(-blocks // 2)


def _region(i: int, kind: str, blocks: tuple[int, int, int], size: int) -> tuple[int, int]:
    """Image rows (inclusive) that latent row ``i`` reads: back through the 1/4
    stage, a stride-2 3x3 conv, the 1/2 stage, a stride-2 3x3 conv, the full
    stage and the 3x3 stem."""
    lo, hi = i - _radius(kind, blocks[2]), i + _radius(kind, blocks[2])
    lo, hi = 2 * lo - 1, 2 * hi + 1
    lo, hi = lo - _radius(kind, blocks[1]), hi + _radius(kind, blocks[1])
    lo, hi = 2 * lo - 1, 2 * hi + 1
    r = 1 + _radius(kind, blocks[0])
    return max(lo - r, 0), min(hi + r, size - 1)


@pytest.mark.parametrize("kind,blocks", [("resnet", (0, 0, 0)), ("resnet", (1, 1, 0)), ("densenet", (2, 0, 1))])
def test_each_latent_position_reads_its_image_region(kind, blocks):
    enc = randomized(SpatialEncoder((2, 8, 8), (3, 32, 32), (4, 4, 4), blocks, kind), seed=0, std=0.3)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    mu, log_sigma, _ = enc(x)
    for c, i, j in [(0, 0, 0), (1, 3, 5), (0, 7, 7), (1, 7, 1)]:
        for out in (mu, log_sigma):
            (grad,) = torch.autograd.grad(latent_map(out, (2, 8, 8))[0, c, i, j], x, retain_graph=True)
            rows, cols = _region(i, kind, blocks, 32), _region(j, kind, blocks, 32)
            expected = torch.zeros(3, 32, 32, dtype=torch.bool)
            expected[:, rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
            assert torch.equal(grad[0] != 0, expected), (c, i, j)


def test_data_dependent_init_normalises_outputs():
    enc = SpatialEncoder((4, 4, 4), (3, 16, 16), (6, 8, 8), (1, 1, 1), "densenet", weight_norm=True)
    up = SpatialUpsampler((4, 4, 4), (3, 16, 16), 5, (6, 8, 8), (1, 1, 1), "resnet", weight_norm=True)
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    data_dependent_init(enc, x)
    mu, log_sigma, _ = enc(x)
    for out in (mu, log_sigma):  # the head starts at HEAD_INIT times unit variance: q(z|x) near N(0, I)
        m = latent_map(out, (4, 4, 4))
        torch.testing.assert_close(m.mean((0, 2, 3)), torch.zeros(4), rtol=0, atol=1e-4)
        torch.testing.assert_close(m.std((0, 2, 3)), torch.full((4,), HEAD_INIT), rtol=0, atol=1e-4)
    data_dependent_init(up, mu)
    cond = up(mu)
    torch.testing.assert_close(cond.mean((0, 2, 3)), torch.zeros(5), rtol=0, atol=1e-4)
    torch.testing.assert_close(cond.std((0, 2, 3)), torch.ones(5), rtol=0, atol=1e-3)


def _wn_conv(c_in: int, c_out: int, k: int) -> int:
    return c_out * c_in * k * k + 2 * c_out  # weight, bias, gain


def test_paper_size_parameter_counts():
    # Appendix B: 48 maps at 32x32, 96 below; 2, 2, 3 ResNet blocks; 16x8x8 code.
    enc = SpatialEncoder((16, 8, 8), (3, 32, 32), weight_norm=True)
    block = lambda c: 2 * _wn_conv(c, c, 3)  # noqa: E731
    expected = (_wn_conv(3, 48, 3) + 2 * block(48) + _wn_conv(48, 96, 3) + 2 * block(96)
                + _wn_conv(96, 96, 3) + 3 * block(96) + _wn_conv(96, 32, 1))
    assert sum(p.numel() for p in enc.parameters()) == expected == 1_044_016
    up = SpatialUpsampler((16, 8, 8), (3, 32, 32), 4, weight_norm=True)
    assert 1.0e6 < sum(p.numel() for p in up.parameters()) < 1.3e6  # transposed 4x4 kernels: a little more
    dense = SpatialEncoder((16, 8, 8), (3, 32, 32), kind="densenet", weight_norm=True)
    assert sum(p.numel() for p in dense.parameters()) < expected / 4  # dense blocks reuse features


def test_dense_block_widths():
    block = DenseBlock(24, 24, steps=3)
    assert block(torch.zeros(1, 24, 4, 4)).shape == (1, 96, 4, 4)
    # A dense stage ends with at least as many maps as the ResNet stage it replaces.
    enc = SpatialEncoder((16, 8, 8), (3, 32, 32), (50, 96, 97), kind="densenet")
    widths = [m.out_channels for m in enc.net if isinstance(m, DenseBlock)]
    assert widths == [4 * math.ceil(50 / 4), 96, 4 * math.ceil(97 / 4), 4 * math.ceil(97 / 4)]


def test_shape_mismatch_is_one_line():
    with pytest.raises(ValueError, match="8x8 latent map needs 32x32 images, got 28x28"):
        SpatialEncoder((16, 8, 8), (1, 28, 28))
    with pytest.raises(ValueError, match="unknown kind"):
        SpatialUpsampler((16, 8, 8), (3, 32, 32), kind="vgg")


def test_upsamplers_old_homes_still_import():
    import vlae.conditioning
    import vlae.encoder
    import vlae.pixelcnn

    assert vlae.encoder.SpatialUpsampler is vlae.conditioning.SpatialUpsampler
    assert vlae.pixelcnn.ConditionUpsampler is vlae.conditioning.ConditionUpsampler
    with pytest.raises(AttributeError, match="no attribute 'Upsampler'"):
        vlae.encoder.Upsampler  # noqa: B018
