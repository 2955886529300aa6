"""The decoders' reported receptive field is exactly the support of the
autograd Jacobian, for every output pixel, every depth and kernel tested.

The Jacobian is taken in float64 at a random continuous input with weights
drawn N(0, 0.5^2), so an entry that the architecture allows is non-zero
generically, and an entry it forbids is exactly 0.0 (no tolerance anywhere).

Example of what is proved: a 3-layer gated PixelCNN with 3x3 kernels makes
logit (i, j) depend on exactly the pixels (i - 3..i - 1, j - 3..j + 3) and
(i, j - 3..j - 1) that lie inside the image.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from vlae.pixelcnn import (
    DECODERS,
    GRAY_WEIGHTS,
    ConditionUpsampler,
    FactorizedDecoder,
    GatedPixelCNN,
    MaskedPixelCNN,
    field_offsets,
    grayscale,
)
from vlae.verify import randomized

torch.set_num_threads(1)

COND = 2  # conditioning channels


def _jacobians(dec, H: int, W: int, seed: int = 0):
    """Support of d logits / d x as (H*W, H*W) bool and of d logits / d cond
    (any channel) as (H*W, H*W) bool; rows are output pixels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, H, W, generator=gen, dtype=torch.float64)
    c = torch.randn(1, COND, H, W, generator=gen, dtype=torch.float64) if dec_cond(dec) else None
    jx = jacobian(lambda x_: dec(x_, c).reshape(-1), x, vectorize=True).reshape(H * W, H * W)
    jc = None
    if c is not None:
        jc = jacobian(lambda c_: dec(x, c_).reshape(-1), c, vectorize=True).reshape(H * W, COND, H * W)
        jc = (jc != 0).any(1)
    return jx != 0, jc


def dec_cond(dec) -> bool:
    return isinstance(dec, FactorizedDecoder) or bool(getattr(dec, "cond_channels", 0))


def _translated(offsets, i: int, j: int, H: int, W: int) -> set[int]:
    return {(i + dy) * W + (j + dx) for dy, dx in offsets if 0 <= i + dy < H and 0 <= j + dx < W}


def _support(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(row).flatten().tolist())


def _image_for(dec) -> tuple[int, int]:
    # Large enough that a 3x3 block of pixels has its whole window inside.
    w = dec.window()
    return w["up"] + w["down"] + 3, w["left"] + w["right"] + 3


def _interior(dec, i: int, j: int, H: int, W: int) -> bool:
    w = dec.window()
    return i - w["up"] >= 0 and i + w["down"] < H and j - w["left"] >= 0 and j + w["right"] < W


def _check_fields(dec, seed: int = 0) -> None:
    H, W = _image_for(dec)
    jx, jc = _jacobians(dec, H, W, seed)
    rf, cf = dec.receptive_field(), dec.condition_field()
    n_interior = 0
    for i, j in itertools.product(range(H), range(W)):
        o = i * W + j
        # Pixels: exact at every output, borders included.
        assert _support(jx[o]) == _translated(rf, i, j, H, W), f"pixel field wrong at output {(i, j)}"
        if jc is None:
            continue
        expected_c = _translated(cf, i, j, H, W)
        got_c = _support(jc[o])
        # Conditioning map: near the border a path through positions outside
        # the image is cut by zero padding, so only a subset is reachable ...
        assert got_c <= expected_c, f"conditioning field leaks at output {(i, j)}"
        # ... and away from it the report is exact.
        if _interior(dec, i, j, H, W):
            n_interior += 1
            assert got_c == expected_c, f"conditioning field wrong at interior output {(i, j)}"
    assert jc is None or n_interior == 9
    # The size and extent reported are those of the support at an interior pixel.
    i, j = dec.window()["up"] + 1, dec.window()["left"] + 1
    sup = _support(jx[i * W + j])
    assert dec.receptive_field_size() == len(sup)
    offs = [(p // W - i, p % W - j) for p in sup]
    ext = {"up": max([0] + [-a for a, _ in offs]), "down": max([0] + [a for a, _ in offs]),
           "left": max([0] + [-b for _, b in offs]), "right": max([0] + [b for _, b in offs])}
    assert dec.receptive_field_extent() == ext


def expected_masked_field(layers: int, k: int) -> set[tuple[int, int]]:
    """Closed form of the masked PixelCNN field (derived by hand, r = k // 2):
    the current row to the left up to L*r, and row -m (1 <= m <= L*r) from
    L*r left to r*min(L, m) right -- the right edge grows only by r per layer
    that moves up, which leaves the blind spot."""
    r = k // 2
    out = {(0, dx) for dx in range(-layers * r, 0)}
    for m in range(1, layers * r + 1):
        out |= {(-m, dx) for dx in range(-layers * r, r * min(layers, m) + 1)}
    return out


def expected_gated_field(layers: int, k: int) -> set[tuple[int, int]]:
    """The full causal set inside the bounding box: every pixel in the L*r rows
    above within L*r columns either side, and the L*r pixels to the left."""
    r = k // 2
    above = {(dy, dx) for dy in range(-layers * r, 0) for dx in range(-layers * r, layers * r + 1)}
    return above | {(0, dx) for dx in range(-layers * r, 0)}


MASKED = list(itertools.product([1, 2, 3, 4], [3, 5], [True, False], [False, True]))


@pytest.mark.parametrize("layers,k,tie,cond_every", MASKED)
def test_masked_receptive_field_is_jacobian_support(layers, k, tie, cond_every):
    dec = MaskedPixelCNN(layers, k, filters=4, cond_channels=COND, blocks_1x1=1, tie_weights=tie,
                         cond_every_layer=cond_every)
    _check_fields(randomized(dec, seed=layers * 10 + k))
    assert dec.receptive_field() == expected_masked_field(layers, k)
    r = k // 2
    assert dec.receptive_field_extent() == {"up": layers * r, "down": 0, "left": layers * r, "right": layers * r}


GATED = list(itertools.product([1, 2, 3, 4], [3, 5], [False, True]))


@pytest.mark.parametrize("layers,k,cond_every", GATED)
def test_gated_receptive_field_is_jacobian_support(layers, k, cond_every):
    dec = GatedPixelCNN(layers, k, filters=3, cond_channels=COND, cond_every_layer=cond_every)
    _check_fields(randomized(dec, seed=layers * 10 + k + 1))
    assert dec.receptive_field() == expected_gated_field(layers, k)


@pytest.mark.parametrize("kind", ["masked", "gated"])
def test_weight_norm_and_unconditional(kind):
    dec = DECODERS[kind](3, 3, filters=4, cond_channels=COND, weight_norm=True)
    _check_fields(randomized(dec, seed=5))
    dec0 = DECODERS[kind](3, 3, filters=4, cond_channels=0)
    assert dec0.condition_field() == frozenset()
    _check_fields(randomized(dec0, seed=6))
    assert dec0.receptive_field() == dec.receptive_field()


def _causal_box(dec) -> set[tuple[int, int]]:
    e = dec.receptive_field_extent()
    return {(dy, dx) for dy in range(-e["up"], 1) for dx in range(-e["left"], e["right"] + 1)
            if dy < 0 or dx < 0}


@pytest.mark.parametrize("layers,k", [(2, 3), (3, 3), (4, 3), (2, 5), (4, 5)])
def test_blind_spot(layers, k):
    gated = GatedPixelCNN(layers, k, filters=2, cond_channels=0)
    masked = MaskedPixelCNN(layers, k, filters=2, cond_channels=0)
    # Gated: every causal pixel of the bounding box is seen.
    assert gated.receptive_field() == _causal_box(gated)
    # Masked: some are missing, e.g. one row up, just beyond the kernel's reach on the right.
    missing = _causal_box(masked) - masked.receptive_field()
    assert (-1, k // 2 + 1) in missing
    assert len(missing) == len(_causal_box(masked)) - masked.receptive_field_size() > 0


def test_single_layer_fields_are_the_masks():
    assert MaskedPixelCNN(1, 3, cond_channels=0).receptive_field() == {(-1, -1), (-1, 0), (-1, 1), (0, -1)}
    assert GatedPixelCNN(1, 3, cond_channels=0).receptive_field() == {(-1, -1), (-1, 0), (-1, 1), (0, -1)}


def test_factorized_decoder_fields():
    dec = randomized(FactorizedDecoder(COND, filters=4), seed=3)
    H, W = 5, 6
    jx, jc = _jacobians(dec, H, W)
    assert not jx.any()  # ignores x entirely
    assert torch.equal(jc, torch.eye(H * W, dtype=torch.bool))  # reads its own position of the map only
    assert dec.receptive_field() == frozenset() and dec.condition_field() == {(0, 0)}
    assert dec.window() == {"up": 0, "down": 0, "left": 0, "right": 0}
    with pytest.raises(ValueError):
        FactorizedDecoder(0)


@pytest.mark.parametrize("cls", [MaskedPixelCNN, GatedPixelCNN])
def test_decoder_rejects_zero_layers(cls):
    with pytest.raises(ValueError, match="at least one"):
        cls(0, 3)


def test_tied_weights_share_one_module():
    tied = MaskedPixelCNN(4, 3, filters=4, cond_channels=0, tie_weights=True)
    untied = MaskedPixelCNN(4, 3, filters=4, cond_channels=0, tie_weights=False)
    assert len({id(m) for m in tied.masked}) == 1
    assert len({id(m) for m in untied.masked}) == 3
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == 2 * sum(p.numel() for p in untied.masked[0].parameters())


@pytest.mark.parametrize("hw", [(12, 12), (28, 28), (8, 16)])
def test_condition_upsampler_shape(hw):
    up = ConditionUpsampler(5, (1, *hw), channels=4, cond_channels=3)
    assert up(torch.randn(2, 5)).shape == (2, 3, *hw)
    with pytest.raises(ValueError, match="multiples of 4"):
        ConditionUpsampler(5, (1, 10, 12))


@pytest.mark.parametrize("kind,k,layers,up,side,size", [
    ("masked", 3, 1, 1, 1, 4), ("masked", 3, 3, 3, 3, 21), ("masked", 3, 6, 6, 6, 69),
    ("masked", 3, 14, 14, 14, 329), ("masked", 5, 14, 28, 28, 1442),
    ("gated", 3, 6, 6, 6, 84), ("gated", 5, 8, 16, 16, 544),
])
def test_receptive_field_table_of_the_notes(kind, k, layers, up, side, size):
    # The table in paper_notes.md, section 4; also the closed forms it states.
    dec = DECODERS[kind](layers, k, filters=2, cond_channels=0)
    assert dec.receptive_field_extent() == {"up": up, "down": 0, "left": side, "right": side}
    assert dec.receptive_field_size() == size
    L = layers
    if kind == "gated":
        assert size == 2 * L * (k // 2) * (L * (k // 2) + 1)
    elif k == 3:
        assert size == L * (L + 1) + L * (L + 1) // 2 + L


# ---------------------------------------------------------------------- colour, AxB fields, gray context
def _colour_jacobian(dec, C: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """d outputs / d x as ``(P, H*W, C, H*W)`` (output channel, output pixel, input
    channel, input pixel), float64, at a random continuous colour input."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, C, H, W, generator=gen, dtype=torch.float64) * 2 - 1
    c = torch.randn(1, COND, H, W, generator=gen, dtype=torch.float64) if dec_cond(dec) else None
    out = dec(x, c)
    P = out.shape[1]
    jx = jacobian(lambda x_: dec(x_, c).reshape(-1), x, vectorize=True)
    return jx.reshape(P, H * W, C, H * W)


def _check_colour_fields(dec, C: int, seed: int = 0) -> torch.Tensor:
    """Every output channel of every pixel depends on every input channel exactly
    at the reported field (no channel of its own pixel or of any later pixel)."""
    H, W = _image_for(dec)
    jac = _colour_jacobian(dec, C, H, W, seed)
    rf = dec.receptive_field()
    assert (0, 0) not in rf and all(dy < 0 or dx < 0 for dy, dx in rf)  # causal, own pixel excluded
    for i, j in itertools.product(range(H), range(W)):
        o, expected = i * W + j, _translated(rf, i, j, H, W)
        for p in range(jac.shape[0]):
            for c in range(C):
                assert _support(jac[p, o, c] != 0) == expected, f"output channel {p}, input channel {c}, pixel {(i, j)}"
    return jac


FIELDS = [("4x2", {(-2, -2), (-2, -1), (-2, 0), (-2, 1), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1)}),
          ("5x3", None), ("7x4", None), ("8x4", None), ("9x5", None)]


@pytest.mark.parametrize("field,explicit", FIELDS, ids=[f for f, _ in FIELDS])
def test_paper_fields_are_the_colour_jacobian_support(field, explicit):
    """The paper's AxB (appendix B: 4x2 = 1 vertical + 2 horizontal layers, 5x3 =
    2 + 2, 7x4 = 3 + 3): B rows above, A columns wide, ceil((A-1)/2) pixels left."""
    dec = GatedPixelCNN.from_field(field, filters=3, cond_channels=COND, in_channels=3, out_channels=4,
                                   blocks_1x1=1)
    a, b = (int(t) for t in field.split("x"))
    assert (dec.vertical_layers, dec.layers) == (b - 1, a - b)
    assert dec.receptive_field_name() == field
    left, right = math.ceil((a - 1) / 2), (a - 1) // 2
    expected = {(dy, dx) for dy in range(-b, 0) for dx in range(-left, right + 1)} | {(0, dx) for dx in range(-left, 0)}
    assert dec.receptive_field() == expected and (explicit is None or expected == explicit)
    _check_colour_fields(randomized(dec, seed=a * 10 + b), C=3)
    _check_fields_colour_cond(dec)


def _check_fields_colour_cond(dec) -> None:
    """The conditioning field of a colour decoder is still exact (first output channel)."""
    H, W = _image_for(dec)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, dec.in_channels, H, W, generator=gen, dtype=torch.float64)
    c = torch.randn(1, COND, H, W, generator=gen, dtype=torch.float64)
    jc = jacobian(lambda c_: dec(x, c_)[:, 0].reshape(-1), c, vectorize=True).reshape(H * W, COND, H * W)
    jc = (jc != 0).any(1)
    cf = dec.condition_field()
    for i, j in itertools.product(range(H), range(W)):
        got, expected = _support(jc[i * W + j]), _translated(cf, i, j, H, W)
        assert got <= expected
        if _interior(dec, i, j, H, W):
            assert got == expected


@pytest.mark.parametrize("kind", ["masked", "gated", "factorized"])
def test_colour_decoders_see_no_channel_of_their_own_pixel(kind):
    if kind == "masked":
        dec = MaskedPixelCNN(2, 3, filters=4, cond_channels=COND, blocks_1x1=1, in_channels=3, out_channels=5)
    elif kind == "gated":
        dec = GatedPixelCNN(2, 3, filters=3, cond_channels=COND, in_channels=3, out_channels=5)
    else:
        dec = FactorizedDecoder(COND, filters=4, out_channels=5)
    dec = randomized(dec, seed=8)
    if kind == "factorized":
        H, W = 4, 5
        x = torch.rand(1, 3, H, W, dtype=torch.float64)
        c = torch.randn(1, COND, H, W, dtype=torch.float64)
        assert dec(x, c).shape == (1, 5, H, W)
        assert not jacobian(lambda x_: dec(x_, c), x).any()
        assert dec.receptive_field_name() == "0x0"
        return
    _check_colour_fields(dec, C=3)
    assert dec(torch.zeros(2, 3, 6, 7, dtype=torch.float64), torch.zeros(2, COND, 6, 7, dtype=torch.float64)
               ).shape == (2, 5, 6, 7)


@pytest.mark.parametrize("kind", ["masked", "gated"])
def test_gray_context_reads_only_the_luma(kind):
    """d out / d x_c = w_c * d out / d gray for c = R, G, B with (0.299, 0.587, 0.114):
    the three channels enter only through the gray combination, at exactly the field."""
    if kind == "masked":
        dec = MaskedPixelCNN(2, 3, filters=4, cond_channels=COND, blocks_1x1=1, in_channels=3, out_channels=3,
                             gray_context=True)
    else:
        dec = GatedPixelCNN.from_field("5x3", filters=3, cond_channels=COND, in_channels=3, out_channels=3,
                                       gray_context=True)
    jac = _check_colour_fields(randomized(dec, seed=4), C=3)
    weights = torch.tensor(GRAY_WEIGHTS, dtype=torch.float64)
    gray = jac[:, :, 0] / weights[0]
    for c in range(3):
        torch.testing.assert_close(jac[:, :, c], weights[c] * gray, rtol=1e-12, atol=0)
    # The same decoder on RGB without the option would mix channels freely.
    free = _colour_jacobian(randomized(type(dec)(**_ctor(dec, gray_context=False)), seed=4), 3, *_image_for(dec))
    assert not torch.allclose(free[:, :, 1] * weights[0], free[:, :, 0] * weights[1])


def _ctor(dec, **changes):
    if isinstance(dec, MaskedPixelCNN):
        kw = dict(layers=dec.layers, kernel_size=dec.kernel_size, filters=dec.first.out_channels,
                  cond_channels=dec.cond_channels, blocks_1x1=1, in_channels=3, out_channels=dec.out.out_channels)
    else:
        kw = dict(layers=dec.layers, kernel_size=dec.kernel_size, filters=dec.h_out[0].out_channels,
                  cond_channels=dec.cond_channels, in_channels=3, out_channels=dec.out2.out_channels,
                  vertical_layers=dec.vertical_layers, first_rows=dec.first_rows)
    kw.update(changes)
    return kw


def test_field_names_and_errors():
    assert GatedPixelCNN(3, 3, cond_channels=0).receptive_field_name() == "7x3"  # van den Oord, L = 3
    assert GatedPixelCNN(2, 5, cond_channels=0).receptive_field_name() == "9x4"
    assert MaskedPixelCNN(3, 3, cond_channels=0).receptive_field_name() is None  # blind spot
    assert field_offsets(4, 2) == GatedPixelCNN.from_field("4x2", cond_channels=0).receptive_field()
    for bad in ("6x2", "3x1", "7x3", "seven", "7x4x1"):
        with pytest.raises(ValueError):
            GatedPixelCNN.from_field(bad)
    with pytest.raises(ValueError, match="vertical"):
        GatedPixelCNN(2, 3, vertical_layers=3)
    with pytest.raises(ValueError, match="RGB"):
        GatedPixelCNN(2, 3, in_channels=1, gray_context=True)


def test_grayscale_helper():
    x = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])
    assert grayscale(x).item() == pytest.approx(0.299)
    assert torch.allclose(grayscale(torch.ones(2, 3, 4, 5)), torch.ones(2, 1, 4, 5))
