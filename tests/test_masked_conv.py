"""Masked convolutions: exact mask contents, the weight is never overwritten by
the mask, and an output never reads a pixel at or after itself in raster order.

Example of what is proved: for a type-A mask the output at ``(i, j)`` is a
function of the pixels strictly before ``(i, j)`` only, for every kernel shape.
"""

from __future__ import annotations

import pytest
import torch

from vlae.masked_conv import MASK_TYPES, MaskedConv2d, dilate, extent, full_offsets, make_mask, mask_offsets

torch.set_num_threads(1)

KERNELS = [3, 5, (1, 5), (3, 5), (7, 3)]


def _sides(kernel) -> tuple[int, int]:
    return (kernel, kernel) if isinstance(kernel, int) else kernel


def _allowed(i: int, j: int, kh: int, kw: int, mask_type: str) -> bool:
    """The mask rule written out per entry: row i, column j of a (kh, kw) kernel."""
    cy, cx = kh // 2, kw // 2
    above = i < cy
    return {
        "A": above or (i == cy and j < cx),
        "B": above or (i == cy and j <= cx),
        "V_A": above,
        "V_B": i <= cy,
    }[mask_type]


# Literal masks, written by hand from the definition (1 = weight kept).
LITERAL = {
    (3, "A"): [[1, 1, 1], [1, 0, 0], [0, 0, 0]],
    (3, "B"): [[1, 1, 1], [1, 1, 0], [0, 0, 0]],
    (3, "V_A"): [[1, 1, 1], [0, 0, 0], [0, 0, 0]],
    (3, "V_B"): [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
    ((1, 5), "A"): [[1, 1, 0, 0, 0]],
    ((1, 5), "B"): [[1, 1, 1, 0, 0]],
    ((1, 5), "V_A"): [[0, 0, 0, 0, 0]],
    ((1, 5), "V_B"): [[1, 1, 1, 1, 1]],
    (5, "A"): [[1] * 5, [1] * 5, [1, 1, 0, 0, 0], [0] * 5, [0] * 5],
    (5, "B"): [[1] * 5, [1] * 5, [1, 1, 1, 0, 0], [0] * 5, [0] * 5],
    ((3, 5), "A"): [[1] * 5, [1, 1, 0, 0, 0], [0] * 5],
    ((7, 3), "B"): [[1] * 3] * 3 + [[1, 1, 0]] + [[0] * 3] * 3,
}


@pytest.mark.parametrize("kernel,mask_type", list(LITERAL))
def test_mask_literal(kernel, mask_type):
    assert torch.equal(make_mask(kernel, mask_type), torch.tensor(LITERAL[(kernel, mask_type)], dtype=torch.float32))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_mask_contents(kernel, mask_type):
    kh, kw = _sides(kernel)
    mask = make_mask(kernel, mask_type)
    assert mask.shape == (kh, kw)
    expected = torch.tensor([[float(_allowed(i, j, kh, kw, mask_type)) for j in range(kw)] for i in range(kh)])
    assert torch.equal(mask, expected)
    # The offsets reported are the non-zero entries relative to the centre.
    offsets = mask_offsets(mask)
    assert offsets == {(i - kh // 2, j - kw // 2) for i in range(kh) for j in range(kw) if expected[i, j]}
    assert MaskedConv2d(1, 2, kernel, mask_type).offsets() == offsets


@pytest.mark.parametrize("kernel", [2, 4, (3, 4), (2, 3), (1, 2), 0])
def test_even_kernels_rejected(kernel):
    with pytest.raises(ValueError, match="odd"):
        make_mask(kernel, "A")
    with pytest.raises(ValueError, match="odd"):
        MaskedConv2d(1, 2, kernel, "B")


def test_unknown_mask_type_rejected():
    with pytest.raises(ValueError, match="mask type"):
        make_mask(3, "C")


@pytest.mark.parametrize("weight_norm", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_not_overwritten_by_mask(weight_norm, optimizer):
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, (3, 5), "A", weight_norm=weight_norm).double()
    hidden = conv.mask == 0
    with torch.no_grad():
        conv.weight.normal_()  # masked entries hold non-zero values the forward pass must ignore
    before = conv.weight.detach().clone()
    opt = (torch.optim.SGD(conv.parameters(), lr=0.1) if optimizer == "sgd"
           else torch.optim.AdamW(conv.parameters(), lr=0.1, weight_decay=0.5))
    for _ in range(3):
        opt.zero_grad()
        conv(torch.randn(4, 2, 6, 7, dtype=torch.float64)).pow(2).mean().backward()
        # No gradient leaks into the masked entries ...
        assert torch.all(conv.weight.grad[:, :, hidden] == 0)
        opt.step()
    # ... the parameter still holds values there (never zeroed in place) ...
    assert torch.all(conv.weight[:, :, hidden] != 0)
    if optimizer == "sgd":
        assert torch.equal(conv.weight[:, :, hidden], before[:, :, hidden])
    else:  # weight decay does move them, which must not matter
        assert not torch.equal(conv.weight[:, :, hidden], before[:, :, hidden])
    # ... while visible entries trained, and the weight actually used is zero where masked.
    assert not torch.equal(conv.weight[:, :, ~hidden], before[:, :, ~hidden])
    w = conv.masked_weight()
    assert torch.all(w[:, :, hidden] == 0)
    assert torch.all(w[:, :, ~hidden] != 0)


def _future(i: int, j: int, H: int, W: int, mask_type: str) -> torch.Tensor:
    """Boolean (H, W) map of the pixels output (i, j) must NOT read."""
    rows = torch.arange(H)[:, None].expand(H, W)
    cols = torch.arange(W)[None, :].expand(H, W)
    return {
        "A": (rows > i) | ((rows == i) & (cols >= j)),
        "B": (rows > i) | ((rows == i) & (cols > j)),
        "V_A": rows >= i,
        "V_B": rows > i,
    }[mask_type]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_output_ignores_future_pixels(kernel, mask_type):
    torch.manual_seed(1)
    H, W = 9, 10
    conv = MaskedConv2d(2, 3, kernel, mask_type).double()
    x = torch.randn(1, 2, H, W, dtype=torch.float64)
    out = conv(x)
    changed_somewhere = False
    for i, j in [(0, 0), (0, W - 1), (4, 5), (H - 1, 0), (H - 1, W - 1), (3, 0)]:
        fut = _future(i, j, H, W, mask_type)
        x2 = x.clone()
        x2[:, :, fut] += torch.randn(2, int(fut.sum()), dtype=torch.float64)
        assert torch.equal(conv(x2)[:, :, i, j], out[:, :, i, j])
        # Changing everything else (the allowed past) does change the output
        # wherever the mask reads at least one in-image pixel.
        x3 = x.clone()
        x3[:, :, ~fut] += 1.0
        changed_somewhere |= not torch.equal(conv(x3)[:, :, i, j], out[:, :, i, j])
    if make_mask(kernel, mask_type).any():
        assert changed_somewhere


def test_dilate_and_extent():
    a = {(-1, 0), (0, -1)}
    b = {(0, 0), (-1, 1)}
    assert dilate(a, b) == {(-1, 0), (0, -1), (-2, 1), (-1, 0)}
    assert extent({(-2, -1), (0, -1), (-1, 3)}) == {"up": 2, "down": 0, "left": 1, "right": 3}
    assert extent(set()) == {"up": 0, "down": 0, "left": 0, "right": 0}
    assert full_offsets((1, 3)) == {(0, -1), (0, 0), (0, 1)}


@pytest.mark.parametrize("kernel", KERNELS + [7, 1, (3, 1)])
@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("weight_norm", [False, True])
def test_cropped_kernel_equals_the_full_masked_convolution(kernel, mask_type, weight_norm):
    """The layer skips the rows and columns its mask zeroes at the kernel's edges;
    the numbers are those of the full masked kernel, in training and frozen form."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    conv = MaskedConv2d(3, 4, kernel, mask_type, weight_norm=weight_norm).double()
    conv._ddi_pending = False  # compare the plain forward, not the data-dependent init
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    full = F.conv2d(x, conv.masked_weight(), conv.bias, 1, conv.padding)
    torch.testing.assert_close(conv(x), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.frozen_forward()(x), full, rtol=0, atol=1e-12)
    kh, kw = _sides(kernel)
    mask = make_mask(kernel, mask_type)
    zero_edge = mask.any() and (not mask[-1].any() or not mask[:, -1].any() or not mask[0].any())
    assert (conv._crop is not None) == bool(zero_edge)  # cropped exactly when an edge row/column is all zeros
