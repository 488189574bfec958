"""CD rules of element-wise activations and max pooling.

Element-wise activations ``f`` (the ReLU family -- relu, relu6, leaky_relu, hardtanh,
clamp, threshold, rrelu -- and the smooth ones -- sigmoid, tanh, silu, gelu, hardswish,
hardsigmoid, elu, selu, celu, softplus, mish, softsign, logsigmoid, tanhshrink, hard /
soft shrink): the reference's rule for ReLU (``propagate_relu``), which the reference LSTM
also applies to ``tanh`` of the cell, generalised to any ``f``:

    rel' = f(rel),    irr' = f(rel + irr) - f(rel)

so the relevant part has priority (it is what the activation gives on the relevant part
alone), and ``rel' + irr' = f(rel + irr)`` exactly.  A full mask keeps ``irr = 0``.  For an
``f`` with ``f(0) != 0`` (sigmoid, hardsigmoid, softplus, logsigmoid, ...) the relevant
part of an empty mask is ``f(0)``, as the bias term of a gate goes first in the reference
LSTM's three-term rule; products (:mod:`.attention`) then decide what it contributes.

Max pooling: the arg-max of ``rel + irr`` (the true activation) selects the entries of
both parts (``propagate_pooling``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .local_rules import local_elementwise, local_max_pool2d
from .tensor import (
    _STATE,
    UnsupportedOperationError,
    _bcast,
    _bind,
    _count_cd,
    _is_cd,
    _new,
    _oop_func,
    _rowwise,
    _set_inplace,
    _shared,
    _where,
    register,
)

#: torch function names of the element-wise activations (in-place forms included)
ACTIVATIONS = [
    # the ReLU family (piecewise linear)
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
    "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_",
    "threshold", "threshold_", "_threshold", "rrelu", "rrelu_",
    # smooth / saturating activations
    "sigmoid", "sigmoid_", "tanh", "tanh_", "silu", "silu_", "gelu", "gelu_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "softplus",
    "mish", "mish_", "softsign", "logsigmoid", "log_sigmoid", "tanhshrink", "hardshrink", "softshrink",
]

@register(*ACTIVATIONS)
def elementwise(func, name, args, kwargs):
    """Element-wise activation ``f``: ``rel' = f(rel)``, ``irr' = f(rel + irr) - f(rel)``
    (total form: ``tot' = f(tot)``)."""
    x = args[0] if args else kwargs.get("input")
    others = list(args[1:]) + [v for k, v in kwargs.items() if k != "input"]
    if not _is_cd(x) or any(_is_cd(v) for v in others):
        raise UnsupportedOperationError("CD: `%s` with decomposed bounds in %s" % (name, _where()))
    f, oop = _oop_func(func, name)
    inplace = oop
    sig = None
    if not oop:
        try:
            sig = _bind(func, args, kwargs)
        except (TypeError, ValueError):
            sig = None
    if sig is not None and "inplace" in sig:
        inplace = bool(sig["inplace"])
        sig["inplace"] = False
        first = next(iter(sig))

        def fn(t):
            a = dict(sig)
            a[first] = t
            return f(**a)
    else:
        rest_a = list(args[1:])
        kw = {k: v for k, v in kwargs.items() if k != "input"}

        def fn(t):
            return f(t, *rest_a, **kw)
    if x._loc is not None and not any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in others):
        out = local_elementwise(x, fn)  # (bounds that are tensors would not fit the boxes)
        return _set_inplace(x, out) if inplace else out
    rel = fn(x._rel)
    if x._is_tot:
        out = _new(rel, _rowwise(fn, x._sec), False, True)
    else:
        irr = fn(x._rel + x._sec)
        irr = irr.sub_(rel) if irr.shape == rel.shape and irr.dtype == rel.dtype else irr - rel
        out = _new(rel, irr)
    return _set_inplace(x, out) if inplace else out


# ---- max pooling ---------------------------------------------------------------------
_MAXPOOL = {
    "max_pool1d": (F.max_pool1d_with_indices, 1), "max_pool2d": (F.max_pool2d_with_indices, 2),
    "max_pool3d": (F.max_pool3d_with_indices, 3),
    "max_pool1d_with_indices": (F.max_pool1d_with_indices, 1),
    "max_pool2d_with_indices": (F.max_pool2d_with_indices, 2),
    "max_pool3d_with_indices": (F.max_pool3d_with_indices, 3),
    "_max_pool1d": (F.max_pool1d_with_indices, 1), "_max_pool2d": (F.max_pool2d_with_indices, 2),
    "_max_pool3d": (F.max_pool3d_with_indices, 3),
    "adaptive_max_pool1d": (F.adaptive_max_pool1d_with_indices, 1),
    "adaptive_max_pool2d": (F.adaptive_max_pool2d_with_indices, 2),
    "adaptive_max_pool3d": (F.adaptive_max_pool3d_with_indices, 3),
    "adaptive_max_pool1d_with_indices": (F.adaptive_max_pool1d_with_indices, 1),
    "adaptive_max_pool2d_with_indices": (F.adaptive_max_pool2d_with_indices, 2),
    "adaptive_max_pool3d_with_indices": (F.adaptive_max_pool3d_with_indices, 3),
}


@register(*_MAXPOOL)
def max_pool(func, name, args, kwargs):
    """Max pooling: the arg-max of the total (the model's own choice) selects the entries
    of both parts."""
    fwi, nd = _MAXPOOL[name]
    kwargs = dict(kwargs)
    x = args[0] if args else kwargs.pop("input")
    args = list(args[1:]) if args else []
    if not _is_cd(x) or _count_cd(args, kwargs):
        raise UnsupportedOperationError("CD: `%s` in %s" % (name, _where()))
    want_idx = bool(kwargs.pop("return_indices", False))
    pos_ri = 2 if name.startswith("adaptive") else 6
    if len(args) >= pos_ri:
        want_idx = want_idx or bool(args[pos_ri - 1])
        args = args[: pos_ri - 1]
    if name.endswith("with_indices"):
        want_idx = True
    if x._loc is not None and not want_idx and nd == 2 and not name.startswith("adaptive") \
            and x._sec.dim() == 4:
        out = local_max_pool2d(x, args, kwargs)
        if out is not None:
            return out
    # the arg-max of the true activation (in the total form: the model's own choice,
    # computed once for all masks)
    total = x._sec if x._is_tot else x._rel + x._sec
    k = total.shape[0] if x._is_tot and _shared(total) else None
    base = total[:1] if k else total
    out, idx = fwi(base, *args, **kwargs)
    if _STATE.pool_replay is not None:
        idx = _STATE.pool_replay.pop(0)
        sd = idx.dim() - nd
        out = base.flatten(sd).gather(sd, idx.flatten(sd)).view_as(out)
    if _STATE.pool_record is not None:
        _STATE.pool_record.append(idx)
    if k:
        idx = _bcast(idx, k)
        out = _bcast(out, k)
    sd = idx.dim() - nd
    fi = idx.flatten(sd)
    rel = x._rel.flatten(sd).gather(sd, fi).view_as(out)
    if x._is_tot:
        res = _new(rel, out, False, True)
    else:
        res = _new(rel, x._sec.flatten(sd).gather(sd, fi).view_as(out))
    return (res, idx) if want_idx else res
