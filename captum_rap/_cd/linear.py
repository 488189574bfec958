"""CD rules of linear maps without constant term and of sums (all computing forms).

* linear maps (reshapes, indexing, pooling by averaging, ``sum``, ``mean``, ``mul`` /
  ``div`` by a constant, ``matmul`` with a constant, eval dropout, padding with zeros,
  concatenation, ...): applied to both parts, ``rel' = L rel``, ``irr' = L irr``;
* ``a + b`` adds the parts; a constant added to a decomposed tensor (a bias, a position
  embedding, a class token concatenated to the sequence) goes to ``irr``.

In the total form the total of a batch-wise map is computed on one row of the shared
total (``_rowwise_ok``); in the local form average pooling, per-channel scalings, sums
and channel concatenations keep the boxes (:mod:`.local_rules`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .local import LocalRel
from .local_rules import local_avg_pool2d, _local_cat, _local_scale, _local_sum, _per_channel, _SCALINGS
from .tensor import (
    _ADD_NAMES,
    _RSUB_NAMES,
    _SUB_NAMES,
    CDTensor,
    UnsupportedOperationError,
    _bcast,
    _bind,
    _count_cd,
    _inplace_flag,
    _inplace_name,
    _is_cd,
    _mode_of,
    _new,
    _oop_func,
    _rowwise,
    _run_plain,
    _sec_as,
    _set_inplace,
    _shared,
    _substitute,
    _where,
    _wrap_pair,
    register,
)

_PARTIAL_VIEWS = {"__getitem__", "narrow", "select", "split", "chunk", "unbind", "tensor_split",
                  "diagonal", "split_with_sizes", "unsafe_split", "unsafe_chunk"}

# linear functions that treat dim 0 as a batch axis (for the shared total)
_ROWWISE = {
    "mul", "__mul__", "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide",
    "neg", "__neg__", "negative", "__pos__", "positive", "clone", "contiguous", "to", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle",
}
_REDUCTIONS = {"mean", "sum", "nansum", "cumsum"}


_MATMULS = {"matmul", "__matmul__", "bmm"}


def _rowwise_ok(base: str, sec: torch.Tensor, args, kwargs) -> bool:
    """Whether ``base(sec, *args)`` may be computed on one row of a shared ``sec`` (``args``
    has None in the place of ``sec``).  Constants must not vary along dim 0 (one row, no
    batch axis of their own, or themselves shared)."""
    if not _shared(sec):
        return False
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    if base in _REDUCTIONS:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None or isinstance(dim, str):
            return False
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not dims or any((int(d) % sec.dim()) == 0 for d in dims):
            return False
    elif base in _MATMULS:
        # dim 0 is a batch axis of a matmul of >= 3-D tensors, and the row axis of the
        # first operand of a 2-D one
        first = len(args) > 0 and args[0] is None
        if not ((sec.dim() >= 3 and all(a.dim() <= sec.dim() for a in tensors))
                or (first and sec.dim() == 2 and all(a.dim() <= 2 for a in tensors))):
            return False
    elif base not in _ROWWISE:
        return False
    for a in tensors:
        if not _is_cd(a) and a.dim() >= sec.dim() and a.shape[0] != 1 and not _shared(a):
            return False
    return True


def _first_rows(values, ndim):
    """Shared constants (stride 0 along dim 0) of at least ``ndim`` axes -> their first row."""
    return [v[:1] if isinstance(v, torch.Tensor) and not _is_cd(v) and v.dim() >= ndim and _shared(v) else v
            for v in values]


# reshapes (row-major; the total stays shared when they keep the leading axis)
_RESHAPES = {"reshape", "view", "flatten", "unflatten", "contiguous", "reshape_as", "view_as"}

_LIKE = {"expand_as", "view_as", "reshape_as", "type_as"}  # the 2nd argument gives a shape / dtype


def _unary_linear(func, name, args, kwargs):
    """Functions linear (without constant term) in their single decomposed argument."""
    if name in _LIKE and len(args) == 2 and _is_cd(args[1]):
        args = (args[0], args[1]._sec)  # a plain tensor of the same shape (and dtype)
        if not _is_cd(args[0]):  # a constant shaped like a decomposed tensor
            return _run_plain(func, args, kwargs)
    n = _count_cd(args, kwargs)
    if n != 1 or any(_is_cd(x) for a in args if isinstance(a, (list, tuple)) for x in a):
        raise UnsupportedOperationError(
            "CD: `%s` in %s takes %s decomposed tensors; a rule exists only when exactly one "
            "argument is decomposed (a product of two decomposed tensors is not linear)."
            % (name, _where(), "several" if n > 1 else "nested")
        )
    f, inplace = _oop_func(func, name)
    loc_arg = next((a for a in args if _is_cd(a) and a._loc is not None and a._sec.dim() == 4), None)
    if loc_arg is not None:
        base = _inplace_name(name) or name
        if base == "avg_pool2d" and args[0] is loc_arg:
            out = local_avg_pool2d(loc_arg, args[1:], kwargs)
        elif base in _SCALINGS and len(args) == 2 and not kwargs:
            out = _local_scale(f, args)
        else:
            out = None
        if out is not None:
            return _set_inplace(args[0], out) if inplace else out
    is_tot = _mode_of(args, kwargs)
    ar, kr = _substitute(args, kwargs, "_rel")
    asec, ksec = _substitute(args, kwargs, "_sec", is_tot)
    out_r = f(*ar, **kr)
    out_s = None
    if is_tot:
        base = _inplace_name(name) or name
        pos = next((j for j, a in enumerate(args) if _is_cd(a)), None)
        sec = asec[pos] if pos is not None else None
        if sec is not None and _rowwise_ok(base, sec, asec[:pos] + [None] + asec[pos + 1:], ksec):
            a1 = _first_rows(asec, sec.dim())
            a1[pos] = sec[:1]
            k1 = dict(zip(ksec, _first_rows(list(ksec.values()), sec.dim())))
            o = f(*a1, **k1)
            if isinstance(o, torch.Tensor) and o.dim() >= 1 and o.shape[0] == 1:
                out_s = _bcast(o, sec.shape[0])
        elif sec is not None and base in _RESHAPES and _shared(sec) and isinstance(out_r, torch.Tensor) \
                and out_r.dim() >= 1 and out_r.shape[0] == sec.shape[0]:
            # a row-major reshape keeping the leading axis maps row k to row k: reshape one
            # row (a reshape of the expanded total would copy it K times)
            out_s = _bcast(sec[:1].reshape((1,) + tuple(out_r.shape[1:])), sec.shape[0])
    if out_s is None:
        out_s = f(*asec, **ksec)
    out = _wrap_pair(out_r, out_s, name in _PARTIAL_VIEWS, is_tot)
    if inplace:
        if not _is_cd(args[0]):
            raise UnsupportedOperationError(
                "CD: in-place `%s` writes a decomposed tensor into a plain tensor in %s" % (name, _where()))
        return _set_inplace(args[0], out)
    return out


def _div(func, name, args, kwargs):
    if name in ("__rtruediv__", "__rdiv__", "__rfloordiv__") or (len(args) > 1 and _is_cd(args[1])):
        raise UnsupportedOperationError(
            "CD: division by a decomposed tensor (`%s`) in %s is not linear" % (name, _where()))
    if kwargs.get("rounding_mode") is not None:
        raise UnsupportedOperationError("CD: `%s` with rounding_mode in %s is not linear" % (name, _where()))
    return _unary_linear(func, name, args, kwargs)


def _identity(func, name, args, kwargs):
    """Dropout: identity (the model is expected in eval mode)."""
    x = args[0] if args else kwargs.get("input")
    if _inplace_flag(func, args, kwargs):
        return x
    if x._loc is not None:
        return CDTensor.local(x._loc, x._sec[:1])
    return _new(x._rel, x._sec, False, x._is_tot)


def _parts(v, is_tot: bool):
    """``(rel, sec)`` of an operand; ``rel`` is None for a constant (all of it is ``irr``)."""
    if _is_cd(v):
        return v._rel, _sec_as(v, is_tot)
    return None, v


def _axpy(a, b, coef):
    """``a + coef * b`` where either may be None (zero)."""
    if b is None:
        return a
    b = b if coef == 1 else coef * b
    return b if a is None else a + b


def _row_constant(c, shared: torch.Tensor) -> bool:
    """Whether the constant ``c`` is the same for every row of ``shared``: a number, a
    tensor broadcasting without a batch axis of its own, or one whose rows are equal (e.g.
    segment embeddings of expanded segment ids)."""
    if not isinstance(c, torch.Tensor):
        return True
    if _is_cd(c):
        return False
    if c.dim() < shared.dim() or c.shape[0] == 1 or _shared(c):
        return True
    with torch._C.DisableTorchFunctionSubclass():
        return c.shape[0] == shared.shape[0] and torch.equal(c, c[:1].expand_as(c))


def _row1(c, ndim):
    """The first row of a constant with a batch axis (see ``_row_constant``)."""
    return c[:1] if isinstance(c, torch.Tensor) and c.dim() >= ndim and c.shape[0] > 1 else c


def _add_sub(func, name, args, kwargs):
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if name in _RSUB_NAMES:  # other - self
        a, b = b, a
        sign = -1
    elif name in _SUB_NAMES:
        sign = -1
    else:
        sign = 1
    is_tot = _mode_of(args, kwargs)
    coef = sign * alpha
    out = None
    la, lb = _is_cd(a) and a._loc is not None, _is_cd(b) and b._loc is not None
    if la and lb and a._sec.shape == b._sec.shape and a._sec.dim() == 4:
        out = _local_sum([a, b], [1, coef])  # e.g. a residual addition
    elif la and _per_channel(b):  # a constant goes to irr (to the total)
        out = CDTensor.local(a._loc, a._sec[:1] + coef * b)
    elif lb and _per_channel(a) and coef in (1, -1):
        l_ = b._loc
        if coef == -1:
            l_ = LocalRel(-l_.bg, -l_.crop, l_.ys, l_.xs)
        out = CDTensor.local(l_, a + coef * b._sec[:1])
    if out is not None:
        if name in ("add_", "__iadd__", "sub_", "__isub__"):
            return _set_inplace(args[0], out)
        return out
    ra, sa = _parts(a, is_tot)
    rb, sb = _parts(b, is_tot)
    # at least one operand is decomposed; constants go to ``irr`` (hence to ``tot``)
    rel = torch.as_tensor(_axpy(ra, rb, coef))
    if is_tot and _shared(sa) and _shared(sb) and sa.shape == sb.shape:
        sec = _bcast(_axpy(sa[:1], sb[:1], coef), sa.shape[0])  # e.g. a residual addition
    elif is_tot and _shared(sa) and _row_constant(sb, sa):
        sec = _bcast(_axpy(sa[:1], _row1(sb, sa.dim()), coef), sa.shape[0])  # plus a number or a constant
    elif is_tot and _shared(sb) and _row_constant(sa, sb):
        sec = _bcast(_axpy(_row1(sa, sb.dim()), sb[:1], coef), sb.shape[0])
    else:
        sec = torch.as_tensor(_axpy(sa, sb, coef))
    rel, sec = torch.broadcast_tensors(rel, sec)
    out = _new(rel, sec, False, is_tot)
    if name in ("add_", "__iadd__", "sub_", "__isub__"):
        if not _is_cd(args[0]):
            raise UnsupportedOperationError(
                "CD: in-place `%s` adds a decomposed tensor into a plain tensor in %s" % (name, _where()))
        return _set_inplace(args[0], out)
    return out


def _joint_linear(func, name, args, kwargs):
    """cat / stack: jointly linear in all inputs; plain tensors are constants (-> irr)."""
    seq = args[0] if args else kwargs.get("tensors")
    rest = list(args[1:])
    kw = {k: v for k, v in kwargs.items() if k != "tensors"}
    is_tot = _mode_of(list(seq), {})
    if name in ("cat", "concat", "concatenate") and seq and all(_is_cd(t) and t._loc is not None for t in seq) \
            and all(t._sec.dim() == 4 for t in seq) and len({tuple(t._sec.shape[-2:]) for t in seq}) == 1 \
            and kw.get("dim", rest[0] if rest else 0) in (1, -3):
        out = _local_cat(list(seq))  # e.g. DenseNet / Inception concatenations (channels)
        if out is not None:
            return out
    rl, sl = [], []
    for t in seq:
        r, s_ = _parts(t, is_tot)
        rl.append(torch.zeros_like(t) if r is None else r)
        sl.append(s_)
    out_s = None
    if is_tot and name in ("cat", "concat", "concatenate") and sl and all(_shared(v) for v in sl) \
            and len({v.shape[0] for v in sl}) == 1:
        dim = kw.get("dim", rest[0] if rest else 0)
        if isinstance(dim, int) and dim % sl[0].dim() != 0:  # e.g. DenseNet / Inception concat
            out_s = _bcast(func([v[:1] for v in sl], *rest, **kw), sl[0].shape[0])
    if out_s is None:
        out_s = func(sl, *rest, **kw)
    return _new(func(rl, *rest, **kw), out_s, False, is_tot)


def _pad(func, name, args, kwargs):
    sig = _bind(F.pad, args, kwargs)
    x = sig["input"]
    if not _is_cd(x):
        raise UnsupportedOperationError("CD: `pad` of a decomposed value in %s" % _where())
    mode = sig.get("mode", "constant")
    value = sig.get("value", None)
    p = sig["pad"]
    sec = x._sec
    if x._loc is not None and sec.dim() == 4 and mode == "constant" and len(p) in (2, 4) \
            and min(p) >= 0:  # zero-padding a map: the boxes move, the background is padded
        left, top = int(p[0]), (int(p[2]) if len(p) == 4 else 0)
        loc = x._loc
        nl = LocalRel(F.pad(loc.bg, p), loc.crop, [y + top for y in loc.ys], [v + left for v in loc.xs])
        return CDTensor.local(nl, F.pad(sec[:1], p, mode="constant", value=value if value is not None else 0.0))
    if mode == "constant":
        def fs(t):
            return F.pad(t, p, mode="constant", value=value if value is not None else 0.0)
        rel = F.pad(x._rel, p, mode="constant", value=0.0)
    else:
        def fs(t):
            return F.pad(t, p, mode=mode)
        rel = F.pad(x._rel, p, mode=mode)
    if x._is_tot and len(p) // 2 < sec.dim():
        return _new(rel, _rowwise(fs, sec), False, True)
    return _new(rel, fs(sec), False, x._is_tot)


def _masked_fill(func, name, args, kwargs):
    """``x.masked_fill(mask, value)`` (plain mask and value): the filled entries are the
    constant ``value`` (irrelevant), the others keep their parts."""
    a = dict(zip(("input", "mask", "value"), args))
    a.update(kwargs)
    x, mask, value = a["input"], a["mask"], a["value"]
    if not _is_cd(x) or _is_cd(mask) or _is_cd(value):
        raise UnsupportedOperationError("CD: `%s` with a decomposed mask or value in %s" % (name, _where()))
    with torch._C.DisableTorchFunctionSubclass():
        rel = x._rel.masked_fill(mask, 0.0)
        if x._is_tot and _shared(x._sec) and (mask.dim() < x._sec.dim() or mask.shape[0] == 1):
            sec = _bcast(x._sec[:1].masked_fill(mask if mask.dim() < x._sec.dim() else mask[:1], value),
                         x._sec.shape[0])
        else:
            sec = x._sec.masked_fill(mask, value)
    out = _new(rel, sec, False, x._is_tot)
    return _set_inplace(x, out) if name.endswith("_") else out


def _new_tensor(func, name, args, kwargs):
    """``t.new_tensor(data)``: a copy of ``data`` (a constant unless ``data`` is decomposed)."""
    data = args[1] if len(args) > 1 else kwargs.get("data")
    if not _is_cd(data):
        return _run_plain(func, args, kwargs)
    if set(kwargs) - {"data", "dtype", "device", "requires_grad"}:
        raise UnsupportedOperationError("CD: `new_tensor` with %s in %s" % (sorted(kwargs), _where()))
    return _new(data._rel.clone(), data._sec.clone(), False, data._is_tot)


#: linear functions of one decomposed argument (products: see :mod:`.attention`)
LINEAR_NAMES = [
    "neg", "__neg__", "negative", "__pos__", "positive",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "t_", "contiguous",
    "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "__getitem__", "expand", "expand_as",
    "repeat", "tile", "flip", "fliplr", "flipud", "roll", "narrow", "select", "chunk", "split",
    "unbind", "tensor_split", "split_with_sizes", "clone", "detach", "to", "float", "double",
    "half", "bfloat16", "type_as", "cpu", "cuda", "diagonal", "get:T", "get:mT", "get:data",
    "mean", "sum", "nansum", "cumsum", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle", "trace", "index_select", "gather", "take_along_dim",
]
register(*LINEAR_NAMES)(_unary_linear)
register("div", "__truediv__", "div_", "__itruediv__", "true_divide", "divide", "__rtruediv__", "__rdiv__")(_div)
register("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")(_identity)
register(*(_ADD_NAMES | _SUB_NAMES | _RSUB_NAMES))(_add_sub)
register("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack")(_joint_linear)
register("pad")(_pad)
register("new_tensor")(_new_tensor)
register("masked_fill", "masked_fill_")(_masked_fill)
