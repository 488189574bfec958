"""What the arguments of one torch function call say: the tensors among them, an argument
by position or name, the batch axis of the result, in-place writes (helpers of
:class:`~.mode.PropagationMode`)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .records import Batch


def _fname(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def iter_tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from iter_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from iter_tensors(o)


def _arg(args: Sequence[Any], kwargs: Dict[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ifloordiv__",
                    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
                    "__irshift__", "__setitem__"}


def _dims(ndim: int, value: Any) -> List[int]:
    if isinstance(value, int):
        value = [value]
    return [d % ndim for d in value]


def infer_batch_axis(name: str, args: Sequence[Any], kwargs: Dict[str, Any], inp: Tensor,
                     batch: Batch, out: Tensor) -> Batch:
    """Where the examples of ``out`` are, given where they are in ``inp`` (see
    :data:`~.records.Batch`): moved by axis permutations, kept where the shape is unchanged;
    otherwise (reshapes, pooling, slicing, reductions over other axes) found where the axes
    before them hold as many elements as before, with the blocks of each example aligned
    to the new axis; ``None`` where the examples are mixed with another axis."""
    if batch is None or not isinstance(out, Tensor):
        return None
    axis, inner = batch
    nd = inp.dim()
    if axis >= nd:
        return None
    if name in ("transpose", "swapaxes", "swapdims", "transpose_", "swapaxes_", "swapdims_"):
        d0, d1 = _dims(nd, [_arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", 1)])
        return (d1 if axis == d0 else d0 if axis == d1 else axis), inner
    if name in ("t", "t_") and nd == 2:
        return 1 - axis, inner
    if name == "permute":
        dims = args[1:] if len(args) > 1 else kwargs.get("dims", ())
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        return _dims(nd, list(dims)).index(axis), inner
    if name in ("movedim", "moveaxis"):
        src = _dims(nd, _arg(args, kwargs, 1, "source", 0))
        dst = _dims(nd, _arg(args, kwargs, 2, "destination", 0))
        order = [d for d in range(nd) if d not in src]
        for d, sd in sorted(zip(dst, src)):
            order.insert(d, sd)
        return order.index(axis), inner
    if name == "__getitem__":
        new = _indexed_axis(args[1] if len(args) > 1 else kwargs.get("idx"), nd, axis)
        return None if new is None else (new, inner)
    if name in ("select", "unbind"):
        dim = _dims(nd, _arg(args, kwargs, 1, "dim", 0))[0]
        return None if dim == axis else (axis - (dim < axis), inner)
    if out.shape == inp.shape:
        return axis, inner
    n = inp.shape[axis] // inner  # the number of examples
    if n == 0:
        return None
    before = math.prod(inp.shape[:axis])
    block = math.prod(inp.shape[axis:]) // n  # one example's contiguous block (per prefix row)
    reshaped = out.numel() == inp.numel()
    cum = 1
    for k, size in enumerate(out.shape):
        if cum == before:
            if reshaped and size % n == 0 and block % max(math.prod(out.shape[k + 1:]), 1) == 0:
                return k, size // n  # a reshape that keeps each example's block on axis k
            if not reshaped and size == inp.shape[axis]:
                return k, inner  # the axis kept while other axes changed (pooling, slicing)
        cum *= size
        if cum > before:
            break
    return None


def _indexed_axis(index: Any, nd: int, axis: int) -> Optional[int]:
    """Where axis ``axis`` of a tensor ends up after ``t[index]`` (``None``: indexed by an
    integer, a partial slice, or advanced indexing)."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    d = o = 0
    for it in items:
        if it is Ellipsis:
            span = nd - consumed
            if d <= axis < d + span:
                return o + axis - d
            d += span
            o += span
        elif it is None:
            o += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            if d == axis:
                return None
            d += 1
        elif isinstance(it, slice):
            if d == axis:
                return o if it == slice(None) else None
            d += 1
            o += 1
        else:  # tensors, lists: advanced indexing
            return None
    return o + axis - d if axis >= d else None


def _writes_in_place(name: str, kwargs: Dict[str, Any]) -> bool:
    """In-place operation (``relu_``, ``add_``, ``+=``, ``x[i] = v``) or ``out=`` call."""
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS \
        or "out" in kwargs or kwargs.get("inplace", False) is True


def _out_of_place(func: Callable, name: str, kwargs: Dict[str, Any]) -> Tuple[Callable, Dict[str, Any]]:
    """The out-of-place version of an in-place element-wise function."""
    if kwargs.get("inplace", False):
        return func, {**kwargs, "inplace": False}
    if name.endswith("_") and not name.endswith("__"):
        base = name[:-1]
        for ns in (torch, F, torch.special, Tensor):
            f = getattr(ns, base, None)
            if f is not None:
                return f, kwargs
    if name == "__ipow__":
        return torch.pow, kwargs
    return func, kwargs
