"""Exercise 1 -- Masked convolutions (types A and B).

Task
    Implement ``make_mask(kernel_size, mask_type)`` and the two missing pieces of
    ``MaskedConv2d``: a convolution whose kernel is multiplied by a fixed 0/1
    mask, so that the output at a pixel never reads a pixel that comes at or
    after it in raster order (row by row, left to right).

Paper
    VLAE (Chen et al., ICLR 2017) uses a PixelCNN as its decoder p(x|z) ("Lossy
    code via explicit information placement"; the MNIST architecture is in the
    appendix). The masks are those of PixelRNN/PixelCNN (van den Oord et al.,
    2016, "Pixel Recurrent Neural Networks", section 3.4). In this repository:
    ``paper_notes.md`` section 4 and ``src/vlae/masked_conv.py`` (try not to peek).

Expected time
    30-45 minutes.

Run
    python exercises/exercise_01_masked_conv.py              # check your code
    python exercises/exercise_01_masked_conv.py --solution   # check the reference solution

The masks, for a 3x3 kernel (1 = weight kept, 0 = weight forced to zero; the
centre is the pixel being predicted)::

    type A      type B
    1 1 1       1 1 1
    1 0 0       1 1 0
    0 0 0       0 0 0

Type A is used on the first layer: an output must not see its own pixel. Type B
is used afterwards: there the centre *feature* only summarises earlier pixels.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sides(kernel_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(kh, kw)`` from ``k`` or ``(kh, kw)``."""
    if isinstance(kernel_size, int):
        return kernel_size, kernel_size
    return int(kernel_size[0]), int(kernel_size[1])


# ============================================================================ your code

def make_mask(kernel_size: int | tuple[int, int], mask_type: str) -> torch.Tensor:
    """The ``(kh, kw)`` float tensor of 0/1 masking a ``kh x kw`` kernel.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``; both sides odd, so the kernel has a
            centre at row ``kh // 2``, column ``kw // 2``.
        mask_type: ``"A"`` (centre excluded) or ``"B"`` (centre included).

    Entry ``[i, j]`` is 1 when kernel position ``(i, j)`` lies *before* the
    centre in raster order (any row above the centre; in the centre row, any
    column left of the centre), plus the centre itself for type B.

    Raises:
        ValueError: a side is even or < 1, or ``mask_type`` is not "A" or "B".

    Example:
        >>> make_mask((1, 5), "B")
        tensor([[1., 1., 1., 0., 0.]])
    """
    # TODO (1): validate the arguments, then build the mask.
    raise NotImplementedError("TODO: make_mask(kernel_size, mask_type)")


class MaskedConv2d(nn.Conv2d):
    """A "same"-padded convolution whose weight is multiplied by a fixed mask.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``. The mask lives in a *buffer* (it
    moves with ``.to(device)``, is saved in ``state_dict()``, and is not trained)
    and is applied in ``forward``: the weight itself is never overwritten, so an
    optimiser step (or weight decay) cannot leak through masked entries.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 mask_type: str = "B", bias: bool = True):
        kh, kw = _sides(kernel_size)
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        self.mask_type = mask_type
        # TODO (2): keep make_mask((kh, kw), mask_type) as a buffer named "mask".
        raise NotImplementedError("TODO: MaskedConv2d.__init__ (register the mask as the buffer 'mask')")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO (3): convolve with the masked weight (same stride and padding as nn.Conv2d).
        raise NotImplementedError("TODO: MaskedConv2d.forward (convolve with the masked weight)")


# ============================================================================ checker (no need to read on)
# Reading further gives the answers away. Run this file to check your code.

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _checker import Checklist, describe_offset, expect, fail, main, pixel_dependencies  # noqa: E402

CHECKS = Checklist("Exercise 1: masked convolutions (types A and B)")

_SQUARE = [3, 5, 7, 1]
_NON_SQUARE = [(1, 3), (1, 5), (3, 5), (5, 3), (3, 1), (3, 7)]


def _expected(kernel, mask_type: str, centre: tuple[int, int] | None = None) -> torch.Tensor:
    # Written from the raster-order rule: rank every kernel entry, compare with the centre's rank.
    kh, kw = _sides(kernel)
    cy, cx = centre if centre is not None else (kh // 2, kw // 2)
    rank = torch.arange(kh * kw).view(kh, kw)
    return ((rank < cy * kw + cx) | ((rank == cy * kw + cx) & (mask_type == "B"))).float()


def _grid(mask: torch.Tensor) -> list[str]:
    return [" ".join(str(int(v)) for v in row) for row in mask.tolist()]


def _side_by_side(expected: torch.Tensor, got: torch.Tensor) -> str:
    left, right = _grid(expected), _grid(got)
    width = max(len("expected"), *(len(r) for r in left))
    lines = [f"{'expected':<{width}}   got"]
    lines += [f"{a:<{width}}   {b}" for a, b in zip(left, right)]
    return "\n".join("  " + line for line in lines)


def _call_make_mask(ex, kernel, mask_type: str) -> torch.Tensor:
    mask = ex.make_mask(kernel, mask_type)
    kh, kw = _sides(kernel)
    expect(isinstance(mask, torch.Tensor), f"make_mask({kernel!r}, {mask_type!r}) returned {type(mask).__name__}, "
           "not a torch.Tensor")
    if tuple(mask.shape) == (kw, kh) and kh != kw:
        fail(f"make_mask({kernel!r}, {mask_type!r}) has shape {tuple(mask.shape)}, expected {(kh, kw)}",
             "rows first: the mask of a (kh, kw) kernel has kh rows and kw columns")
    expect(tuple(mask.shape) == (kh, kw), f"make_mask({kernel!r}, {mask_type!r}) has shape {tuple(mask.shape)}, "
           f"expected {(kh, kw)}", "kernel_size may be an int k (a k x k kernel) or a pair (kh, kw)")
    expect(mask.is_floating_point(), f"make_mask returned dtype {mask.dtype}; use a float tensor "
           "(it multiplies the float weight)")
    values = set(mask.unique().tolist())
    expect(values <= {0.0, 1.0},
           f"make_mask({kernel!r}, {mask_type!r}) holds values {sorted(values)}, not only 0 and 1")
    return mask


def _one_side_for_both(ex) -> bool:
    """Whether make_mask puts the centre at (kh // 2, kh // 2) or (kw // 2, kw // 2) on *every*
    non-square kernel and both types: only then is "one side used for both" the diagnosis."""
    for side in (0, 1):
        def wrong(kernel, mask_type):
            k = _sides(kernel)[side]
            return _expected(kernel, mask_type, (k // 2, k // 2))
        try:
            if all(torch.equal(ex.make_mask(kernel, t).float(), wrong(kernel, t))
                   for kernel in _NON_SQUARE for t in "AB"):
                return True
        except Exception:  # noqa: BLE001 - a mask that fails to build is not this mistake
            pass
    return False


def _mask_hint(expected: torch.Tensor, got: torch.Tensor, mask_type: str, ex=None) -> str:
    kh, kw = expected.shape
    cy, cx = kh // 2, kw // 2
    other = _expected((kh, kw), "B" if mask_type == "A" else "A")
    hints = []
    if kh != kw and ex is not None and _one_side_for_both(ex):
        hints.append("non-square kernel: the centre is at row kh // 2 and column kw // 2 (you used one side "
                     "for both)")
    if torch.equal(got, other):
        hints.append("this is the type-" + ("B" if mask_type == "A" else "A") + " mask: are the types swapped?")
    if mask_type == "A" and got[cy, cx] == 1:
        hints.append("the centre pixel is visible in a type-A mask: an output would see the pixel it predicts")
    if mask_type == "B" and got[cy, cx] == 0:
        hints.append("type B must keep the centre: after the first layer the centre feature only summarises "
                     "earlier pixels, and hiding it throws that away")
    if (got[cy, cx + 1:] == 1).any():
        hints.append("pixels right of the centre, in the centre row, come later in raster order (future pixels)")
    if (got[cy + 1:, :] == 1).any():
        hints.append("rows below the centre are future pixels: they must be masked")
    if (got[cy, :cx] == 0).any():
        hints.append("pixels left of the centre in the centre row come earlier: they must stay visible")
    if (got[:cy, :] == 0).any():
        hints.append("every pixel of the rows above the centre comes earlier, including the columns right of "
                     "the centre: keep the whole rows")
    if not hints:
        hints.append("entry [i, j] is 1 exactly when (i, j) comes before the centre (row kh // 2, column kw // 2) "
                     "in raster order" + (", plus the centre for type B" if mask_type == "B" else ""))
    return "\n".join(dict.fromkeys(hints))


def _check_contents(ex, kernels, mask_type: str) -> None:
    for kernel in kernels:
        got = _call_make_mask(ex, kernel, mask_type)
        expected = _expected(kernel, mask_type)
        if not torch.equal(got.float(), expected):
            fail(f"make_mask({kernel!r}, {mask_type!r}) is wrong:\n{_side_by_side(expected, got.float())}",
                 _mask_hint(expected, got.float(), mask_type, ex))


@CHECKS.check("make_mask returns a (kh, kw) float tensor of 0/1",
              hint="kernel_size may be an int k (a k x k kernel) or a pair (kh, kw); the centre of a (kh, kw) "
                   "kernel is at row kh // 2, column kw // 2")
def _mask_shapes(ex):
    for kernel in _SQUARE + _NON_SQUARE:
        for mask_type in "AB":
            _call_make_mask(ex, kernel, mask_type)


@CHECKS.check("type-A masks: exact contents (square kernels 3, 5, 7, 1)")
def _mask_a(ex):
    _check_contents(ex, _SQUARE, "A")


@CHECKS.check("type-B masks: exact contents (square kernels 3, 5, 7, 1)")
def _mask_b(ex):
    _check_contents(ex, _SQUARE, "B")


@CHECKS.check("non-square kernels (1x3, 1x5, 3x5, 5x3, 3x1, 3x7), types A and B")
def _mask_non_square(ex):
    for mask_type in "AB":
        _check_contents(ex, _NON_SQUARE, mask_type)


@CHECKS.check("make_mask rejects even sides and unknown types with ValueError",
              hint="check the arguments first: `if kh % 2 == 0 ...: raise ValueError(...)`; the mask type must "
                   "be 'A' or 'B'")
def _mask_errors(ex):
    for args in [(4, "A"), ((3, 2), "B"), (0, "A"), (3, "C"), (3, "a")]:
        try:
            ex.make_mask(*args)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - any other type is the mistake we report
            fail(f"make_mask{args!r} raised {type(error).__name__}, expected ValueError")
        fail(f"make_mask{args!r} returned a mask instead of raising ValueError")


def _conv(ex, c_in: int, c_out: int, kernel, mask_type: str, bias: bool = True) -> nn.Module:
    conv = ex.MaskedConv2d(c_in, c_out, kernel, mask_type=mask_type, bias=bias)
    expect(isinstance(conv, nn.Conv2d), "MaskedConv2d must stay a subclass of nn.Conv2d")
    return conv


def _same_size(module: nn.Module):
    """``module`` as a function that fails the check unless it keeps the spatial size."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = module(x)
        expect(isinstance(y, torch.Tensor) and y.dim() == 4 and tuple(y.shape[2:]) == tuple(x.shape[2:]),
               f"input {tuple(x.shape)} gave output {tuple(getattr(y, 'shape', ()))}: the height and width changed",
               "use self.stride and self.padding (set by __init__) so the output keeps the input's size")
        return y
    return forward


@CHECKS.check("MaskedConv2d keeps its mask in a buffer named 'mask'")
def _buffer(ex):
    conv = _conv(ex, 2, 3, (3, 5), "A")
    params = dict(conv.named_parameters())
    if "mask" in params:
        fail("conv.mask is an nn.Parameter", "a Parameter is trained by the optimiser: register it with "
             "self.register_buffer('mask', ...) instead")
    buffers = dict(conv.named_buffers())
    expect("mask" in buffers, "conv.mask is not a registered buffer",
           "`self.mask = ...` stores a plain attribute: .to(device), .double() and state_dict() ignore it. "
           "Use self.register_buffer('mask', make_mask(...))")
    expect("mask" in conv.state_dict(), "the mask is missing from state_dict()",
           "register it as a persistent buffer (the default of register_buffer)")
    for kernel, mask_type in [((3, 5), "A"), ((3, 5), "B"), ((5, 1), "A"), (3, "B")]:
        conv = _conv(ex, 2, 3, kernel, mask_type)
        expected = ex.make_mask(kernel, mask_type)
        mask = dict(conv.named_buffers()).get("mask")
        expect(mask is not None, f"MaskedConv2d(2, 3, {kernel!r}, {mask_type!r}) has no buffer named 'mask'")
        try:
            full = mask.expand_as(conv.weight)
        except RuntimeError:
            fail(f"the mask buffer has shape {tuple(mask.shape)}, which does not broadcast against the weight "
                 f"{tuple(conv.weight.shape)}", "store the (kh, kw) mask from make_mask")
        if not torch.equal(full.float(), expected.expand_as(conv.weight).float()):
            wrong_type = "B" if mask_type == "A" else "A"
            hint = (f"the buffer holds the type-{wrong_type} mask: pass mask_type on to make_mask"
                    if torch.equal(full.float(), ex.make_mask(kernel, wrong_type).expand_as(conv.weight).float())
                    else "register make_mask((kh, kw), mask_type), with this layer's kernel and type")
            fail(f"MaskedConv2d(2, 3, {kernel!r}, {mask_type!r}): the mask buffer differs from "
                 f"make_mask({kernel!r}, {mask_type!r})", hint)
    expect(isinstance(conv.weight, nn.Parameter) and tuple(conv.weight.shape) == (3, 2, 3, 3),
           "conv.weight is no longer the (out, in, kh, kw) Parameter of nn.Conv2d", "leave the weight alone")
    if not conv.mask.is_floating_point():
        fail(f"the mask buffer has dtype {conv.mask.dtype}", "register the float mask that make_mask returns: "
             ".double() and .to(dtype) convert only floating-point buffers, so a "
             f"{conv.mask.dtype} mask would not follow the model's dtype")
    converted = conv.double()
    expect(converted.mask.dtype == torch.float64, ".double() did not convert the mask",
           "only registered buffers follow .to()/.double()")


@CHECKS.check("forward: 'same' output size, and the convolution of x with weight * mask")
def _forward_value(ex):
    for kernel, mask_type in [(3, "A"), ((3, 5), "B"), ((1, 3), "A")]:
        conv = _conv(ex, 2, 3, kernel, mask_type)
        x = torch.randn(2, 2, 6, 7)
        y = conv(x)
        expect(tuple(y.shape) == (2, 3, 6, 7), f"output shape {tuple(y.shape)} for input (2, 2, 6, 7), "
               "expected (2, 3, 6, 7)", "use self.padding (set by __init__) so the output keeps the input's size")
        mask = ex.make_mask(kernel, mask_type)
        with torch.no_grad():
            want = F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding)
            unmasked = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
        if torch.allclose(y, unmasked, atol=1e-5) and not torch.allclose(unmasked, want, atol=1e-5):
            fail(f"kernel {kernel}, type {mask_type}: forward ignores the mask",
                 "convolve with self.weight * self.mask, not self.weight")
        if conv.bias is not None and torch.allclose(y, want - conv.bias.detach()[:, None, None], atol=1e-5):
            fail(f"kernel {kernel}, type {mask_type}: the output lacks the bias",
                 "pass self.bias to F.conv2d: F.conv2d(x, self.weight * self.mask, self.bias, self.stride, "
                 "self.padding)")
        expect(torch.allclose(y, want, atol=1e-5), f"kernel {kernel}, type {mask_type}: output differs from "
               "F.conv2d(x, weight * mask, bias, stride, padding)",
               "forward should be exactly F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)")


@CHECKS.check("forward leaves the weight untouched")
def _weight_untouched(ex):
    conv = _conv(ex, 2, 3, 3, "A")
    weight = conv.weight
    before = weight.detach().clone()
    conv(torch.randn(1, 2, 5, 5))
    expect(conv.weight is weight, "forward replaced conv.weight by another tensor",
           "compute the masked weight as a new tensor: w = self.weight * self.mask")
    expect(torch.equal(conv.weight.detach(), before), "forward changed the weight (masked entries were zeroed)",
           "do not write into the weight (e.g. self.weight.data *= self.mask): compute self.weight * self.mask "
           "as a new tensor on every call, so the mask cannot be undone by an optimiser step")


@CHECKS.check("the mask still holds after the weight changes (as after an optimiser step)")
def _mask_after_update(ex):
    conv = _conv(ex, 1, 1, 3, "A", bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)  # what weight decay or Adam may do to "masked" entries
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # a single lit pixel
    y = _same_size(conv)(x)
    with torch.no_grad():
        unmasked = F.conv2d(x, conv.weight, None, 1, 1)
    leak = y[0, 0, 2, 2] != 0 or y[0, 0, :2, :].abs().sum() != 0 or y[0, 0, 2, :2].abs().sum() != 0
    if leak:
        hint = ("forward convolved with the weight as it is now, unmasked: the mask was applied once (in "
                "__init__), and the optimiser step undid it. Apply the mask in forward on every call"
                if torch.allclose(y, unmasked) else
                "forward must multiply the current weight by the mask on every call: F.conv2d(x, self.weight * "
                "self.mask, ...)")
        fail("after the weight was set to all ones (as an optimiser step may do), outputs at or before a lit "
             "pixel in raster order react to it", hint)


def _jacobian_check(ex, kernel, mask_type: str, height: int = 6, width: int = 7) -> None:
    conv = _conv(ex, 2, 3, kernel, mask_type).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight))
    deps = pixel_dependencies(_same_size(conv), torch.randn(2, 2, height, width))
    kh, kw = _sides(kernel)
    for p in range(height * width):
        for q in range(height * width):
            (i, j), (a, b) = divmod(p, width), divmod(q, width)
            dy, dx = a - i, b - j
            in_window = abs(dy) <= kh // 2 and abs(dx) <= kw // 2
            allowed = in_window and (q < p or (q == p and mask_type == "B"))
            if bool(deps[p, q]) and not allowed:
                where = describe_offset(dy, dx)
                if q == p:
                    hint = "the centre pixel is visible in a type-A mask: an output would see the pixel it predicts"
                elif q > p:
                    hint = "an output must never see a later pixel in raster order: mask it"
                else:
                    hint = "the output reads outside the kernel window: check the padding"
                fail(f"kernel {kernel}, type {mask_type}: output ({i}, {j}) depends on input ({a}, {b}) "
                     f"({where})", hint)
            if allowed and not bool(deps[p, q]):
                fail(f"kernel {kernel}, type {mask_type}: output ({i}, {j}) ignores input ({a}, {b}) "
                     f"({describe_offset(dy, dx)}), which comes earlier and lies in the kernel window",
                     "the mask hides a pixel it should keep" if q != p else
                     "type B must keep the centre")


@CHECKS.check("type A, by the Jacobian: an output depends on exactly the earlier pixels of its window")
def _jacobian_a(ex):
    for kernel in [3, (3, 5), (1, 3)]:
        _jacobian_check(ex, kernel, "A")


@CHECKS.check("type B, by the Jacobian: ... and on its own pixel, never on a later one")
def _jacobian_b(ex):
    for kernel in [3, (5, 3), (1, 5)]:
        _jacobian_check(ex, kernel, "B")


@CHECKS.check("a stack A -> B -> B never sees the current or a later pixel (the PixelCNN property)")
def _stack(ex):
    layers = [_conv(ex, 1, 4, 3, "A"), _conv(ex, 4, 4, 3, "B"), _conv(ex, 4, 1, 3, "B")]
    net = nn.Sequential(layers[0], nn.ELU(), layers[1], nn.ELU(), layers[2]).double()
    height, width = 7, 7
    deps = pixel_dependencies(_same_size(net), torch.randn(2, 1, height, width))
    for p in range(height * width):
        later = torch.nonzero(deps[p, p:]).flatten()
        if len(later):
            q = p + int(later[0])
            (i, j), (a, b) = divmod(p, width), divmod(q, width)
            fail(f"output ({i}, {j}) depends on input ({a}, {b}) ({describe_offset(a - i, b - j)})",
                 "only the first layer is type A; later type-B layers keep the centre. Check both masks")
    centre = 3 * width + 3
    for q, what in [(centre - 1, "left neighbour"), (centre - width, "pixel above"),
                    (centre - 3 * width - 3, "pixel 3 rows up, 3 columns left")]:
        expect(bool(deps[centre, q]), f"output (3, 3) ignores its {what}, which three 3x3 layers can reach",
               "a mask hides too much: rows above must stay fully visible")


if __name__ == "__main__":
    raise SystemExit(main(CHECKS, __file__, sys.modules[__name__]))
