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

import pytest
import torch
from torch.autograd.functional import jacobian

from vlae.pixelcnn import DECODERS, ConditionUpsampler, FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN

torch.set_num_threads(1)

COND = 2  # conditioning channels


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


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
    _check_fields(_randomize(dec, seed=layers * 10 + k))
    assert dec.receptive_field() == expected_masked_field(layers, k)
    r = k // 2
    assert dec.receptive_field_extent() == {"up": layers * r, "down": 0, "left": layers * r, "right": layers * r}


GATED = list(itertools.product([1, 2, 3, 4], [3, 5], [False, True]))


@pytest.mark.parametrize("layers,k,cond_every", GATED)
def test_gated_receptive_field_is_jacobian_support(layers, k, cond_every):
    dec = GatedPixelCNN(layers, k, filters=3, cond_channels=COND, cond_every_layer=cond_every)
    _check_fields(_randomize(dec, seed=layers * 10 + k + 1))
    assert dec.receptive_field() == expected_gated_field(layers, k)


@pytest.mark.parametrize("kind", ["masked", "gated"])
def test_weight_norm_and_unconditional(kind):
    dec = DECODERS[kind](3, 3, filters=4, cond_channels=COND, weight_norm=True)
    _check_fields(_randomize(dec, seed=5))
    dec0 = DECODERS[kind](3, 3, filters=4, cond_channels=0)
    assert dec0.condition_field() == frozenset()
    _check_fields(_randomize(dec0, seed=6))
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
    dec = _randomize(FactorizedDecoder(COND, filters=4), seed=3)
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
