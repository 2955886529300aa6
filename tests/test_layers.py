"""Weight-normalised layers: the effective weight has norm ``g`` per output
unit, data-dependent initialisation standardises the init batch, and the
residual blocks keep their shape."""

from __future__ import annotations

import pytest
import torch

from vlae.layers import (
    Conv2d,
    ConvTranspose2d,
    Linear,
    ResBlock,
    conv2d,
    conv_transpose2d,
    data_dependent_init,
    frozen_weights,
)
from vlae.made import MaskedLinear
from vlae.masked_conv import MaskedConv2d

torch.set_num_threads(1)


def _gained(layer):
    with torch.no_grad():
        layer.g.copy_(torch.rand(layer.g.shape, dtype=layer.g.dtype) * 3 + 0.5)
    return layer


def test_linear_weight_norm():
    layer = _gained(Linear(7, 5, weight_norm=True).double())
    w = layer._effective_weight(layer.weight)
    torch.testing.assert_close(w.norm(dim=1), layer.g, rtol=1e-12, atol=0)
    # The direction is that of v.
    torch.testing.assert_close(w / w.norm(dim=1, keepdim=True),
                               layer.weight / layer.weight.norm(dim=1, keepdim=True))
    x = torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias)


def test_conv_weight_norm_including_mask():
    conv = _gained(Conv2d(3, 4, 3, weight_norm=True).double())
    torch.testing.assert_close(conv.masked_weight().flatten(1).norm(dim=1), conv.g, rtol=1e-12, atol=0)
    masked = _gained(MaskedConv2d(3, 4, 5, "A", weight_norm=True).double())
    w = masked.masked_weight()
    torch.testing.assert_close(w.flatten(1).norm(dim=1), masked.g, rtol=1e-12, atol=0)
    assert torch.all(w[:, :, masked.mask == 0] == 0)  # normalised over the kept entries only


def test_conv_transpose_weight_norm_is_per_output_channel():
    up = _gained(ConvTranspose2d(3, 5, weight_norm=True).double())
    w = up._effective_weight(up.weight)  # (in, out, kh, kw)
    torch.testing.assert_close(w.transpose(0, 1).flatten(1).norm(dim=1), up.g, rtol=1e-12, atol=0)
    assert up(torch.randn(2, 3, 6, 7, dtype=torch.float64)).shape == (2, 5, 12, 14)


def test_without_weight_norm_the_weight_is_used_as_is():
    conv = Conv2d(2, 3, 3).double()
    assert not hasattr(conv, "g")
    assert torch.equal(conv.masked_weight(), conv.weight)


def _standardised(out: torch.Tensor) -> None:
    dims = [d for d in range(out.dim()) if d != 1]
    torch.testing.assert_close(out.mean(dims), torch.zeros(out.shape[1], dtype=out.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.std(dims), torch.ones(out.shape[1], dtype=out.dtype), rtol=0, atol=1e-10)


@pytest.mark.parametrize("make,shape", [
    (lambda: Linear(6, 4, weight_norm=True), (50, 6)),
    (lambda: Conv2d(2, 4, 3, weight_norm=True), (8, 2, 9, 9)),
    (lambda: MaskedConv2d(2, 4, 3, "B", weight_norm=True), (8, 2, 9, 9)),
    (lambda: ConvTranspose2d(2, 4, weight_norm=True), (8, 2, 5, 5)),
])
def test_data_dependent_init_standardises_outputs(make, shape):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    assert layer(x).std() > 0  # any function of x; standardised only after the init
    data_dependent_init(layer, x)
    _standardised(layer(x))
    assert not layer._ddi_pending


def test_data_dependent_init_of_a_stack():
    torch.manual_seed(1)
    net = torch.nn.Sequential(Conv2d(1, 6, 3, weight_norm=True), torch.nn.ELU(),
                              Conv2d(6, 5, 3, weight_norm=True)).double()
    x = torch.randn(10, 1, 8, 8, dtype=torch.float64) * 2 + 3
    data_dependent_init(net, x)
    _standardised(net[0](x))  # each layer sees the already-initialised layers below it
    _standardised(net(x))
    # Layers without weight norm are untouched.
    plain = Conv2d(1, 2, 3).double()
    before = plain.weight.clone()
    data_dependent_init(torch.nn.Sequential(plain), x)
    assert torch.equal(plain.weight, before)


def test_data_dependent_init_without_bias():
    torch.manual_seed(2)
    layer = Linear(6, 4, bias=False, weight_norm=True).double()
    x = torch.randn(50, 6, dtype=torch.float64) * 3 + 1
    data_dependent_init(layer, x)  # the gain alone: unit standard deviation, no bias to zero or set
    torch.testing.assert_close(layer(x).std(0), torch.ones(4, dtype=torch.float64))


def test_frozen_weights_are_the_layers_own_and_undone():
    torch.manual_seed(3)
    mask = torch.tril(torch.ones(4, 6))
    computing = [Conv2d(2, 3, 3, weight_norm=True), MaskedConv2d(2, 3, 3, "B"), ConvTranspose2d(2, 3, weight_norm=True),
                 Linear(6, 4, weight_norm=True), MaskedLinear(mask)]
    plain = [Conv2d(2, 3, 3), Linear(6, 4), ConvTranspose2d(2, 3)]
    net = torch.nn.ModuleList(computing + plain).double()
    inputs = [torch.randn(2, 2, 5, 5, dtype=torch.float64) if not isinstance(m, (Linear, MaskedLinear))
              else torch.randn(2, 6, dtype=torch.float64) for m in net]
    with torch.no_grad():
        own = [m(x) for m, x in zip(net, inputs)]
        with frozen_weights(net) as layers:
            assert layers == computing
            frozen = [m(x) for m, x in zip(net, inputs)]
    for a, b in zip(own, frozen):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert all("forward" not in m.__dict__ for m in net)  # the classes' forwards again
    with torch.no_grad():
        net[0].g.mul_(2)
        assert not torch.allclose(net[0](inputs[0]), own[0])  # the effective weight is computed afresh


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_resblock_shapes(kernel, weight_norm):
    block = ResBlock(5, kernel, weight_norm).double()
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    out = block(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    with torch.no_grad():  # residual: with the second convolution zeroed it is the identity
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_mask_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        Conv2d(1, 1, 3, mask=torch.ones(3, 5))


CONVOLUTIONS = [  # (kernel, stride, padding): "same" convolutions, strided ones, a masked kernel's uneven padding
    (3, 1, 1), (3, 2, 1), (4, 2, 1), (1, 1, 0), (5, 1, (2, 1)), (2, (1, 2), 0)
]


@pytest.mark.parametrize("kernel,stride,padding", CONVOLUTIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_float64_convolution_is_torchs_up_to_rounding(kernel, stride, padding, bias):
    torch.manual_seed(4)
    x, w = torch.randn(5, 6, 9, 8, dtype=torch.float64), torch.randn(4, 6, kernel, kernel, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) if bias else None
    with torch.no_grad():
        out = conv2d(x, w, b, stride, padding)
    ref = torch.nn.functional.conv2d(x, w, b, stride, padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)
    assert not torch.equal(out, ref) or kernel == 1  # the unfolded path ran (its sums differ in order)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (2, 2, 0), (3, 1, 1), (6, 2, 2), (6, 3, 0), (3, 2, 0)])
def test_float64_transposed_convolution_is_torchs_up_to_rounding(kernel, stride, padding):
    torch.manual_seed(5)
    x, w = torch.randn(3, 6, 7, 8, dtype=torch.float64), torch.randn(6, 4, kernel, kernel, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    with torch.no_grad():
        out = conv_transpose2d(x, w, b, (stride, stride), (padding, padding))
    ref = torch.nn.functional.conv_transpose2d(x, w, b, stride, padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


def test_unfolded_convolution_only_without_gradients_and_in_float64():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, w, None, 1, 1)
    assert torch.equal(conv2d(x, w, None, 1, 1), ref)  # gradients wanted: torch's own kernel, bit for bit
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)  # a gradient wanted by the bias alone
    out = conv2d(x.detach(), w, b, 1, 1)
    assert torch.equal(out, torch.nn.functional.conv2d(x.detach(), w, b, 1, 1))
    out.sum().backward()
    assert torch.equal(b.grad, torch.full_like(b, 2.0 * 36))
    xf, wf = x.detach().float(), w.float()
    with torch.no_grad():
        assert torch.equal(conv2d(xf, wf, None, 1, 1), torch.nn.functional.conv2d(xf, wf, None, 1, 1))
        assert not torch.equal(conv2d(x, w, None, 1, 1), ref)


def test_unfolded_convolution_in_blocks_of_images(monkeypatch):
    import vlae.layers as layers

    torch.manual_seed(6)
    x, w = torch.randn(7, 3, 6, 5, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        whole = conv2d(x, w, None, 1, 1)
        monkeypatch.setattr(layers, "_UNFOLD_BYTES", 1)  # one image per block
        torch.testing.assert_close(conv2d(x, w, None, 1, 1), whole, rtol=0, atol=1e-13)


def test_a_one_entry_direction_gets_no_gradient():
    """With one unmasked entry per output, ``v / ||v||`` is ``sign(v)``: the layer computes
    ``g sign(v)`` as before, but ``v``, whose true gradient is zero, gets none (rounding
    would otherwise give it one, which Adam turns into steps of the learning rate's size)."""
    torch.manual_seed(7)
    one = Conv2d(1, 4, (1, 3), weight_norm=True, mask=torch.tensor([[1.0, 0.0, 0.0]])).double()
    two = Conv2d(1, 4, (1, 3), weight_norm=True, mask=torch.tensor([[1.0, 1.0, 0.0]])).double()
    assert (one._fan_in(), two._fan_in(), Linear(1, 3, weight_norm=True)._fan_in()) == (1, 2, 1)
    x = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    for conv in (one, two):
        conv._ddi_pending = False
        conv(x).square().sum().backward()
    sign = one.weight[:, 0, 0, 0].sign()
    torch.testing.assert_close(one.masked_weight()[:, 0, 0, 0], one.g * sign, rtol=1e-15, atol=0)
    assert one.weight.grad is None and one.g.grad.abs().min() > 0
    assert two.weight.grad[:, 0, 0, :2].abs().min() > 0  # two entries: an ordinary direction
