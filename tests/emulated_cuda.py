"""A CUDA device emulated on the CPU, for the code paths a GPU takes (tests only).

Inside :func:`emulated_cuda`, ``torch.cuda.is_available()`` is true and a tensor sent to
``"cuda"`` (``.to``, ``.cuda()``, ``device=`` of a factory, ``Module.to``) becomes an
:class:`Emulated` tensor: its ``.device`` is ``cuda:0``, its numbers are a CPU tensor, and
every torch call on it runs on that CPU tensor. The code under test sees
``x.device.type == "cuda"`` and takes its GPU branches (PyTorch's convolution kernels
instead of :func:`vlae.layers.conv2d`'s unfolded products, for one). What CUDA refuses is
refused, with CUDA's message:

- ``.numpy()`` (and ``np.asarray``) of a CUDA tensor, before ``.cpu()``;
- an operation that mixes a CUDA tensor with a CPU tensor of one or more dimensions
  (CPU scalars mix, as in PyTorch; ``copy_`` and ``__setitem__`` copy across devices);
- a CPU tensor indexed with CUDA indices.

And the host's reads of GPU numbers are counted (``.item()``, ``.cpu()``, ``if t:``, a
boolean mask as an index, ...: on a GPU each waits for it), so a test can check where a
loop synchronises.

So a test run inside it catches, on a machine without a GPU, a tensor left on the wrong
device (the one kind of GPU failure that float64 perturbations, as in
``tests/test_codec_portable.py``, cannot simulate) and a synchronisation where none should
be. It checks placement, not arithmetic or speed: the numbers are the CPU's, and a
``torch.Generator(device="cuda")`` is a CPU generator (so a seed draws the CPU's samples,
where a real GPU draws others). CUDA graphs, streams and autocast are not emulated.

Example:
    >>> import torch
    >>> with emulated_cuda() as reads:
    ...     x = torch.ones(2).cuda()
    ...     (x * 2).device, (x * 2).cpu().tolist(), reads
    (device(type='cuda', index=0), [2.0, 2.0], ['cpu'])
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["Emulated", "emulated_cuda"]

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
T = torch.Tensor


class Emulated(torch.Tensor):
    """A tensor that says it is on ``cuda:0`` and keeps its numbers in the CPU tensor ``inner``."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=CUDA, requires_grad=inner.requires_grad,
        )

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    # A traceable wrapper, so that Module.to swaps its parameters for emulated ones.
    def __tensor_flatten__(self):
        return ["inner"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, size, stride):
        return Emulated(inner["inner"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} reached an emulated CUDA tensor outside emulated_cuda()")


def _cuda(x: Any) -> bool:
    return isinstance(x, Emulated)


def _unwrap(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.inner if _cuda(t) else t, tree)


def _wrap(out: Any) -> Any:
    if not any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(out)):
        return out  # e.g. a torch.Size, which the tree map would turn into a tuple
    return pytree.tree_map(lambda t: t if _cuda(t) or not isinstance(t, torch.Tensor) else Emulated(t), out)


def _target(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a call names (``device=``, or a positional device or device name), if any."""
    named = kwargs.get("device")
    if named is None:
        for a in args:
            if isinstance(a, torch.device):
                return a
            if isinstance(a, str):
                with contextlib.suppress(RuntimeError):
                    return torch.device(a)
        return None
    return torch.device(named)


def _to(func, args: tuple, kwargs: dict, reads: list[str]) -> torch.Tensor:
    """``.to``, ``.cuda()`` and ``.cpu()``: the same conversion on the CPU tensor, wrapped
    again when it goes (or stays) on the GPU; one to the host is a read."""
    self = args[0]
    if func is T.to:
        other = next((a for a in args[1:] if isinstance(a, torch.Tensor)), None)
        target = other.device if other is not None else _target(args[1:], kwargs)
        rest = [CPU if isinstance(a, (str, torch.device)) else _unwrap(a) for a in args[1:]]
        out = _unwrap(self).to(*rest, **({**kwargs, "device": CPU} if "device" in kwargs else kwargs))
    else:
        target = CUDA if func is T.cuda else CPU
        out = _unwrap(self)
    on_cuda = target.type == "cuda" if target is not None else _cuda(self)
    if _cuda(self) and not on_cuda:
        reads.append(func.__name__)
    return Emulated(out) if on_cuda else out


def _check_devices(func, args: tuple, tensors: list[torch.Tensor]) -> None:
    """Refuse what CUDA refuses, in its words (``tensors``: the call's, one of them on the GPU)."""
    if func in _ACROSS:
        return
    if func is T.__getitem__:
        if not _cuda(args[0]) and args[0].dim() > 0:
            raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
        return
    if any(not _cuda(t) and t.dim() > 0 for t in tensors):
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
            f"({getattr(func, '__name__', func)})"
        )


def _reads(func, args: tuple) -> bool:
    """Whether a call on a GPU tensor reads its numbers on the host (a boolean mask as an index too)."""
    if func in (T.__getitem__, T.__setitem__):
        return any(_cuda(i) and i.dtype == torch.bool for i in pytree.tree_leaves(args[1]))
    return func in _READS


_TO = {T.to, T.cuda, T.cpu}
_ACROSS = {T.copy_, T.__setitem__}
_AS_IS = {T.device.__get__, T.is_cuda.__get__, torch._C._nn._parse_to}
# Calls that wait for the GPU and copy its numbers to the host (what CUDA's sync debug mode flags).
_READS = {T.item, T.tolist, T.__bool__, T.__int__, T.__float__, T.__index__, T.__format__, T.__repr__,
          T.nonzero, torch.nonzero, T.argwhere, torch.argwhere, T.unique, torch.unique, T.masked_select,
          torch.masked_select, T.equal, torch.equal, T.numpy, T.__array__}


class _Calls(TorchFunctionMode):
    def __init__(self, reads: list[str]):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _AS_IS:
            return func(*args, **kwargs)
        if func is torch._has_compatible_shallow_copy_type:  # Module.to: swap, never `.data =`
            return _cuda(args[0]) == _cuda(args[1]) and func(*_unwrap(args))
        if func in _TO:
            return _to(func, args, kwargs, self.reads)
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_gpu, target = any(map(_cuda, tensors)), _target((), kwargs)
        if not on_gpu and target is None:
            return func(*args, **kwargs)  # nothing on the GPU, nothing sent there: the CPU's call
        if on_gpu and _reads(func, args):
            self.reads.append(getattr(func, "__name__", str(func)))
            if func in (T.numpy, T.__array__) and _cuda(args[0]):
                raise TypeError(
                    "can't convert cuda:0 device type tensor to numpy. "
                    "Use Tensor.cpu() to copy the tensor to host memory first."
                )
        if on_gpu:
            _check_devices(func, args, tensors)
        if target is not None:
            kwargs["device"] = CPU
        out = func(*_unwrap(args), **_unwrap(kwargs))
        first = args[0] if args else None
        if _cuda(first) and out is first.inner:
            return first  # in place (add_, +=, ...): the CPU tensor changed under the same wrapper
        if target is not None:
            on_gpu = target.type == "cuda"
        elif func is T.__getitem__:
            on_gpu = _cuda(first)
        return _wrap(out) if on_gpu else out


class _Generator(torch.Generator):
    """``torch.Generator(device="cuda")``: a CPU generator (a CUDA one needs CUDA's library)."""

    def __new__(cls, device: Any = "cpu"):
        return super().__new__(cls, "cpu")


@contextlib.contextmanager
def emulated_cuda() -> Iterator[list[str]]:
    """Run the block with an emulated ``cuda:0`` (see the module's docstring). Yields the list
    of the block's host reads, growing as they happen: the name of each call that waits for the
    GPU and brings its numbers to the host (``item``, ``cpu``, ``__bool__``, ...)."""
    saved, reads = (torch.cuda.is_available, torch.Generator), []
    torch.cuda.is_available, torch.Generator = (lambda: True), _Generator
    try:
        with _Calls(reads):
            yield reads
    finally:
        torch.cuda.is_available, torch.Generator = saved
